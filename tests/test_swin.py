"""FLatten-Swin: released parameter layout, reference logits, resizing, features, checkpointing."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
import timm

import models  # noqa: F401  (registers the flatten_* models)
from fill import fill_tensor, fixed_input
from models.layers.common import InputSizeError
from models.layers.focused_linear_attention import resize_positional_encoding
from models.layers.weights import checkpoint_filter_fn
from models.layers.window import relative_position_index, shifted_window_mask, window_partition, window_reverse
from models.swin import FLattenSwinTransformer, WindowAttention

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
with open(os.path.join(FIXTURES, "official_manifest.json")) as f:
    MANIFEST = json.load(f)

# manifest key -> registered model name
CONFIGS = {
    "flatten_swin_t": "flatten_swin_tiny_patch4_224",
    "flatten_swin_s": "flatten_swin_small_patch4_224",
    "flatten_swin_b": "flatten_swin_base_patch4_224",
    "flatten_swin_b_384": "flatten_swin_base_patch4_384",
}


def manifest_state_dict(key, fill=True):
    """Every manifest parameter plus zero buffers of the released shapes.

    fill=False gives storage-free meta tensors: enough to check names and shapes.
    """
    entry = MANIFEST[key]
    if fill:
        sd = {n: fill_tensor(n, s) for n, s in entry["param_keys"].items()}
        sd.update({n: torch.zeros(s) for n, s in entry["buffer_keys"].items()})
    else:
        sd = {n: torch.empty(s, device="meta") for n, s in {**entry["param_keys"], **entry["buffer_keys"]}.items()}
    return sd


def small_swin(**kwargs):
    """A narrow model at 224 whose L stages use shifted 14x14 windows and S stages shifted 7x7."""
    args = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=14, drop_path_rate=0.)
    return FLattenSwinTransformer(**dict(args, **kwargs))


def tiny_swin(**kwargs):
    """A cheap model at 64: shifted 8x8 L windows in stage 1, then global windows."""
    return small_swin(**dict(dict(img_size=64, window_size=8), **kwargs))


@pytest.fixture(scope="module")
def swin_t_state_dict():
    return manifest_state_dict("flatten_swin_t")


@pytest.fixture(scope="module")
def swin_t_filled(swin_t_state_dict):
    model = timm.create_model("flatten_swin_tiny_patch4_224").eval()
    missing = model.load_state_dict(checkpoint_filter_fn(swin_t_state_dict, model), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    return model


# -- (1) released parameter layout --------------------------------------------------------
@pytest.mark.parametrize("key", list(CONFIGS))
def test_released_layout(key):
    with torch.device("meta"):
        model = timm.create_model(CONFIGS[key])
    ours = {n: list(p.shape) for n, p in model.named_parameters()}
    assert ours == MANIFEST[key]["param_keys"]
    assert sum(p.numel() for p in model.parameters()) == MANIFEST[key]["params"]
    # Buffers a released file carries are rebuilt here, never stored ...
    assert not any(k in model.state_dict() for k in MANIFEST[key]["buffer_keys"])
    # ... and dropped by the filter, so a released state dict loads strictly.
    sd = checkpoint_filter_fn(manifest_state_dict(key, fill=False), model)
    model.load_state_dict(sd, strict=True, assign=True)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(CONFIGS))
def test_released_layout_loads_strict_filled(key):
    model = timm.create_model(CONFIGS[key])
    model.load_state_dict(checkpoint_filter_fn(manifest_state_dict(key), model), strict=True)
    p = dict(model.named_parameters())["layers.0.blocks.0.attn.positional_encoding"]
    assert torch.equal(p, fill_tensor("layers.0.blocks.0.attn.positional_encoding", p.shape))


# -- (2) reference logits of the official implementation ------------------------------------
def test_rebuilt_buffers_equal_official(swin_t_filled):
    ref = torch.load(os.path.join(FIXTURES, "flatten_swin_t.pt"), weights_only=True)
    for key, value in ref["buffers"].items():
        module, leaf = key.rsplit(".", 1)
        ours = swin_t_filled.get_submodule(module).get_buffer(leaf)
        assert ours is not None and torch.equal(ours.to(value.dtype), value), key


def test_reference_logits(swin_t_filled):
    ref = torch.load(os.path.join(FIXTURES, "flatten_swin_t.pt"), weights_only=True)
    with torch.no_grad():
        logits = swin_t_filled(fixed_input(2, 224))
    assert logits.shape == ref["logits"].shape
    torch.testing.assert_close(logits, ref["logits"], atol=1e-4, rtol=0)


# -- (3) another resolution ------------------------------------------------------------------
def test_384_from_224_weights(swin_t_state_dict):
    model = timm.create_model("flatten_swin_tiny_patch4_224", img_size=384, window_size=96).eval()
    sd224 = swin_t_state_dict
    model.load_state_dict(checkpoint_filter_fn(sd224, model), strict=True)
    params = dict(model.named_parameters())
    # L stages stay global (96x96 and 48x48 tokens); S stages use 12x12 windows.
    for name, tokens in (("layers.0.blocks.0.attn.positional_encoding", 96 * 96),
                         ("layers.1.blocks.1.attn.positional_encoding", 48 * 48)):
        assert params[name].shape == (1, tokens, sd224[name].shape[-1])
        torch.testing.assert_close(params[name], resize_positional_encoding(sd224[name], tokens))
    assert params["layers.2.blocks.0.attn.relative_position_bias_table"].shape == (23 * 23, 12)
    assert [(b.window_size, b.shift_size) for b in model.layers[2].blocks[:2]] == [(12, 0), (12, 6)]
    with torch.no_grad():
        out = model(fixed_input(1, 384))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()

    with pytest.raises(InputSizeError) as err:
        model(fixed_input(1, 224))
    msg = str(err.value)
    assert "\n" not in msg and "384x384" in msg and "224x224" in msg


# -- (4) dense features ------------------------------------------------------------------------
def test_features_only():
    model = timm.create_model("flatten_swin_tiny_patch4_224", features_only=True).eval()
    assert model.feature_info.channels() == [96, 192, 384, 768]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 56, 56), (1, 192, 28, 28), (1, 384, 14, 14),
                                              (1, 768, 7, 7)]


def test_forward_intermediates_consistent_with_forward():
    model = tiny_swin().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        last = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
    torch.testing.assert_close(last, final.permute(0, 3, 1, 2))


# -- (5) gradient checkpointing ----------------------------------------------------------------
def test_grad_checkpointing_identical():
    torch.manual_seed(0)
    model = tiny_swin()
    assert [b.shift_size for b in model.layers[0].blocks] == [0, 4]
    x = torch.randn(2, 3, 64, 64)

    def run():
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_ref, grads_ref = run()
    model.set_grad_checkpointing(True)
    out_ckpt, grads_ckpt = run()
    assert torch.equal(out_ref, out_ckpt)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_ckpt[name], g, atol=0, rtol=0, msg=name)


# -- blocks and window helpers ------------------------------------------------------------------
def test_window_layout():
    model = small_swin()
    got = [[(b.attn_type, b.window_size, b.shift_size) for b in stage.blocks] for stage in model.layers]
    assert got == [[("L", 14, 0), ("L", 14, 7)], [("L", 14, 0), ("L", 14, 7)],
                   [("S", 7, 0), ("S", 7, 3)], [("S", 7, 0), ("S", 7, 0)]]
    # Linear attention never gets a mask; only shifted softmax blocks build one.
    masks = [[b.attn_mask is not None for b in stage.blocks] for stage in model.layers]
    assert masks == [[False, False], [False, False], [False, True], [False, False]]
    # A window that covers the stage is global with no shift (FLatten-Swin-T stages 1-2).
    with torch.device("meta"):
        t = timm.create_model("flatten_swin_tiny_patch4_224")
    assert [(b.window_size, b.shift_size) for b in t.layers[0].blocks] == [(56, 0), (56, 0)]
    assert t.layers[0].blocks[0].attn.positional_encoding.shape == (1, 56 * 56, 96)


def test_window_partition_roundtrip_and_mask():
    x = torch.randn(2, 14, 21, 3)
    windows = window_partition(x, 7)
    assert windows.shape == (2 * 6, 49, 3)
    torch.testing.assert_close(windows[1].view(7, 7, 3), x[0, :7, 7:14])
    assert torch.equal(window_reverse(windows, 7, 14, 21), x)
    assert shifted_window_mask(14, 14, 7, 0) is None
    mask = shifted_window_mask(14, 14, 7, 3)
    assert mask.shape == (4, 49, 49)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all() and (mask[3] != 0).any()
    idx = relative_position_index(3)
    assert idx.shape == (9, 9) and idx.min() == 0 and idx.max() == 24 and (idx.diagonal() == 12).all()


def test_window_attention_sdpa_equals_explicit_softmax():
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, num_heads=2, window_size=7).eval()
    mask = shifted_window_mask(14, 14, 7, 3)
    x = torch.randn(2 * 4, 49, 8)
    with torch.no_grad():
        out = attn(x, mask=mask)
        q, k, v = attn.qkv(x).reshape(8, 49, 3, 2, 4).permute(2, 0, 3, 1, 4)
        scores = (q * 4 ** -0.5) @ k.transpose(-2, -1) + attn.relative_position_bias().unsqueeze(0)
        scores = (scores.view(2, 4, 2, 49, 49) + mask[None, :, None]).view(8, 2, 49, 49)
        ref = attn.proj((F.softmax(scores, -1) @ v).transpose(1, 2).reshape(8, 49, 8))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_linear_attention_ignores_mask():
    model = small_swin().eval()
    attn = model.layers[0].blocks[1].attn
    x = torch.randn(16, 14 * 14, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask=shifted_window_mask(56, 56, 14, 7)), attn(x))


def test_surface_and_options():
    model = tiny_swin(attn_type="LLSL", num_classes=10,
                      la_kwargs=dict(focusing_factor=2, kernel_size=3, use_dwc=False))
    assert model.layers[0].blocks[1].attn.dwc is None and model.layers[3].blocks[0].attn.focusing_factor == 2
    assert [stage.blocks[0].attn_type for stage in model.layers] == ["L", "L", "S", "L"]
    x = torch.randn(1, 3, 64, 64)
    assert model(x).shape == (1, 10)
    nwd = model.no_weight_decay()
    assert "layers.1.blocks.0.attn.scale" in nwd and "layers.0.blocks.1.attn.positional_encoding" in nwd
    assert "layers.2.blocks.0.attn.relative_position_bias_table" in nwd
    model.reset_classifier(0)
    assert model(x).shape == (1, 128) and model.get_classifier() is model.head
    with pytest.raises(TypeError):
        FLattenSwinTransformer(not_an_option=1)
    with pytest.raises(ValueError):
        tiny_swin(attn_type="LLS")
    with pytest.raises(ValueError, match="not a multiple of the window"):
        tiny_swin(attn_type="SLSL")
    with torch.device("meta"):
        cfg = timm.create_model("flatten_swin_base_patch4_384").pretrained_cfg
    assert cfg["input_size"] == (3, 384, 384) and cfg["crop_pct"] == 1.0
    assert {"flatten_swin_tiny_patch4_224", "flatten_swin_small_patch4_224", "flatten_swin_base_patch4_224",
            "flatten_swin_base_patch4_384"} <= set(timm.list_models("flatten_swin_*"))
