"""Token-grid helpers shared by the families.

Tokens of a stage are either a sequence (B, N, C) with N = H * W in row-major
order, a channels-last grid (B, H, W, C) or a map (B, C, H, W). The helpers here
convert between them, give the output size of the strided convs that make the
grids, and run a convolution over tokens on their grid (the depthwise convs of
focused attention, PVTv2's MLP and CSWin's LePE).

Every helper is written with shape arithmetic only (no Python branches on
sizes), so torch.fx and torch.compile trace them at any input size.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Grid = Tuple[int, int]

__all__ = ["Grid", "conv_out_size", "conv_out_grid", "tokens_to_map", "map_to_tokens", "TokensToMap",
           "PatchEmbed", "token_conv", "conv_tokens", "to_2tuple_size"]


def to_2tuple_size(size) -> Grid:
    """An int side or an (H, W) pair as a tuple of two ints."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def conv_out_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Output length of a convolution along one axis (floor division, as PyTorch computes it)."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_out_grid(hw: Grid, kernel: int, stride: int, padding: int = 0) -> Grid:
    """:func:`conv_out_size` along both axes of an (H, W) grid."""
    return conv_out_size(hw[0], kernel, stride, padding), conv_out_size(hw[1], kernel, stride, padding)


def tokens_to_map(x: torch.Tensor, hw: Grid) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map (a channels-last view, no copy)."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, H*W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


class TokensToMap(nn.Module):
    """(B, H*W, C) tokens on a grid -> (B, C, H, W): the NCHW output of a token stage.

    Has no parameters; it exists so that a stage's map is a module output, which
    feature extraction by module name (timm's FX and hook feature wrappers) can return.
    """

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        return tokens_to_map(x, hw)


class PatchEmbed(nn.Module):
    """Strided conv patch embedding (``proj``) + optional LayerNorm (``norm``): image or map -> (B, H', W', C).

    Swin (patch 4, norm), DeiT (patch 16, no norm), PVT (k = s = 4, then 2) and PVTv2
    (overlapping 7 / 4, then 3 / 2) use it; the output grid follows the input size
    (no size assertion: the model checks its input once, see ``FLattenModel.check_input``).

    Args:
        in_chans: input channels.
        embed_dim: output channels.
        kernel_size: conv kernel.
        stride: conv stride (default: the kernel size).
        padding: conv padding.
        norm: LayerNorm over the channels after the conv.
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, stride: Optional[int] = None,
                 padding: int = 0, norm: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride=self.stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def output_size(self, hw: Grid) -> Grid:
        """The grid of an input of size ``hw``."""
        return conv_out_grid(hw, self.kernel_size, self.stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))                 # (B, H', W', C)


def token_conv(x: torch.Tensor, hw: Grid, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               padding: int = 0, groups: int = 1) -> torch.Tensor:
    """A stride-1 convolution over tokens on their grid: (B, H*W, C) -> (B, H*W, C_out).

    The conv reads a channels-last view of the tokens and its channels-last
    output is read back as tokens, without copies around the conv.

    Args:
        x: (B, H*W, C) tokens in row-major grid order.
        hw: the grid (H, W).
        weight, bias, padding, groups: as :func:`torch.nn.functional.conv2d`.
    """
    b = x.shape[0]
    out = F.conv2d(tokens_to_map(x, hw), weight, bias, padding=padding, groups=groups)   # (B, C', H, W)
    return out.permute(0, 2, 3, 1).reshape(b, -1, out.shape[1])                          # (B, H*W, C')


def conv_tokens(conv: nn.Conv2d, x: torch.Tensor, hw: Grid) -> torch.Tensor:
    """:func:`token_conv` with the weights and settings of a stride-1 ``nn.Conv2d``."""
    return token_conv(x, hw, conv.weight, conv.bias, conv.padding, conv.groups)
