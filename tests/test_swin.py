"""FLatten-Swin specifics: window layout, padding to windows (Swin's detection-code rule), the
softmax window attention, another resolution from 224 weights, options."""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import swin_transformer as timm_swin

import models  # noqa: F401  (registers the flatten_* models)
from manifest import released_state_dict
from models.layers import InputSizeError, ModelConfigError
from models.layers.pos_embed import resample_token_grid
from models.layers.weights import checkpoint_filter_fn
from models.layers.window import (pad_to_window, relative_position_index, shifted_window_mask, window_partition,
                                  window_reverse)
from models.swin import FLattenSwin, FLattenSwinBlock, WindowAttention
from fill import fixed_input
from randomize import randomize


def small_swin(**kwargs):
    """A narrow model at 224 whose L stages use shifted 14x14 windows and S stages shifted 7x7."""
    args = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=14, drop_path_rate=0.)
    return FLattenSwin(**dict(args, **kwargs))


def tiny_swin(**kwargs):
    """A cheap model at 64: shifted 8x8 L windows in stage 1, then global windows."""
    return small_swin(**dict(dict(img_size=64, window_size=8), **kwargs))


def test_window_layout():
    model = small_swin()
    got = [[(b.attn_type, b.window_size, b.shift_size) for b in stage.blocks] for stage in model.layers]
    assert got == [[("L", 14, 0), ("L", 14, 7)], [("L", 14, 0), ("L", 14, 7)],
                   [("S", 7, 0), ("S", 7, 3)], [("S", 7, 0), ("S", 7, 0)]]
    # Only shifted softmax blocks have a mask; linear attention is never masked (as released).
    masks = [[b.attn_mask is not None for b in stage.blocks] for stage in model.layers]
    assert masks == [[False, False], [False, False], [False, True], [False, False]]
    # A window that covers the stage is global with no shift (FLatten-Swin-T stages 1-2).
    with torch.device("meta"):
        t = timm.create_model("flatten_swin_tiny_patch4_224")
    assert [(b.global_attn, b.shift_size) for b in t.layers[0].blocks] == [(True, 0), (True, 0)]
    assert t.layers[0].blocks[0].attn.positional_encoding.shape == (1, 56 * 56, 96)
    assert "window_size=global" in repr(t.layers[0].blocks[0])


def test_window_partition_roundtrip_mask_and_padding():
    x = torch.randn(2, 14, 21, 3)
    windows = window_partition(x, 7)
    assert windows.shape == (2 * 6, 49, 3)
    torch.testing.assert_close(windows[1].view(7, 7, 3), x[0, :7, 7:14])
    assert torch.equal(window_reverse(windows, 7, 14, 21), x)
    stripes = window_partition(x, (14, 3))                                   # CSWin vertical stripes
    torch.testing.assert_close(stripes[2].view(14, 3, 3), x[0, :, 6:9])
    assert shifted_window_mask(14, 14, 7, 0) is None
    mask = shifted_window_mask(14, 14, 7, 3)
    assert mask.shape == (4, 49, 49) and set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all() and (mask[3] != 0).any()
    idx = relative_position_index(3)
    assert idx.shape == (9, 9) and idx.min() == 0 and idx.max() == 24 and (idx.diagonal() == 12).all()
    padded = pad_to_window(torch.ones(1, 10, 12, 2), 7)
    assert padded.shape == (1, 14, 14, 2) and padded[:, :10, :12].eq(1).all() and padded.sum() == 10 * 12 * 2


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


def swin_detection_reference(blk: FLattenSwinBlock, x: torch.Tensor) -> torch.Tensor:
    """The block as Swin's detection code computes it at a size that is not a multiple of the window:
    pad the normed grid bottom / right, roll, attend in windows with the mask of the padded grid,
    reverse, crop. Built from timm's Swin parts (window ops, mask, attention) with our weights."""
    w, s = blk.window_size, blk.shift_size
    ref_attn = timm_swin.WindowAttention(x.shape[-1], blk.attn.num_heads, window_size=w)
    ref_attn.load_state_dict(blk.attn.state_dict(), strict=False)
    B, H, W, C = x.shape
    y = blk.norm1(x)
    pad_h, pad_w = (w - H % w) % w, (w - W % w) % w
    y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = y.shape[1:3]
    y = torch.roll(y, (-s, -s), (1, 2))
    helper = timm_swin.SwinTransformerBlock(C, input_resolution=(Hp, Wp), num_heads=blk.attn.num_heads,
                                            window_size=w, shift_size=s, always_partition=True)
    mask = helper.get_attn_mask(device=x.device, dtype=x.dtype)
    win = timm_swin.window_partition(y, (w, w)).view(-1, w * w, C)
    win = ref_attn(win, mask=mask).view(-1, w, w, C)
    y = timm_swin.window_reverse(win, (w, w), Hp, Wp)
    y = torch.roll(y, (s, s), (1, 2))[:, :H, :W]
    x = x + y
    return x + blk.mlp(blk.norm2(x))


