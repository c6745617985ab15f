"""FLatten-CSWin: CSWin Transformer with focused linear attention in chosen stages.

Layout (parameter names are those of the released checkpoints)::

    stage1_conv_embed   Conv 7x7 / 4 (padding 2) -> tokens -> LayerNorm
    stage1              blocks on the H/4 grid
    merge1 .. merge3    Conv 3x3 / 2 (padding 1) -> tokens -> LayerNorm, doubles the width
    stage2 .. stage4    blocks on the H/8, H/16, H/32 grids
    norm, mean over tokens, head

Every block is ``x + proj(attention(norm1(x)))`` then ``x + mlp(norm2(x))``
with one ``qkv`` projection shared by its attention branches (``attns``):

* ``S`` stages use CSWin's cross-shaped window attention: the channels are
  split in two halves, one attends inside vertical stripes (full height,
  ``split_size`` columns), the other inside horizontal stripes; the last stage
  (and a stage whose stripe covers the grid) has one branch over the whole grid.
* ``L`` stages use the same branch geometry with focused linear attention; by
  default the window is the whole stage grid, so there is one global branch
  (``attns.0``) with all heads, as in the released models.

Both kinds add CSWin's locally-enhanced positional encoding (LePE): a
depthwise 3x3 conv ``get_v`` over all channels of v, applied inside each
window (zero padding at the window border). A focused branch therefore
outputs ``linear_attention + dwc(v) + get_v(v)``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .layers.common import ClassifierMixin, init_linear_and_norm
from .layers import (FocusedLinearAttention, check_input_size, make_la_kwargs, parse_attn_type,
                     to_2tuple_size)
from .layers.weights import checkpoint_filter_fn

__all__ = ["FlattenCSWin"]


Grid = Tuple[int, int]
NUM_STAGES = 4


# ------------------------------------------------------------------------------------------------
# window helpers
# ------------------------------------------------------------------------------------------------
def grid_to_windows(x: torch.Tensor, hw: Grid, window: Grid) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B * nW, wh*ww, C) windows, row-major inside and across windows."""
    b, _, c = x.shape
    (h, w), (wh, ww) = hw, window
    x = x.view(b, h // wh, wh, w // ww, ww, c)                   # (B, H/wh, wh, W/ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)    # (B*nW, wh*ww, C)


def windows_to_grid(x: torch.Tensor, hw: Grid, window: Grid) -> torch.Tensor:
    """Inverse of :func:`grid_to_windows`: (B * nW, wh*ww, C) -> (B, H*W, C)."""
    c = x.shape[-1]
    (h, w), (wh, ww) = hw, window
    x = x.view(-1, h // wh, w // ww, wh, ww, c)                  # (B, H/wh, W/ww, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h * w, c)     # (B, H*W, C)


def locally_enhanced_pe(conv: nn.Conv2d, v: torch.Tensor, window: Grid) -> torch.Tensor:
    """CSWin's LePE: depthwise ``conv`` over v (B', n, C) laid out as a wh x ww window."""
    b, n, c = v.shape
    v = v.transpose(1, 2).reshape(b, c, window[0], window[1])    # (B', C, wh, ww)
    return conv(v).reshape(b, c, n).transpose(1, 2)               # (B', n, C)


def branch_windows(grid: Grid, split: Optional[int], single: bool) -> List[Grid]:
    """Window (wh, ww) of each attention branch of a block on ``grid``.

    One branch over the whole grid when ``single`` (last stage), when ``split`` is
    None or when the stripe covers the grid; otherwise CSWin's two branches:
    vertical stripes (H, split) and horizontal stripes (split, W).
    """
    h, w = grid
    if single or split is None or (split == h and split == w):
        return [(h, w)]
    if split < 1 or h % split or w % split:
        raise ValueError(f"stripe width {split} does not divide the {h}x{w} stage grid; choose split sizes "
                         f"that divide the grid of every stage (or another img_size)")
    return [(h, split), (split, w)]


# ------------------------------------------------------------------------------------------------
# attention branches
# ------------------------------------------------------------------------------------------------
class LePEAttention(nn.Module):
    """CSWin softmax attention inside windows, plus the LePE term (an ``S`` branch).

    Args:
        dim: channels of this branch.
        num_heads: heads of this branch.
        window: (wh, ww) window (a stripe, or the whole grid).
        attn_drop: dropout on the attention weights.
    """

    def __init__(self, dim: int, num_heads: int, window: Grid, attn_drop: float = 0.):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.window = window
        self.attn_drop = attn_drop
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Grid) -> torch.Tensor:
        """q, k, v: (B, H*W, dim) on the grid ``hw`` -> (B, H*W, dim)."""
        q, k, v = (grid_to_windows(t, hw, self.window) for t in (q, k, v))   # (B', n, dim)
        bw, n, c = q.shape
        lepe = locally_enhanced_pe(self.get_v, v, self.window)                # (B', n, dim)
        q, k, v = (t.reshape(bw, n, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # (B', h, n, d)
        # Softmax(q k^T / sqrt(d)) v, the default scale of SDPA.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.)
        x = x.transpose(1, 2).reshape(bw, n, c) + lepe                       # (B', n, dim)
        return windows_to_grid(x, hw, self.window)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window={self.window}"


class FocusedLePEAttention(FocusedLinearAttention):
    """Focused linear attention inside windows, plus ``dwc(v)`` and the LePE term (an ``L`` branch).

    With the default window (the whole stage grid) this is the global
    ``attns.0`` of the released FLatten-CSWin models.

    Args:
        dim: channels of this branch.
        num_heads: heads of this branch.
        window: (wh, ww) window; ``positional_encoding`` has wh*ww tokens.
        **la_kwargs: options of :class:`FocusedLinearAttention` (focusing_factor, ...).
    """

    def __init__(self, dim: int, num_heads: int, window: Grid, **la_kwargs):
        super().__init__(dim, num_heads, window[0] * window[1], **la_kwargs)
        self.window = window
        # Registered before ``dwc`` so that the parameter order is that of the released models.
        dwc = self._modules.pop("dwc", None)
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        if dwc is not None:
            self.dwc = dwc

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: Grid) -> torch.Tensor:
        """q, k, v: (B, H*W, dim) on the grid ``hw`` -> (B, H*W, dim)."""
        q, k, v = (grid_to_windows(t, hw, self.window) for t in (q, k, v))   # (B', n, dim)
        lepe = locally_enhanced_pe(self.get_v, v, self.window)                # (B', n, dim)
        x = self.attend(q, k, v, self.window) + lepe                          # (B', n, dim)
        return windows_to_grid(x, hw, self.window)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window={self.window}"


# ------------------------------------------------------------------------------------------------
# blocks and stages
# ------------------------------------------------------------------------------------------------
class CSWinBlock(nn.Module):
    """Pre-norm block: one ``qkv`` for all branches, branch outputs concatenated, ``proj``, MLP.

    Args:
        dim: channels C.
        num_heads: heads of the block (split evenly over two branches).
        grid: (H, W) token grid of the stage.
        split: stripe width of the two-branch layout; None = one branch over the grid.
        attn_type: 'L' (focused linear) or 'S' (softmax) branches.
        last_stage: one branch over the whole grid whatever ``split`` is.
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias of ``qkv``.
        proj_drop: dropout after ``proj`` and in the MLP.
        attn_drop: dropout on softmax attention weights (``S`` only).
        drop_path: stochastic depth rate.
        la_kwargs: options of the focused attention (``L`` only).
        norm_layer: normalisation layer.
    """

    def __init__(self, dim: int, num_heads: int, grid: Grid, split: Optional[int], attn_type: str,
                 last_stage: bool = False, mlp_ratio: float = 4., qkv_bias: bool = True,
                 proj_drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 la_kwargs: Optional[dict] = None, norm_layer=nn.LayerNorm):
        super().__init__()
        self.grid = grid
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm1 = norm_layer(dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        windows = branch_windows(grid, split, last_stage)
        n_branch = len(windows)
        if dim % n_branch or num_heads % n_branch:
            raise ValueError(f"two-branch CSWin block needs even dim and heads, got {dim} and {num_heads}")
        branch_dim, branch_heads = dim // n_branch, num_heads // n_branch
        if attn_type == "L":
            branches = [FocusedLePEAttention(branch_dim, branch_heads, win, **(la_kwargs or {}))
                        for win in windows]
        else:
            branches = [LePEAttention(branch_dim, branch_heads, win, attn_drop=attn_drop) for win in windows]
        self.attns = nn.ModuleList(branches)

        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.norm2 = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H*W, C) -> (B, H*W, C)."""
        c = x.shape[-1]
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)                   # 3 x (B, N, C)
        width = c // len(self.attns)
        parts = [attn(q[..., i * width:(i + 1) * width], k[..., i * width:(i + 1) * width],
                      v[..., i * width:(i + 1) * width], self.grid)
                 for i, attn in enumerate(self.attns)]                         # n_branch x (B, N, C/n)
        x = x + self.drop_path(self.proj_drop(self.proj(torch.cat(parts, dim=-1))))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class MapToTokens(nn.Module):
    """(B, C, H, W) -> (B, H*W, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class MergeBlock(nn.Module):
    """Down-sampling between stages: Conv 3x3 stride 2 on the grid, then LayerNorm.

    Args:
        dim: input channels.
        dim_out: output channels.
        grid: (H, W) input grid.
        norm_layer: normalisation layer.
    """

    def __init__(self, dim: int, dim_out: int, grid: Grid, norm_layer=nn.LayerNorm):
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(dim, dim_out, kernel_size=3, stride=2, padding=1)
        self.norm = norm_layer(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H*W, C) -> (B, H/2*W/2, C_out)."""
        b, _, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, *self.grid)                      # (B, C, H, W)
        x = self.conv(x).flatten(2).transpose(1, 2)                           # (B, H'W', C_out)
        return self.norm(x)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------
class FlattenCSWin(ClassifierMixin, nn.Module):
    """CSWin Transformer whose stages use focused linear (``L``) or softmax (``S``) attention.

    Args:
        img_size: input size (int or (H, W)); the model only accepts this size.
        in_chans: input channels.
        num_classes: classifier outputs (0 = no head).
        drop_rate: dropout before the head.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        attn_type: one letter per stage, 'L' focused linear, 'S' CSWin softmax ('LLSS').
        la_kwargs: options of every focused attention (focusing_factor, kernel_size, use_dwc,
            focused); see :func:`make_la_kwargs`.
        embed_dim: width of stage 1; doubled at every merge.
        depths: blocks per stage.
        num_heads: heads per stage.
        split_size: stripe width of the ``S`` stages; None = [1, 2, R4, R4] with R4 the last
            stage's grid size (7 at 224, 12 at 384: CSWin's values). The last stage always
            attends over its whole grid.
        la_split_size: window of the ``L`` stages; None (or an entry equal to the stage grid)
            = the whole stage grid, one global branch, as in the released models. Smaller
            values give CSWin's two stripe branches with focused attention.
        mlp_ratio: MLP hidden width / block width.
        qkv_bias: bias of ``qkv``.
        proj_drop_rate: dropout after ``proj`` and in the MLPs.
        attn_drop_rate: dropout on softmax attention weights.
        global_pool: 'avg' (mean of tokens) or '' (no pooling).
        norm_layer: normalisation layer.
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, in_chans: int = 3, num_classes: int = 1000,
                 drop_rate: float = 0., drop_path_rate: float = 0.1, attn_type: str = "LLSS",
                 la_kwargs: Optional[dict] = None, embed_dim: int = 64,
                 depths: Sequence[int] = (2, 4, 18, 1), num_heads: Sequence[int] = (2, 4, 8, 16),
                 split_size: Optional[Sequence[int]] = None, la_split_size: Optional[Sequence[int]] = None,
                 mlp_ratio: float = 4., qkv_bias: bool = True, proj_drop_rate: float = 0.,
                 attn_drop_rate: float = 0., global_pool: str = "avg", norm_layer=nn.LayerNorm):
        super().__init__()
        for name, value in (("depths", depths), ("num_heads", num_heads), ("split_size", split_size),
                            ("la_split_size", la_split_size)):
            if value is not None and len(value) != NUM_STAGES:
                raise ValueError(f"{name} needs one value per stage ({NUM_STAGES}), got {list(value)}")
        self.checked_global_pool(global_pool)
        attn_types = parse_attn_type(attn_type, NUM_STAGES)
        la_kwargs = make_la_kwargs(**(la_kwargs or {}))

        self.img_size = to_2tuple_size(img_size)
        self.num_classes = num_classes
        self.num_prefix_tokens = 0
        self.global_pool = global_pool
        self.attn_type = "".join(attn_types)
        self.grad_checkpointing = False

        # Token grid of every stage.
        grid = tuple(_conv_out(s, 7, 4, 2) for s in self.img_size)
        grids = [grid]
        for _ in range(NUM_STAGES - 1):
            grid = tuple(_conv_out(s, 3, 2, 1) for s in grid)
            grids.append(grid)
        self.grids = grids
        if split_size is None:
            last = grids[-1][0]
            split_size = [1, 2, last, last]
        la_split_size = list(la_split_size) if la_split_size is not None else [None] * NUM_STAGES
        dims = [embed_dim * 2 ** i for i in range(NUM_STAGES)]
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()

        self.stage1_conv_embed = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=2),
            MapToTokens(),
            nn.LayerNorm(embed_dim),
        )
        self.feature_info = []
        for i in range(NUM_STAGES):
            if i > 0:
                setattr(self, f"merge{i}", MergeBlock(dims[i - 1], dims[i], grids[i - 1], norm_layer))
            split = la_split_size[i] if attn_types[i] == "L" else split_size[i]
            first = sum(depths[:i])
            blocks = nn.ModuleList([
                CSWinBlock(dims[i], num_heads[i], grids[i], split, attn_types[i],
                           last_stage=i == NUM_STAGES - 1, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                           proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[first + j],
                           la_kwargs=la_kwargs, norm_layer=norm_layer)
                for j in range(depths[i])])
            setattr(self, f"stage{i + 1}", blocks)
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stage{i + 1}"))

        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = norm_layer(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_linear_and_norm)

    # -- timm surface ---------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Focused-attention temperatures and positional encodings."""
        return {n for n, _ in self.named_parameters()
                if n.rsplit(".", 1)[-1] in ("scale", "positional_encoding")}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _stage(self, i: int) -> Tuple[nn.Module, nn.ModuleList]:
        """(down-sampling module, blocks) of stage ``i`` (0-based)."""
        down = self.stage1_conv_embed if i == 0 else getattr(self, f"merge{i}")
        return down, getattr(self, f"stage{i + 1}")

    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        down, blocks = self._stage(i)
        x = down(x)
        for blk in blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> normalised last-stage tokens (B, H/32*W/32, C)."""
        check_input_size(x, self.img_size, type(self).__name__)
        for i in range(NUM_STAGES):
            x = self._run_stage(i, x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Per-stage feature maps (B, C_i, H_i, W_i).

        Args:
            x: input images.
            indices: last n stages if int, all if None, else the stage indices to return.
            norm: apply the final norm to the last stage's map.
            stop_early: stop after the last requested stage.
            output_fmt: only 'NCHW'.
            intermediates_only: return only the list of maps.
        Returns:
            The maps, or (normalised final tokens, maps).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        check_input_size(x, self.img_size, type(self).__name__)
        take_indices, max_index = feature_take_indices(NUM_STAGES, indices)
        last = max_index if (stop_early or intermediates_only) else NUM_STAGES - 1
        intermediates = []
        for i in range(last + 1):
            x = self._run_stage(i, x)
            if i in take_indices:
                y = self.norm(x) if (norm and i == NUM_STAGES - 1) else x
                h, w = self.grids[i]
                intermediates.append(y.transpose(1, 2).reshape(y.shape[0], -1, h, w))  # (B, C, H, W)
        if intermediates_only:
            return intermediates
        if last == NUM_STAGES - 1:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last requested one (and norm / head)."""
        take_indices, max_index = feature_take_indices(NUM_STAGES, indices)
        for i in range(max_index + 1, NUM_STAGES):
            setattr(self, f"merge{i}", nn.Identity())
            setattr(self, f"stage{i + 1}", nn.ModuleList())
        prune_end = max_index < NUM_STAGES - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
