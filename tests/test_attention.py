"""Unit tests of the linear attentions (docs/model.md, section 1; paper section 4 and Table 3).

Every value is checked against an independent computation: the math written out
literally in float64 (x**p, explicit N x M matrices, explicit convolutions).
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers.attention import (EPS, LA_KINDS, LINEAR_ATTENTIONS, FocusedLinearAttention, LinearAttention,
                                     attention_impl, create_linear_attention, explicit_attention_matrix,
                                     focusing_function, linear_attention, make_la_kwargs)
from models.layers.family import ModelConfigError
from randomize import randomize


def literal_focused(attn, q, k, v, hw, prefix=0):
    """Focused attention exactly as written in the paper / docs/model.md section 1: x**p, sums, N x M matrix,
    v interpolated to the query grid when keys are fewer, dwc per head, in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    p = attn.focusing_factor
    if attn.positional_encoding is not None:
        k = k + attn.positional_encoding.double()
    t = F.softplus(attn.scale.double())
    q = (F.relu(q) + EPS) / t
    k = (F.relu(k) + EPS) / t
    if attn.focused:
        qn, kn = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
        q, k = q ** p, k ** p
        q = q / q.norm(dim=-1, keepdim=True) * qn
        k = k / k.norm(dim=-1, keepdim=True) * kn
    b, n, c = q.shape
    h = attn.num_heads
    qh, kh, vh = (x.reshape(b, x.shape[1], h, -1).transpose(1, 2) for x in (q, k, v))
    m = kh.shape[2]
    scores = qh @ kh.transpose(-2, -1)                                   # (B, h, N, M)
    denom = scores.sum(-1, keepdim=True) / m + EPS                       # q . mean(k) + eps
    out = ((scores / m) @ vh / denom).transpose(1, 2).reshape(b, n, c)
    if attn.dwc is not None:
        vg = v[:, prefix:]
        if vg.shape[1] != n - prefix:
            vg = F.interpolate(vg.transpose(1, 2), size=n - prefix, mode="linear", align_corners=False).transpose(1, 2)
        d = c // h
        grid = vg.reshape(b, n - prefix, h, d).permute(0, 2, 3, 1).reshape(b * h, d, *hw)
        conv = F.conv2d(grid, attn.dwc.weight.double(), attn.dwc.bias.double(), padding=attn.kernel_size // 2,
                        groups=d)
        out[:, prefix:] = out[:, prefix:] + conv.reshape(b, c, n - prefix).transpose(1, 2)
    return out


# --------------------------------------------------------------------------- focused function
def test_focusing_function_keeps_norm_and_sharpens_direction():
    x = torch.tensor([[0.9, 0.5, 0.3, 0.1]])
    for p in (1, 2, 3, 8):
        y = focusing_function(x, p)
        assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-6)
        torch.testing.assert_close(y, x ** p / (x ** p).norm() * x.norm())   # the definition, directly
    y = focusing_function(x, 3)
    assert (y[0, 0] / y.norm()) > (x[0, 0] / x.norm())
    assert (y[0, 1:] / y.norm() < x[0, 1:] / x.norm()).all()
    assert torch.allclose(focusing_function(x, 1), x, rtol=1e-6)      # p = 1: vanilla ReLU linear attention


def test_focusing_function_prop1_similar_and_dissimilar_pairs():
    """Paper Prop. 1: same nearest axis -> inner product grows; different axes -> it shrinks."""
    x = torch.tensor([0.8, 0.5, 0.2])
    y_same = torch.tensor([0.7, 0.6, 0.1])      # nearest axis 0, like x
    y_diff = torch.tensor([0.5, 0.8, 0.2])      # nearest axis 1
    fx = focusing_function(x[None], 32)[0]
    assert fx @ focusing_function(y_same[None], 32)[0] > x @ y_same
    assert fx @ focusing_function(y_diff[None], 32)[0] < 0.1 * (x @ y_diff)
    f3 = lambda t: focusing_function(t[None], 3)[0]
    assert f3(x) @ f3(y_same) - f3(x) @ f3(y_diff) > x @ y_same - x @ y_diff


