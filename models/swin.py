"""FLatten-Swin: Swin Transformer with focused linear attention in the early stages.

The layout is the original Swin-T/S/B (Liu et al., 2021): a patch-4 conv embed,
four stages of pre-norm blocks joined by patch merging at the *end* of each
stage, a final LayerNorm, average pooling and a linear ``head``. Parameter
names follow the released FLatten checkpoints (``layers.{i}.blocks.{j}...``,
``layers.{i}.downsample``), so those files load as they are.

Each stage uses one attention type (``attn_type``, one letter per stage):

* ``L``: focused linear attention (:class:`FocusedWindowAttention`) inside
  windows of ``window_size`` tokens per side. When the window covers the whole
  stage it becomes global attention with no shift: with ``window_size`` 56 at
  224 input (96 at 384) the first two stages attend globally.
* ``S``: Swin's softmax window attention with a relative position bias
  (:class:`WindowAttention`), window 7 (12 when ``window_size`` > 56), shifted
  by half a window on odd blocks.

Blocks work on channels-last grids (B, H, W, C) throughout.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .layers.common import (ClassifierMixin, check_input_size, init_linear_and_norm, parse_attn_type,
                            to_2tuple_size)
from .layers.focused_linear_attention import FocusedLinearAttention, make_la_kwargs
from .layers.weights import checkpoint_filter_fn
from .layers.window import relative_position_index, shifted_window_mask, window_partition, window_reverse

__all__ = ["FLattenSwinTransformer", "FocusedWindowAttention", "WindowAttention"]


def softmax_window_size(window_size: int) -> int:
    """Window of the ``S`` (softmax) stages for a given L-stage ``window_size``."""
    return 7 if window_size <= 56 else 12


class FocusedWindowAttention(FocusedLinearAttention):
    """Focused linear attention over the tokens of each window.

    Args:
        dim: channels C.
        num_heads: heads h.
        window_size: window side w; ``positional_encoding`` covers w*w tokens and
            ``dwc`` runs on the w x w window grid.
        qkv_bias: bias of the ``qkv`` projection.
        proj_drop: dropout after ``proj``.
        **la_kwargs: focused attention options (see :func:`make_la_kwargs`).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 proj_drop: float = 0., **la_kwargs):
        super().__init__(dim, num_heads, window_size * window_size, **la_kwargs)
        self.window_size = window_size
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: (B * nW, w*w, C) window tokens.
            mask: shifted-window mask; accepted for interface parity with
                :class:`WindowAttention` and deliberately unused: the released
                models do not mask linear attention, so in shifted windows the
                tokens of the rolled-in border regions attend to each other.
        """
        q, k, v = self.qkv(x).unflatten(-1, (3, self.dim)).unbind(-2)     # 3 x (B*nW, N, C)
        x = self.attend(q, k, v, (self.window_size, self.window_size))
        return self.proj_drop(self.proj(x))


class WindowAttention(nn.Module):
    """Swin's softmax window attention with a learned relative position bias.

    Args:
        dim: channels C.
        num_heads: heads h.
        window_size: window side w.
        qkv_bias: bias of the ``qkv`` projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(h, N, N) bias, N = w*w."""
        n = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, h)
        return bias.view(n, n, -1).permute(2, 0, 1)                                       # (h, N, N)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: (B * nW, N, C) window tokens, windows of one image contiguous.
            mask: (nW, N, N) additive mask of shifted windows, or None.
        """
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                   # 3 x (B*nW, h, N, d)
        bias = self.relative_position_bias().unsqueeze(0)                 # (1, h, N, N)
        if mask is not None:
            nw = mask.shape[0]
            # One bias per window of the batch, (B*nW, h, N, N): SDPA's fused kernels take 4-d
            # inputs; a (B, nW, h, N, d) batch would run its slower unfused math path.
            bias = (bias + mask.unsqueeze(1)).repeat(b_ // nw, 1, 1, 1)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                           dropout_p=self.attn_drop if self.training else 0.)
        x = x.reshape(b_, self.num_heads, n, -1).transpose(1, 2).reshape(b_, n, c)  # (B*nW, N, C)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class FLattenSwinBlock(nn.Module):
    """Pre-norm Swin block: (shifted) window attention, then an MLP.

    Args:
        dim: channels C.
        input_resolution: (H, W) of the stage grid.
        num_heads: heads h.
        attn_type: 'L' (focused linear) or 'S' (softmax with relative position bias).
        window_size: requested window side; reduced to the grid (and the shift
            dropped) when the grid is not larger than the window.
        shift_size: cyclic shift of the grid before windowing (0 = none).
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias of ``qkv``.
        proj_drop: dropout after ``proj`` and inside the MLP.
        attn_drop: dropout on softmax attention weights ('S' only).
        drop_path: stochastic depth of both residual branches.
        la_kwargs: focused attention options ('L' only).
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, attn_type: str = "L",
                 window_size: int = 7, shift_size: int = 0, mlp_ratio: float = 4., qkv_bias: bool = True,
                 proj_drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 la_kwargs: Optional[Dict[str, Any]] = None):
        super().__init__()
        H, W = input_resolution
        if min(H, W) <= window_size:
            # The window covers the grid: plain (global) attention, nothing to shift.
            window_size, shift_size = min(H, W), 0
        if H % window_size or W % window_size:
            raise ValueError(f"stage grid {H}x{W} is not a multiple of the window {window_size}; "
                             "choose img_size / window_size so that windows tile every stage")
        self.input_resolution = (H, W)
        self.window_size = window_size
        self.shift_size = shift_size
        self.attn_type = attn_type

        self.norm1 = nn.LayerNorm(dim)
        if attn_type == "L":
            self.attn = FocusedWindowAttention(dim, num_heads, window_size, qkv_bias=qkv_bias,
                                               proj_drop=proj_drop, **(la_kwargs or {}))
            mask = None  # linear attention ignores the shifted-window mask (as released)
        else:
            self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                        proj_drop=proj_drop)
            mask = shifted_window_mask(H, W, window_size, shift_size)
        self.register_buffer("attn_mask", mask, persistent=False)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        s = self.shift_size
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(x, self.window_size)                   # (B*nW, w*w, C)
        windows = self.attn(windows, mask=self.attn_mask)
        x = window_reverse(windows, self.window_size, H, W)               # (B, H, W, C)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return (f"attn_type={self.attn_type}, input_resolution={self.input_resolution}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}")


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (4C), LayerNorm, Linear 4C -> 2C without bias.

    Args:
        dim: input channels C.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H/2, W/2, 2C)."""
        B, H, W, C = x.shape
        # Concat order (row, col) offsets (0,0), (1,0), (0,1), (1,1), as Swin's checkpoints expect.
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5)  # (B, H/2, W/2, dc, dr, C)
        x = x.flatten(3)                                                     # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))


