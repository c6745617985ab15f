"""FLatten-DeiT: DeiT with focused linear attention (paper Table 8, "FLatten-DeiT-T").

DeiT-Tiny layout: a 16x16 patch embedding, a class token, an absolute position
embedding over the 1 + 196 tokens, 12 pre-norm blocks of width 192 with 3
heads, a final LayerNorm and a linear head on the class token.

Attention type ``attn_type`` is one letter (DeiT has a single "stage"):

* ``'L'`` -- focused linear attention over all N + 1 tokens. The learnable
  ``positional_encoding`` covers the class token too; the depthwise conv on v
  only sees the 14 x 14 patch tokens (the class token has no grid position).
* ``'S'`` -- DeiT's own softmax attention (timm's fused SDPA attention), i.e.
  the DeiT-T baseline of Table 8.

No official FLatten-DeiT code or weights were released; parameter names follow
DeiT/timm (``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``) plus the flat
focused-attention extras (``blocks.{i}.attn.scale``, ``.positional_encoding``,
``.dwc``) used by every FLatten family.
"""
from __future__ import annotations

from functools import partial
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .layers import FocusedLinearAttention, check_input_size, checkpoint_filter_fn, to_2tuple_size
from .layers.common import ClassifierMixin, init_linear_and_norm
from .layers.focused_linear_attention import make_la_kwargs

__all__ = ["FLattenDeiT"]


class DeiTFocusedAttention(FocusedLinearAttention):
    """Focused linear attention over a class token plus an H x W patch grid.

    Args:
        dim: token width C.
        num_heads: number of heads.
        grid_size: (H, W) of the patch tokens.
        num_prefix_tokens: tokens before the grid (the class token).
        qkv_bias: bias of the fused q/k/v projection.
        proj_drop: dropout after the output projection.
        la_kwargs: focused-attention options (focusing_factor, kernel_size, use_dwc, focused).
    """

    def __init__(self, dim: int, num_heads: int, grid_size: Tuple[int, int], num_prefix_tokens: int = 1,
                 qkv_bias: bool = True, proj_drop: float = 0., **la_kwargs):
        num_tokens = num_prefix_tokens + grid_size[0] * grid_size[1]
        super().__init__(dim, num_heads, num_kv_tokens=num_tokens, **la_kwargs)
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, C).unbind(2)               # 3 x (B, N, C)
        x = self.attend(q, k, v, self.grid_size, num_prefix_tokens=self.num_prefix_tokens)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    Args:
        dim: token width.
        num_heads: attention heads.
        grid_size: patch grid (H, W) (used by focused attention).
        attn_type: 'L' focused linear attention or 'S' softmax attention.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        qkv_bias: bias of the q/k/v projection.
        drop: dropout after the attention / MLP projections.
        drop_path: stochastic depth rate of this block.
        norm_layer: normalisation layer.
        la_kwargs: focused-attention options.
    """

    def __init__(self, dim: int, num_heads: int, grid_size: Tuple[int, int], attn_type: str = "L",
                 mlp_ratio: float = 4., qkv_bias: bool = True, drop: float = 0., drop_path: float = 0.,
                 norm_layer=nn.LayerNorm, la_kwargs: Optional[dict] = None):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if attn_type == "L":
            self.attn = DeiTFocusedAttention(dim, num_heads, grid_size, num_prefix_tokens=1, qkv_bias=qkv_bias,
                                             proj_drop=drop, **(la_kwargs or {}))
        else:
            self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class FLattenDeiT(ClassifierMixin, nn.Module):
    """DeiT with focused linear attention.

    Args:
        img_size: input resolution (int or (H, W)); the model only accepts this size.
        in_chans: input channels.
        num_classes: classifier outputs (0 = no head).
        drop_rate: dropout after the attention / MLP projections and before the head.
        drop_path_rate: stochastic depth, increasing linearly over the blocks.
        attn_type: 'L' (focused linear attention in every block) or 'S' (softmax DeiT).
        la_kwargs: focused-attention options (focusing_factor, kernel_size, use_dwc, focused).
        embed_dim: token width.
        depth: number of blocks.
        depths: ``[depth]`` (config style); overrides ``depth`` when given.
        num_heads: attention heads (int or ``[int]``).
        patch_size: patch embedding size and stride.
        mlp_ratio: MLP hidden width relative to ``embed_dim``.
        qkv_bias: bias of the q/k/v projection.
        global_pool: 'token' (class token, DeiT) or 'avg' (mean of patch tokens).
    """

    global_pools = ("token", "avg")

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, in_chans: int = 3,
                 num_classes: int = 1000, drop_rate: float = 0., drop_path_rate: float = 0.1,
                 attn_type: str = "L", la_kwargs: Optional[dict] = None, embed_dim: int = 192,
                 depth: int = 12, depths: Optional[Sequence[int]] = None,
                 num_heads: Union[int, Sequence[int]] = 3, patch_size: int = 16, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, global_pool: str = "token"):
        super().__init__()
        if depths is not None:
            if len(depths) != 1:
                raise ValueError(f"DeiT has one stage: depths must hold one number, got {list(depths)}")
            depth = int(depths[0])
        if not isinstance(num_heads, int):
            if len(num_heads) != 1:
                raise ValueError(f"DeiT has one stage: num_heads must be one number, got {list(num_heads)}")
            num_heads = int(num_heads[0])
        if len(attn_type) != 1 or attn_type not in "LS":
            raise ValueError(f"attn_type of DeiT is one letter, 'L' or 'S', got {attn_type!r}")
        self.checked_global_pool(global_pool)
        la_kwargs = make_la_kwargs(**(la_kwargs or {}))

        self.img_size = to_2tuple_size(img_size)
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.global_pool = global_pool
        self.attn_type = attn_type
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim)
        grid = self.patch_embed.grid_size
        num_patches = grid[0] * grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # per-block stochastic depth
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, grid, attn_type=attn_type, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                  drop=drop_rate, drop_path=dpr[i], norm_layer=norm_layer, la_kwargs=la_kwargs)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
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

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # -- forward --------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)                                            # (B, H*W, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)                    # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + self.pos_embed                    # (B, 1 + H*W, C)
        return self.pos_drop(x)

    def _run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return self.norm(x)                                                # (B, 1 + H*W, C)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        else:
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.img_size, "FLatten-DeiT")
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Patch-token maps after the chosen blocks.

        Args:
            x: (B, 3, H, W) images of the model's size.
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
        check_input_size(x, self.img_size, "FLatten-DeiT")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        H, W = self.patch_embed.grid_size

        x = self._embed(x)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self._run_block(blk, x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                y = y[:, self.num_prefix_tokens:]                          # (B, H*W, C)
                if output_fmt == "NCHW":
                    y = y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks (and optionally norm / head) not needed for ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take_indices


def _create_deit(variant: str, pretrained: bool = False, **kwargs) -> FLattenDeiT:
    return build_model_with_cfg(
        FLattenDeiT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **kwargs)


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "crop_mode": "squash", "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "fixed_input_size": True,
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "flatten_deit_tiny_patch16_224": _cfg(),
})


@register_model
def flatten_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> FLattenDeiT:
    """FLatten-DeiT-T (Table 8: 6.1M params, 1.1 GFLOPs); ``attn_type='S'`` gives DeiT-T."""
    model_args = dict(embed_dim=192, depth=12, num_heads=3, patch_size=16, mlp_ratio=4.)
    return _create_deit("flatten_deit_tiny_patch16_224", pretrained, **dict(model_args, **kwargs))
