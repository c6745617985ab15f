"""The linear attentions FLatten is compared with in paper Table 3.

Each design replaces the math of :meth:`FocusedLinearAttention.attend` in an
``L`` stage (``MODEL.LA.KIND``); the family's projections (``qkv`` / ``q`` +
``kv``, ``proj``) and the token layout stay as they are, so a Table 3 row
differs from FLatten only inside the attention. q, k, v arrive as (B, N, C)
tokens after the projections; every function returns (B, N, C) before ``proj``.

* ``hydra`` -- Hydra attention [1]: heads = channels, cosine similarity,
  ``out_i = q^_i * sum_j (k^_j * v_j)`` with q^, k^ L2-normalised over all C
  channels and ``*`` element-wise. No extra parameters.
* ``efficient`` -- Efficient attention [38]: ``out = softmax_d(q) (softmax_n(k)^T v)``
  per head (q: softmax over the head's features; k: over tokens, per channel).
  No extra parameters.
* ``angular`` -- linear angular attention (Castling-ViT [52]):
  ``sim(i, j) = 1/2 + (q^_i . k^_j) / pi`` (the first-order form of
  ``1 - angle(q_i, k_j) / pi``) with q^, k^ L2-normalised per head, and
  ``out_i = sum_j sim(i, j) v_j / sum_j sim(i, j)``. No extra parameters.
* ``enhanced`` -- enhanced linear attention (EfficientViT [2]): ReLU linear
  attention ``relu(q) (relu(k)^T v) / (relu(q) . sum_j relu(k_j))`` per head,
  plus a depthwise k x k conv (``dwc``) over all C channels of v on the token
  grid (zero on prefix tokens such as DeiT's class token).

None of them has FLatten's ``scale`` or ``positional_encoding``. Parameter
counts in the DeiT-T setting: hydra / efficient / angular 5.72M ("5.7M" in
Table 3), enhanced 5.78M ("5.8M": the C-channel 5 x 5 depthwise conv adds
12 x 4992 parameters), focused 6.19M.

Every sum is computed in the linear order (no N x M matrix) and in float32
whatever the autocast dtype, as a mean over tokens where a sum could grow with
N, so fp16/bf16 inputs stay finite. :func:`linear_attention_weights` gives the
equivalent N x M matrices for tests and analysis.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .focused_linear_attention import EPS, _at_least_fp32, depthwise_conv_term

OTHER_KINDS = ("hydra", "efficient", "angular", "enhanced")


def init_linear_attention(module: nn.Module, kind: str, dim: int, num_heads: int, num_kv_tokens: int,
                          kernel_size: int = 5) -> None:
    """Set up ``module`` (a :class:`FocusedLinearAttention`) for a Table 3 attention ``kind``.

    Sets the attributes the rest of the class reads (``dim``, ``num_heads``,
    ``head_dim``, ``num_kv_tokens``, ``focusing_factor``, ``kernel_size``,
    ``focused``, ``dwc``) and creates the parameters of ``kind`` (only
    ``enhanced`` has any: ``dwc``).

    Args:
        module: the attention module being constructed.
        kind: one of :data:`OTHER_KINDS`.
        dim: channels C.
        num_heads: heads h (hydra ignores them: every channel is a head).
        num_kv_tokens: number of key tokens.
        kernel_size: kernel of the ``enhanced`` depthwise conv.
    """
    if kind not in OTHER_KINDS:
        raise ValueError(f"linear attention kind must be one of {', '.join(OTHER_KINDS)}, got {kind!r}")
    if dim % num_heads:
        raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
    module.kind = kind
    module.dim = dim
    module.num_heads = num_heads
    module.head_dim = dim // num_heads
    module.num_kv_tokens = num_kv_tokens
    module.focusing_factor = 1.0        # no focusing function in these designs
    module.focused = False
    module.kernel_size = kernel_size
    if kind == "enhanced":
        module.dwc = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
    else:
        module.dwc = None


# ------------------------------------------------------------------------------------------------
# the four designs on per-head tensors (float32)
# ------------------------------------------------------------------------------------------------
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


def attend_linear_attention(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            hw: Tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
    """The attention of ``module.kind`` before the output projection.

    Args:
        module: a :class:`FocusedLinearAttention` set up by :func:`init_linear_attention`.
        q: (B, N, C) queries; the last N - num_prefix_tokens lie on the grid ``hw``.
        k: (B, M, C) keys.
        v: (B, M, C) values.
        hw: query token grid (H, W) (used by the ``enhanced`` depthwise conv).
        num_prefix_tokens: leading tokens without a grid position (no conv term).
    Returns:
        (B, N, C) in v's dtype.
    """
    out_dtype = v.dtype
    kind = module.kind
    with torch.autocast(q.device.type, enabled=False):
        qf, kf, vf = (_at_least_fp32(t) for t in (q, k, v))
        if kind == "hydra":
            x = hydra_attention(qf, kf, vf)                              # (B, N, C)
        else:
            h = module.num_heads
            qh, kh, vh = (_split_heads(t, h) for t in (qf, kf, vf))      # (B, h, *, d)
            fn = {"efficient": efficient_attention, "angular": angular_attention,
                  "enhanced": relu_linear_attention}[kind]
            x = _merge_heads(fn(qh, kh, vh))                             # (B, N, C)
    if module.dwc is not None:
        conv = module.dwc
        x = x + depthwise_conv_term(v, conv.weight, conv.bias, conv.padding, hw, q.shape[1],
                                    num_prefix_tokens).to(x.dtype)
    return x.to(out_dtype)


def linear_attention_weights(module: nn.Module, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The N x M weights that ``module.kind`` applies implicitly (conv branch excluded).

    Args:
        q: (B, N, C), k: (B, M, C).
    Returns:
        (B, h', N, M): h' = C for hydra (one head per channel), else the module's heads.
        ``weights @ v`` per head equals the global part of :func:`attend_linear_attention`.
    """
    q, k = _at_least_fp32(q), _at_least_fp32(k)
    kind = module.kind
    if kind == "hydra":
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return qn.transpose(1, 2).unsqueeze(-1) * kn.transpose(1, 2).unsqueeze(-2)   # (B, C, N, M)
    qh, kh = _split_heads(q, module.num_heads), _split_heads(k, module.num_heads)
    if kind == "efficient":
        return qh.softmax(-1) @ kh.softmax(-2).transpose(-2, -1)
    if kind == "angular":
        sim = 0.5 + F.normalize(qh, dim=-1) @ F.normalize(kh, dim=-1).transpose(-2, -1) / math.pi
        return sim / sim.sum(-1, keepdim=True)
    if kind == "enhanced":
        qr, kr = F.relu(qh), F.relu(kh)
        m = kr.shape[-2]
        scores = qr @ kr.transpose(-2, -1) / m
        return scores / (qr @ kr.mean(-2, keepdim=True).transpose(-2, -1) + EPS)
    raise ValueError(f"unknown linear attention kind {kind!r}")