def test_focused_attention_is_sharper_fig4():
    """Fig. 4: the normalised scores of one query over 4 keys become more peaked with f_3."""
    q = torch.tensor([[0.9, 0.2, 0.3]])
    keys = torch.tensor([[1.0, 0.1, 0.2], [0.2, 1.0, 0.1], [0.4, 0.3, 0.9], [0.1, 0.4, 0.3]])
    plain = (q @ keys.t()) / (q @ keys.t()).sum()
    fq, fk = focusing_function(q, 3), focusing_function(keys, 3)
    focused = (fq @ fk.t()) / (fq @ fk.t()).sum()
    assert focused.argmax() == plain.argmax() == 0
    assert focused.max() > plain.max() + 0.1
    entropy = lambda p: -(p * p.log()).sum()
    assert entropy(focused) < entropy(plain)


def test_focusing_function_no_overflow_large_p_and_values():
    x = torch.rand(4, 64, dtype=torch.float64) * 1e4 + 1e-6
    for p in (3, 32):
        y = focusing_function(x.float(), p).double()
        assert torch.isfinite(y).all()
        # float64 has the range for x**32 of values up to 1e4 (1e128): the literal definition as reference
        torch.testing.assert_close(y, x ** p / (x ** p).norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True),
                                   rtol=1e-5, atol=1e-30)


# --------------------------------------------------------------------------- linear order vs N x M
@pytest.mark.parametrize("impl", ["reference", "torch"])
@pytest.mark.parametrize("hw,heads,focused,p,prefix,m", [((7, 7), 2, True, 3, 0, None), ((4, 6), 3, True, 2, 0, None),
                                                         ((5, 3), 1, False, 3, 0, None), ((6, 6), 4, True, 8, 0, None),
                                                         ((4, 4), 2, True, 3, 1, None), ((4, 4), 2, True, 3, 0, 4)])
def test_attend_matches_literal_math(impl, hw, heads, focused, p, prefix, m):
    """Both implementations against the literal float64 math, incl. a class token and reduced keys (m < N)."""
    torch.manual_seed(0)
    dim, n = 12 * heads, prefix + hw[0] * hw[1]
    # m keys: PVT's key reduction (sr 2 on a 4x4 grid: 4 keys, the encoding sized for them)
    layout = {} if m is None else dict(qkv="q_kv", sr_ratio=2)
    attn = randomize(FocusedLinearAttention(dim, heads, hw, num_prefix_tokens=prefix, focusing_factor=p,
                                            focused=focused, **layout))
    assert attn.positional_encoding.shape[1] == prefix + (m or hw[0] * hw[1])
    q = torch.randn(2, n, dim)
    k, v = torch.randn(2, 2, m or n, dim).unbind(0)
    with attention_impl(impl):
        out = attn.attend(q, k, v, hw, num_prefix_tokens=prefix)
    torch.testing.assert_close(out.double(), literal_focused(attn, q, k, v, hw, prefix), rtol=1e-4, atol=1e-5)


def test_linear_order_equals_explicit_matrix():
    torch.manual_seed(1)
    q, k = torch.rand(2, 3, 20, 8, dtype=torch.float64), torch.rand(2, 3, 30, 8, dtype=torch.float64)
    v = torch.randn(2, 3, 30, 5, dtype=torch.float64)
    a = explicit_attention_matrix(q, k)
    scores = q @ k.transpose(-2, -1)
    torch.testing.assert_close(a, scores / (scores.sum(-1, keepdim=True) + 30 * EPS))   # the definition
    torch.testing.assert_close(linear_attention(q, k, v), a @ v)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 20, dtype=torch.float64), rtol=1e-4, atol=1e-4)


