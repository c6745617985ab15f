"""FLatten-CSWin specifics: stripe layout and padding, LePE attention, another resolution from 224
weights, the softmax baseline, options."""
import pytest
import timm
import torch
import torch.nn.functional as F

import config as config_lib
import models  # noqa: F401  (registers the models)
from fill import fixed_input
from manifest import released_state_dict
from models import build_model
from models.cswin import CSWinBlock, FLattenCSWin, LePEAttention, branch_layout
from models.layers import InputSizeError, checkpoint_filter_fn
from models.layers.pos_embed import resample_token_grid
from models.released import by_config
from randomize import randomize

# Small model for the surface tests: grids 16-8-4-2, stripes 1-2-2.
TINY = dict(img_size=64, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 4], num_classes=10)


def test_other_resolution_loads_224_weights():
    src = released_state_dict("flatten_cswin_t")
    model = timm.create_model("flatten_cswin_tiny_224", img_size=288)
    assert model.grids == [(72, 72), (36, 36), (18, 18), (9, 9)]
    # Regression pin of this code's stripe rule: S stripes [1, 2, R4, R4] with R4 the last grid. The
    # official configs give the same values at their sizes (7 at 224, 12 at 384); 288 gives 9.
    assert [blk.stripe for blk in (model.stage1[0], model.stage2[0], model.stage3[0], model.stage4[0])] == \
        [None, None, 9, None]
    model.load_state_dict(checkpoint_filter_fn(src, model), strict=True)
    pe = model.stage1[0].attns[0].positional_encoding
    torch.testing.assert_close(pe.detach(), resample_token_grid(src["stage1.0.attns.0.positional_encoding"],
                                                                (72, 72)))
    with pytest.raises(InputSizeError, match="288"):
        model(fixed_input(1, 224))