@pytest.mark.parametrize("shift", [0, 3])
def test_padding_to_windows_matches_swin_detection_code(shift):
    """A softmax block on a 10x12 grid (window 7): padded to 14x14, shifted windows masked on the padded grid."""
    torch.manual_seed(0)
    blk = randomize(FLattenSwinBlock(16, (10, 12), 2, attn_type="S", window_size=7, shift_size=shift), std=0.2).eval()
    assert blk.padded and (blk.attn_mask is None) == (shift == 0)
    x = torch.randn(2, 10, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), swin_detection_reference(blk, x), rtol=1e-5, atol=1e-5)


def test_any_size_with_windowed_focused_stages():
    """Windowed L stages (Table 6's 7x7 windows) pad too: a 7-window model runs at 96x160 and at 224x224
    equals the model built for 224."""
    torch.manual_seed(0)
    kw = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, drop_path_rate=0.)
    dyn = randomize(FLattenSwin(dynamic_img_size=True, **kw), std=0.05).eval()
    ref = FLattenSwin(**kw).eval()
    ref.load_state_dict(dyn.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dyn(x), ref(x), rtol=1e-5, atol=1e-5)
        assert dyn(torch.randn(2, 3, 96, 160)).shape == (2, 1000)
    # Built at a size whose grids the windows do not tile (DATA.IMG_SIZE 256 with window 56): padded, runs.
    m = timm.create_model("flatten_swin_tiny_patch4_224", img_size=256, embed_dim=16, num_heads=(1, 2, 2, 4))
    assert m.layers[0].blocks[1].padded and m.layers[0].blocks[1].shift_size == 28
    assert m(torch.randn(1, 3, 256, 256)).shape == (1, 1000)


def test_384_from_224_weights():
    sd224 = released_state_dict("flatten_swin_t")
    model = timm.create_model("flatten_swin_tiny_patch4_224", img_size=384, window_size=96).eval()
    model.load_state_dict(checkpoint_filter_fn(sd224, model), strict=True)
    params = dict(model.named_parameters())
    # L stages stay global (96x96 and 48x48 tokens); S stages use 12x12 windows.
    for name, tokens in (("layers.0.blocks.0.attn.positional_encoding", 96 * 96),
                         ("layers.1.blocks.1.attn.positional_encoding", 48 * 48)):
        assert params[name].shape == (1, tokens, sd224[name].shape[-1])
        side = int(tokens ** 0.5)
        torch.testing.assert_close(params[name], resample_token_grid(sd224[name], (side, side)))
    assert params["layers.2.blocks.0.attn.relative_position_bias_table"].shape == (23 * 23, 12)
    assert [(b.window_size, b.shift_size) for b in model.layers[2].blocks[:2]] == [(12, 0), (12, 6)]
    with torch.no_grad():
        out = model(fixed_input(1, 384))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    with pytest.raises(InputSizeError) as err:
        model(fixed_input(1, 224))
    msg = str(err.value)
    assert "\n" not in msg and "384x384" in msg and "224x224" in msg


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
    assert model.feature_info[0]["module"] == "layers.0.blocks" and model.output_fmt == "NHWC"
    with pytest.raises(TypeError):
        FLattenSwin(not_an_option=1)
    with pytest.raises(ModelConfigError, match="attn_type"):
        tiny_swin(attn_type="LLS")
    with pytest.raises(ModelConfigError, match="multiple of the total stride 32"):
        FLattenSwin(img_size=100)
    with torch.device("meta"):
        cfg = timm.create_model("flatten_swin_base_patch4_384").pretrained_cfg
        base = timm.create_model("flatten_swin_b")
    assert cfg["input_size"] == (3, 384, 384) and cfg["crop_pct"] == 1.0
    assert base.feature_info[-1]["num_chs"] == 1024 and [i["reduction"] for i in base.feature_info] == [4, 8, 16, 32]