def test_ablation_switches():
    no_dwc = create_linear_attention("focused", 16, 2, (4, 4), focusing_factor=2, kernel_size=3, use_dwc=False)
    assert no_dwc.dwc is None and "dwc" not in dict(no_dwc.named_parameters()) and no_dwc.focusing_factor == 2
    with_dwc = create_linear_attention("focused", 16, 2, (4, 4), kernel_size=3)
    assert with_dwc.dwc.weight.shape == (8, 1, 3, 3)
    no_pe = create_linear_attention("focused", 16, 2, (4, 4), use_dwc=False, use_pe=False)
    assert set(dict(no_pe.named_parameters())) == {"scale"} and "pe=off" in repr(no_pe)
    torch.manual_seed(2)
    with torch.no_grad():
        no_pe.scale.normal_()
    q, k, v = torch.randn(3, 2, 16, 16).unbind(0)
    for impl in ("reference", "torch"):
        with attention_impl(impl):
            torch.testing.assert_close(no_pe.attend(q, k, v, (4, 4)).double(), literal_focused(no_pe, q, k, v, (4, 4)),
                                       rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelConfigError):
        make_la_kwargs(focusing_factor=0)
    with pytest.raises(ModelConfigError):
        make_la_kwargs(kernel_size=4)
    with pytest.raises(ModelConfigError, match="performer"):
        create_linear_attention("performer", 16, 2, (4, 4))


# --------------------------------------------------------------------------- the Table 3 attentions
def heads(x, h):
    return x.reshape(x.shape[0], x.shape[1], h, -1).transpose(1, 2)      # (B, h, N, d)


def merge(x):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def table3_reference(kind, attn, q, k, v, hw, prefix):
    """Each Table 3 attention written out with its explicit N x M weight matrix, in float64."""
    q, k, v = q.double(), k.double(), v.double()
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
    else:                                                                  # enhanced
        s = F.relu(qh) @ F.relu(kh).transpose(-2, -1)
        a = s / (s.sum(-1, keepdim=True) + kh.shape[2] * 1e-6)             # eps 1e-6 on the mean
    out = merge(a @ vh)
    if kind == "enhanced":
        b, n, c = q.shape
        grid = v[:, prefix:].transpose(1, 2).reshape(b, c, *hw)
        conv = F.conv2d(grid, attn.dwc.weight.double(), attn.dwc.bias.double(), padding=attn.dwc.padding, groups=c)
        out[:, prefix:] = out[:, prefix:] + conv.reshape(b, c, -1).transpose(1, 2)
    return out


@pytest.mark.parametrize("kind", [k for k in LA_KINDS if k != "focused"])
@pytest.mark.parametrize("hw,num_heads,dim,prefix", [((4, 5), 2, 16, 0), ((3, 3), 3, 24, 1), ((6, 6), 1, 8, 0)])
def test_table3_matches_direct_formula(kind, hw, num_heads, dim, prefix):
    torch.manual_seed(0)
    n = prefix + hw[0] * hw[1]
    attn = randomize(create_linear_attention(kind, dim, num_heads, hw, num_prefix_tokens=prefix, kernel_size=3))
    assert type(attn) is LINEAR_ATTENTIONS[kind] and attn.kind == kind
    q, k, v = torch.randn(3, 2, n, dim).unbind(0)
    out = attn.attend(q, k, v, hw, num_prefix_tokens=prefix)
    torch.testing.assert_close(out.double(), table3_reference(kind, attn, q, k, v, hw, prefix), rtol=1e-4, atol=1e-5)
    if kind != "enhanced":                  # no conv term: the weight matrix times v is the whole output
        w = attn.attention_weights(q, k).double()
        if kind == "hydra":                 # one head per channel
            expect = (w * v.double().transpose(1, 2)[:, :, None, :]).sum(-1).transpose(1, 2)
        else:
            expect = merge(w @ heads(v.double(), num_heads))
        torch.testing.assert_close(expect, table3_reference(kind, attn, q, k, v, hw, prefix), rtol=1e-4, atol=1e-5)


