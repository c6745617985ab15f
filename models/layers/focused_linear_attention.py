"""Focused linear attention: the one implementation shared by every family.

The math follows the released FLatten models (SPEC section 1):

    k <- k + positional_encoding
    q, k <- (relu(.) + eps) / softplus(scale)                  over all C channels
    q, k <- f_p(.) = ||x|| * x**p / ||x**p||                    per token, all C channels
    out  <- (q @ (k^T v / n)) / (q . mean(k) + eps)             per head, linear in N
    out  <- out + dwc(v)                                        depthwise conv on the token grid
    out  <- proj(out)

Families only decide how q, k, v and the token grid are produced; the
parameters that belong to the attention itself (``scale``,
``positional_encoding``, ``dwc``) live in :class:`FocusedLinearAttention`, so
a family's attention module subclasses it and keeps the released parameter
names flat (``attn.scale``, ``attn.dwc.weight``, ...).

Ablation switches of the paper (Tables 4 and 5) are constructor arguments:
``focusing_factor`` (p), ``use_dwc``, ``kernel_size`` and ``focused`` (False
gives vanilla ReLU linear attention: no focusing function).

Two implementations of :meth:`FocusedLinearAttention.attend` compute the same
numbers (float32 within 1e-4 relative, gradients included; tests/test_fast_attention.py):

* :meth:`~FocusedLinearAttention.attend_reference`: the steps above one by one,
  the reference;
* :meth:`~FocusedLinearAttention.attend_fused` (default): fewer passes over the
  (N, C) tensors: a fused feature map (:func:`focused_features`, or the Triton
  kernel of ``triton_fla.py`` on CUDA), ``k^T v`` and the normaliser from one
  matmul, one depthwise conv over all heads on a channels-last view, and the
  division and the ``dwc`` sum in one op. No ``.item()``, no data-dependent
  branches: ``torch.compile(fullgraph=True)`` traces it as is.

``FLATTEN_ATTENTION_IMPL=reference`` (environment) or :func:`set_attention_impl`
/ :func:`attention_impl` choose between them.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import triton_fla

EPS = 1e-6
# Smallest focused feature of the fused path, relative to the token's largest (1); see focused_features.
_FEATURE_FLOOR = 1e-18

# -- implementation choice -------------------------------------------------------------
# 'auto': the fused path; its feature map runs as one Triton kernel on CUDA in eager mode
#         (when triton imports), as fused PyTorch ops elsewhere (CPU; under torch.compile,
#         where inductor generates the fused kernels itself).
# 'torch': the fused PyTorch path everywhere.
# 'triton': the Triton feature map on any device (CPU only under TRITON_INTERPRET=1; tests).
# 'reference': the literal step-by-step math (SPEC section 1), kept as the reference.
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


@contextlib.contextmanager
def attention_impl(impl: str) -> Iterator[None]:
    """Context manager form of :func:`set_attention_impl`."""
    previous = set_attention_impl(impl)
    try:
        yield
    finally:
        set_attention_impl(previous)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


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


def focused_features(x: torch.Tensor, temperature: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     p: float = 3, focused: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Feature map of the fused path, returned as a direction and a per-token factor.

    ``phi(x) = f_p((relu(x + bias) + eps) / temperature)`` over the last dim equals
    ``u * s`` with the two returned tensors. Compared with :meth:`FocusedLinearAttention.kernel`
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


def depthwise_conv_term(v: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding,
                        hw: Tuple[int, int], n_q: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """A depthwise conv (``weight`` (C, 1, k, k)) over v (B, M, C) on the query grid -> (B, n_q, C).

    The conv reads a channels-last view of v's grid tokens and its channels-last
    output is (B, N', C) without a copy. With fewer keys than grid tokens (PVT key
    reduction) v is first resized along the tokens, linearly. Prefix tokens
    (DeiT's class token) get zero.
    """
    B, _, C = v.shape
    H, W = hw
    n_grid = n_q - num_prefix_tokens
    vg = v[:, num_prefix_tokens:]                                       # (B, M', C)
    if vg.shape[1] != n_grid:
        # Key reduction (PVT sr > 1): bring v to the query grid along tokens.
        grid = F.interpolate(vg.transpose(1, 2), size=n_grid, mode="linear",
                             align_corners=False).reshape(B, C, H, W)   # (B, C, H, W)
    else:
        grid = vg.reshape(B, H, W, C).permute(0, 3, 1, 2)               # (B, C, H, W), channels-last
    out = F.conv2d(grid, weight, bias, padding=padding, groups=C)
    term = out.permute(0, 2, 3, 1).reshape(B, n_grid, C)                # (B, N', C)
    if num_prefix_tokens:
        term = F.pad(term, (0, 0, num_prefix_tokens, 0))
    return term


# Attention kinds an ``L`` stage can use: the paper's focused attention, and the
# linear attentions it is compared with in Table 3 (models/layers/linear_attentions.py).
LA_KINDS = ("focused", "hydra", "efficient", "angular", "enhanced")


def make_la_kwargs(focusing_factor: float = 3, kernel_size: int = 5, use_dwc: bool = True,
                   focused: bool = True, kind: str = "focused", use_pe: bool = True) -> dict:
    """Validated keyword arguments for :class:`FocusedLinearAttention` subclasses."""
    if kind not in LA_KINDS:
        raise ValueError(f"linear attention kind must be one of {', '.join(LA_KINDS)}, got {kind!r}")
    if not focusing_factor > 0:
        raise ValueError(f"focusing_factor must be > 0, got {focusing_factor}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    return dict(focusing_factor=focusing_factor, kernel_size=kernel_size, use_dwc=use_dwc,
                focused=focused, kind=kind, use_pe=use_pe)


class FocusedLinearAttention(nn.Module):
    """Parameters and math of focused linear attention, without projections.

    Subclasses add the family's projections (``qkv``, or ``q`` + ``kv``, and
    ``proj``) and call :meth:`attend`. Used as is (CSWin's ``attns.0``), it
    attends over q, k, v that its owner computed.

    Args:
        dim: channels C of q and k (all heads).
        num_heads: number of heads h; head dim d = C / h.
        num_kv_tokens: number of key tokens n_kv (size of ``positional_encoding``).
        focusing_factor: p of the focused function (paper Table 5).
        kernel_size: kernel of the depthwise conv on v (paper Table 4).
        use_dwc: add the depthwise conv branch (``dwc``); False drops the parameter.
        focused: apply the focused function; False gives ReLU linear attention.
        kind: 'focused' (this module), or one of the linear attentions of paper Table 3
            ('hydra', 'efficient', 'angular', 'enhanced'), which replace the math of
            :meth:`attend` and own their parameters (see ``linear_attentions.py``).
        use_pe: add ``positional_encoding`` to the keys; False drops the parameter
            (paper Table 4's rows without DWC count neither).
    """

    def __init__(self, dim: int, num_heads: int, num_kv_tokens: int, focusing_factor: float = 3,
                 kernel_size: int = 5, use_dwc: bool = True, focused: bool = True, kind: str = "focused",
                 use_pe: bool = True):
        super().__init__()
        self.kind = kind
        if kind != "focused":
            from .linear_attentions import init_linear_attention
            init_linear_attention(self, kind, dim, num_heads, num_kv_tokens, kernel_size=kernel_size)
            return
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.num_kv_tokens = num_kv_tokens
        self.focusing_factor = focusing_factor
        self.kernel_size = kernel_size
        self.focused = focused
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        if use_pe:
            self.positional_encoding = nn.Parameter(torch.zeros(1, num_kv_tokens, dim))
        else:
            self.register_parameter("positional_encoding", None)
        if use_dwc:
            self.dwc = nn.Conv2d(self.head_dim, self.head_dim, kernel_size, padding=kernel_size // 2,
                                 groups=self.head_dim)
        else:
            self.dwc = None

    # -- the pieces -------------------------------------------------------------------
    def kernel(self, q: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Feature maps of q (B, N, C) and k (B, M, C): ReLU, temperature, focusing.

        Runs in float32 whatever the autocast dtype: the focusing power is the
        one step whose range fp16 cannot hold.
        """
        if self.positional_encoding is not None:
            k = k + self.positional_encoding
        q, k = _at_least_fp32(q), _at_least_fp32(k)
        temp = F.softplus(_at_least_fp32(self.scale))
        q = (F.relu(q) + EPS) / temp
        k = (F.relu(k) + EPS) / temp
        if self.focused:
            q = focusing_function(q, self.focusing_factor)
            k = focusing_function(k, self.focusing_factor)
        return q, k

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, h, N, d)."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, -1).transpose(1, 2)

    def local_branch(self, v: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """dwc(v) for per-head values v (B, h, N, d) on an H x W grid -> (B, N, C)."""
        b, h, n, d = v.shape
        H, W = hw
        grid = v.transpose(-2, -1).reshape(b * h, d, H, W)                 # (B*h, d, H, W)
        out = self.dwc(grid)                                               # (B*h, d, H, W)
        return out.reshape(b, h * d, n).transpose(1, 2)                    # (B, N, C), channel = head*d + i

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Tuple[int, int],
               num_prefix_tokens: int = 0) -> torch.Tensor:
        """Focused linear attention before the output projection.

        Args:
            q: (B, N, C) queries; the last N - num_prefix_tokens lie on the H x W grid ``hw``.
            k: (B, M, C) keys (M = n_kv).
            v: (B, M, C) values.
            hw: query token grid (H, W) used by the depthwise conv.
            num_prefix_tokens: leading tokens without a grid position (DeiT's class
                token); they attend normally but get no ``dwc`` term.
        Returns:
            (B, N, C) in v's dtype.
        """
        if self.kind != "focused":
            from .linear_attentions import attend_linear_attention
            return attend_linear_attention(self, q, k, v, hw, num_prefix_tokens)
        if _impl == "reference":
            return self.attend_reference(q, k, v, hw, num_prefix_tokens)
        return self.attend_fused(q, k, v, hw, num_prefix_tokens)

    def attend_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Tuple[int, int],
                         num_prefix_tokens: int = 0) -> torch.Tensor:
        """:meth:`attend` written step by step as SPEC section 1 states it (the reference path)."""
        out_dtype = v.dtype
        qf, kf = self.kernel(q, k)
        # Matmuls in bf16 when autocast asks for it (its range is that of fp32);
        # fp16 stays in fp32 because q.kv products can exceed 65504.
        mm_dtype = torch.bfloat16 if out_dtype == torch.bfloat16 else qf.dtype
        qh = self.split_heads(qf.to(mm_dtype))
        kh = self.split_heads(kf.to(mm_dtype))
        vh = self.split_heads(v.to(mm_dtype))
        with torch.autocast(q.device.type, enabled=False):
            x = linear_attention(qh, kh, vh)                               # (B, h, N, d)
        x = x.transpose(1, 2).reshape(q.shape[0], q.shape[1], self.dim)   # (B, N, C)
        if self.dwc is not None:
            x = x + self.dwc_term(self.split_heads(v), hw, q.shape[1], num_prefix_tokens).to(x.dtype)
        return x.to(out_dtype)

    def attend_fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Tuple[int, int],
                     num_prefix_tokens: int = 0) -> torch.Tensor:
        """:meth:`attend` with fewer passes; same numerics as :meth:`attend_reference`.

        * Feature maps: :func:`focused_features` (PyTorch), or one Triton kernel per
          tensor on CUDA that also writes the head-split layout in the matmul dtype.
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
        h, d = self.num_heads, self.head_dim
        out_dtype = v.dtype
        feat_dtype = torch.promote_types(q.dtype, torch.float32)
        # Matmuls in bf16 when autocast asks for it (its range is that of fp32);
        # fp16 stays in fp32 because the k^T v sums can exceed 65504.
        mm_dtype = torch.bfloat16 if out_dtype == torch.bfloat16 else feat_dtype
        temperature = F.softplus(self.scale.to(feat_dtype))                 # (1, 1, C)
        p, focused = self.focusing_factor, self.focused
        if _impl == "triton" or (_impl == "auto" and triton_fla.HAS_TRITON and q.is_cuda
                                 and feat_dtype == torch.float32 and not torch.compiler.is_compiling()):
            qh = triton_fla.focused_feature_map_triton(q, temperature, None, p, focused, h, EPS, mm_dtype)
            kh = triton_fla.focused_feature_map_triton(k, temperature, self.positional_encoding, p, focused, h,
                                                       EPS, mm_dtype)                 # (B, h, M, d)
            q_eps = EPS * M
        else:
            qu, qs = focused_features(q, temperature, None, p, focused)
            ku, ks = focused_features(k, temperature, self.positional_encoding, p, focused)
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
        if self.dwc is not None:
            term = self.dwc_term_fused(v, hw, N, num_prefix_tokens)         # (B, N, C)
            x = torch.addcdiv(term.to(y.dtype).reshape(B, N, h, d), num, den)
        else:
            x = num / den
        return x.reshape(B, N, C).to(out_dtype)

    def dwc_term_fused(self, v: torch.Tensor, hw: Tuple[int, int], n_q: int,
                       num_prefix_tokens: int = 0) -> torch.Tensor:
        """:meth:`dwc_term` from v (B, M, C) as one depthwise conv over all C channels.

        Channel ``head * d + i`` uses filter i, so the (d, 1, k, k) filters are
        repeated h times.
        """
        weight = self.dwc.weight.repeat(self.num_heads, 1, 1, 1)           # (C, 1, k, k)
        bias = None if self.dwc.bias is None else self.dwc.bias.repeat(self.num_heads)
        return depthwise_conv_term(v, weight, bias, self.dwc.padding, hw, n_q, num_prefix_tokens)

    def dwc_term(self, vh: torch.Tensor, hw: Tuple[int, int], n_q: int,
                 num_prefix_tokens: int = 0) -> torch.Tensor:
        """dwc(v) as a (B, n_q, C) term; zero on prefix tokens; v resized if n_kv != N."""
        vg = vh[:, :, num_prefix_tokens:]                                  # (B, h, M', d)
        n_grid = n_q - num_prefix_tokens
        if vg.shape[2] != n_grid:
            # Key reduction (PVT sr > 1): bring v to the query grid along tokens.
            b, h, m, d = vg.shape
            vg = F.interpolate(vg.reshape(b * h, m, d).transpose(1, 2), size=n_grid, mode="linear",
                               align_corners=False).transpose(1, 2).reshape(b, h, n_grid, d)
        term = self.local_branch(vg, hw)
        if num_prefix_tokens:
            term = F.pad(term, (0, 0, num_prefix_tokens, 0))
        return term

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, h, N, M) weights of the global (non-DWC) part, for analysis and plots."""
        qf, kf = self.kernel(q, k)
        return explicit_attention_matrix(self.split_heads(qf), self.split_heads(kf))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, n_kv={self.num_kv_tokens}, "
                f"p={self.focusing_factor}, focused={self.focused}, "
                f"dwc={'k%d' % self.kernel_size if self.dwc is not None else 'off'}"
                f"{'' if self.positional_encoding is not None else ', pe=off'}")


def resize_positional_encoding(pe: torch.Tensor, new_tokens: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """Resize a (1, N, C) token-grid encoding to ``new_tokens`` (square grids), bicubic.

    Prefix tokens (class token) are kept as they are.
    """
    if pe.shape[1] == new_tokens:
        return pe
    prefix, grid = pe[:, :num_prefix_tokens], pe[:, num_prefix_tokens:]
    old = int(round(grid.shape[1] ** 0.5))
    new = int(round((new_tokens - num_prefix_tokens) ** 0.5))
    if old * old != grid.shape[1] or new * new != new_tokens - num_prefix_tokens:
        raise ValueError(f"cannot resize a positional encoding of {pe.shape[1]} tokens to {new_tokens}: "
                         "not square grids")
    c = grid.shape[-1]
    g = grid.reshape(1, old, old, c).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=(new, new), mode="bicubic", align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(1, new * new, c).to(pe.dtype)
    return torch.cat([prefix, g], dim=1)
