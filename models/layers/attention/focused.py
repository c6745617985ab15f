"""Focused linear attention: the one implementation of the paper's attention, shared by every family.

The math of the released FLatten models (docs/model.md, section 1):

    k <- k + positional_encoding
    q, k <- (relu(.) + eps) / softplus(scale)                  over all C channels
    q, k <- f_p(.) = ||x|| * x**p / ||x**p||                    per token, all C channels
    out  <- (q @ (k^T v / n)) / (q . mean(k) + eps)             per head, linear in N
    out  <- out + dwc(v)                                        depthwise conv on the token grid

then the family's output projection. :class:`FocusedLinearAttention` owns the
attention's own parameters (``scale``, ``positional_encoding``, ``dwc``, with the
released names) and the projections of its layout
(:class:`~models.layers.attention.base.LinearAttention`).

Ablation switches of the paper (Tables 4 and 5) are constructor arguments:
``focusing_factor`` (p), ``use_dwc``, ``kernel_size``, ``focused`` (False gives
vanilla ReLU linear attention: no focusing function) and ``use_pe``.

Two implementations compute the same numbers (float32 within 1e-4 relative,
gradients included; tests/test_fast_attention.py):

* :func:`attend_reference`: the steps above one by one, the reference;
* :func:`attend_fused` (default): fewer passes over the (N, C) tensors: a fused
  feature map (:func:`focused_features`, or the Triton kernel of ``triton_fla.py``
  on CUDA), ``k^T v`` and the normaliser from one matmul, one depthwise conv over
  all heads on a channels-last view, and the division and the ``dwc`` sum in one
  op. No ``.item()``, no data-dependent branches: ``torch.compile(fullgraph=True)``
  traces it as is.

``FLATTEN_ATTENTION_IMPL=reference`` (environment) or :func:`set_attention_impl`
/ :func:`attention_impl` choose between them. The dispatch (on the choice, the
device and the dtype) happens in :func:`focused_linear_attention`, which torch.fx
records as one opaque call.

At an input grid other than the one the module was built for (models built with
``dynamic_img_size=True``) the positional encoding is resampled to the current
key grid exactly as on checkpoint load (``models/layers/pos_embed.py``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from ..grid import Grid, token_conv
from ..pos_embed import GridCache, grid_parameter, resampled_parameter
from . import triton_fla
from .base import EPS, LinearAttention, at_least_fp32, check_focusing_factor, check_kernel_size

__all__ = ["FocusedLinearAttention", "focusing_function", "focused_features", "linear_attention",
           "explicit_attention_matrix", "depthwise_conv_term", "focused_linear_attention", "attend_reference",
           "attend_fused", "ATTENTION_IMPLS", "set_attention_impl", "get_attention_impl", "attention_impl",
           "attention_impl_problem"]

# Smallest focused feature of the fused path, relative to the token's largest (1); see focused_features.
_FEATURE_FLOOR = 1e-18

# -- implementation choice -------------------------------------------------------------
# 'auto': the fused path; its feature map runs as one Triton kernel on CUDA in eager mode
#         (when triton imports and the kernel passed its first-use check), as fused PyTorch ops
#         elsewhere (CPU; under torch.compile, where inductor generates the fused kernels itself).
#         Under TRITON_INTERPRET=1 the CPU takes the CUDA path (triton_fla.AUTO_DEVICE_TYPES).
# 'torch': the fused PyTorch path everywhere.
# 'triton': the Triton feature map in eager mode on any device, unchecked (CPU only under
#         TRITON_INTERPRET=1); compiled graphs use PyTorch ops, as in 'auto'.
# 'reference': the literal step-by-step math (docs/model.md, section 1), kept as the reference.
ATTENTION_IMPLS = ("auto", "torch", "triton", "reference")
_impl = os.environ.get("FLATTEN_ATTENTION_IMPL", "auto").strip().lower() or "auto"
if _impl not in ATTENTION_IMPLS:
    raise ValueError(f"FLATTEN_ATTENTION_IMPL must be one of {', '.join(ATTENTION_IMPLS)}, got {_impl!r}")


def set_attention_impl(impl: str) -> str:
    """Choose the implementation of focused attention for the whole process; returns the previous one.

    ``impl`` is one of ``ATTENTION_IMPLS``; the environment variable
    ``FLATTEN_ATTENTION_IMPL`` sets the initial value ('reference' forces the
    reference path). Compiled models keep the choice they were traced with
    until they recompile (the value is guarded).
    """
    global _impl
    impl = impl.strip().lower()
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl must be one of {', '.join(ATTENTION_IMPLS)}, got {impl!r}")
    if impl == "triton" and not triton_fla.HAS_TRITON:
        raise RuntimeError("attention impl 'triton' needs triton, which is not installed")
    previous, _impl = _impl, impl
    return previous


def get_attention_impl() -> str:
    """The current implementation choice (see :func:`set_attention_impl`)."""
    return _impl


def attention_impl_problem(device: torch.device) -> Optional[str]:
    """Why the current choice cannot run on ``device``, in one line (None when it can).

    'triton' launches the kernel on whatever tensors come: that needs triton, and
    CUDA or Triton's interpreter (``TRITON_INTERPRET=1``). Checked at start so that
    such a run ends before its first step.
    """
    if _impl != "triton":
        return None
    if not triton_fla.HAS_TRITON:
        return "FLATTEN_ATTENTION_IMPL=triton needs triton, which is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "") != "1":
        return (f"FLATTEN_ATTENTION_IMPL=triton runs the Triton kernel, which needs a CUDA device ({device} here) "
                f"or Triton's interpreter (TRITON_INTERPRET=1)")
    return None


@contextlib.contextmanager
def attention_impl(impl: str) -> Iterator[None]:
    """Context manager form of :func:`set_attention_impl`."""
    previous = set_attention_impl(impl)
    try:
        yield
    finally:
        set_attention_impl(previous)


# -- the pieces ----------------------------------------------------------------------------
def focusing_function(x: torch.Tensor, p: float) -> torch.Tensor:
    """f_p(x) = ||x|| * x**p / ||x**p|| over the last dimension (x > 0).

    The direction is sharpened towards the nearest axis, the norm is kept
    (paper Prop. 1). Computed as ``(x / max(x))**p`` first, which is the same
    quantity up to rounding and cannot overflow for large p or large
    activations (``x**3`` of an fp16 value above 40 would).
    """
    norm = x.norm(dim=-1, keepdim=True)
    peak = x.amax(dim=-1, keepdim=True)
    xp = (x / peak).pow(p)
    return xp * (norm / xp.norm(dim=-1, keepdim=True))


def reference_features(x: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor], p: float,
                       focused: bool) -> torch.Tensor:
    """The kernel step by step: ``f_p((relu(x + bias) + eps) / softplus(scale))`` in float32 (or wider).

    Runs in float32 whatever the autocast dtype: the focusing power is the one
    step whose range fp16 cannot hold.
    """
    if bias is not None:
        x = x + bias
    x = at_least_fp32(x)
    temp = F.softplus(at_least_fp32(scale))
    x = (F.relu(x) + EPS) / temp
    return focusing_function(x, p) if focused else x


def focused_features(x: torch.Tensor, temperature: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     p: float = 3, focused: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Feature map of the fused path, returned as a direction and a per-token factor.

    ``phi(x) = f_p((relu(x + bias) + eps) / temperature)`` over the last dim equals
    ``u * s`` with the two returned tensors. Compared with :func:`reference_features`
    it takes fewer passes over the (N, C) tensor: eps and temperature are one
    ``addcmul`` after the ReLU (``eps / t + relu(x + bias) / t``), the power is taken of
    ``y / max(y)`` in (0, 1] (no overflow for any p or activation size), and the
    per-token factor is returned instead of applied, so a caller that needs phi
    only up to a per-token scale (the queries: it cancels in the normalised
    attention) saves a pass.

    Args:
        x: (..., N, C) queries or keys; half types become float32 at the ``addcmul`` (ReLU is exact).
        temperature: (1, 1, C) ``softplus(scale)`` in the compute dtype (float32 or wider).
        bias: (1, N, C) positional encoding added before the kernel, or None.
        p: focusing power.
        focused: apply f_p; False returns the ReLU features ``y`` and no factor.
    Returns:
        u: (..., N, C) ``(y / max(y))**p``, floored at 1e-18 (``y`` when not focused), in the
            compute dtype.
        s: (..., N, 1) ``max(y) * ||y / max(y)|| / ||u||``, or None when not focused.
    """
    inv_t = temperature.reciprocal()
    r = F.relu(x) if bias is None else F.relu_(x + bias.to(inv_t.dtype))
    y = torch.addcmul(inv_t * EPS, r, inv_t)                             # (relu(x + b) + eps) / t
    if not focused:
        return y, None
    # f_p(y) = f_p(y / c) * c for any c > 0, so the result does not depend on the max as a
    # function: detaching it leaves value and gradient exact and saves its backward.
    peak = y.amax(dim=-1, keepdim=True).detach()                         # (..., N, 1), > 0
    w = y / peak
    u = w.pow(p)
    with torch.no_grad():
        # Floor at 1e-18 (the largest element is 1): invisible in float32, but keeps the squares
        # in the norm out of the subnormal range, which CPUs compute many times slower. Applied
        # outside autograd, whose gradient stays that of the unfloored power.
        u.clamp_min_(_FEATURE_FLOOR)
    s = peak * (torch.linalg.vector_norm(w, dim=-1, keepdim=True)
                / torch.linalg.vector_norm(u, dim=-1, keepdim=True))
    return u, s


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Normalised linear attention in the linear order.

    Args:
        q: (B, h, N, d) non-negative query features.
        k: (B, h, M, d) non-negative key features.
        v: (B, h, M, dv) values.
    Returns:
        (B, h, N, dv) = q (sum_j k_j^T v_j) / (q . sum_j k_j), with the sums
        taken as means (and k^T v scaled by M**-0.5 on each side) so that
        fp16/bf16 stay finite, exactly as the released models compute it.
    """
    m = k.shape[-2]
    z = 1.0 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + EPS)  # (B, h, N, 1)
    kv = (k.transpose(-2, -1) * m ** -0.5) @ (v * m ** -0.5)                 # (B, h, d, dv)
    return (q @ kv) * z


def explicit_attention_matrix(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The N x M attention weights that linear attention applies implicitly.

    ``explicit_attention_matrix(q, k) @ v`` equals ``linear_attention(q, k, v)``;
    it costs O(N M) and exists for tests, visualisation and rank analysis.
    """
    m = k.shape[-2]
    scores = q @ k.transpose(-2, -1) / m                                    # (B, h, N, M)
    z = 1.0 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + EPS)
    return scores * z