def test_softmax_baseline():
    """CSWin-T (softmax everywhere, depths 1-2-21-1): Table 8's size, CSWin's stripes, trains."""
    with torch.device("meta"):
        model = timm.create_model("flatten_softmax_cswin_t")
    assert not any("positional_encoding" in n or "dwc" in n for n in dict(model.named_parameters()))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - float(by_config("cswin_t").params)) <= 1.0           # Table 8 prints "23" (M)
    # CSWin's stripes at 224: widths 1, 2, 7 in half-channel branch pairs, one global branch last.
    assert [getattr(model, f"stage{i}")[0].stripe for i in range(1, 5)] == [1, 2, 7, None]
    assert [len(getattr(model, f"stage{i}")[0].attns) for i in range(1, 5)] == [2, 2, 2, 1]
    model = timm.create_model("flatten_softmax_cswin_t", img_size=128, embed_dim=16, depths=[1, 1, 1, 1])
    out = model(torch.randn(1, 3, 128, 128))
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_lepe_attention_equals_explicit_softmax():
    """The SDPA path is CSWin's softmax(q k^T / sqrt(d)) v + get_v(v) inside each window."""
    torch.manual_seed(0)
    attn = LePEAttention(dim=8, num_heads=2).eval()
    q, k, v = torch.randn(3, 6, 8, 8).unbind(0)                               # 6 windows of 4x2 tokens
    out = attn((q, k, v), (4, 2))
    qh, kh, vh = (t.reshape(6, 8, 2, 4).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(qh @ kh.transpose(-2, -1) * 4 ** -0.5, dim=-1)
    x = (w @ vh).transpose(1, 2).reshape(6, 8, 8)
    lepe = attn.get_v(v.reshape(6, 4, 2, 8).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(6, 8, 8)
    torch.testing.assert_close(out, x + lepe)


def explicit_stripe_block(blk: CSWinBlock, x: torch.Tensor, hw) -> torch.Tensor:
    """A two-branch softmax block computed stripe by stripe with explicit zero padding (the reference)."""
    H, W = hw
    B, N, C = x.shape
    s, c = blk.stripe, C // 2
    q, k, v = blk.qkv(blk.norm1(x)).view(B, H, W, 3, C).unbind(3)            # (B, H, W, C) each
    outs = []
    for i, attn in enumerate(blk.attns):
        qi, ki, vi = (t[..., i * c:(i + 1) * c] for t in (q, k, v))
        Hp, Wp = (H, -(-W // s) * s) if i == 0 else (-(-H // s) * s, W)
        qi, ki, vi = (F.pad(t, (0, 0, 0, Wp - W, 0, Hp - H)) for t in (qi, ki, vi))
        out = torch.zeros(B, Hp, Wp, c)
        steps = range(0, Wp, s) if i == 0 else range(0, Hp, s)
        for o in steps:
            sl = (slice(None), slice(None), slice(o, o + s)) if i == 0 else (slice(None), slice(o, o + s))
            qs, ks, vs = (t[sl] for t in (qi, ki, vi))                        # (B, h_s, w_s, c)
            hs, ws = qs.shape[1:3]
            heads = attn.num_heads
            qh, kh, vh = (t.reshape(B, hs * ws, heads, -1).transpose(1, 2) for t in (qs, ks, vs))
            a = torch.softmax(qh @ kh.transpose(-2, -1) / (c // heads) ** 0.5, -1)
            y = (a @ vh).transpose(1, 2).reshape(B, hs, ws, c)
            y = y + attn.get_v(vs.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            out[sl] = y
        outs.append(out[:, :H, :W])
    x = x + blk.proj(torch.cat(outs, -1).reshape(B, N, C))
    return x + blk.mlp(blk.norm2(x))


def test_stripes_pad_at_any_size():
    """A block with stripes of 3 on a 7x8 grid: stripes padded bottom / right, cropped back."""
    torch.manual_seed(0)
    blk = randomize(CSWinBlock(16, 4, (7, 8), split=3, attn_type="S"), std=0.2).eval()
    assert blk.stripe == 3 and blk.padded
    x = torch.randn(2, 56, 16)
    with torch.no_grad():
        torch.testing.assert_close(blk(x, (7, 8)), explicit_stripe_block(blk, x, (7, 8)), rtol=1e-5, atol=1e-5)


def test_branch_layout():
    assert branch_layout((8, 8), None, False) is None
    assert branch_layout((8, 8), 8, False) is None                            # the stripe covers the grid
    assert branch_layout((8, 8), 2, False) == 2
    assert branch_layout((8, 8), 2, True) is None                             # last stage: one branch
    # L stages with stripes: two half-width focused branches with stripe-sized encodings.
    model = FLattenCSWin(**dict(TINY, la_split_size=[2, 2, 2, 2]))
    a0, a1 = model.stage1[0].attns
    assert a0.positional_encoding.shape == (1, 16 * 2, 8) and a1.grid == (2, 16)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    dyn = FLattenCSWin(**dict(TINY, la_split_size=[2, 2, 2, 2], dynamic_img_size=True))
    assert dyn(torch.randn(1, 3, 96, 64)).shape == (1, 10)


def test_model_surface():
    model = FLattenCSWin(**TINY)
    nwd = model.no_weight_decay()
    assert "stage1.0.attns.0.scale" in nwd and "stage2.0.attns.0.positional_encoding" in nwd
    assert not any("get_v" in n or "dwc" in n for n in nwd)
    assert model.num_features == 128 and model.num_prefix_tokens == 0
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    groups = model.group_matcher()
    assert groups["stem"] == r"^stage1_conv_embed"
    with pytest.raises(TypeError):
        FLattenCSWin(window_size=7)
    cfg = timm.create_model("flatten_cswin_base_384", pretrained=False, depths=[1, 1, 1, 1],
                            num_classes=0).pretrained_cfg
    assert cfg["input_size"] == (3, 384, 384) and cfg["crop_pct"] == 1.0


def test_la_options_reach_every_focused_branch():
    model = FLattenCSWin(**dict(TINY, la_kwargs=dict(focusing_factor=2, kernel_size=3, use_dwc=True)))
    focused = [m for m in model.modules() if hasattr(m, "focusing_factor")]
    assert focused and all(m.focusing_factor == 2 and m.dwc.kernel_size == (3, 3) for m in focused)
    model = FLattenCSWin(**dict(TINY, la_kwargs=dict(use_dwc=False)))
    assert not any(".dwc." in n for n, _ in model.named_parameters())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_build_from_config():
    cfg = config_lib.load_config(opts=["MODEL.NAME", "flatten_cswin_tiny_224", "DATA.IMG_SIZE", 64,
                                       "MODEL.DEPTHS", [1, 1, 1, 1], "MODEL.LA.CSWIN_LA_SPLIT_SIZE", [16, 8, 4, 2]])
    model = build_model(cfg)
    assert isinstance(model, FLattenCSWin) and model.img_size == (64, 64)
    assert model.stage1[0].attns[0].positional_encoding.shape == (1, 256, 64)
