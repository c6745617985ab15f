"""The base class of the linear attentions an ``L`` stage can use.

:class:`LinearAttention` holds what every linear attention of this code base
shares, whatever its math: the projections that turn tokens into q, k, v and
the output projection, in the layouts the FLatten families use, with the
parameter names of the released checkpoints:

* ``qkv='qkv'``: one ``qkv`` Linear (C -> 3C), then ``proj`` (Swin, DeiT);
* ``qkv='q_kv'``: ``q`` (C -> C) and ``kv`` (C -> 2C) Linears, the keys and values
  optionally from tokens reduced by ``sr`` (Conv k = s = r) + ``norm`` (PVT, PVTv2);
* ``qkv=None``: no projections; the owner passes q, k, v (a CSWin branch), and
  ``lepe=True`` adds CSWin's locally-enhanced positional term ``get_v(v)``.

Subclasses implement the math in :meth:`LinearAttention.attend` (the paper's
:class:`~models.layers.attention.focused.FocusedLinearAttention` and the Table 3
designs of ``table3.py``) and own the parameters of that math.
:func:`~models.layers.attention.factory.create_linear_attention` picks the class.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from ..family import ModelConfigError, check_heads
from ..grid import Grid, conv_out_grid, conv_tokens, map_to_tokens, tokens_to_map, to_2tuple_size

__all__ = ["EPS", "LinearAttention", "at_least_fp32", "check_focusing_factor", "check_kernel_size"]

EPS = 1e-6

QKV_LAYOUTS = ("qkv", "q_kv", None)


def check_focusing_factor(focusing_factor: float) -> float:
    """p of the focusing function: any value > 0 (a one-line ModelConfigError otherwise)."""
    if not focusing_factor > 0:
        raise ModelConfigError(f"focusing_factor must be > 0, got {focusing_factor}", "la_kwargs.focusing_factor",
                               focusing_factor)
    return focusing_factor


def check_kernel_size(kernel_size: int) -> int:
    """Kernel of a depthwise conv with 'same' padding: a positive odd number."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ModelConfigError(f"kernel_size must be a positive odd number, got {kernel_size}",
                               "la_kwargs.kernel_size", kernel_size)
    return kernel_size


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 -> float32; other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class LinearAttention(nn.Module):
    """Projections and interface of a linear attention over tokens on a grid (see the module doc).

    Args:
        dim: channels C of q, k and v (all heads).
        num_heads: heads h; head dim d = C / h.
        grid: (H, W) query token grid the module is built for, or an int for a square grid
            (grid-sized parameters, such as focused attention's positional encoding, are made
            for it; at other grids they are resampled).
        num_prefix_tokens: tokens before the grid tokens (DeiT's class token).
        qkv: projection layout, 'qkv', 'q_kv' or None.
        qkv_bias: bias of the q / k / v projections.
        sr_ratio: key / value token reduction r of the 'q_kv' layout (1 = none).
        proj_drop: dropout after ``proj``.
        lepe: add CSWin's ``get_v`` term (layout None only).
    """

    kind: str = ""

    def __init__(self, dim: int, num_heads: int, grid: Union[int, Grid], num_prefix_tokens: int = 0,
                 qkv: Optional[str] = None, qkv_bias: bool = True, sr_ratio: int = 1, proj_drop: float = 0.,
                 lepe: bool = False):
        super().__init__()
        check_heads(dim, num_heads)
        if qkv not in QKV_LAYOUTS:
            raise ModelConfigError(f"qkv layout must be one of {QKV_LAYOUTS}, got {qkv!r}", "qkv", qkv)
        if sr_ratio < 1 or (sr_ratio > 1 and qkv != "q_kv"):
            raise ModelConfigError(f"key reduction sr_ratio={sr_ratio} needs the 'q_kv' layout and r >= 1",
                                   "sr_ratio", sr_ratio)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.grid = to_2tuple_size(grid)
        self.num_prefix_tokens = num_prefix_tokens
        self.layout = qkv
        self.sr_ratio = sr_ratio
        if qkv == "qkv":
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        elif qkv == "q_kv":
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
            if sr_ratio > 1:
                self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
                self.norm = nn.LayerNorm(dim)
        if qkv is not None:
            self.proj = nn.Linear(dim, dim)
            self.proj_drop = nn.Dropout(proj_drop)
        if lepe:
            self.get_v = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        else:
            self.get_v = None

    # -- geometry ---------------------------------------------------------------------------
    def key_grid(self, hw: Grid) -> Grid:
        """Grid of the keys for queries on ``hw`` (smaller with key reduction)."""
        if self.sr_ratio == 1:
            return hw
        return conv_out_grid(hw, self.sr_ratio, self.sr_ratio)

    def set_grid(self, grid: Grid) -> None:
        """Build for another query grid (``set_input_size``); subclasses resample grid-sized parameters."""
        self.grid = to_2tuple_size(grid)

    # -- projections ------------------------------------------------------------------------
    def project(self, x: torch.Tensor, hw: Grid) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (B, N, C) on ``hw`` (after prefix tokens) -> q (B, N, C), k and v (B, M, C)."""
        if self.layout == "qkv":
            q, k, v = self.qkv(x).unflatten(-1, (3, self.dim)).unbind(-2)         # 3 x (B, N, C)
            return q, k, v
        q = self.q(x)
        src = x
        if self.sr_ratio > 1:
            src = self.norm(map_to_tokens(self.sr(tokens_to_map(x, hw))))           # (B, N / r^2, C)
        k, v = self.kv(src).chunk(2, dim=-1)
        return q, k, v

    def forward(self, x, hw: Grid) -> torch.Tensor:
        """Attention output.

        Args:
            x: (B, N, C) tokens (layouts 'qkv' and 'q_kv'), or a (q, k, v) tuple of
                (B, N, C) tensors (layout None).
            hw: the token grid (H, W) of the N - num_prefix_tokens grid tokens.
        Returns:
            (B, N, C): after ``proj`` for the projecting layouts, before any
            projection (plus ``get_v(v)`` with LePE) for layout None.
        """
        if self.layout is None:
            q, k, v = x
            out = self.attend(q, k, v, hw, self.num_prefix_tokens)
            if self.get_v is not None:
                out = out + conv_tokens(self.get_v, v, hw)
            return out
        q, k, v = self.project(x, hw)
        out = self.attend(q, k, v, hw, self.num_prefix_tokens)
        return self.proj_drop(self.proj(out))

    # -- the math (subclasses) -----------------------------------------------------------------
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Grid,
               num_prefix_tokens: int = 0) -> torch.Tensor:
        """The attention between the projections.

        Args:
            q: (B, N, C) queries; the last N - num_prefix_tokens lie on the grid ``hw``.
            k, v: (B, M, C) keys and values (M = N, or fewer with key reduction).
            hw: query grid (H, W).
            num_prefix_tokens: leading tokens without a grid position.
        Returns:
            (B, N, C) in v's dtype.
        """
        raise NotImplementedError

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor, hw: Optional[Grid] = None) -> torch.Tensor:
        """The (B, h', N, M) weights the global part of :meth:`attend` applies to v (analysis, tests)."""
        raise NotImplementedError

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, h, N, d)."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, -1).transpose(1, 2)

    def extra_repr(self) -> str:
        parts = [f"kind={self.kind}", f"dim={self.dim}", f"num_heads={self.num_heads}",
                 f"grid={self.grid[0]}x{self.grid[1]}"]
        if self.num_prefix_tokens:
            parts.append(f"prefix={self.num_prefix_tokens}")
        if self.sr_ratio > 1:
            parts.append(f"sr_ratio={self.sr_ratio}")
        return ", ".join(parts)
