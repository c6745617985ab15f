"""FLatten-CSWin: CSWin Transformer with focused linear attention in chosen stages.

Layout (parameter names are those of the released checkpoints)::

    stage1_conv_embed   Conv 7x7 / 4 (padding 2) -> tokens -> LayerNorm
    stage1              blocks on the H/4 grid; to_map1 gives the stage's NCHW map
    merge1 .. merge3    Conv 3x3 / 2 (padding 1) on the map -> tokens -> LayerNorm, doubles the width
    stage2 .. stage4    blocks on the H/8, H/16, H/32 grids (to_map2 .. to_map4)
    norm, mean over positions, head

Every block is ``x + proj(attention(norm1(x)))`` then ``x + mlp(norm2(x))``
with one ``qkv`` projection shared by its attention branches (``attns``):

* ``S`` stages use CSWin's cross-shaped window attention: the channels are
  split in two halves, one attends inside vertical stripes (full height,
  ``split_size`` columns), the other inside horizontal stripes; the last stage
  (and a stage whose stripe covers the grid) has one branch over the whole grid.
* ``L`` stages use the same branch geometry with a linear attention (focused by
  default); by default the window is the whole stage grid, so there is one
  global branch (``attns.0``) with all heads, as in the released models.

Both kinds add CSWin's locally-enhanced positional encoding (LePE): a
depthwise 3x3 conv ``get_v`` over all channels of v, applied inside each
window (zero padding at the window border). A focused branch therefore
outputs ``linear_attention + dwc(v) + get_v(v)``.

Any input size: built with ``dynamic_img_size=True`` the model runs at every
size whose sides are multiples of 32. Whole-grid branches follow the grid
(focused ones resample their positional encoding, as on checkpoint load);
stripes keep their width and the grid is padded at the bottom / right to whole
stripes, as CSWin's segmentation code does.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ._builder import build_flatten_model, pretrained_cfgs, register_config_names
from .layers.attention import checked_la_kwargs, create_linear_attention
from .layers.family import (FLattenModel, ModelConfigError, check_heads, check_per_stage, init_linear_and_norm,
                            parse_attn_type)
from .layers.grid import Grid, TokensToMap, conv_out_grid, conv_tokens, map_to_tokens, to_2tuple_size
from .layers.window import pad_to_window, window_partition, window_reverse

__all__ = ["FLattenCSWin", "CSWinBlock", "LePEAttention", "branch_layout"]

NUM_STAGES = 4


def branch_layout(grid: Grid, split: Optional[int], single: bool) -> Optional[int]:
    """The stripe width of a block's two branches on ``grid``, or None for one branch over the whole grid.

    One branch when ``single`` (last stage), when ``split`` is None or when the
    stripe covers the grid; otherwise CSWin's two branches: vertical stripes
    (H, split) and horizontal stripes (split, W).
    """
    if single or split is None or split >= max(grid):
        return None
    if split < 1:
        raise ModelConfigError(f"stripe width must be >= 1, got {split}", "split_size", split)
    return split


class LePEAttention(nn.Module):
    """CSWin softmax attention inside windows, plus the LePE term (an ``S`` branch).

    Args:
        dim: channels of this branch.
        num_heads: heads of this branch.
        attn_drop: dropout on the attention weights.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.):
        super().__init__()
        check_heads(dim, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def set_grid(self, grid: Grid) -> None:
        """Nothing depends on the grid."""

    def forward(self, qkv: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], window: Grid) -> torch.Tensor:
        """q, k, v: (B', wh*ww, dim) tokens of windows of ``window`` -> (B', wh*ww, dim)."""
        q, k, v = qkv
        bw, n, c = q.shape
        lepe = conv_tokens(self.get_v, v, window)                             # (B', n, dim)
        q, k, v = (t.reshape(bw, n, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # (B', h, n, d)
        # Softmax(q k^T / sqrt(d)) v, the default scale of SDPA.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.)
        return x.transpose(1, 2).reshape(bw, n, c) + lepe                   # (B', n, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


class CSWinBlock(nn.Module):
    """Pre-norm block: one ``qkv`` for all branches, branch outputs concatenated, ``proj``, MLP.

    Args:
        dim: channels C.
        num_heads: heads of the block (split evenly over two branches).
        grid: (H, W) token grid of the stage at the built size.
        split: stripe width of the two-branch layout; None = one branch over the grid.
        attn_type: 'L' (linear, ``la_kwargs``) or 'S' (softmax) branches.
        last_stage: one branch over the whole grid whatever ``split`` is.
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias of ``qkv``.
        proj_drop: dropout after ``proj`` and in the MLP.
        attn_drop: dropout on softmax attention weights (``S`` only).
        drop_path: stochastic depth rate.
        la_kwargs: linear attention options (``L`` only).
        norm_layer: normalisation layer.
        dynamic: inputs of other sizes are expected (pad to whole stripes).
    """

    def __init__(self, dim: int, num_heads: int, grid: Grid, split: Optional[int], attn_type: str,
                 last_stage: bool = False, mlp_ratio: float = 4., qkv_bias: bool = True,
                 proj_drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 la_kwargs: Optional[dict] = None, norm_layer=nn.LayerNorm, dynamic: bool = False):
        super().__init__()
        self.stripe = branch_layout(grid, split, last_stage)
        self.dynamic = dynamic
        self.attn_type = attn_type
        self._set_grid(grid)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm1 = norm_layer(dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        n_branch = 1 if self.stripe is None else 2
        if dim % n_branch or num_heads % n_branch:
            raise ModelConfigError(f"two-branch CSWin block needs even width and heads, got {dim} and {num_heads}",
                                   "num_heads", num_heads)
        branch_dim, branch_heads = dim // n_branch, num_heads // n_branch
        if attn_type == "L":
            la = checked_la_kwargs(la_kwargs)
            kind = la.pop("kind")
            branches = [create_linear_attention(kind, branch_dim, branch_heads, self.window(i, grid), qkv=None,
                                                lepe=True, **la)
                        for i in range(n_branch)]
        else:
            branches = [LePEAttention(branch_dim, branch_heads, attn_drop=attn_drop) for _ in range(n_branch)]
        self.attns = nn.ModuleList(branches)

        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.norm2 = norm_layer(dim)

    def _set_grid(self, grid: Grid) -> None:
        self.grid = tuple(grid)
        s = self.stripe
        self.padded = s is not None and bool(grid[0] % s or grid[1] % s)

    def window(self, branch: int, grid: Grid) -> Grid:
        """Window of ``branch`` on a (padded) grid: the grid, a vertical or a horizontal stripe."""
        if self.stripe is None:
            return grid
        return (grid[0], self.stripe) if branch == 0 else (self.stripe, grid[1])

    def set_grid(self, grid: Grid) -> None:
        """Build for another stage grid (``set_input_size``)."""
        self._set_grid(grid)
        for i, attn in enumerate(self.attns):
            attn.set_grid(self.window(i, grid))

    def _branch(self, i: int, attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One branch on (B, H, W, c) grids of q, k, v -> (B, H, W, c)."""
        B, H, W, c = q.shape
        if self.stripe is None:
            out = attn(tuple(t.reshape(B, H * W, c) for t in (q, k, v)), (H, W))
            return out.view(B, H, W, c)
        pad = self.dynamic or self.padded
        if pad:
            unit = (1, self.stripe) if i == 0 else (self.stripe, 1)
            q, k, v = (pad_to_window(t, unit) for t in (q, k, v))
        Hp, Wp = q.shape[1], q.shape[2]
        window = self.window(i, (Hp, Wp))
        out = attn(tuple(window_partition(t, window) for t in (q, k, v)), window)   # (B * nW, wh*ww, c)
        out = window_reverse(out, window, Hp, Wp)                                   # (B, Hp, Wp, c)
        return out[:, :H, :W] if pad else out

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        """x: (B, H*W, C) on the grid ``hw`` -> (B, H*W, C)."""
        B, N, C = x.shape
        H, W = hw
        q, k, v = self.qkv(self.norm1(x)).view(B, H, W, 3 * C).chunk(3, dim=-1)   # 3 x (B, H, W, C)
        width = C // len(self.attns)
        parts = [self._branch(i, attn, q[..., i * width:(i + 1) * width], k[..., i * width:(i + 1) * width],
                              v[..., i * width:(i + 1) * width])
                 for i, attn in enumerate(self.attns)]                              # n_branch x (B, H, W, C/n)
        y = torch.cat(parts, dim=-1).reshape(B, N, C)
        x = x + self.drop_path(self.proj_drop(self.proj(y)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

    def extra_repr(self) -> str:
        layout = "whole grid" if self.stripe is None else f"stripes of {self.stripe}"
        return f"attn_type={self.attn_type}, grid={self.grid}, branches={layout}"


class MergeBlock(nn.Module):
    """Down-sampling between stages: Conv 3x3 stride 2 on the map, then LayerNorm over tokens.

    Args:
        dim: input channels.
        dim_out: output channels.
        norm_layer: normalisation layer.
    """

    def __init__(self, dim: int, dim_out: int, norm_layer=nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, kernel_size=3, stride=2, padding=1)
        self.norm = norm_layer(dim_out)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        """x: (B, C, H, W) map -> tokens (B, H/2*W/2, C_out) and their grid."""
        x = self.conv(x)                                                     # (B, C_out, H/2, W/2)
        hw = (x.shape[2], x.shape[3])
        return self.norm(map_to_tokens(x)), hw


class MapToTokens(nn.Module):
    """(B, C, H, W) -> (B, H*W, C) (the released ``stage1_conv_embed`` keeps this slot)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return map_to_tokens(x)


class FLattenCSWin(FLattenModel):
    """CSWin Transformer whose stages use linear (``L``) or softmax (``S``) attention.

    Args:
        img_size: input size (int or (H, W)) the model is built for.
        in_chans: input channels.
        num_classes: classifier outputs (0 = no head).
        global_pool: 'avg' (mean over positions) or '' (no pooling).
        drop_rate: dropout before the head.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        attn_type: one letter per stage, 'L' linear (focused), 'S' CSWin softmax ('LLSS').
        la_kwargs: linear attention options (kind, focusing_factor, kernel_size, use_dwc, focused, use_pe).
        embed_dim: width of stage 1; doubled at every merge.
        depths: blocks per stage.
        num_heads: heads per stage.
        split_size: stripe width of the ``S`` stages; None = [1, 2, R4, R4] with R4 the last
            stage's grid size (7 at 224, 12 at 384: the values of CSWin's and the release's
            configs). The last stage always attends over its whole grid.
        la_split_size: window of the ``L`` stages; None (or an entry covering the stage grid)
            = the whole stage grid, one global branch, as in the released models. Smaller
            values give CSWin's two stripe branches with linear attention.
        mlp_ratio: MLP hidden width / block width.
        qkv_bias: bias of ``qkv``.
        proj_drop_rate: dropout after ``proj`` and in the MLPs.
        attn_drop_rate: dropout on softmax attention weights.
        norm_layer: normalisation layer.
        dynamic_img_size: run at any size whose sides are multiples of 32 (see the module doc).
    """

    def __init__(self, img_size: Union[int, Grid] = 224, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0., drop_path_rate: float = 0.1, attn_type: str = "LLSS",
                 la_kwargs: Optional[dict] = None, embed_dim: int = 64,
                 depths: Sequence[int] = (2, 4, 18, 1), num_heads: Sequence[int] = (2, 4, 8, 16),
                 split_size: Optional[Sequence[int]] = None, la_split_size: Optional[Sequence[int]] = None,
                 mlp_ratio: float = 4., qkv_bias: bool = True, proj_drop_rate: float = 0.,
                 attn_drop_rate: float = 0., norm_layer=nn.LayerNorm, dynamic_img_size: bool = False):
        super().__init__()
        depths = check_per_stage("depths", depths, NUM_STAGES)
        num_heads = check_per_stage("num_heads", num_heads, NUM_STAGES)
        attn_types = parse_attn_type(attn_type, NUM_STAGES)
        la_kwargs = checked_la_kwargs(la_kwargs)
        dims = [embed_dim * 2 ** i for i in range(NUM_STAGES)]
        self.init_surface(to_2tuple_size(img_size), num_classes, global_pool, dims[-1], drop_rate, dynamic_img_size)
        self.num_prefix_tokens = 0
        self.attn_type = "".join(attn_types)

        # Token grid of every stage.
        grid = conv_out_grid(self.img_size, 7, 4, 2)
        grids = [grid]
        for _ in range(NUM_STAGES - 1):
            grid = conv_out_grid(grid, 3, 2, 1)
            grids.append(grid)
        if min(grids[-1]) < 1:
            raise ModelConfigError(f"img_size {self.img_size} is too small for four stages", "img_size",
                                   self.img_size)
        self.grids = grids
        if split_size is None:
            last = min(grids[-1])
            split_size = [1, 2, last, last]
        split_size = check_per_stage("split_size", split_size, NUM_STAGES)
        la_split_size = ([None] * NUM_STAGES if la_split_size is None or len(la_split_size) == 0
                         else check_per_stage("la_split_size", la_split_size, NUM_STAGES))
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()

        self.stage1_conv_embed = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=2),
            MapToTokens(),
            nn.LayerNorm(embed_dim),
        )
        self.feature_info = []
        for i in range(NUM_STAGES):
            if i > 0:
                setattr(self, f"merge{i}", MergeBlock(dims[i - 1], dims[i], norm_layer))
            split = la_split_size[i] if attn_types[i] == "L" else split_size[i]
            first = sum(depths[:i])
            blocks = nn.ModuleList([
                CSWinBlock(dims[i], num_heads[i], grids[i], split, attn_types[i],
                           last_stage=i == NUM_STAGES - 1, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                           proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[first + j],
                           la_kwargs=la_kwargs, norm_layer=norm_layer, dynamic=self.dynamic_img_size)
                for j in range(depths[i])])
            setattr(self, f"stage{i + 1}", blocks)
            setattr(self, f"to_map{i + 1}", TokensToMap())
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"to_map{i + 1}"))

        self.norm = norm_layer(dims[-1])
        self.head = self.make_head(num_classes)
        self.apply(init_linear_and_norm)

    # -- timm surface ---------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Focused-attention temperatures and positional encodings."""
        return {n for n, _ in self.named_parameters()
                if n.rsplit(".", 1)[-1] in ("scale", "positional_encoding")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stage1_conv_embed",
            blocks=r"^(?:stage|merge)(\d+)" if coarse else [
                (r"^stage(\d+)\.(\d+)", None),
                (r"^merge(\d+)", (99998,)),          # after the blocks of the stage it follows
                (r"^norm", (99999,)),
            ])

    def set_input_size(self, img_size: Union[int, Grid]) -> None:
        """Build for another input size: stage grids, stripes and positional encodings follow."""
        img_size = to_2tuple_size(img_size)
        grid = conv_out_grid(img_size, 7, 4, 2)
        grids = [grid]
        for _ in range(NUM_STAGES - 1):
            grid = conv_out_grid(grid, 3, 2, 1)
            grids.append(grid)
        for i in range(NUM_STAGES):
            for blk in getattr(self, f"stage{i + 1}"):
                blk.set_grid(grids[i])
        self.grids = grids
        self.img_size = img_size

    # -- forward ----------------------------------------------------------------------------------
    def _forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage i (0-based) on the image (i = 0) or the previous stage's map -> NCHW map."""
        if i == 0:
            x = self.stage1_conv_embed[0](x)                                  # (B, C, H/4, W/4)
            hw = (x.shape[2], x.shape[3])
            x = self.stage1_conv_embed[2](self.stage1_conv_embed[1](x))       # (B, N, C)
        else:
            x, hw = getattr(self, f"merge{i}")(x)
        x = self.run_blocks(getattr(self, f"stage{i + 1}"), x, hw)
        return getattr(self, f"to_map{i + 1}")(x, hw)                          # (B, C, H_i, W_i)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm over the channels of an NCHW map."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> normalised last-stage map (B, C, H/32, W/32)."""
        self.check_input(x)
        for i in range(NUM_STAGES):
            x = self._forward_stage(i, x)
        return self._final_norm(x)

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
            The maps, or (normalised final map, maps).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        self.check_input(x)
        take_indices, max_index = feature_take_indices(NUM_STAGES, indices)
        last = max_index if (stop_early or intermediates_only) else NUM_STAGES - 1
        intermediates = []
        for i in range(last + 1):
            x = self._forward_stage(i, x)
            if i in take_indices:
                intermediates.append(self._final_norm(x) if (norm and i == NUM_STAGES - 1) else x)
        if intermediates_only:
            return intermediates
        if last == NUM_STAGES - 1:
            x = self._final_norm(x)
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
            self.feature_info = self.feature_info[:max_index + 1]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
