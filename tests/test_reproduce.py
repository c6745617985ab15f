"""Paper Tables 3-7: the Table 3 attentions and the ablation configs.

The Table 3 attentions are checked against direct N x N formulas; every
config of ``configs/ablations/`` is built and trained for one step (DeiT-T at
full width and resolution with 2 blocks; Swin-T at 224 with the config's
attention layout but a narrow, shallow body, so windows and global stages are
those of the config). The tools that print and plot them are tested beside
their own modules (test_model_table.py, test_plot_fig7.py, ...).
"""
import glob
import math
import os

import pytest
import torch
import torch.nn.functional as F

import config as config_lib
import models
from models.layers.focused_linear_attention import FocusedLinearAttention, make_la_kwargs
from models.layers.linear_attentions import OTHER_KINDS, linear_attention_weights
from randomize import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATION_DIR = os.path.join(ROOT, "configs", "ablations")
ABLATION_CONFIGS = sorted(os.path.splitext(os.path.basename(p))[0]
                          for p in glob.glob(os.path.join(ABLATION_DIR, "*.yaml")))
# Swin-T rows run at 224 with the config's windows / attention types but a narrow, shallow body;
# DeiT-T rows at full width and resolution (197 tokens, 3 heads of 64) with 2 of the 12 blocks.
SHRINK = {"flatten_swin": ["MODEL.EMBED_DIM", "32", "MODEL.NUM_HEADS", "[1,2,4,8]", "MODEL.DEPTHS", "[2,2,2,2]"],
          "flatten_deit": ["MODEL.DEPTHS", "[2]"]}


# --------------------------------------------------------------------------- direct N x N references
def heads(x, h):
    return x.reshape(x.shape[0], x.shape[1], h, -1).transpose(1, 2)      # (B, h, N, d)


def merge(x):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def reference(kind, attn, q, k, v, hw, prefix):
    """Each Table 3 attention written out with its explicit N x M weight matrix."""
    h = attn.num_heads
    if kind == "hydra":                     # one head per channel, cosine similarity, no normalisation
        qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
        a = qn[:, :, None, :] * kn[:, None, :, :]                          # (B, N, M, C): A_c[i, j]
        return (a * v[:, None, :, :]).sum(2)
    qh, kh, vh = heads(q, h), heads(k, h), heads(v, h)
    if kind == "efficient":
        a = torch.softmax(qh, -1) @ torch.softmax(kh, -2).transpose(-2, -1)
    elif kind == "angular":
        cos = F.normalize(qh, dim=-1) @ F.normalize(kh, dim=-1).transpose(-2, -1)
        sim = 0.5 + cos / math.pi                                          # 1 - angle / pi, first order
        a = sim / sim.sum(-1, keepdim=True)
    elif kind == "enhanced":
        s = F.relu(qh) @ F.relu(kh).transpose(-2, -1)
        a = s / (s.sum(-1, keepdim=True) + kh.shape[2] * 1e-6)             # eps 1e-6 on the mean
    out = merge(a @ vh)
    if kind == "enhanced":
        b, n, c = q.shape
        grid = v[:, prefix:].transpose(1, 2).reshape(b, c, *hw)
        conv = F.conv2d(grid, attn.dwc.weight, attn.dwc.bias, padding=attn.dwc.padding, groups=c)
        out[:, prefix:] = out[:, prefix:] + conv.reshape(b, c, -1).transpose(1, 2)
    return out


@pytest.mark.parametrize("kind", OTHER_KINDS)
@pytest.mark.parametrize("hw,num_heads,dim,prefix", [((4, 5), 2, 16, 0), ((3, 3), 3, 24, 1), ((6, 6), 1, 8, 0)])
def test_kind_matches_direct_formula(kind, hw, num_heads, dim, prefix):
    torch.manual_seed(0)
    n = prefix + hw[0] * hw[1]
    attn = randomize(FocusedLinearAttention(dim, num_heads, n, **make_la_kwargs(kind=kind, kernel_size=3)))
    q, k, v = torch.randn(3, 2, n, dim).unbind(0)
    out = attn.attend(q, k, v, hw, num_prefix_tokens=prefix)
    assert out.shape == (2, n, dim)
    torch.testing.assert_close(out, reference(kind, attn, q, k, v, hw, prefix), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_kind_weights_and_key_reduction(kind):
    """linear_attention_weights is the N x M matrix of attend; fewer keys than queries work."""
    torch.manual_seed(1)
    dim, nh = 12, 3
    attn = FocusedLinearAttention(dim, nh, 5, kind=kind)
    q, k, v = torch.randn(1, 20, dim), torch.randn(1, 5, dim), torch.randn(1, 5, dim)
    out = attn.attend(q, k, v, (4, 5))                                     # N = 20 queries, M = 5 keys
    assert out.shape == (1, 20, dim) and torch.isfinite(out).all()
    if kind != "enhanced":                                                 # no conv term: weights @ v is all
        w = linear_attention_weights(attn, q, k)                           # (B, h', N, M)
        if kind == "hydra":                                                # h' = C: channel c uses v[:, :, c]
            expect = (w * v.transpose(1, 2)[:, :, None, :]).sum(-1).transpose(1, 2)
        else:
            expect = merge(w @ heads(v, nh))
        torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-5)


