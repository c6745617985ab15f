"""FLatten-DeiT: DeiT with focused linear attention (paper Table 8, "FLatten-DeiT-T").

DeiT-Tiny layout: a 16x16 patch embedding, a class token, an absolute position
embedding over the 1 + 196 tokens, 12 pre-norm blocks of width 192 with 3
heads, a final LayerNorm and a linear head on the class token.

Attention type ``attn_type`` is one letter (DeiT has a single "stage"):

* ``'L'`` -- a linear attention (focused by default) over all N + 1 tokens. The
  learnable ``positional_encoding`` covers the class token too; the depthwise
  conv on v only sees the 14 x 14 patch tokens (the class token has no grid position).
* ``'S'`` -- DeiT's own softmax attention (timm's fused SDPA attention), i.e.
  the DeiT-T baseline of Table 8.

Any input size: built with ``dynamic_img_size=True`` the model runs at every
size whose sides are multiples of 16; ``pos_embed`` and the positional
encodings are resampled to the current patch grid (class token kept), as on
checkpoint load.

No official FLatten-DeiT code or weights were released; parameter names follow
DeiT/timm (``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``) plus the flat
focused-attention extras (``blocks.{i}.attn.scale``, ``.positional_encoding``,
``.dwc``) used by every FLatten family.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import Attention, DropPath, Mlp, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ._builder import build_flatten_model, pretrained_cfgs, register_config_names
from .layers.attention import checked_la_kwargs, create_linear_attention
from .layers.family import FLattenModel, ModelConfigError, init_linear_and_norm
from .layers.grid import Grid, PatchEmbed, to_2tuple_size
from .layers.pos_embed import GridCache, grid_parameter, resampled_parameter

__all__ = ["FLattenDeiT", "Block"]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    Args:
        dim: token width.
        num_heads: attention heads.
        grid_size: patch grid (H, W) at the built size (used by linear attention).
        attn_type: 'L' linear attention (``la_kwargs``) or 'S' softmax attention.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        qkv_bias: bias of the q/k/v projection.
        drop: dropout after the attention / MLP projections.
        drop_path: stochastic depth rate of this block.
        norm_layer: normalisation layer.
        la_kwargs: linear attention options.
    """

    def __init__(self, dim: int, num_heads: int, grid_size: Grid, attn_type: str = "L",
                 mlp_ratio: float = 4., qkv_bias: bool = True, drop: float = 0., drop_path: float = 0.,
                 norm_layer=nn.LayerNorm, la_kwargs: Optional[dict] = None):
        super().__init__()
        self.attn_type = attn_type
        self.norm1 = norm_layer(dim)
        if attn_type == "L":
            la = checked_la_kwargs(la_kwargs)
            self.attn = create_linear_attention(la.pop("kind"), dim, num_heads, grid_size, num_prefix_tokens=1,
                                                qkv="qkv", qkv_bias=qkv_bias, proj_drop=drop, **la)
        else:
            if dim % num_heads:
                raise ModelConfigError(f"width {dim} is not divisible by num_heads {num_heads}", "num_heads",
                                       num_heads)
            self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        """x: (B, 1 + H*W, C) tokens, the patch tokens on the grid ``hw``."""
        y = self.norm1(x)
        y = self.attn(y, hw) if self.attn_type == "L" else self.attn(y)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class FLattenDeiT(FLattenModel):
    """DeiT with focused linear attention.

    Args:
        img_size: input size (int or (H, W)) the model is built for.
        in_chans: input channels.
        num_classes: classifier outputs (0 = no head).
        global_pool: 'token' (class token, DeiT), 'avg' (mean of patch tokens) or '' (all tokens).
        drop_rate: dropout after the attention / MLP projections and before the head.
        drop_path_rate: stochastic depth, increasing linearly over the blocks.
        attn_type: 'L' (linear attention in every block) or 'S' (softmax DeiT).
        la_kwargs: linear attention options (kind, focusing_factor, kernel_size, use_dwc, focused, use_pe).
        embed_dim: token width.
        depth: number of blocks.
        depths: ``[depth]`` (config style); overrides ``depth`` when given.
        num_heads: attention heads (int or ``[int]``).
        patch_size: patch embedding size and stride.
        mlp_ratio: MLP hidden width relative to ``embed_dim``.
        qkv_bias: bias of the q/k/v projection.
        dynamic_img_size: run at any size whose sides are multiples of ``patch_size``.
    """

    global_pools = ("token", "avg", "")
    output_fmt = "NLC"

    def __init__(self, img_size: Union[int, Grid] = 224, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "token", drop_rate: float = 0., drop_path_rate: float = 0.1,
                 attn_type: str = "L", la_kwargs: Optional[dict] = None, embed_dim: int = 192,
                 depth: int = 12, depths: Optional[Sequence[int]] = None,
                 num_heads: Union[int, Sequence[int]] = 3, patch_size: int = 16, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, dynamic_img_size: bool = False):
        super().__init__()
        if depths is not None:
            if len(depths) != 1:
                raise ModelConfigError(f"DeiT has one stage: depths must hold one number, got {list(depths)}",
                                       "depths", depths)
            depth = int(depths[0])
        if not isinstance(num_heads, int):
            if len(num_heads) != 1:
                raise ModelConfigError(f"DeiT has one stage: num_heads must be one number, got {list(num_heads)}",
                                       "num_heads", num_heads)
            num_heads = int(num_heads[0])
        if not isinstance(attn_type, str) or len(attn_type) != 1 or attn_type not in "LS":
            raise ModelConfigError(f"attn_type of DeiT is one letter, 'L' or 'S', got {attn_type!r}", "attn_type",
                                   attn_type)
        la_kwargs = checked_la_kwargs(la_kwargs)
        self.size_multiple = patch_size
        self.init_surface(to_2tuple_size(img_size), num_classes, global_pool, embed_dim, drop_rate, dynamic_img_size)
        self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.attn_type = attn_type

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, norm=False)
        self.grid_size = grid = self.patch_embed.output_size(self.img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1] + 1, embed_dim))
        self._pos_cache = GridCache()
        self.pos_drop = nn.Dropout(drop_rate)

        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # per-block stochastic depth
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, grid, attn_type=attn_type, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                  drop=drop_rate, drop_path=dpr[i], norm_layer=norm_layer, la_kwargs=la_kwargs)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = self.make_head(num_classes)
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}")
                             for i in range(depth)]

        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(init_linear_and_norm)

    # -- timm model surface -------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        names = {"pos_embed", "cls_token"}
        for n, _ in self.named_parameters():
            if n.endswith(".attn.scale") or n.endswith(".attn.positional_encoding"):
                names.add(n)
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None),
                                                                      (r"^norm", (99999,))])

    def token_grids(self) -> Dict[str, Tuple[Grid, int]]:
        """{parameter: (grid, prefix tokens)} of the model's own token-grid parameters."""
        return {"pos_embed": (self.grid_size, 1)}

    def set_input_size(self, img_size: Union[int, Grid]) -> None:
        """Build for another input size: ``pos_embed`` and the positional encodings are resampled."""
        img_size = to_2tuple_size(img_size)
        old = self.grid_size
        self.grid_size = grid = self.patch_embed.output_size(img_size)
        self.pos_embed = resampled_parameter(self.pos_embed, grid, old, num_prefix_tokens=1)
        self._pos_cache.clear()
        for blk in self.blocks:
            if blk.attn_type == "L":
                blk.attn.set_grid(grid)
        self.img_size = img_size

    # -- forward --------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        """(B, 3, H, W) -> tokens (B, 1 + H/p * W/p, C) and the patch grid."""
        self.check_input(x)
        x = self.patch_embed(x)                                            # (B, h, w, C)
        B, h, w, C = x.shape
        x = x.reshape(B, h * w, C)
        pos = grid_parameter(self.pos_embed, (h, w), self.grid_size, 1, self._pos_cache)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + pos  # (B, 1 + h*w, C)
        return self.pos_drop(x), (h, w)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> normed tokens (B, 1 + H/p * W/p, C)."""
        x, hw = self._embed(x)
        x = self.run_blocks(self.blocks, x, hw)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Patch-token maps after the chosen blocks.

        Args:
            x: (B, 3, H, W) images.
            indices: last n blocks if int, all if None, else block indices (negative from the end).
            norm: apply the final norm to every intermediate.
            stop_early: stop after the last requested block.
            output_fmt: 'NCHW' ((B, C, H/16, W/16) maps) or 'NLC' ((B, H/16*W/16, C) tokens).
            intermediates_only: return only the intermediates.
        Returns:
            list of intermediates, or (final normed tokens, intermediates).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, (h, w) = self._embed(x)
        B = x.shape[0]
        blocks = self.blocks[:max_index + 1] if (stop_early or intermediates_only) else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self.run_blocks([blk], x, (h, w))
            if i in take_indices:
                y = self.norm(x) if norm else x
                y = y[:, self.num_prefix_tokens:]                          # (B, h*w, C)
                if output_fmt == "NCHW":
                    y = y.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks (and optionally norm / head) not needed for ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def _create_deit(variant: str, pretrained: bool = False, **kwargs) -> FLattenDeiT:
    return build_flatten_model(FLattenDeiT, variant, pretrained, feature_cfg=dict(out_indices=3, feature_cls="getter"),
                               **kwargs)


def _cfgs(arch: str) -> dict:
    return pretrained_cfgs(arch, "patch_embed.proj", pool_size=None)


default_cfgs = generate_default_cfgs({**_cfgs("flatten_deit_tiny_patch16_224"), **_cfgs("flatten_softmax_deit_t")})

DEIT_T = dict(embed_dim=192, depth=12, num_heads=3, patch_size=16, mlp_ratio=4.)


@register_model
def flatten_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> FLattenDeiT:
    """FLatten-DeiT-T (Table 8: 6.1M params, 1.1 GFLOPs, 74.1 top-1)."""
    return _create_deit("flatten_deit_tiny_patch16_224", pretrained, **{**DEIT_T, **kwargs})


# The config name (configs/flatten_deit_t.yaml) of the same model, from models/released.py.
register_config_names(globals())


@register_model
def flatten_softmax_deit_t(pretrained: bool = False, **kwargs) -> FLattenDeiT:
    """DeiT-T in this code base (Table 8: 5.7M params, 1.2 GFLOPs, 72.2 top-1)."""
    return _create_deit("flatten_softmax_deit_t", pretrained, **{**DEIT_T, "attn_type": "S", **kwargs})
