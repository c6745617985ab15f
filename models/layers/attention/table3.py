"""The linear attentions FLatten is compared with in paper Table 3, one class each.

Each replaces the math of focused attention in an ``L`` stage (``MODEL.LA.KIND``);
the projections and the token layout stay those of the family
(:class:`~models.layers.attention.base.LinearAttention`), so a Table 3 row
differs from FLatten only inside the attention. q, k, v arrive as (B, N, C)
tokens after the projections; :meth:`attend` returns (B, N, C) before ``proj``.

* :class:`HydraAttention` [1]: heads = channels, cosine similarity,
  ``out_i = q^_i * sum_j (k^_j * v_j)`` with q^, k^ L2-normalised over all C
  channels and ``*`` element-wise. No parameters of its own.
* :class:`EfficientAttention` [38]: ``out = softmax_d(q) (softmax_n(k)^T v)`` per head
  (q: softmax over the head's features; k: over tokens, per channel). No parameters.
* :class:`AngularAttention` (linear angular attention, Castling-ViT [52]):
  ``sim(i, j) = 1/2 + (q^_i . k^_j) / pi`` (the first-order form of
  ``1 - angle(q_i, k_j) / pi``) with q^, k^ L2-normalised per head, and
  ``out_i = sum_j sim(i, j) v_j / sum_j sim(i, j)``. No parameters.
* :class:`EnhancedLinearAttention` (EfficientViT [2]): ReLU linear attention
  ``relu(q) (relu(k)^T v) / (relu(q) . sum_j relu(k_j))`` per head, plus a
  depthwise k x k conv (``dwc``) over all C channels of v on the token grid
  (zero on prefix tokens such as DeiT's class token).

None of them has FLatten's ``scale`` or ``positional_encoding``. Parameter
counts in the DeiT-T setting: hydra / efficient / angular 5.72M ("5.7M" in
Table 3), enhanced 5.78M ("5.8M": the C-channel 5 x 5 depthwise conv adds
12 x 4992 parameters), focused 6.19M.

Every sum is computed in the linear order (no N x M matrix) and in float32
whatever the autocast dtype, as a mean over tokens where a sum could grow with
N, so fp16/bf16 inputs stay finite. :meth:`attention_weights` gives the
equivalent N x M matrices for tests and analysis. Each computation is one
opaque call under torch.fx (it branches on the input dtype).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from ..grid import Grid
from .base import EPS, LinearAttention, at_least_fp32, check_kernel_size
from .focused import depthwise_conv_term

__all__ = ["HydraAttention", "EfficientAttention", "AngularAttention", "EnhancedLinearAttention",
           "hydra_attention", "efficient_attention", "angular_attention", "relu_linear_attention"]


# -- the four designs on float32 tensors ---------------------------------------------------------
def hydra_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hydra attention. q: (B, N, C), k, v: (B, M, C) -> (B, N, C).

    One head per channel with cosine similarity: ``out_i = q^_i * sum_j k^_j * v_j``.
    """
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    kv = (k * v).sum(dim=-2, keepdim=True)                              # (B, 1, C)
    return q * kv


def efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Efficient attention. q: (B, h, N, d), k, v: (B, h, M, d) -> (B, h, N, d)."""
    q = q.softmax(dim=-1)                                                # over a head's features
    k = k.softmax(dim=-2)                                                # over tokens, per channel
    return q @ (k.transpose(-2, -1) @ v)                                 # (B, h, N, d)


def angular_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Linear angular attention, normalised. q: (B, h, N, d), k, v: (B, h, M, d) -> (B, h, N, d).

    Numerator and denominator are both divided by M (means over keys); the
    denominator is at least 1/2 - 1/pi, so no eps is needed.
    """
    m = k.shape[-2]
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    kv = k.transpose(-2, -1) @ v / m                                     # (B, h, d, d)
    num = 0.5 * v.mean(dim=-2, keepdim=True) + (q @ kv) / math.pi        # (B, h, N, d)
    den = 0.5 + (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1)) / math.pi   # (B, h, N, 1)
    return num / den


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ReLU linear attention (EfficientViT). q: (B, h, N, d), k, v: (B, h, M, d) -> (B, h, N, d)."""
    m = k.shape[-2]
    q, k = F.relu(q), F.relu(k)
    kv = k.transpose(-2, -1) @ v / m                                     # (B, h, d, d)
    z = 1.0 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + EPS)   # (B, h, N, 1)
    return (q @ kv) * z


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.reshape(b, n, num_heads, -1).transpose(1, 2)               # (B, h, N, d)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)                       # (B, N, C)


_PER_HEAD = {"efficient": efficient_attention, "angular": angular_attention, "enhanced": relu_linear_attention}


@torch.fx.wrap
@register_notrace_function
def table3_attention(kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                     dwc_weight: Optional[torch.Tensor], dwc_bias: Optional[torch.Tensor], hw: Grid,
                     num_prefix_tokens: int = 0) -> torch.Tensor:
    """The attention of Table 3 design ``kind`` in float32, plus the C-channel conv term when given.

    Args:
        kind: 'hydra', 'efficient', 'angular' or 'enhanced'.
        q: (B, N, C) queries; the last N - num_prefix_tokens lie on the grid ``hw``.
        k, v: (B, M, C).
        num_heads: heads (hydra: every channel is a head, the value is not used).
        dwc_weight, dwc_bias: (C, 1, k, k) depthwise conv on v ('enhanced'), or None.
        hw: query grid.
        num_prefix_tokens: leading tokens without a grid position (no conv term).
    Returns:
        (B, N, C) in v's dtype.
    """
    out_dtype = v.dtype
    with torch.autocast(q.device.type, enabled=False):
        qf, kf, vf = (at_least_fp32(t) for t in (q, k, v))
        if kind == "hydra":
            x = hydra_attention(qf, kf, vf)                              # (B, N, C)
        else:
            qh, kh, vh = (_split_heads(t, num_heads) for t in (qf, kf, vf))   # (B, h, *, d)
            x = _merge_heads(_PER_HEAD[kind](qh, kh, vh))               # (B, N, C)
    if dwc_weight is not None:
        x = x + depthwise_conv_term(v, dwc_weight, dwc_bias, hw, q.shape[1], num_prefix_tokens).to(x.dtype)
    return x.to(out_dtype)


class _Table3Attention(LinearAttention):
    """Shared by the four Table 3 designs: no positional encoding, no temperature, no focusing."""

    def __init__(self, dim: int, num_heads: int, grid, num_prefix_tokens: int = 0, **layout):
        super().__init__(dim, num_heads, grid, num_prefix_tokens, **layout)

    def _conv(self):
        return None, None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Grid,
               num_prefix_tokens: int = 0) -> torch.Tensor:
        w, b = self._conv()
        return table3_attention(self.kind, q, k, v, self.num_heads, w, b, hw, num_prefix_tokens)

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor, hw: Optional[Grid] = None) -> torch.Tensor:
        """(B, h', N, M) weights applied to v (conv term excluded); h' = C for hydra."""
        q, k = at_least_fp32(q), at_least_fp32(k)
        qh, kh = self.split_heads(q), self.split_heads(k)
        return self._weights(qh, kh, q, k)

    def _weights(self, qh, kh, q, k) -> torch.Tensor:
        raise NotImplementedError


class HydraAttention(_Table3Attention):
    """Hydra attention (see the module doc)."""

    kind = "hydra"

    def _weights(self, qh, kh, q, k):
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return qn.transpose(1, 2).unsqueeze(-1) * kn.transpose(1, 2).unsqueeze(-2)      # (B, C, N, M)


class EfficientAttention(_Table3Attention):
    """Efficient attention (see the module doc)."""

    kind = "efficient"

    def _weights(self, qh, kh, q, k):
        return qh.softmax(-1) @ kh.softmax(-2).transpose(-2, -1)


class AngularAttention(_Table3Attention):
    """Linear angular attention (see the module doc)."""

    kind = "angular"

    def _weights(self, qh, kh, q, k):
        sim = 0.5 + F.normalize(qh, dim=-1) @ F.normalize(kh, dim=-1).transpose(-2, -1) / math.pi
        return sim / sim.sum(-1, keepdim=True)


class EnhancedLinearAttention(_Table3Attention):
    """Enhanced linear attention: ReLU linear attention + a C-channel depthwise conv on v (``dwc``).

    Args:
        kernel_size: kernel of ``dwc`` (odd).
        other arguments: see :class:`~models.layers.attention.base.LinearAttention`.
    """

    kind = "enhanced"

    def __init__(self, dim: int, num_heads: int, grid, num_prefix_tokens: int = 0, kernel_size: int = 5,
                 **layout):
        super().__init__(dim, num_heads, grid, num_prefix_tokens, **layout)
        self.kernel_size = check_kernel_size(kernel_size)
        self.dwc = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def _conv(self):
        return self.dwc.weight, self.dwc.bias

    def _weights(self, qh, kh, q, k):
        qr, kr = F.relu(qh), F.relu(kh)
        m = kr.shape[-2]
        scores = qr @ kr.transpose(-2, -1) / m
        return scores / (qr @ kr.mean(-2, keepdim=True).transpose(-2, -1) + EPS)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dwc=k{self.kernel_size}"
