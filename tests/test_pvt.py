"""FLatten-PVT and FLatten-PVTv2 specifics: another resolution from 224 weights, key reduction,
softmax stages, the unused final norm of the release."""
import pytest
import timm
import torch
import torch.nn.functional as F

import models  # noqa: F401  (registers the models)
from fill import fill_tensor, fixed_input
from manifest import load_manifest
from models.layers import InputSizeError, ModelConfigError, checkpoint_filter_fn, create_linear_attention
from models.layers.pos_embed import resample_token_grid
from randomize import randomize


@pytest.mark.parametrize("name,release_name", [("flatten_pvt_tiny", "flatten_pvt_t"),
                                               ("flatten_pvt_v2_b0", "flatten_pvt_v2_b0")])
def test_other_resolution_from_224_weights(name, release_name):
    """224 weights load into a 288 model (token grids resampled); other inputs are refused."""
    weights_224 = {n: fill_tensor(n, tuple(s)) for n, s in load_manifest()[release_name]["param_keys"].items()}
    model = timm.create_model(name, img_size=288).eval()
    sd = checkpoint_filter_fn(weights_224, model)
    pe = "block1.0.attn.positional_encoding"
    torch.testing.assert_close(sd[pe], resample_token_grid(weights_224[pe], (72, 72)))
    if "v2" not in name:
        assert sd["pos_embed1"].shape == (1, 72 * 72, 64) and sd["pos_embed4"].shape == (1, 81, 512)
        torch.testing.assert_close(sd["pos_embed4"], resample_token_grid(weights_224["pos_embed4"], (9, 9)))
        assert "norm.weight" not in sd                                        # the release's unused norm
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        out = model(fixed_input(1, 288))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    with pytest.raises(InputSizeError):
        model(fixed_input(1, 224))


@pytest.mark.parametrize("name,kwargs", [
    ("flatten_pvt_tiny", dict(la_sr_ratios=[2, 2, 2, 1])),
    ("flatten_pvt_v2_b0", dict(la_sr_ratios=(2, 2, 2, 1), dynamic_img_size=True)),
    ("flatten_pvt_tiny", dict(attn_type="SSSS")),
    ("flatten_pvt_v2_b0", dict(attn_type="LLSS", sr_ratios=[4, 2, 2, 1])),
])
def test_key_reduction_and_softmax_variants(name, kwargs):
    """Reduced-key focused attention and softmax SRA stages build with the right shapes and train."""
    torch.manual_seed(0)
    small = dict(embed_dims=[16, 32, 40, 64], depths=[1, 1, 2, 1])  # heads stay [1, 2, 5, 8]
    model = timm.create_model(name, img_size=64, num_classes=5, drop_path_rate=0.0, **small, **kwargs)
    names = dict(model.named_parameters())
    attn_type = kwargs.get("attn_type", "LLLL")
    la_sr, sr = kwargs.get("la_sr_ratios", (1, 1, 1, 1)), kwargs.get("sr_ratios", [8, 4, 2, 1])
    for i, kind in enumerate(attn_type):
        r = la_sr[i] if kind == "L" else sr[i]
        grid = 16 >> i
        pe = names.get(f"block{i + 1}.0.attn.positional_encoding")
        assert (pe.shape[1] == (grid // r) ** 2) if kind == "L" else pe is None
        assert (f"block{i + 1}.0.attn.sr.weight" in names) == (r > 1)
    size = (96, 64) if model.dynamic_img_size else (64, 64)
    out = model(torch.randn(2, 3, *size))
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert not any(n.startswith("norm.") for n in names)                       # no unused final norm


def test_reduced_keys_match_explicit_attention():
    """sr > 1: the global part attends over N / r^2 keys; dwc sees v interpolated to N tokens."""
    torch.manual_seed(0)
    attn = randomize(create_linear_attention("focused", 16, 2, (8, 8), qkv="q_kv", sr_ratio=2), std=0.2).eval()
    with torch.no_grad():
        x = torch.randn(2, 64, 16)
        q, k, v = attn.project(x, (8, 8))
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
    assert model.ignored_checkpoint_keys and not timm.create_model("flatten_pvt_v2_b0").ignored_checkpoint_keys
    assert [i["module"] for i in model.feature_info] == ["to_map1", "to_map2", "to_map3", "to_map4"]
    with pytest.raises(TypeError):
        timm.create_model("flatten_pvt_v2_b0", not_an_option=1)
    with pytest.raises(ModelConfigError, match="attn_type"):
        timm.create_model("flatten_pvt_v2_b0", attn_type="LLL")
    with pytest.raises(ModelConfigError, match="la_sr_ratios"):
        timm.create_model("flatten_pvt_v2_b0", la_sr_ratios="1111")            # a list of ints, not a string
