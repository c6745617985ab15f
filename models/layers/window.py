"""Window operations: Swin's (shifted) windows and CSWin's stripes.

Both cut a channels-last grid (B, H, W, C) into rectangles of (wh, ww) tokens:
Swin's square windows are (w, w), CSWin's vertical stripes (H, s) and
horizontal stripes (s, W). A grid that is not a multiple of the window is
padded at the bottom and right first (:func:`pad_to_window`), as Swin's and
CSWin's detection / segmentation code do, and cropped afterwards.

The helpers are pure functions of shapes written without Python branches on
sizes, so torch.fx and torch.compile trace them at any input size; the masks
of shifted windows, which need Python loops over regions, are one opaque call
under torch.fx (:func:`window_mask`).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import register_notrace_function

WindowSize = Union[int, Tuple[int, int]]

__all__ = ["MASK_VALUE", "window_partition", "window_reverse", "pad_to_window", "relative_position_index",
           "shifted_window_mask", "window_mask"]

# Additive attention bias between tokens of a shifted window that came from
# different image regions (Swin's value; large enough to vanish after softmax).
MASK_VALUE = -100.0


def _pair(window_size: WindowSize) -> Tuple[int, int]:
    if isinstance(window_size, int):
        return window_size, window_size
    wh, ww = window_size
    return wh, ww


def window_partition(x: torch.Tensor, window_size: WindowSize) -> torch.Tensor:
    """Cut a grid into non-overlapping windows (Swin windows or CSWin stripes).

    Args:
        x: (B, H, W, C) grid; H and W must be multiples of the window (see :func:`pad_to_window`).
        window_size: (wh, ww) or an int for a square window.
    Returns:
        (B * nW, wh * ww, C) tokens of every window, windows in row-major order
        per image, tokens row-major inside a window.
    """
    wh, ww = _pair(window_size)
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C)                          # (B, nH, wh, nW_w, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)          # (B*nW, wh*ww, C)


def window_reverse(windows: torch.Tensor, window_size: WindowSize, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: (B * nW, wh * ww, C) or (B * nW, wh, ww, C).
        window_size: (wh, ww) or an int.
        H, W: size of the grid the windows were cut from.
    Returns:
        (B, H, W, C).
    """
    wh, ww = _pair(window_size)
    C = windows.shape[-1]
    x = windows.reshape(-1, H // wh, W // ww, wh, ww, C)                 # (B, nH, nW_w, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)             # (B, H, W, C)


def pad_to_window(x: torch.Tensor, window_size: WindowSize) -> torch.Tensor:
    """Zero-pad a (B, H, W, C) grid at the bottom and right to multiples of the window.

    Returns the padded (B, Hp, Wp, C) grid (the input's values when nothing is missing).
    """
    wh, ww = _pair(window_size)
    H, W = x.shape[1], x.shape[2]
    pad_h = (wh - H % wh) % wh
    pad_w = (ww - W % ww) % ww
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h))


def relative_position_index(window_size: WindowSize, device=None) -> torch.Tensor:
    """Index into a ((2wh-1) * (2ww-1), heads) relative-position table.

    Returns:
        (wh*ww, wh*ww) long tensor; entry [i, j] identifies the offset of token i
        from token j inside a window: (dy + wh - 1) * (2ww - 1) + (dx + ww - 1).
    """
    wh, ww = _pair(window_size)
    ys, xs = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])                  # (2, wh*ww)
    rel = coords[:, :, None] - coords[:, None, :]                       # (2, N, N)
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)         # (N, N)


def shifted_window_mask(H: int, W: int, window_size: WindowSize, shift_size: WindowSize,
                        mask_value: float = MASK_VALUE, device=None) -> Optional[torch.Tensor]:
    """Additive attention mask of shifted windows (None when there is no shift).

    After the grid is rolled by -shift, windows on the bottom/right border hold
    tokens from up to four separate image regions; a token may only attend
    within its own region.

    Args:
        H, W: grid size (multiples of the window; the padded size when the grid was padded).
        window_size: (wh, ww) or an int.
        shift_size: (sh, sw) or an int, the cyclic shift of the grid.
        mask_value: bias for pairs of tokens from different regions.
    Returns:
        (nW, wh*ww, wh*ww) float tensor of 0 / ``mask_value``, or None.
    """
    wh, ww = _pair(window_size)
    sh, sw = _pair(shift_size)
    if sh == 0 and sw == 0:
        return None
    region = torch.zeros(1, H, W, 1, device=device)
    label = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)) if sh else (slice(None),):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)) if sw else (slice(None),):
            region[:, hs, ws, :] = label
            label += 1
    region = window_partition(region, (wh, ww)).squeeze(-1)             # (nW, wh*ww)
    diff = region[:, None, :] - region[:, :, None]                      # (nW, N, N)
    return torch.zeros_like(diff).masked_fill(diff != 0, mask_value)


@functools.lru_cache(maxsize=32)
def _cached_mask(H: int, W: int, window: Tuple[int, int], shift: Tuple[int, int],
                 device: torch.device) -> Optional[torch.Tensor]:
    return shifted_window_mask(H, W, window, shift, device=device)


@torch.fx.wrap
@register_notrace_function
def window_mask(H: int, W: int, window_size: WindowSize, shift_size: WindowSize,
                device: torch.device) -> Optional[torch.Tensor]:
    """:func:`shifted_window_mask` for a grid size known only at forward time (dynamic input sizes).

    Cached per (size, window, shift, device) in eager mode (the mask is a
    constant: callers must not modify it in place); computed directly under
    torch.compile; one opaque call under torch.fx.
    """
    if torch.compiler.is_compiling():
        return shifted_window_mask(H, W, window_size, shift_size, device=device)
    return _cached_mask(int(H), int(W), _pair(window_size), _pair(shift_size), torch.device(device))