class FLattenSwinStage(nn.Module):
    """``depth`` blocks at one resolution, then (optionally) patch merging.

    Args:
        dim: channels C.
        input_resolution: (H, W) of the stage grid.
        depth: number of blocks.
        num_heads: heads per block.
        attn_type: 'L' or 'S' for every block of the stage.
        window_size: window side of the blocks (before clipping to the grid).
        downsample: end the stage with :class:`PatchMerging`.
        drop_path: per-block stochastic depth rates.
        **block_kwargs: remaining :class:`FLattenSwinBlock` arguments.
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], depth: int, num_heads: int, attn_type: str,
                 window_size: int, downsample: bool, drop_path: Sequence[float], **block_kwargs):
        super().__init__()
        H, W = input_resolution
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            FLattenSwinBlock(dim, (H, W), num_heads, attn_type=attn_type, window_size=window_size,
                             shift_size=0 if i % 2 == 0 else window_size // 2, drop_path=drop_path[i],
                             **block_kwargs)
            for i in range(depth)])
        if downsample and (H % 2 or W % 2):
            raise ValueError(f"patch merging needs an even grid, got {H}x{W}")
        self.downsample = PatchMerging(dim) if downsample else None

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's blocks without the final patch merging; (B, H, W, C)."""
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for blk in self.blocks:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            return x
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


