"""Unit tests of the one focused linear attention (SPEC section 1, paper section 4)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers.focused_linear_attention import (EPS, FocusedLinearAttention, attention_impl,
                                                    explicit_attention_matrix, focusing_function, linear_attention,
                                                    make_la_kwargs)
from randomize import randomize


class QKVAttention(FocusedLinearAttention):
    """A minimal family-style wrapper: qkv + proj around the shared math."""

    def __init__(self, dim, num_heads, hw, **la):
        super().__init__(dim, num_heads, hw[0] * hw[1], **la)
        self.hw = hw
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(self.attend(q, k, v, self.hw))


def reference_forward(attn, q, k, v, hw):
    """SPEC section 1 written out literally (x**p, sums, N x N) for comparison."""
    p = attn.focusing_factor
    k = k + attn.positional_encoding
    t = F.softplus(attn.scale)
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
    out = (scores / m) @ vh / denom
    out = out.transpose(1, 2).reshape(b, n, c)
    if attn.dwc is not None:
        grid = vh.transpose(-2, -1).reshape(b * h, -1, *hw)
        out = out + attn.dwc(grid).reshape(b, c, n).transpose(1, 2)
    return out


# --------------------------------------------------------------------------- focused function
def test_focusing_function_keeps_norm_and_sharpens_direction():
    x = torch.tensor([[0.9, 0.5, 0.3, 0.1]])
    for p in (1, 2, 3, 8):
        y = focusing_function(x, p)
        assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-6)
    y = focusing_function(x, 3)
    # direction pulled towards the nearest axis (the first): larger share of the norm there
    assert (y[0, 0] / y.norm()) > (x[0, 0] / x.norm())
    assert (y[0, 1:] / y.norm() < x[0, 1:] / x.norm()).all()
    # p = 1 is the identity (vanilla ReLU linear attention with the norm kept)
    assert torch.allclose(focusing_function(x, 1), x, rtol=1e-6)


def test_focusing_function_prop1_similar_and_dissimilar_pairs():
    """Paper Prop. 1: same nearest axis -> inner product grows; different axes -> it shrinks."""
    x = torch.tensor([0.8, 0.5, 0.2])
    y_same = torch.tensor([0.7, 0.6, 0.1])      # nearest axis 0, like x
    y_diff = torch.tensor([0.5, 0.8, 0.2])      # nearest axis 1
    # "there exists p": a large p shows both directions of the proposition
    fx = focusing_function(x[None], 32)[0]
    assert fx @ focusing_function(y_same[None], 32)[0] > x @ y_same
    assert fx @ focusing_function(y_diff[None], 32)[0] < 0.1 * (x @ y_diff)
    # the gap between similar and dissimilar pairs widens already at p = 3
    f3 = lambda t: focusing_function(t[None], 3)[0]
    assert f3(x) @ f3(y_same) - f3(x) @ f3(y_diff) > x @ y_same - x @ y_diff


def test_focused_attention_is_sharper_fig4():
    """Fig. 4: the normalised scores of one query over 4 keys become more peaked with f_3."""
    q = torch.tensor([[0.9, 0.2, 0.3]])
    keys = torch.tensor([[1.0, 0.1, 0.2], [0.2, 1.0, 0.1], [0.4, 0.3, 0.9], [0.1, 0.4, 0.3]])
    plain = (q @ keys.t()).softmax(-1) * 0 + (q @ keys.t()) / (q @ keys.t()).sum()
    fq, fk = focusing_function(q, 3), focusing_function(keys, 3)
    focused = (fq @ fk.t()) / (fq @ fk.t()).sum()
    assert focused.argmax() == plain.argmax() == 0
    assert focused.max() > plain.max() + 0.1
    entropy = lambda p: -(p * p.log()).sum()
    assert entropy(focused) < entropy(plain)


def test_focusing_function_no_overflow_large_p_and_values():
    x = torch.rand(4, 64) * 1e4 + 1e-6
    for p in (3, 32):
        y = focusing_function(x, p)
        assert torch.isfinite(y).all()
        assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)


# --------------------------------------------------------------------------- linear order vs N x N
@pytest.mark.parametrize("hw,heads,focused,p", [((7, 7), 2, True, 3), ((4, 6), 3, True, 2),
                                                 ((5, 3), 1, False, 3), ((6, 6), 4, True, 8)])
def test_attend_matches_literal_spec(hw, heads, focused, p):
    torch.manual_seed(0)
    dim, n = 12 * heads, hw[0] * hw[1]
    attn = randomize(FocusedLinearAttention(dim, heads, n, focusing_factor=p, focused=focused))
    q, k, v = torch.randn(3, 2, n, dim).unbind(0)
    out = attn.attend(q, k, v, hw)
    ref = reference_forward(attn, q, k, v, hw)
    assert out.shape == (2, n, dim)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_linear_order_equals_explicit_matrix():
    torch.manual_seed(1)
    q, k = torch.rand(2, 3, 20, 8), torch.rand(2, 3, 30, 8)
    v = torch.randn(2, 3, 30, 5)
    a = explicit_attention_matrix(q, k)
    torch.testing.assert_close(linear_attention(q, k, v), a @ v, rtol=1e-5, atol=1e-6)
    # rows of the equivalent matrix sum to ~1 (normalised attention)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 20), rtol=1e-4, atol=1e-4)


def test_no_dwc_and_ablation_switches():
    attn = FocusedLinearAttention(16, 2, 16, **make_la_kwargs(focusing_factor=2, kernel_size=3, use_dwc=False))
    assert attn.dwc is None and "dwc" not in dict(attn.named_parameters())
    with_dwc = FocusedLinearAttention(16, 2, 16, kernel_size=3)
    assert with_dwc.dwc.weight.shape == (8, 1, 3, 3)
    no_pe = FocusedLinearAttention(16, 2, 16, **make_la_kwargs(use_dwc=False, use_pe=False))
    assert set(dict(no_pe.named_parameters())) == {"scale"} and "pe=off" in no_pe.extra_repr()
    # without the positional encoding the keys enter the kernel as they are: equal to a zero encoding
    zero_pe = FocusedLinearAttention(16, 2, 16, use_dwc=False)
    with torch.no_grad():
        no_pe.scale.normal_()
        zero_pe.scale.copy_(no_pe.scale)
    q, k, v = torch.randn(3, 2, 16, 16).unbind(0)
    for impl in ("reference", "torch"):
        with attention_impl(impl):
            torch.testing.assert_close(no_pe.attend(q, k, v, (4, 4)), zero_pe.attend(q, k, v, (4, 4)))
    with pytest.raises(ValueError):
        make_la_kwargs(focusing_factor=0)
    with pytest.raises(ValueError):
        make_la_kwargs(kernel_size=4)


def test_prefix_tokens_get_no_dwc_term():
    torch.manual_seed(2)
    attn = randomize(FocusedLinearAttention(8, 2, 17))
    q, k, v = torch.randn(3, 1, 17, 8).unbind(0)
    out = attn.attend(q, k, v, (4, 4), num_prefix_tokens=1)
    attn_nodwc = FocusedLinearAttention(8, 2, 17, use_dwc=False)
    attn_nodwc.load_state_dict({k_: v_ for k_, v_ in attn.state_dict().items() if not k_.startswith("dwc")})
    base = attn_nodwc.attend(q, k, v, (4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(out[:, 0], base[:, 0])
    assert not torch.allclose(out[:, 1:], base[:, 1:])


def test_key_reduction_resizes_v_for_dwc():
    """n_kv != N (PVT sr > 1): keys are fewer than queries; v is interpolated for the dwc term."""
    attn = randomize(FocusedLinearAttention(8, 2, 4))
    q = torch.randn(1, 16, 8)
    k, v = torch.randn(2, 1, 4, 8).unbind(0)
    out = attn.attend(q, k, v, (4, 4))
    assert out.shape == (1, 16, 8) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- rank (paper Fig. 5)
def dwc_matrix(conv: nn.Conv2d, channel: int, hw) -> torch.Tensor:
    """N x N matrix of one channel of a depthwise conv (bias excluded) on an H x W grid."""
    n = hw[0] * hw[1]
    basis = torch.eye(n, dtype=conv.weight.dtype).reshape(n, 1, *hw)
    w = conv.weight[channel:channel + 1]
    out = F.conv2d(basis, w, padding=conv.padding)                       # (N, 1, H, W)
    return out.reshape(n, n).t()                                         # column j = response to e_j


def test_dwc_restores_rank_of_equivalent_attention():
    torch.manual_seed(3)
    hw, heads, dim = (14, 14), 3, 48                                     # d = 16, N = 196 (DeiT-like)
    n, d = hw[0] * hw[1], dim // heads
    attn = randomize(FocusedLinearAttention(dim, heads, n)).double()
    q, k = torch.randn(2, 1, n, dim, dtype=torch.float64).unbind(0)
    with torch.no_grad():
        a = attn.attention_weights(q, k)[0, 0]                           # (N, N) of head 0
        rank_linear = torch.linalg.matrix_rank(a).item()
        m_eq = a + dwc_matrix(attn.dwc, 0, hw)
        rank_eq = torch.linalg.matrix_rank(m_eq).item()
    assert rank_linear <= d
    assert rank_eq > d
    assert rank_eq > 4 * rank_linear


# --------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_large_activations_finite(dtype):
    torch.manual_seed(4)
    hw = (8, 8)
    m = QKVAttention(64, 2, hw)
    with torch.no_grad():
        m.qkv.weight.mul_(20)                                            # activations in the hundreds
    x = (torch.randn(2, 64, 64) * 30).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = m(x)
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_autocast_close_to_fp32():
    torch.manual_seed(5)
    m = randomize(QKVAttention(32, 2, (6, 6)), seed=5)
    x = torch.randn(2, 36, 32)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    err = (y.float() - ref).abs().max() / ref.abs().max()
    assert err < 5e-2