def depthwise_conv_term(v: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], hw: Grid,
                        n_q: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """A depthwise conv (``weight`` (C, 1, k, k), 'same' padding) over v (B, M, C) on the query grid.

    With fewer keys than grid tokens (PVT key reduction) v is first resized
    along the tokens, linearly. Prefix tokens (DeiT's class token) get zero.

    Returns:
        (B, n_q, C).
    """
    n_grid = n_q - num_prefix_tokens
    vg = v[:, num_prefix_tokens:]                                       # (B, M', C)
    if vg.shape[1] != n_grid:
        # Key reduction (PVT sr > 1): bring v to the query grid along tokens.
        vg = F.interpolate(vg.transpose(1, 2), size=n_grid, mode="linear",
                           align_corners=False).transpose(1, 2)         # (B, N', C)
    term = token_conv(vg, hw, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])
    if num_prefix_tokens:
        term = F.pad(term, (0, 0, num_prefix_tokens, 0))
    return term


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.reshape(b, n, num_heads, -1).transpose(1, 2)               # (B, h, N, d)


# -- the two implementations ------------------------------------------------------------------
def attend_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                     pe: Optional[torch.Tensor], dwc_weight: Optional[torch.Tensor],
                     dwc_bias: Optional[torch.Tensor], hw: Grid, num_heads: int, p: float, focused: bool,
                     num_prefix_tokens: int = 0) -> torch.Tensor:
    """Focused linear attention written step by step as docs/model.md, section 1 states it.

    Args:
        q: (B, N, C) queries; the last N - num_prefix_tokens lie on the grid ``hw``.
        k, v: (B, M, C) keys and values.
        scale: (1, 1, C) temperature parameter (``softplus(scale)`` is used).
        pe: (1, M, C) positional encoding added to the keys, or None.
        dwc_weight, dwc_bias: the depthwise conv on v, (d, 1, k, k) shared by the heads, or None.
        hw: query grid (H, W).
        num_heads: heads h.
        p: focusing power.
        focused: apply the focusing function.
        num_prefix_tokens: leading tokens without a grid position (no ``dwc`` term).
    Returns:
        (B, N, C) in v's dtype.
    """
    B, N, C = q.shape
    out_dtype = v.dtype
    qf = reference_features(q, scale, None, p, focused)
    kf = reference_features(k, scale, pe, p, focused)
    # Matmuls in bf16 when autocast asks for it (its range is that of fp32);
    # fp16 stays in fp32 because q.kv products can exceed 65504.
    mm_dtype = torch.bfloat16 if out_dtype == torch.bfloat16 else qf.dtype
    qh = _split_heads(qf.to(mm_dtype), num_heads)
    kh = _split_heads(kf.to(mm_dtype), num_heads)
    vh = _split_heads(v.to(mm_dtype), num_heads)
    with torch.autocast(q.device.type, enabled=False):
        x = linear_attention(qh, kh, vh)                                # (B, h, N, d)
    x = x.transpose(1, 2).reshape(B, N, C)                              # (B, N, C)
    if dwc_weight is not None:
        # dwc per head: v of every head as a d-channel image (B*h, d, H, W), one shared filter bank.
        vh = _split_heads(v, num_heads)[:, :, num_prefix_tokens:]       # (B, h, M', d)
        n_grid = N - num_prefix_tokens
        b, h, m, d = vh.shape
        if m != n_grid:
            # Key reduction (PVT sr > 1): bring v to the query grid along tokens.
            vh = F.interpolate(vh.reshape(b * h, m, d).transpose(1, 2), size=n_grid, mode="linear",
                               align_corners=False).transpose(1, 2).reshape(b, h, n_grid, d)
        grid = vh.transpose(-2, -1).reshape(b * h, d, hw[0], hw[1])     # (B*h, d, H, W)
        term = F.conv2d(grid, dwc_weight, dwc_bias, padding=dwc_weight.shape[-1] // 2, groups=d)
        term = term.reshape(b, h * d, n_grid).transpose(1, 2)           # (B, N', C), channel = head*d + i
        if num_prefix_tokens:
            term = F.pad(term, (0, 0, num_prefix_tokens, 0))
        x = x + term.to(x.dtype)
    return x.to(out_dtype)


def _matmul_dtype(q: torch.Tensor, v: torch.Tensor) -> torch.dtype:
    """The fused path's matmul dtype: bf16 when autocast asks for it (its range is that of fp32);
    fp16 stays in fp32 because the k^T v sums can exceed 65504."""
    return torch.bfloat16 if v.dtype == torch.bfloat16 else torch.promote_types(q.dtype, torch.float32)


def torch_feature_map(x: torch.Tensor, temperature: torch.Tensor, bias: Optional[torch.Tensor], p: float,
                      focused: bool, num_heads: int, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    """The fused path's PyTorch feature map in the Triton kernel's form: (B, h, N, d) in ``out_dtype``.

    What :func:`triton_fla.self_check` compares the kernel with (``eps`` is this module's EPS).
    """
    B, N, C = x.shape
    u, s = focused_features(x, temperature, bias, p, focused)
    phi = u if s is None else u * s
    return phi.to(out_dtype).view(B, N, num_heads, C // num_heads).transpose(1, 2)


def attend_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                 pe: Optional[torch.Tensor], dwc_weight: Optional[torch.Tensor], dwc_bias: Optional[torch.Tensor],
                 hw: Grid, num_heads: int, p: float, focused: bool, num_prefix_tokens: int = 0,
                 use_triton: bool = False) -> torch.Tensor:
    """:func:`attend_reference` with fewer passes; same arguments, same numerics.

    * Feature maps: :func:`focused_features` (PyTorch), or with ``use_triton`` one
      Triton kernel per tensor that also writes the head-split layout in the matmul dtype.
    * Queries are used up to their per-token factor s_q: it cancels between
      numerator and normaliser, so only ``eps`` is divided by it.
    * ``k^T v`` and the normaliser come from one matmul: v gets a ones column,
      so ``k^T [v, 1] = [sum_j k_j^T v_j, sum_j k_j]`` and ``q @`` that gives the
      numerator and ``q . sum_j k_j`` together; the ``1 / n_kv`` of the means
      moves onto ``eps`` (``num / (den + eps * n_kv)``).
    * ``dwc`` runs once over all C channels (the per-head filters repeated h
      times) on a channels-last view of v: no transposes before or after.
    * The division and the ``dwc`` sum are one ``addcdiv`` that writes (B, N, C).
    """
    B, N, C = q.shape
    M = k.shape[1]
    h = num_heads
    d = C // h
    out_dtype = v.dtype
    feat_dtype = torch.promote_types(q.dtype, torch.float32)
    mm_dtype = _matmul_dtype(q, v)
    temperature = F.softplus(scale.to(feat_dtype))                      # (1, 1, C)
    if use_triton:
        qh = triton_fla.focused_feature_map_triton(q, temperature, None, p, focused, h, EPS, mm_dtype)
        kh = triton_fla.focused_feature_map_triton(k, temperature, pe, p, focused, h, EPS, mm_dtype)
        q_eps = EPS * M
    else:
        qu, qs = focused_features(q, temperature, None, p, focused)
        ku, ks = focused_features(k, temperature, pe, p, focused)
        kf = ku if ks is None else ku * ks
        qh = qu.to(mm_dtype).view(B, N, h, d).transpose(1, 2)           # (B, h, N, d)
        kh = kf.to(mm_dtype).view(B, M, h, d).transpose(1, 2)           # (B, h, M, d)
        q_eps = EPS * M if qs is None else (EPS * M / qs).view(B, 1, N, 1)
    with torch.autocast(q.device.type, enabled=False):
        vh = v.to(mm_dtype).view(B, M, h, d).transpose(1, 2)            # (B, h, M, d)
        v1 = torch.cat([vh, vh.new_ones(B, h, M, 1)], dim=-1)           # (B, h, M, d + 1)
        kv = kh.transpose(-2, -1) @ v1                                  # (B, h, d, d + 1)
        y = qh @ kv                                                     # (B, h, N, d + 1)
        num = y[..., :d].transpose(1, 2)                                # (B, N, h, d)
        den = (y[..., d:] + q_eps).to(y.dtype).transpose(1, 2)          # (B, N, h, 1)
    if dwc_weight is not None:
        weight = dwc_weight.repeat(h, 1, 1, 1)                          # (C, 1, k, k): channel head*d + i
        bias = None if dwc_bias is None else dwc_bias.repeat(h)
        term = depthwise_conv_term(v, weight, bias, hw, N, num_prefix_tokens)   # (B, N, C)
        x = torch.addcdiv(term.to(y.dtype).reshape(B, N, h, d), num, den)
    else:
        x = num / den
    return x.reshape(B, N, C).to(out_dtype)


@torch.fx.wrap
@register_notrace_function
def focused_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                             pe: Optional[torch.Tensor], dwc_weight: Optional[torch.Tensor],
                             dwc_bias: Optional[torch.Tensor], hw: Grid, num_heads: int, p: float, focused: bool,
                             num_prefix_tokens: int = 0) -> torch.Tensor:
    """Focused linear attention by the implementation chosen with :func:`set_attention_impl`.

    Arguments as :func:`attend_reference`. The choice depends on the device and
    dtype of the inputs, so torch.fx records this function as one call.
    """
    if _impl == "reference":
        return attend_reference(q, k, v, scale, pe, dwc_weight, dwc_bias, hw, num_heads, p, focused,
                                num_prefix_tokens)
    use_triton = not torch.compiler.is_compiling() and (_impl == "triton" or (
        _impl == "auto" and triton_fla.HAS_TRITON and q.device.type in triton_fla.AUTO_DEVICE_TYPES
        and torch.promote_types(q.dtype, torch.float32) == torch.float32
        and triton_fla.usable(q, _matmul_dtype(q, v), num_heads, p, focused, torch_feature_map)))
    return attend_fused(q, k, v, scale, pe, dwc_weight, dwc_bias, hw, num_heads, p, focused, num_prefix_tokens,
                        use_triton=use_triton)


# -- the module ---------------------------------------------------------------------------------
class FocusedLinearAttention(LinearAttention):
    """The paper's focused linear attention with the projections of its layout.

    Used as is (layout None) it attends over q, k, v its owner computed (CSWin's
    ``attns.0``); with a projection layout it is a whole attention layer (see
    :class:`~models.layers.attention.base.LinearAttention` for those arguments).

    Args:
        dim, num_heads, grid, num_prefix_tokens, **layout: see ``LinearAttention``.
        focusing_factor: p of the focused function (paper Table 5).
        kernel_size: kernel of the depthwise conv on v (paper Table 4).
        use_dwc: add the depthwise conv branch (``dwc``); False drops the parameter.
        focused: apply the focused function; False gives ReLU linear attention.
        use_pe: add ``positional_encoding`` to the keys; False drops the parameter
            (paper Table 4's rows without DWC count neither).
    """

    kind = "focused"

    def __init__(self, dim: int, num_heads: int, grid, num_prefix_tokens: int = 0, focusing_factor: float = 3,
                 kernel_size: int = 5, use_dwc: bool = True, focused: bool = True, use_pe: bool = True, **layout):
        super().__init__(dim, num_heads, grid, num_prefix_tokens, **layout)
        self.focusing_factor = check_focusing_factor(focusing_factor)
        self.kernel_size = check_kernel_size(kernel_size)
        self.focused = focused
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        if use_pe:
            kh, kw = self.key_grid(self.grid)
            self.positional_encoding = nn.Parameter(torch.zeros(1, num_prefix_tokens + kh * kw, dim))
        else:
            self.register_parameter("positional_encoding", None)
        if use_dwc:
            self.dwc = nn.Conv2d(self.head_dim, self.head_dim, kernel_size, padding=kernel_size // 2,
                                 groups=self.head_dim)
        else:
            self.dwc = None
        self._pe_cache = GridCache()

    # -- grid-sized parameters ------------------------------------------------------------------
    def positional_encoding_at(self, hw: Grid) -> Optional[torch.Tensor]:
        """The positional encoding for queries on ``hw`` (resampled when ``hw`` is not the built grid)."""
        if self.positional_encoding is None:
            return None
        return grid_parameter(self.positional_encoding, self.key_grid(hw), self.key_grid(self.grid),
                              self.num_prefix_tokens, self._pe_cache)

    def set_grid(self, grid: Grid) -> None:
        old = self.key_grid(self.grid)
        super().set_grid(grid)
        if self.positional_encoding is not None:
            self.positional_encoding = resampled_parameter(self.positional_encoding, self.key_grid(self.grid), old,
                                                           self.num_prefix_tokens)
        self._pe_cache.clear()

    # -- the math -----------------------------------------------------------------------------------
    def _dwc_params(self):
        if self.dwc is None:
            return None, None
        return self.dwc.weight, self.dwc.bias

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Grid,
               num_prefix_tokens: int = 0) -> torch.Tensor:
        w, b = self._dwc_params()
        return focused_linear_attention(q, k, v, self.scale, self.positional_encoding_at(hw), w, b, hw,
                                        self.num_heads, self.focusing_factor, self.focused, num_prefix_tokens)

    def attend_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Grid,
                         num_prefix_tokens: int = 0) -> torch.Tensor:
        """:meth:`attend` by :func:`attend_reference`, whatever the process-wide choice."""
        w, b = self._dwc_params()
        return attend_reference(q, k, v, self.scale, self.positional_encoding_at(hw), w, b, hw, self.num_heads,
                                self.focusing_factor, self.focused, num_prefix_tokens)

    def attend_fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Grid,
                     num_prefix_tokens: int = 0) -> torch.Tensor:
        """:meth:`attend` by :func:`attend_fused` (PyTorch feature maps), whatever the process-wide choice."""
        w, b = self._dwc_params()
        return attend_fused(q, k, v, self.scale, self.positional_encoding_at(hw), w, b, hw, self.num_heads,
                            self.focusing_factor, self.focused, num_prefix_tokens)

    def kernel(self, q: torch.Tensor, k: torch.Tensor, hw: Optional[Grid] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Reference feature maps of q (B, N, C) and k (B, M, C): positional encoding, ReLU, temperature,
        focusing (keys on the grid of queries ``hw``, default the built grid)."""
        pe = self.positional_encoding_at(hw or self.grid)
        p = self.focusing_factor
        return (reference_features(q, self.scale, None, p, self.focused),
                reference_features(k, self.scale, pe, p, self.focused))

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor, hw: Optional[Grid] = None) -> torch.Tensor:
        """(B, h, N, M) weights of the global (non-DWC) part, for analysis and plots."""
        qf, kf = self.kernel(q, k, hw)
        return explicit_attention_matrix(self.split_heads(qf), self.split_heads(kf))

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", p={self.focusing_factor}, focused={self.focused}, "
                f"dwc={'k%d' % self.kernel_size if self.dwc is not None else 'off'}"
                f"{'' if self.positional_encoding is not None else ', pe=off'}")
