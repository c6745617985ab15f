"""FLatten-CSWin: released parameter layout, official logits, resizing, timm surface."""
import json
import os

import pytest
import timm
import torch

import models  # noqa: F401  (registers the models)
from fill import fill_tensor, fixed_input
from models.cswin import FlattenCSWin, LePEAttention, branch_windows
from models.layers import InputSizeError, checkpoint_filter_fn, resize_positional_encoding

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
RELEASED = {
    "flatten_cswin_t": "flatten_cswin_tiny_224",
    "flatten_cswin_s": "flatten_cswin_small_224",
    "flatten_cswin_b": "flatten_cswin_base_224",
    "flatten_cswin_b_384": "flatten_cswin_base_384",
}
# Small model for the surface tests: grids 16-8-4-2, stripes 1-2-2.
TINY = dict(img_size=64, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 4], num_classes=10)


@pytest.fixture(scope="module")
def manifest():
    with open(os.path.join(FIXTURES, "official_manifest.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny_224_filled(manifest):
    """The released FLatten-CSWin-T parameters, filled deterministically from their names."""
    keys = manifest["flatten_cswin_t"]["param_keys"]
    return {"model": {k: fill_tensor(k, tuple(v)) for k, v in keys.items()}}


@pytest.mark.parametrize("config", sorted(RELEASED))
def test_released_parameter_layout(manifest, config):
    with torch.device("meta"):
        model = timm.create_model(RELEASED[config])
    expected = [(k, list(v)) for k, v in manifest[config]["param_keys"].items()]
    # Same names, shapes and order as the released state dicts.
    assert [(n, list(p.shape)) for n, p in model.named_parameters()] == expected
    assert sum(p.numel() for p in model.parameters()) == manifest[config]["params"]
    assert list(model.buffers()) == []
    ckpt = {"model": {k: torch.empty(v) for k, v in manifest[config]["param_keys"].items()}}
    model.load_state_dict(checkpoint_filter_fn(ckpt, model), strict=True, assign=True)


def test_reference_logits(tiny_224_filled):
    """Deterministic weights through the official implementation vs this one."""
    model = timm.create_model("flatten_cswin_tiny_224")
    model.load_state_dict(checkpoint_filter_fn(tiny_224_filled, model), strict=True)
    # Loaded values are the filled ones, name for name.
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), fill_tensor(name, tuple(p.shape)))
    ref = torch.load(os.path.join(FIXTURES, "flatten_cswin_t.pt"), weights_only=True)
    model.eval()
    with torch.no_grad():
        logits = model(fixed_input(2, 224))
    assert logits.shape == ref["logits"].shape
    torch.testing.assert_close(logits, ref["logits"], atol=1e-4, rtol=0)


def test_other_resolution_loads_224_weights(tiny_224_filled):
    model = timm.create_model("flatten_cswin_tiny_224", img_size=288)
    # Grids 72-36-18-9; S-stage stripes follow the grid: [1, 2, 9, 9].
    assert model.grids == [(72, 72), (36, 36), (18, 18), (9, 9)]
    assert [a.window for a in model.stage3[0].attns] == [(18, 9), (9, 18)]
    assert [a.window for a in model.stage4[0].attns] == [(9, 9)]
    assert [a.window for a in model.stage1[0].attns] == [(72, 72)]
    model.load_state_dict(checkpoint_filter_fn(tiny_224_filled, model), strict=True)
    pe = model.stage1[0].attns[0].positional_encoding
    assert pe.shape == (1, 72 * 72, 64)
    src = tiny_224_filled["model"]["stage1.0.attns.0.positional_encoding"]
    torch.testing.assert_close(pe.detach(), resize_positional_encoding(src, 72 * 72))
    with pytest.raises(InputSizeError, match="288"):
        model(fixed_input(1, 224))
    # Stripes that do not divide a stage grid are refused with a clear error.
    with pytest.raises(ValueError, match="does not divide"):
        FlattenCSWin(img_size=288, split_size=[1, 2, 7, 7], depths=[1, 1, 1, 1])


def test_wrong_input_size_raises():
    model = FlattenCSWin(**TINY)
    with pytest.raises(InputSizeError):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(InputSizeError):
        model.forward_intermediates(torch.randn(1, 3, 96, 96))


