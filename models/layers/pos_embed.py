"""Resampling of token-grid parameters: positional encodings and position embeddings.

Focused attention's ``positional_encoding`` (1, n_kv, C), PVT's ``pos_embed{i}``
and DeiT's ``pos_embed`` hold one vector per token of the grid the model was built
for (DeiT's also one per class token). At another grid they are resampled the
same way everywhere:

* on checkpoint load (``checkpoint_filter_fn``: a 224 checkpoint into a 384 model),
* by ``set_input_size()``, which changes the size a model is built for,
* at forward time in models built with ``dynamic_img_size=True``,

namely bicubic interpolation of the grid (``align_corners=False``), prefix
tokens copied unchanged. :func:`resample_token_grid` is that one operation.

At forward time :func:`grid_parameter` returns the parameter as it is at the
built grid and otherwise the resampled tensor, cached per grid while no
gradient is recorded (eval / inference), recomputed when autograd needs the
graph, under ``torch.compile`` and under torch.fx tracing (where the resampling
is one opaque call, see below).
"""
from __future__ import annotations

import collections
from typing import Optional, OrderedDict

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .grid import Grid

__all__ = ["resample_token_grid", "square_grid", "grid_parameter", "GridCache", "resampled_parameter",
           "rel_pos_table_resample"]

# Grids kept per parameter in the forward-time cache (sizes used recently).
_CACHE_SIZE = 8


def square_grid(num_tokens: int) -> Optional[Grid]:
    """(s, s) when ``num_tokens`` = s * s, else None."""
    s = int(round(num_tokens ** 0.5))
    return (s, s) if s * s == num_tokens else None


@torch.fx.wrap
@register_notrace_function
def resample_token_grid(tokens: torch.Tensor, new_grid: Grid, old_grid: Optional[Grid] = None,
                        num_prefix_tokens: int = 0) -> torch.Tensor:
    """Resample a (1, P + H*W, C) token-grid tensor to ``new_grid``, bicubic; P prefix tokens kept.

    Args:
        tokens: (1, P + H*W, C), grid tokens in row-major order after P prefix tokens.
        new_grid: target grid (H', W').
        old_grid: grid of ``tokens``; None = square.
        num_prefix_tokens: P (DeiT's class token).
    Returns:
        (1, P + H'*W', C), in the dtype of ``tokens``; ``tokens`` itself when the grids are equal.
    Raises:
        ValueError: ``old_grid`` is None and the grid tokens are not a square number.
    """
    n_grid = tokens.shape[1] - num_prefix_tokens
    if old_grid is None:
        old_grid = square_grid(n_grid)
        if old_grid is None:
            raise ValueError(f"cannot resample {n_grid} grid tokens without their grid: not a square number")
    (new_h, new_w), (old_h, old_w) = new_grid, old_grid     # ints, or symbolic sizes under torch.compile
    if new_h == old_h and new_w == old_w:
        return tokens
    prefix, grid = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
    c = grid.shape[-1]
    g = grid.reshape(1, old_h, old_w, c).permute(0, 3, 1, 2).float()           # (1, C, H, W)
    g = F.interpolate(g, size=(new_h, new_w), mode="bicubic", align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(1, new_h * new_w, c).to(tokens.dtype)   # (1, H'*W', C)
    return torch.cat([prefix, g], dim=1)


def _fx_tracing() -> bool:
    """True while torch.fx symbolically traces (the query's name differs across torch versions)."""
    check = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None) or torch.fx._symbolic_trace.is_fx_tracing
    return check()


class GridCache:
    """Forward-time cache of one parameter resampled to recently used grids (see :func:`grid_parameter`).

    A plain attribute of the owning module, not a buffer: it is never saved.
    """

    def __init__(self, size: int = _CACHE_SIZE):
        self.size = size
        self.entries: OrderedDict[tuple, torch.Tensor] = collections.OrderedDict()

    def get(self, key: tuple) -> Optional[torch.Tensor]:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        self.entries[key] = value
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)

    def __deepcopy__(self, memo) -> "GridCache":
        return GridCache(self.size)          # copies (EMA, deepcopy) start empty


def grid_parameter(param: torch.Tensor, grid: Grid, built_grid: Grid, num_prefix_tokens: int = 0,
                   cache: Optional[GridCache] = None) -> torch.Tensor:
    """``param`` (a token-grid parameter built for ``built_grid``) for the current ``grid``.

    Equal grids return ``param`` itself. Otherwise the result of
    :func:`resample_token_grid`; it is cached in ``cache`` (keyed by grid, dtype,
    device and the parameter's version counter, so an optimizer step or a load
    invalidates it) only when autograd records nothing. Under torch.fx tracing
    and torch.compile the resampling is always called (fx records one opaque
    call; dynamo traces it and guards on the grid).
    """
    if _fx_tracing() or torch.compiler.is_compiling():
        return resample_token_grid(param, grid, built_grid, num_prefix_tokens)
    grid = (int(grid[0]), int(grid[1]))
    if grid == tuple(built_grid):
        return param
    if cache is None or torch.is_grad_enabled():
        return resample_token_grid(param, grid, built_grid, num_prefix_tokens)
    key = (grid, param.dtype, param.device, param._version, param.data_ptr(), torch.is_inference_mode_enabled())
    value = cache.get(key)
    if value is None:
        value = resample_token_grid(param, grid, built_grid, num_prefix_tokens)
        cache.put(key, value)
    return value


def resampled_parameter(param: torch.nn.Parameter, new_grid: Grid, old_grid: Grid,
                        num_prefix_tokens: int = 0) -> torch.nn.Parameter:
    """A new Parameter holding ``param`` resampled to ``new_grid`` (for ``set_input_size``)."""
    with torch.no_grad():
        data = resample_token_grid(param.detach(), new_grid, old_grid, num_prefix_tokens)
    return torch.nn.Parameter(data.clone(), requires_grad=param.requires_grad)


def rel_pos_table_resample(table: torch.Tensor, rows: int) -> torch.Tensor:
    """A ((2wh-1)(2ww-1), h) relative-position bias table resampled to ``rows`` entries (square offset
    grids), bicubic over the offsets: Swin's tables for another window (checkpoint load, ``set_input_size``)."""
    old, new = square_grid(table.shape[0]), square_grid(rows)
    if old is None or new is None:
        raise ValueError(f"cannot resample a relative position table of {table.shape[0]} rows to {rows}: "
                         "not square offset grids")
    if old == new:
        return table
    h = table.shape[1]
    t = table.t().reshape(1, h, old[0], old[1]).float()
    t = F.interpolate(t, size=new, mode="bicubic", align_corners=False)
    return t.reshape(h, rows).t().to(table.dtype)
