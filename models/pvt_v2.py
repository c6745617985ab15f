"""FLatten-PVTv2: PVT v2 with focused linear attention.

Same stage machinery, attention modules and block as FLatten-PVT
(``models/pvt.py``); PVTv2 differs in three places:

* overlapping patch embeddings ``patch_embed{i}`` (Conv 7 / stride 4, then
  3 / stride 2, padding kernel // 2, LayerNorm) and no absolute position embedding;
* a LayerNorm ``norm{i}`` (eps 1e-6) at the end of every stage, the last one
  applied before the token mean that feeds ``head``;
* an MLP with a depthwise 3x3 conv between ``fc1`` and the GELU
  (``mlp.dwconv.dwconv``, the released parameter name).
"""
from __future__ import annotations

import math
import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from .layers.common import init_linear_and_norm
from .pvt import PVT_COMMON, Grid, PatchEmbed, PyramidVisionTransformer, _cfg, build_pvt

__all__ = ["PyramidVisionTransformerV2", "DWConvMlp"]


class DepthwiseConv(nn.Module):
    """Depthwise 3x3 conv over tokens on their grid: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, hw[0], hw[1]))   # (B, C, H, W)
        return x.flatten(2).transpose(1, 2)                               # (B, N, C)


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


class PyramidVisionTransformerV2(PyramidVisionTransformer):
    """FLatten-PVTv2. Arguments as :class:`models.pvt.PyramidVisionTransformer`.

    ``drop_rate`` applies to the attention and MLP projections (there is no
    position embedding).
    """

    mlp_layer = DWConvMlp

    def _make_patch_embed(self, i: int, in_chs: int, dim: int) -> PatchEmbed:
        kernel, stride = (7, 4) if i == 0 else (3, 2)
        return PatchEmbed(in_chs, dim, kernel_size=kernel, stride=stride, padding=kernel // 2)

    def _make_stage_extras(self, i: int, dim: int, grid: Grid) -> None:
        setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))

    def _make_final_norm(self, dim: int) -> None:
        pass  # the last stage's norm4 plays that role

    def _after_embed(self, i: int, x: torch.Tensor) -> torch.Tensor:
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


default_cfgs = generate_default_cfgs({f"flatten_pvt_v2_b{i}": _cfg() for i in range(5)})

@register_model
def flatten_pvt_v2_b0(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return build_pvt(PyramidVisionTransformerV2, "flatten_pvt_v2_b0", pretrained,
                     dict(PVT_COMMON, embed_dims=[32, 64, 160, 256], depths=[2, 2, 2, 2]), **kwargs)


@register_model
def flatten_pvt_v2_b1(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return build_pvt(PyramidVisionTransformerV2, "flatten_pvt_v2_b1", pretrained,
                     dict(PVT_COMMON, depths=[2, 2, 2, 2]), **kwargs)


@register_model
def flatten_pvt_v2_b2(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return build_pvt(PyramidVisionTransformerV2, "flatten_pvt_v2_b2", pretrained,
                     dict(PVT_COMMON, depths=[3, 4, 6, 3]), **kwargs)


@register_model
def flatten_pvt_v2_b3(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return build_pvt(PyramidVisionTransformerV2, "flatten_pvt_v2_b3", pretrained,
                     dict(PVT_COMMON, depths=[3, 4, 18, 3]), **kwargs)


@register_model
def flatten_pvt_v2_b4(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return build_pvt(PyramidVisionTransformerV2, "flatten_pvt_v2_b4", pretrained,
                     dict(PVT_COMMON, depths=[3, 8, 27, 3]), **kwargs)