def _create_flatten_cswin(variant: str, pretrained: bool = False, **kwargs) -> FlattenCSWin:
    return build_model_with_cfg(
        FlattenCSWin, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "crop_mode": "squash", "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stage1_conv_embed.0", "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "flatten_cswin_tiny_224": _cfg(),
    "flatten_cswin_small_224": _cfg(),
    "flatten_cswin_base_224": _cfg(),
    "flatten_cswin_base_384": _cfg(input_size=(3, 384, 384), crop_pct=1.0),
})


@register_model
def flatten_cswin_tiny_224(pretrained: bool = False, **kwargs) -> FlattenCSWin:
    """FLatten-CSWin-T (dim 64, depths 2-4-18-1)."""
    model_args = dict(embed_dim=64, depths=[2, 4, 18, 1], num_heads=[2, 4, 8, 16])
    return _create_flatten_cswin("flatten_cswin_tiny_224", pretrained, **dict(model_args, **kwargs))


@register_model
def flatten_cswin_small_224(pretrained: bool = False, **kwargs) -> FlattenCSWin:
    """FLatten-CSWin-S (dim 64, depths 2-4-32-2)."""
    model_args = dict(embed_dim=64, depths=[2, 4, 32, 2], num_heads=[2, 4, 8, 16])
    return _create_flatten_cswin("flatten_cswin_small_224", pretrained, **dict(model_args, **kwargs))


@register_model
def flatten_cswin_base_224(pretrained: bool = False, **kwargs) -> FlattenCSWin:
    """FLatten-CSWin-B (dim 96, depths 3-6-29-2)."""
    model_args = dict(embed_dim=96, depths=[3, 6, 29, 2], num_heads=[4, 8, 16, 32])
    return _create_flatten_cswin("flatten_cswin_base_224", pretrained, **dict(model_args, **kwargs))


@register_model
def flatten_cswin_base_384(pretrained: bool = False, **kwargs) -> FlattenCSWin:
    """FLatten-CSWin-B at 384 (stripes 1-2-12-12, global L stages 96-48)."""
    model_args = dict(img_size=384, embed_dim=96, depths=[3, 6, 29, 2], num_heads=[4, 8, 16, 32])
    return _create_flatten_cswin("flatten_cswin_base_384", pretrained, **dict(model_args, **kwargs))