def test_features_only():
    model = timm.create_model("flatten_cswin_tiny_224", features_only=True, img_size=64,
                              depths=[1, 1, 1, 1])
    feats = model(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    assert model.feature_info.channels() == [64, 128, 256, 512]
    assert model.feature_info.reduction() == [4, 8, 16, 32]


def test_forward_intermediates_match_forward():
    model = FlattenCSWin(**TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x, norm=True)
        torch.testing.assert_close(model.forward_head(final), model(x))
        # The last map is the normalised last-stage tokens on their grid.
        torch.testing.assert_close(feats[-1].flatten(2).transpose(1, 2), final)
        only = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    assert len(only) == 1 and only[0].shape == (1, 32, 8, 8)


def test_softmax_baseline_forward_backward():
    """Original CSWin-T (softmax everywhere, depths 1-2-21-1) builds, runs and trains."""
    kwargs = dict(attn_type="SSSS", depths=[1, 2, 21, 1])
    with torch.device("meta"):
        model = timm.create_model("flatten_cswin_tiny_224", **kwargs)
    assert not any("positional_encoding" in n or "dwc" in n for n, _ in model.named_parameters())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 22.3
    # CSWin's stripes at 224: widths 1, 2, 7 in half-channel branch pairs, one global branch last.
    windows = [[a.window for a in getattr(model, f"stage{i}")[0].attns] for i in range(1, 5)]
    assert windows == [[(56, 1), (1, 56)], [(28, 2), (2, 28)], [(14, 7), (7, 14)], [(7, 7)]]
    # Forward/backward at 128 (grids 32-16-8-4, stripes 1-2-4) to keep the test fast.
    model = timm.create_model("flatten_cswin_tiny_224", img_size=128, **kwargs)
    out = model(torch.randn(1, 3, 128, 128))
    assert out.shape == (1, 1000)
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_lepe_attention_equals_explicit_softmax():
    """The SDPA path is CSWin's softmax(q k^T / sqrt(d)) v + get_v(v) inside each stripe."""
    torch.manual_seed(0)
    attn = LePEAttention(dim=8, num_heads=2, window=(4, 2)).eval()
    q, k, v = torch.randn(3, 2, 16, 8).unbind(0)
    out = attn(q, k, v, (4, 4))
    expected = torch.zeros_like(out)
    grid = lambda t: t.reshape(2, 4, 4, 8)  # (B, H, W, C)
    for col in range(0, 4, 2):   # vertical stripes of width 2
        qs, ks, vs = (grid(t)[:, :, col:col + 2].reshape(2, 8, 2, 4).transpose(1, 2) for t in (q, k, v))
        w = torch.softmax(qs @ ks.transpose(-2, -1) * 4 ** -0.5, dim=-1)
        x = (w @ vs).transpose(1, 2).reshape(2, 4, 2, 8)
        lepe = attn.get_v(grid(v)[:, :, col:col + 2].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        expected.view(2, 4, 4, 8)[:, :, col:col + 2] = x + lepe
    torch.testing.assert_close(out, expected)


def test_focused_stripes_and_windows():
    assert branch_windows((8, 8), None, False) == [(8, 8)]
    assert branch_windows((8, 8), 8, False) == [(8, 8)]
    assert branch_windows((8, 8), 2, False) == [(8, 2), (2, 8)]
    assert branch_windows((8, 8), 2, True) == [(8, 8)]
    # L stages with stripes: two half-width focused branches with stripe-sized encodings.
    model = FlattenCSWin(**dict(TINY, la_split_size=[2, 2, 2, 2]))
    a0, a1 = model.stage1[0].attns
    assert a0.positional_encoding.shape == (1, 16 * 2, 8) and a1.window == (2, 16)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_grad_checkpointing_identical():
    torch.manual_seed(0)
    model = FlattenCSWin(**dict(TINY, drop_path_rate=0.)).train()
    x = torch.randn(2, 3, 64, 64)

    def run():
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out_ref, grads_ref = run()
    model.set_grad_checkpointing(True)
    out_ck, grads_ck = run()
    assert torch.equal(out_ref, out_ck)
    for g_ref, g_ck in zip(grads_ref, grads_ck):
        torch.testing.assert_close(g_ref, g_ck, atol=1e-6, rtol=1e-5)


def test_model_surface():
    model = FlattenCSWin(**TINY)
    nwd = model.no_weight_decay()
    assert "stage1.0.attns.0.scale" in nwd and "stage2.0.attns.0.positional_encoding" in nwd
    assert not any("get_v" in n or "dwc" in n for n in nwd)
    assert model.num_features == 128 and model.num_prefix_tokens == 0
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 128)
    with pytest.raises(TypeError):
        FlattenCSWin(window_size=7)
    with pytest.raises(ValueError):
        FlattenCSWin(attn_type="LLS")
    cfg = timm.create_model("flatten_cswin_base_384", pretrained=False, depths=[1, 1, 1, 1],
                            num_classes=0).pretrained_cfg
    assert cfg["input_size"] == (3, 384, 384) and cfg["crop_pct"] == 1.0


def test_la_options_reach_every_focused_branch():
    model = FlattenCSWin(**dict(TINY, la_kwargs=dict(focusing_factor=2, kernel_size=3, use_dwc=True)))
    focused = [m for m in model.modules() if hasattr(m, "focusing_factor")]
    assert focused and all(m.focusing_factor == 2 and m.dwc.kernel_size == (3, 3) for m in focused)
    model = FlattenCSWin(**dict(TINY, la_kwargs=dict(use_dwc=False)))
    assert not any(".dwc." in n for n, _ in model.named_parameters())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_build_from_config():
    from config import load_config
    from models import build_model

    cfg = load_config(opts=["MODEL.NAME", "flatten_cswin_tiny_224", "MODEL.TYPE", "flatten_cswin",
                            "DATA.IMG_SIZE", 64, "MODEL.DEPTHS", [1, 1, 1, 1],
                            "MODEL.LA.CSWIN_LA_SPLIT_SIZE", "16-8-4-2"])
    model = build_model(cfg)
    assert isinstance(model, FlattenCSWin) and model.img_size == (64, 64)
    assert model.stage1[0].attns[0].positional_encoding.shape == (1, 256, 64)
