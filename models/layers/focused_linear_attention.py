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
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-6

# Options that :func:`make_la_kwargs` accepts and every focused attention takes.
LA_OPTIONS = ("focusing_factor", "kernel_size", "use_dwc", "focused")


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


def make_la_kwargs(focusing_factor: float = 3, kernel_size: int = 5, use_dwc: bool = True,
                   focused: bool = True) -> dict:
    """Validated keyword arguments for :class:`FocusedLinearAttention` subclasses."""
    if not focusing_factor > 0:
        raise ValueError(f"focusing_factor must be > 0, got {focusing_factor}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    return dict(focusing_factor=focusing_factor, kernel_size=kernel_size, use_dwc=use_dwc,
                focused=focused)


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
    """

    def __init__(self, dim: int, num_heads: int, num_kv_tokens: int, focusing_factor: float = 3,
                 kernel_size: int = 5, use_dwc: bool = True, focused: bool = True):
        super().__init__()
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
        self.positional_encoding = nn.Parameter(torch.zeros(1, num_kv_tokens, dim))
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
        q, k = _at_least_fp32(q), _at_least_fp32(k + self.positional_encoding)
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
                f"dwc={'k%d' % self.kernel_size if self.dwc is not None else 'off'}")


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