def _create_cswin(variant: str, pretrained: bool = False, **kwargs) -> FLattenCSWin:
    return build_flatten_model(FLattenCSWin, variant, pretrained, **kwargs)


def _cfgs(arch: str, input_size: int = 224) -> dict:
    return pretrained_cfgs(arch, "stage1_conv_embed.0", input_size, pool_size=input_size // 32)


default_cfgs = generate_default_cfgs({
    **_cfgs("flatten_cswin_tiny_224"), **_cfgs("flatten_cswin_small_224"), **_cfgs("flatten_cswin_base_224"),
    **_cfgs("flatten_cswin_base_384", 384),
    **_cfgs("flatten_softmax_cswin_t"), **_cfgs("flatten_softmax_cswin_s"), **_cfgs("flatten_softmax_cswin_b"),
    **_cfgs("flatten_softmax_cswin_b_384", 384),
})

CSWIN_T = dict(embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16))
CSWIN_S = dict(embed_dim=64, depths=(2, 4, 32, 2), num_heads=(2, 4, 8, 16))
CSWIN_B = dict(embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32))
CSWIN_B_384 = dict(CSWIN_B, img_size=384)
# The softmax baselines keep CSWin's own depths (FLatten-CSWin-T/B move blocks from stage 3 to stages 1-2).
SOFTMAX_T = dict(CSWIN_T, depths=(1, 2, 21, 1), attn_type="SSSS")
SOFTMAX_S = dict(CSWIN_S, attn_type="SSSS")
SOFTMAX_B = dict(CSWIN_B, depths=(2, 4, 32, 2), attn_type="SSSS")
SOFTMAX_B_384 = dict(SOFTMAX_B, img_size=384)