def test_kinds_have_the_table3_parameters():
    """No scale / positional encoding; only 'enhanced' has a conv, over all C channels."""
    for kind in OTHER_KINDS:
        attn = FocusedLinearAttention(48, 3, 49, kind=kind)
        names = {n: p.shape for n, p in attn.named_parameters()}
        if kind == "enhanced":
            assert names == {"dwc.weight": (48, 1, 5, 5), "dwc.bias": (48,)}
        else:
            assert names == {}
        assert attn.kind == kind
    with pytest.raises(ValueError):
        make_la_kwargs(kind="performer")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_kinds_autocast_finite(kind, dtype):
    torch.manual_seed(2)
    attn = FocusedLinearAttention(32, 2, 64, kind=kind)
    q, k, v = [(torch.randn(2, 64, 32) * 300).requires_grad_() for _ in range(3)]   # activations in the hundreds
    with torch.autocast("cpu", dtype=dtype):
        y = attn.attend(q.to(dtype), k.to(dtype), v.to(dtype), (8, 8))
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().square().mean().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


# --------------------------------------------------------------------------- ablation configs
def _kinds(model):
    return [m for m in model.modules() if isinstance(m, FocusedLinearAttention)]


def _expected_layout(cfg, model):
    """The config's own ablation setting is what the built model uses."""
    la = cfg.MODEL.LA
    attns = _kinds(model)
    assert attns, "no linear attention in the model"
    for m in attns:
        assert m.kind == la.KIND
        if la.KIND == "focused":
            assert m.focused == la.FOCUSED and m.focusing_factor == la.FOCUSING_FACTOR
            assert (m.dwc is not None) == la.USE_DWC
            assert (m.positional_encoding is not None) == la.USE_PE
    if cfg.MODEL.TYPE == "flatten_swin":
        for i, stage in enumerate(model.layers):
            for blk in stage.blocks:
                assert isinstance(blk.attn, FocusedLinearAttention) == (la.ATTN_TYPE[i] == "L")
                if la.ATTN_TYPE[i] == "L":
                    res = 56 // 2 ** i
                    assert blk.window_size == min(cfg.MODEL.WINDOW_SIZE, res)


def test_every_ablation_config_is_a_table_row():
    from scripts.core.paper import ABLATIONS
    rows = {r.config for r in ABLATIONS}
    assert {f"ablations/{n}" for n in ABLATION_CONFIGS} <= rows
    for r in ABLATIONS:
        assert os.path.isfile(os.path.join(ROOT, "configs", r.config + ".yaml")), r.config
    assert len(ABLATION_CONFIGS) == 24


@pytest.mark.parametrize("name", ABLATION_CONFIGS)
def test_ablation_config_builds_and_trains(name):
    path = os.path.join(ABLATION_DIR, name + ".yaml")
    cfg = config_lib.load_config(path)
    cfg = config_lib.load_config(path, SHRINK.get(cfg.MODEL.TYPE, []))
    torch.manual_seed(0)
    model = models.build_model(cfg)
    _expected_layout(cfg, model)
    model.train()
    x = torch.randn(1, 3, cfg.DATA.IMG_SIZE, cfg.DATA.IMG_SIZE)
    y = model(x)
    assert y.shape == (1, cfg.MODEL.NUM_CLASSES) and torch.isfinite(y).all()
    y.logsumexp(-1).sum().backward()
    for attn in _kinds(model)[:2]:
        grads = [p.grad for p in attn.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_table3_deit_param_counts():
    """Table 3(a): 5.7M for hydra / efficient / angular, 5.8M for enhanced (focused: 6.1M)."""
    from scripts.core.paper import matches
    from utils.flops import count_params
    for kind, printed in (("hydra", "5.7"), ("efficient", "5.7"), ("angular", "5.7"), ("enhanced", "5.8")):
        cfg = config_lib.load_config(os.path.join(ABLATION_DIR, f"t3_deit_t_{kind}.yaml"))
        params = count_params(models.build_model(cfg))
        assert matches(params, printed), (kind, params)