class FLattenSwinTransformer(ClassifierMixin, nn.Module):
    """FLatten-Swin backbone and classifier.

    Args:
        img_size: input size (int or (H, W)); the model only runs at this size.
        in_chans: input channels.
        num_classes: classes of ``head`` (0 = no head).
        drop_rate: dropout after the embedding, in the MLPs and after attention.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        attn_type: one letter per stage, 'L' focused linear or 'S' softmax window attention.
        la_kwargs: focused attention options (focusing_factor, kernel_size, use_dwc, focused).
        embed_dim: channels of the first stage (doubled at every merge).
        depths: blocks per stage.
        num_heads: heads per stage.
        window_size: window of the 'L' stages (56 = global attention in stages 1-2 at 224);
            also picks the 'S' window (7, or 12 when larger than 56).
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias of the ``qkv`` projections.
        patch_size: side of the patch embedding.
        ape: add a learned absolute position embedding after the patch embedding.
        patch_norm: LayerNorm after the patch embedding.
        attn_drop_rate: dropout on softmax attention weights.
        global_pool: 'avg' or '' (no pooling) before ``head``.
        softmax_window: window of the 'S' stages; None keeps the released rule above
            (e.g. 8 runs 512 inputs, whose stage grids 7 and 12 do not tile).
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, in_chans: int = 3, num_classes: int = 1000,
                 drop_rate: float = 0., drop_path_rate: float = 0.1, attn_type: str = "LLSS",
                 la_kwargs: Optional[Dict[str, Any]] = None, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 56, mlp_ratio: float = 4., qkv_bias: bool = True, patch_size: int = 4,
                 ape: bool = False, patch_norm: bool = True, attn_drop_rate: float = 0.,
                 global_pool: str = "avg", softmax_window: Optional[int] = None):
        super().__init__()
        self.checked_global_pool(global_pool)
        num_stages = len(depths)
        if len(num_heads) != num_stages:
            raise ValueError(f"num_heads {list(num_heads)} must have one entry per stage ({num_stages})")
        attn_types = parse_attn_type(attn_type, num_stages)
        la_kwargs = make_la_kwargs(**(la_kwargs or {}))
        self.img_size = to_2tuple_size(img_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_prefix_tokens = 0
        self.num_features = self.head_hidden_size = int(embed_dim * 2 ** (num_stages - 1))
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim,
                                      norm_layer=nn.LayerNorm if patch_norm else None, output_fmt="NHWC",
                                      strict_img_size=False)
        grid = self.patch_embed.grid_size
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, self.feature_info = [], []
        for i in range(num_stages):
            dim = embed_dim * 2 ** i
            res = (grid[0] // 2 ** i, grid[1] // 2 ** i)
            stage_window = window_size if attn_types[i] == "L" else (softmax_window or softmax_window_size(window_size))
            stages.append(FLattenSwinStage(
                dim, res, depths[i], num_heads[i], attn_types[i], stage_window,
                downsample=i < num_stages - 1, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                la_kwargs=la_kwargs))
            self.feature_info.append(dict(num_chs=dim, reduction=patch_size * 2 ** i, module=f"layers.{i}"))
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_linear_and_norm)

    # -- timm model surface -----------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        leaves = ("absolute_pos_embed", "positional_encoding", "scale", "relative_position_bias_table")
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in leaves}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^absolute_pos_embed|^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+)\.downsample", (0,)),
                (r"^layers\.(\d+)\.\w+\.(\d+)", None),
                (r"^norm", (99999,)),
            ])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.layers:
            stage.grad_checkpointing = enable

    # -- forward ----------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) image -> (B, H/p, W/p, C) tokens."""
        name = getattr(self, "pretrained_cfg", {}).get("architecture", type(self).__name__)
        check_input_size(x, self.img_size, name)
        x = self.patch_embed(x)                                           # (B, Hp, Wp, C)
        if self.absolute_pos_embed is not None:
            x = x + self.absolute_pos_embed.view(1, *x.shape[1:])
        return self.pos_drop(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Per-stage features (before each stage's patch merging) as NCHW maps.

        Args:
            x: (B, 3, H, W) images.
            indices: last n stages if int, all if None, else the stage indices to return.
            norm: apply the final norm to the last stage's map.
            stop_early: stop after the last requested stage.
            output_fmt: only 'NCHW'.
            intermediates_only: return only the list of maps.
        Returns:
            The maps, or (final features (B, H/32, W/32, C), maps).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        last = len(self.layers) - 1
        stages = self.layers[:max_index + 1] if stop_early else self.layers
        intermediates = []
        x = self._embed(x)
        for i, stage in enumerate(stages):
            x = stage.forward_blocks(x)
            if i in take_indices:
                feat = self.norm(x) if norm and i == last else x
                intermediates.append(feat.permute(0, 3, 1, 2).contiguous())  # (B, C, H, W)
            if stage.downsample is not None:
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        if len(stages) - 1 == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages (and norm / head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        prune_end = max_index < len(self.layers) - 1
        self.layers = self.layers[:max_index + 1]
        if prune_end:
            self.layers[-1].downsample = None
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> normed last-stage features (B, H/32, W/32, C)."""
        x = self._embed(x)
        x = self.layers(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))                                        # (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_flatten_swin(variant: str, pretrained: bool = False, **kwargs) -> FLattenSwinTransformer:
    return build_model_with_cfg(
        FLattenSwinTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "crop_mode": "squash", "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "flatten_swin_tiny_patch4_224": _cfg(),
    "flatten_swin_small_patch4_224": _cfg(),
    "flatten_swin_base_patch4_224": _cfg(),
    "flatten_swin_base_patch4_384": _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
})


@register_model
def flatten_swin_tiny_patch4_224(pretrained: bool = False, **kwargs) -> FLattenSwinTransformer:
    """FLatten-Swin-T: 29.2M params at 224."""
    args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=56, drop_path_rate=0.2)
    return _create_flatten_swin("flatten_swin_tiny_patch4_224", pretrained, **dict(args, **kwargs))


@register_model
def flatten_swin_small_patch4_224(pretrained: bool = False, **kwargs) -> FLattenSwinTransformer:
    """FLatten-Swin-S."""
    args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=56, drop_path_rate=0.3)
    return _create_flatten_swin("flatten_swin_small_patch4_224", pretrained, **dict(args, **kwargs))


@register_model
def flatten_swin_base_patch4_224(pretrained: bool = False, **kwargs) -> FLattenSwinTransformer:
    """FLatten-Swin-B."""
    args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=56,
                drop_path_rate=0.5)
    return _create_flatten_swin("flatten_swin_base_patch4_224", pretrained, **dict(args, **kwargs))


@register_model
def flatten_swin_base_patch4_384(pretrained: bool = False, **kwargs) -> FLattenSwinTransformer:
    """FLatten-Swin-B at 384 (L window 96: stages 1-2 global; S window 12)."""
    args = dict(img_size=384, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=96,
                drop_path_rate=0.5)
    return _create_flatten_swin("flatten_swin_base_patch4_384", pretrained, **dict(args, **kwargs))
