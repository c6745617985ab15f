"""FLatten-PVTv2: PVT v2 with focused linear attention.

Same stage machinery, attention modules and block as FLatten-PVT
(``models/pvt.py``); PVTv2 differs in three places:

* overlapping patch embeddings ``patch_embed{i}`` (Conv 7 / stride 4, then
  3 / stride 2, padding kernel // 2, LayerNorm) and no absolute position embedding;
* a LayerNorm ``norm{i}`` (eps 1e-6) at the end of every stage, the last one
  applied before the mean that feeds ``head``;
* an MLP with a depthwise 3x3 conv between ``fc1`` and the GELU
  (``mlp.dwconv.dwconv``, the released parameter name).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ._builder import pretrained_cfgs
from .layers.family import init_linear_and_norm
from .layers.grid import Grid, PatchEmbed, conv_tokens
from .pvt import PVT_COMMON, PVT_DEPTHS, SOFTMAX, FLattenPVT, create_pvt

__all__ = ["FLattenPVTv2", "DWConvMlp"]


class DepthwiseConv(nn.Module):
    """Depthwise 3x3 conv over tokens on their grid: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        return conv_tokens(self.dwconv, x, hw)


class DWConvMlp(nn.Module):
    """fc1 -> depthwise 3x3 conv -> GELU -> dropout -> fc2 -> dropout.

    Args:
        in_features: input and output channels.
        hidden_features: hidden channels.
        act_layer: activation.
        drop: dropout after the activation and after fc2.
    """

    def __init__(self, in_features: int, hidden_features: int, act_layer=nn.GELU, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DepthwiseConv(hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        x = self.act(self.dwconv(self.fc1(x), hw))
        return self.drop(self.fc2(self.drop(x)))


class FLattenPVTv2(FLattenPVT):
    """FLatten-PVTv2. Arguments as :class:`models.pvt.FLattenPVT`.

    ``drop_rate`` applies to the attention and MLP projections (there is no
    position embedding).
    """

    mlp_layer = DWConvMlp
    ignored_checkpoint_keys = {}

    def _make_patch_embed(self, i: int, in_chs: int, dim: int) -> PatchEmbed:
        kernel, stride = (7, 4) if i == 0 else (3, 2)
        return PatchEmbed(in_chs, dim, kernel_size=kernel, stride=stride, padding=kernel // 2)

    def _make_stage_extras(self, i: int, dim: int, grid: Grid) -> None:
        setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))

    def _after_embed(self, i: int, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        return x

    def _after_blocks(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"norm{i + 1}")(x)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        init_linear_and_norm(m)
        if isinstance(m, nn.Conv2d):
            # PVTv2 initialises every conv with He-normal over fan-out.
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _create_pvt_v2(variant: str, pretrained: bool, arch: dict, **kwargs) -> FLattenPVTv2:
    return create_pvt(FLattenPVTv2, variant, pretrained, arch, **kwargs)


def _cfgs(arch: str) -> dict:
    return pretrained_cfgs(arch, "patch_embed1.proj")


default_cfgs = generate_default_cfgs({
    **{k: v for i in range(5) for k, v in _cfgs(f"flatten_pvt_v2_b{i}").items()},
    **{k: v for i in range(5) for k, v in _cfgs(f"flatten_softmax_pvt_v2_b{i}").items()},
})

B0 = dict(PVT_COMMON, embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2))
B1 = dict(PVT_COMMON, depths=(2, 2, 2, 2))
B2 = dict(PVT_COMMON, depths=PVT_DEPTHS["s"])
B3 = dict(PVT_COMMON, depths=PVT_DEPTHS["m"])
B4 = dict(PVT_COMMON, depths=PVT_DEPTHS["l"])


@register_model
def flatten_pvt_v2_b0(pretrained: bool = False, **kwargs) -> FLattenPVTv2:
    """FLatten-PVTv2-B0 (Table 8: 3.6M params, 0.6 GFLOPs, 71.1 top-1)."""
    return _create_pvt_v2("flatten_pvt_v2_b0", pretrained, B0, **kwargs)


@register_model
def flatten_pvt_v2_b1(pretrained: bool = False, **kwargs) -> FLattenPVTv2:
    """FLatten-PVTv2-B1 (Table 8: 12.9M params, 2.2 GFLOPs, 79.5 top-1)."""
    return _create_pvt_v2("flatten_pvt_v2_b1", pretrained, B1, **kwargs)


@register_model
def flatten_pvt_v2_b2(pretrained: bool = False, **kwargs) -> FLattenPVTv2:
    """FLatten-PVTv2-B2 (Table 8: 22.6M params, 4.3 GFLOPs, 82.5 top-1)."""
    return _create_pvt_v2("flatten_pvt_v2_b2", pretrained, B2, **kwargs)


@register_model
def flatten_pvt_v2_b3(pretrained: bool = False, **kwargs) -> FLattenPVTv2:
    """FLatten-PVTv2-B3 (Table 8: 38.3M params, 7.3 GFLOPs, 83.7 top-1)."""
    return _create_pvt_v2("flatten_pvt_v2_b3", pretrained, B3, **kwargs)


@register_model
def flatten_pvt_v2_b4(pretrained: bool = False, **kwargs) -> FLattenPVTv2:
    """FLatten-PVTv2-B4 (Table 8: 51.8M params, 10.7 GFLOPs, 84.0 top-1)."""
    return _create_pvt_v2("flatten_pvt_v2_b4", pretrained, B4, **kwargs)


# Softmax baselines of Table 8 (configs/baselines/pvt_v2_*.yaml): spatial-reduction attention everywhere.
@register_model
def flatten_softmax_pvt_v2_b0(pretrained: bool = False, **kwargs) -> FLattenPVTv2:
    """PVTv2-B0 in this code base (Table 8: 3.4M params, 0.6 GFLOPs, 70.5 top-1)."""
    return _create_pvt_v2("flatten_softmax_pvt_v2_b0", pretrained, dict(B0, **SOFTMAX), **kwargs)


@register_model
def flatten_softmax_pvt_v2_b1(pretrained: bool = False, **kwargs) -> FLattenPVTv2:
    """PVTv2-B1 in this code base (Table 8: 13.1M, 2.1G, 78.7)."""
    return _create_pvt_v2("flatten_softmax_pvt_v2_b1", pretrained, dict(B1, **SOFTMAX), **kwargs)


@register_model
def flatten_softmax_pvt_v2_b2(pretrained: bool = False, **kwargs) -> FLattenPVTv2:
    """PVTv2-B2 in this code base (Table 8: 25.4M, 4.0G, 82.0)."""
    return _create_pvt_v2("flatten_softmax_pvt_v2_b2", pretrained, dict(B2, **SOFTMAX), **kwargs)


@register_model
def flatten_softmax_pvt_v2_b3(pretrained: bool = False, **kwargs) -> FLattenPVTv2:
    """PVTv2-B3 in this code base (Table 8: 45.2M, 6.9G, 83.2)."""
    return _create_pvt_v2("flatten_softmax_pvt_v2_b3", pretrained, dict(B3, **SOFTMAX), **kwargs)


@register_model
def flatten_softmax_pvt_v2_b4(pretrained: bool = False, **kwargs) -> FLattenPVTv2:
    """PVTv2-B4 in this code base (Table 8: 62.6M, 10.1G, 83.6)."""
    return _create_pvt_v2("flatten_softmax_pvt_v2_b4", pretrained, dict(B4, **SOFTMAX), **kwargs)