def test_every_kind_is_its_own_complete_class():
    """Each kind has exactly the parameters of its design, prints, and shares the projection layouts."""
    for kind in LA_KINDS:
        attn = create_linear_attention(kind, 48, 3, (7, 7))
        assert isinstance(attn, LinearAttention) and type(attn) is LINEAR_ATTENTIONS[kind]
        names = {n: tuple(p.shape) for n, p in attn.named_parameters()}
        expected = {"focused": {"scale": (1, 1, 48), "positional_encoding": (1, 49, 48), "dwc.weight": (16, 1, 5, 5),
                                "dwc.bias": (16,)},
                    "enhanced": {"dwc.weight": (48, 1, 5, 5), "dwc.bias": (48,)}}.get(kind, {})
        assert names == expected, kind
        assert f"kind={kind}" in repr(attn)
        layer = create_linear_attention(kind, 48, 3, (7, 7), qkv="q_kv", sr_ratio=7)
        assert {"q.weight", "kv.weight", "sr.weight", "norm.weight", "proj.weight"} <= set(dict(layer.named_parameters()))
        x = torch.randn(2, 49, 48)
        assert layer(x, (7, 7)).shape == (2, 49, 48)


# --------------------------------------------------------------------------- rank (paper Fig. 5)
def dwc_matrix(conv: nn.Conv2d, channel: int, hw) -> torch.Tensor:
    """N x N matrix of one channel of a depthwise conv (bias excluded) on an H x W grid."""
    n = hw[0] * hw[1]
    basis = torch.eye(n, dtype=conv.weight.dtype).reshape(n, 1, *hw)
    out = F.conv2d(basis, conv.weight[channel:channel + 1], padding=conv.padding)  # (N, 1, H, W)
    return out.reshape(n, n).t()                                                   # column j = response to e_j


def test_dwc_restores_rank_of_equivalent_attention():
    torch.manual_seed(3)
    hw, heads_, dim = (14, 14), 3, 48                                    # d = 16, N = 196 (DeiT-like)
    n, d = hw[0] * hw[1], dim // heads_
    attn = randomize(FocusedLinearAttention(dim, heads_, hw)).double()
    q, k = torch.randn(2, 1, n, dim, dtype=torch.float64).unbind(0)
    with torch.no_grad():
        a = attn.attention_weights(q, k)[0, 0]                           # (N, N) of head 0
        rank_linear = torch.linalg.matrix_rank(a).item()
        rank_eq = torch.linalg.matrix_rank(a + dwc_matrix(attn.dwc, 0, hw)).item()
    assert rank_linear <= d < rank_eq
    assert rank_eq > 4 * rank_linear


# --------------------------------------------------------------------------- mixed precision
class QKVAttention(nn.Module):
    """qkv + focused attention + proj, as the families use it."""

    def __init__(self, dim, num_heads, hw):
        super().__init__()
        self.hw = hw
        self.attn = create_linear_attention("focused", dim, num_heads, hw, qkv="qkv")

    def forward(self, x):
        return self.attn(x, self.hw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_large_activations_close_to_float64(dtype):
    """Activations in the hundreds (x**3 of an fp16 value above 40 overflows): finite and close to the
    float64 math; gradients finite."""
    torch.manual_seed(4)
    m = QKVAttention(64, 2, (8, 8))
    with torch.no_grad():
        m.attn.qkv.weight.mul_(20)
    x = (torch.randn(2, 64, 64) * 30).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = m(x)
    assert y.dtype == dtype
    with torch.no_grad():
        q, k, v = m.attn.qkv(x).unflatten(-1, (3, 64)).unbind(-2)
        ref = m.attn.proj(literal_focused(m.attn, q, k, v, (8, 8)).float()).double()
    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    # Bounds in units of the format's unit roundoff u (fp16 2**-11, bf16 2**-9), measured errors ~1-3 u:
    # fp16 keeps the attention matmuls in float32, so only the autocast Linear layers round (allow 4 u);
    # bf16 also rounds the features and the matmul operands before float32 accumulation (allow 8 u).
    assert err < (4 * 2 ** -11 if dtype == torch.float16 else 8 * 2 ** -9), err
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
