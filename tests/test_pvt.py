"""FLatten-PVT and FLatten-PVTv2: released layouts, reference logits, resolution changes, variants."""
import json
import os

import pytest
import timm
import torch
import torch.nn.functional as F

import models  # noqa: F401  (registers the models)
from fill import fill_tensor, fixed_input
from models.layers import InputSizeError, checkpoint_filter_fn
from models.pvt import PvtFocusedAttention

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
with open(os.path.join(FIXTURES, "official_manifest.json")) as _f:
    MANIFEST = json.load(_f)

# manifest key (released file name) -> registered model ("b" is the release name of PVT-L)
RELEASED = {
    "flatten_pvt_t": "flatten_pvt_tiny",
    "flatten_pvt_s": "flatten_pvt_small",
    "flatten_pvt_m": "flatten_pvt_medium",
    "flatten_pvt_b": "flatten_pvt_large",
    **{f"flatten_pvt_v2_b{i}": f"flatten_pvt_v2_b{i}" for i in range(5)},
}


def filled(model):
    """Every parameter and buffer of ``model`` filled by name (the reference-fixture weights)."""
    return {k: fill_tensor(k, tuple(v.shape)) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("key", sorted(RELEASED))
def test_released_layout(key):
    """Parameter names and shapes equal the released checkpoint's; such a state dict loads strictly."""
    with torch.device("meta"):  # layout only: no memory, no weight init
        model = timm.create_model(RELEASED[key])
    ours = {n: list(p.shape) for n, p in model.named_parameters()}
    assert ours == MANIFEST[key]["param_keys"]
    assert sum(p.numel() for p in model.parameters()) == MANIFEST[key]["params"]
    # Values do not matter for the layout (the reference-logits test loads real values).
    released = {"model": {n: torch.zeros(()).expand(s) for n, s in MANIFEST[key]["param_keys"].items()}}
    model.load_state_dict(checkpoint_filter_fn(released, model), strict=True, assign=True)


@pytest.mark.parametrize("key", ["flatten_pvt_t", "flatten_pvt_v2_b0"])
def test_reference_logits(key):
    """Filled weights + fixed input reproduce the official implementation's logits."""
    model = timm.create_model(RELEASED[key]).eval()
    model.load_state_dict(checkpoint_filter_fn(filled(model), model), strict=True)
    ref = torch.load(os.path.join(FIXTURES, f"{key}.pt"), weights_only=True)
    assert not ref["buffers"]
    with torch.no_grad():
        logits = model(fixed_input(2, 224))
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("key", ["flatten_pvt_t", "flatten_pvt_v2_b0"])
def test_other_resolution(key):
    """224 weights load into a 288 model (token grids resized); other inputs are refused."""
    name = RELEASED[key]
    weights_224 = {n: fill_tensor(n, tuple(s)) for n, s in MANIFEST[key]["param_keys"].items()}
    model = timm.create_model(name, img_size=288).eval()
    sd = checkpoint_filter_fn(weights_224, model)
    assert sd["block1.0.attn.positional_encoding"].shape == (1, 72 * 72, model.embed_dims[0])
    if "v2" not in name:
        assert sd["pos_embed1"].shape == (1, 72 * 72, 64) and sd["pos_embed4"].shape == (1, 81, 512)
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        out = model(fixed_input(1, 288))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    with pytest.raises(InputSizeError):
        model(fixed_input(1, 224))


@pytest.mark.parametrize("name", ["flatten_pvt_tiny", "flatten_pvt_v2_b0"])
def test_features_only(name):
    model = timm.create_model(name, features_only=True, img_size=128)
    feats = model(torch.randn(1, 3, 128, 128))
    assert [tuple(f.shape[2:]) for f in feats] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert model.feature_info.reduction() == [4, 8, 16, 32]


@pytest.mark.parametrize("name,kwargs", [
    ("flatten_pvt_tiny", dict(la_sr_ratios=[2, 2, 2, 1])),
    ("flatten_pvt_v2_b0", dict(la_sr_ratios="2221")),
    ("flatten_pvt_tiny", dict(attn_type="SSSS")),
    ("flatten_pvt_v2_b0", dict(attn_type="LLSS", sr_ratios=[4, 2, 2, 1])),
])
def test_key_reduction_and_softmax_variants(name, kwargs):
    """Reduced-key focused attention and softmax SRA stages train; checkpointing gives the same result."""
    torch.manual_seed(0)
    small = dict(embed_dims=[16, 32, 40, 64], depths=[1, 1, 2, 1])  # heads stay [1, 2, 5, 8]
    model = timm.create_model(name, img_size=64, num_classes=5, drop_path_rate=0.0, **small, **kwargs)
    names = dict(model.named_parameters())
    attn_type = kwargs.get("attn_type", "LLLL")
    la_sr, sr = kwargs.get("la_sr_ratios", "1111"), kwargs.get("sr_ratios", [8, 4, 2, 1])
    for i, kind in enumerate(attn_type):
        r = int(la_sr[i]) if kind == "L" else sr[i]
        grid = 16 >> i
        pe = names.get(f"block{i + 1}.0.attn.positional_encoding")
        assert (pe.shape[1] == (grid // r) ** 2) if kind == "L" else pe is None
        assert (f"block{i + 1}.0.attn.sr.weight" in names) == (r > 1)

    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # PVT v1's final norm is in the checkpoints but unused (as released): frozen; everything else learns.
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(grads)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == (
        set() if "v2" in name else {"norm.weight", "norm.bias"})
    assert all(torch.isfinite(g).all() for g in grads.values())

    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.square().mean().backward()
    torch.testing.assert_close(out_ckpt, out, rtol=0, atol=0)
    for n, g in grads.items():
        torch.testing.assert_close(model.get_parameter(n).grad, g, rtol=1e-5, atol=1e-6)


def test_reduced_keys_match_explicit_attention():
    """sr > 1: the global part attends over N / r^2 keys; dwc sees v interpolated to N tokens."""
    torch.manual_seed(0)
    attn = PvtFocusedAttention(16, 2, (8, 8), sr_ratio=2).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.2)
        x = torch.randn(2, 64, 16)
        q, k, v = attn.project_qkv(x, (8, 8))
        assert k.shape == v.shape == (2, 16, 16)

        weights = attn.attention_weights(q, k)                               # (B, h, 64, 16)
        vh = v.reshape(2, 16, 2, 8).transpose(1, 2)                          # (B, h, 16, d)
        glob = (weights @ vh).transpose(1, 2).reshape(2, 64, 16)
        v_up = F.interpolate(v.transpose(1, 2), size=64, mode="linear", align_corners=False)  # (B, C, 64)
        v_grid = v_up.reshape(2 * 2, 8, 8, 8)                                # (B*h, d, H, W)
        local = attn.dwc(v_grid).reshape(2, 16, 64).transpose(1, 2)
        expected = attn.proj(glob + local)
        torch.testing.assert_close(attn(x, (8, 8)), expected, rtol=1e-4, atol=1e-5)


def test_surface_details():
    model = timm.create_model("flatten_pvt_tiny")
    nwd = model.no_weight_decay()
    assert {"pos_embed1", "pos_embed4", "block1.0.attn.scale", "block4.1.attn.positional_encoding"} <= nwd
    assert model.attn_type == "LLLL" and model.num_prefix_tokens == 0
    with pytest.raises(TypeError):
        timm.create_model("flatten_pvt_v2_b0", not_an_option=1)
    with pytest.raises(ValueError):
        timm.create_model("flatten_pvt_v2_b0", attn_type="LLL")