@register_model
def flatten_cswin_tiny_224(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """FLatten-CSWin-T (dim 64, depths 2-4-18-1; Table 8: 21M params, 4.3 GFLOPs, 83.1 top-1)."""
    return _create_cswin("flatten_cswin_tiny_224", pretrained, **{**CSWIN_T, **kwargs})


@register_model
def flatten_cswin_small_224(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """FLatten-CSWin-S (dim 64, depths 2-4-32-2; Table 8: 35M params, 6.9 GFLOPs, 83.8 top-1)."""
    return _create_cswin("flatten_cswin_small_224", pretrained, **{**CSWIN_S, **kwargs})


@register_model
def flatten_cswin_base_224(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """FLatten-CSWin-B (dim 96, depths 3-6-29-2; Table 8: 75M params, 15.0 GFLOPs, 84.5 top-1)."""
    return _create_cswin("flatten_cswin_base_224", pretrained, **{**CSWIN_B, **kwargs})


@register_model
def flatten_cswin_base_384(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """FLatten-CSWin-B at 384 (stripes 1-2-12-12, global L stages 96-48; Table 8: 78M, 46.4G, 85.5)."""
    return _create_cswin("flatten_cswin_base_384", pretrained, **{**CSWIN_B_384, **kwargs})


# Config names (configs/<name>.yaml) of the same models, from models/released.py.
register_config_names(globals())


# Softmax baselines of Table 8 (configs/baselines/cswin_*.yaml): cross-shaped windows everywhere.
@register_model
def flatten_softmax_cswin_t(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """CSWin-T (depths 1-2-21-1) in this code base (Table 8: 23M params, 4.3 GFLOPs, 82.7 top-1)."""
    return _create_cswin("flatten_softmax_cswin_t", pretrained, **{**SOFTMAX_T, **kwargs})


@register_model
def flatten_softmax_cswin_s(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """CSWin-S in this code base (Table 8: 35M, 6.9G, 83.6)."""
    return _create_cswin("flatten_softmax_cswin_s", pretrained, **{**SOFTMAX_S, **kwargs})


@register_model
def flatten_softmax_cswin_b(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """CSWin-B (depths 2-4-32-2) in this code base (Table 8: 78M, 15.0G, 84.2)."""
    return _create_cswin("flatten_softmax_cswin_b", pretrained, **{**SOFTMAX_B, **kwargs})


@register_model
def flatten_softmax_cswin_b_384(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """CSWin-B at 384 in this code base (Table 8: 78M, 47.0G, 85.4)."""
    return _create_cswin("flatten_softmax_cswin_b_384", pretrained, **{**SOFTMAX_B_384, **kwargs})
