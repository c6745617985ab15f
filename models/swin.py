"""FLatten-Swin: Swin Transformer with focused linear attention in the early stages.

The layout is the original Swin-T/S/B (Liu et al., 2021): a patch-4 conv embed,
four stages of pre-norm blocks joined by patch merging at the *end* of each
stage, a final LayerNorm, average pooling and a linear ``head``. Parameter
names follow the released FLatten checkpoints (``layers.{i}.blocks.{j}...``,
``layers.{i}.downsample``), so those files load as they are.

Each stage uses one attention type (``attn_type``, one letter per stage):

* ``L``: a linear attention (focused by default, ``la_kwargs``) inside windows
  of ``window_size`` tokens per side. When the window covers the stage grid
  (along its shorter side) the block attends globally over the whole grid, with
  no shift: with ``window_size`` 56 at 224 input (96 at 384) the first two
  stages are global.
* ``S``: Swin's softmax window attention with a relative position bias
  (:class:`WindowAttention`), window 7 (12 when ``window_size`` > 56), shifted
  by half a window on odd blocks.

Any input size: built with ``dynamic_img_size=True`` the model runs at every
size whose sides are multiples of 32. Global blocks stay global (their
positional encoding is resampled to the current grid, as on checkpoint load);
windowed blocks keep their window and pad the grid at the bottom and right to
whole windows (as Swin's detection code does), the shifted-window mask being
computed for the padded grid. ``set_input_size()`` changes the built size the
same way.

Blocks work on channels-last grids (B, H, W, C); ``forward_features`` returns
(B, H/32, W/32, C) (``output_fmt = 'NHWC'``), ``forward_intermediates`` NCHW maps.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ._builder import build_flatten_model, pretrained_cfgs, register_config_names
from .layers.attention import checked_la_kwargs, create_linear_attention
from .layers.family import FLattenModel, ModelConfigError, check_per_stage, init_linear_and_norm, parse_attn_type
from .layers.grid import Grid, PatchEmbed, to_2tuple_size
from .layers.pos_embed import GridCache, grid_parameter, rel_pos_table_resample, resampled_parameter
from .layers.window import (pad_to_window, relative_position_index, shifted_window_mask, window_mask,
                            window_partition, window_reverse)

__all__ = ["FLattenSwin", "FLattenSwinBlock", "WindowAttention", "softmax_window_size"]

# The dynamic-size mask is one opaque call under torch.fx (it is called from this module).
torch.fx.wrap("window_mask")


def softmax_window_size(window_size: int) -> int:
    """Window of the ``S`` (softmax) stages for a given L-stage ``window_size`` (the released rule)."""
    return 7 if window_size <= 56 else 12


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

    def set_window(self, window_size: int) -> None:
        """Another window side: the bias table resampled (bicubic over the offsets), the index rebuilt."""
        if window_size == self.window_size:
            return
        with torch.no_grad():
            table = rel_pos_table_resample(self.relative_position_bias_table.detach(), (2 * window_size - 1) ** 2)
        self.relative_position_bias_table = nn.Parameter(table.clone())
        self.relative_position_index = relative_position_index(window_size,
                                                               device=self.relative_position_index.device)
        self.window_size = window_size

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
    """Pre-norm Swin block: global or (shifted) window attention, then an MLP.

    Args:
        dim: channels C.
        input_resolution: (H, W) of the stage grid at the built size.
        num_heads: heads h.
        attn_type: 'L' (linear attention, ``la_kwargs``) or 'S' (softmax with relative position bias).
        window_size: requested window side. An 'L' block whose window covers the grid
            (along the shorter side) attends globally over the grid; an 'S' block then
            uses the grid's shorter side as window; in both cases without shift.
        shift_size: cyclic shift of the grid before windowing (0 = none).
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias of ``qkv``.
        proj_drop: dropout after ``proj`` and inside the MLP.
        attn_drop: dropout on softmax attention weights ('S' only).
        drop_path: stochastic depth of both residual branches.
        la_kwargs: linear attention options ('L' only).
        dynamic: inputs of other sizes are expected (pad to windows and compute masks per size).
    """

    def __init__(self, dim: int, input_resolution: Grid, num_heads: int, attn_type: str = "L",
                 window_size: int = 7, shift_size: int = 0, mlp_ratio: float = 4., qkv_bias: bool = True,
                 proj_drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 la_kwargs: Optional[Dict[str, Any]] = None, dynamic: bool = False):
        super().__init__()
        H, W = input_resolution
        self.attn_type = attn_type
        self.target_window = window_size
        self.target_shift = shift_size
        self.dynamic = dynamic
        # An 'L' block that covers its grid at the built size stays global at every size.
        self.global_attn = attn_type == "L" and min(H, W) <= window_size
        self._set_layout(input_resolution)

        self.norm1 = nn.LayerNorm(dim)
        if attn_type == "L":
            la = checked_la_kwargs(la_kwargs)
            grid = (H, W) if self.global_attn else (self.window_size, self.window_size)
            self.attn = create_linear_attention(la.pop("kind"), dim, num_heads, grid, qkv="qkv", qkv_bias=qkv_bias,
                                                proj_drop=proj_drop, **la)
        else:
            self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                        proj_drop=proj_drop)
        self._register_mask()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def _set_layout(self, input_resolution: Grid) -> None:
        """Window, shift and padding of the block for a grid of the built size."""
        H, W = input_resolution
        self.input_resolution = (H, W)
        if self.global_attn:
            self.window_size, self.shift_size = None, 0
        elif min(H, W) <= self.target_window:
            # The window covers the grid: one window of the shorter side, nothing to shift.
            self.window_size, self.shift_size = min(H, W), 0
        else:
            self.window_size, self.shift_size = self.target_window, self.target_shift
        w = self.window_size
        self.padded = w is not None and bool(H % w or W % w)

    def _register_mask(self) -> None:
        """The shifted-window mask of the built (padded) grid; linear attention is never masked (as released)."""
        mask = None
        if self.attn_type == "S" and self.shift_size:
            H, W = self.input_resolution
            w = self.window_size
            device = self.norm1.weight.device if hasattr(self, "norm1") else None
            mask = shifted_window_mask(-(-H // w) * w, -(-W // w) * w, w, self.shift_size, device=device)
        self.register_buffer("attn_mask", mask, persistent=False)

    def set_input_resolution(self, input_resolution: Grid) -> None:
        """Build for another stage grid (``set_input_size``): windows, masks and grid-sized parameters."""
        self._set_layout(input_resolution)
        if self.attn_type == "L":
            grid = input_resolution if self.global_attn else (self.window_size, self.window_size)
            self.attn.set_grid(grid)
        else:
            self.attn.set_window(self.window_size)
        self._register_mask()

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Normed grid (B, H, W, C) -> attention output (B, H, W, C) in (shifted) windows."""
        H, W = x.shape[1], x.shape[2]
        w, s = self.window_size, self.shift_size
        pad = self.dynamic or self.padded
        if pad:
            x = pad_to_window(x, w)                                       # (B, Hp, Wp, C)
        Hp, Wp = x.shape[1], x.shape[2]
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(x, w)                                  # (B*nW, w*w, C)
        if self.attn_type == "L":
            # Linear attention ignores the shifted-window mask (as released).
            windows = self.attn(windows, (w, w))
        else:
            mask = self.attn_mask
            if s and self.dynamic:
                mask = window_mask(Hp, Wp, w, s, x.device)
            windows = self.attn(windows, mask)
        x = window_reverse(windows, w, Hp, Wp)                            # (B, Hp, Wp, C)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        if pad:
            x = x[:, :H, :W]
        return x

    def _global_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Normed grid (B, H, W, C) -> linear attention over all its tokens (B, H, W, C)."""
        B, H, W, C = x.shape
        return self.attn(x.reshape(B, H * W, C), (H, W)).view(B, H, W, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        y = self.norm1(x)
        y = self._global_attention(y) if self.global_attn else self._window_attention(y)
        x = x + self.drop_path1(y)
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        window = "global" if self.global_attn else self.window_size
        return (f"attn_type={self.attn_type}, input_resolution={self.input_resolution}, "
                f"window_size={window}, shift_size={self.shift_size}")


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (4C), LayerNorm, Linear 4C -> 2C without bias.

    Args:
        dim: input channels C.
    """

    def __init__(self, dim: int):
        super().__init__()
        # Registration order (reduction, norm) is that of the released state dicts.
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H/2, W/2, 2C) (H and W even)."""
        B, H, W, C = x.shape
        # Concat order (row, col) offsets (0,0), (1,0), (0,1), (1,1), as Swin's checkpoints expect.
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5)  # (B, H/2, W/2, dc, dr, C)
        x = x.flatten(3)                                                     # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))


class FLattenSwinStage(nn.Module):
    """``depth`` blocks at one resolution, then (optionally) patch merging.

    Args:
        dim: channels C.
        input_resolution: (H, W) of the stage grid at the built size.
        depth: number of blocks.
        num_heads: heads per block.
        attn_type: 'L' or 'S' for every block of the stage.
        window_size: window side of the blocks (before covering the grid).
        downsample: end the stage with :class:`PatchMerging`.
        drop_path: per-block stochastic depth rates.
        **block_kwargs: remaining :class:`FLattenSwinBlock` arguments.
    """

    def __init__(self, dim: int, input_resolution: Grid, depth: int, num_heads: int, attn_type: str,
                 window_size: int, downsample: bool, drop_path: Sequence[float], **block_kwargs):
        super().__init__()
        self.blocks = nn.Sequential(*[
            FLattenSwinBlock(dim, input_resolution, num_heads, attn_type=attn_type, window_size=window_size,
                             shift_size=0 if i % 2 == 0 else window_size // 2, drop_path=drop_path[i],
                             **block_kwargs)
            for i in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return x if self.downsample is None else self.downsample(x)


class FLattenSwin(FLattenModel):
    """FLatten-Swin backbone and classifier.

    Args:
        img_size: input size (int or (H, W)) the model is built for.
        in_chans: input channels.
        num_classes: classes of ``head`` (0 = no head).
        global_pool: 'avg' or '' (no pooling) before ``head``.
        drop_rate: dropout after the embedding, in the MLPs and after attention.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        attn_type: one letter per stage, 'L' linear (focused) or 'S' softmax window attention.
        la_kwargs: linear attention options (kind, focusing_factor, kernel_size, use_dwc, focused, use_pe).
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
        softmax_window: window of the 'S' stages; None keeps the released rule above.
        dynamic_img_size: run at any size whose sides are multiples of 32 (see the module doc).
    """

    output_fmt = "NHWC"

    def __init__(self, img_size: Union[int, Grid] = 224, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0., drop_path_rate: float = 0.1, attn_type: str = "LLSS",
                 la_kwargs: Optional[Dict[str, Any]] = None, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 56, mlp_ratio: float = 4., qkv_bias: bool = True, patch_size: int = 4,
                 ape: bool = False, patch_norm: bool = True, attn_drop_rate: float = 0.,
                 softmax_window: Optional[int] = None, dynamic_img_size: bool = False):
        super().__init__()
        num_stages = len(depths)
        num_heads = check_per_stage("num_heads", num_heads, num_stages)
        attn_types = parse_attn_type(attn_type, num_stages)
        la_kwargs = checked_la_kwargs(la_kwargs)
        if window_size < 1:
            raise ModelConfigError(f"window_size must be >= 1, got {window_size}", "window_size", window_size)
        self.size_multiple = patch_size * 2 ** (num_stages - 1)
        img_size = to_2tuple_size(img_size)
        self.init_surface(img_size, num_classes, global_pool, int(embed_dim * 2 ** (num_stages - 1)), 0.,
                          dynamic_img_size)
        if img_size[0] % self.size_multiple or img_size[1] % self.size_multiple:
            raise ModelConfigError(f"img_size {img_size[0]}x{img_size[1]} is not a multiple of the total stride "
                                   f"{self.size_multiple} (patch merging halves every stage grid)",
                                   "img_size", img_size)
        self.attn_type = "".join(attn_types)
        self.num_prefix_tokens = 0

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, norm=patch_norm)
        self.grid_size = grid = self.patch_embed.output_size(img_size)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=.02)
        else:
            self.absolute_pos_embed = None
        self._ape_cache = GridCache()
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        s_window = softmax_window or softmax_window_size(window_size)
        stages, self.feature_info = [], []
        for i in range(num_stages):
            dim = embed_dim * 2 ** i
            res = (grid[0] // 2 ** i, grid[1] // 2 ** i)
            stages.append(FLattenSwinStage(
                dim, res, depths[i], num_heads[i], attn_types[i], window_size if attn_types[i] == "L" else s_window,
                downsample=i < num_stages - 1, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                la_kwargs=la_kwargs, dynamic=self.dynamic_img_size))
            self.feature_info.append(dict(num_chs=dim, reduction=patch_size * 2 ** i, module=f"layers.{i}.blocks"))
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = self.make_head(num_classes)
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

    def token_grids(self) -> Dict[str, Tuple[Grid, int]]:
        """{parameter: (grid, prefix tokens)} of the model's own token-grid parameters."""
        return {"absolute_pos_embed": (self.grid_size, 0)} if self.absolute_pos_embed is not None else {}

    def set_input_size(self, img_size: Union[int, Grid]) -> None:
        """Build for another input size: grids, windows, masks and grid-sized parameters follow.

        Global blocks stay global (positional encodings resampled to the new grid),
        windowed blocks keep their window (covering a smaller grid as at construction).
        """
        img_size = to_2tuple_size(img_size)
        if img_size[0] % self.size_multiple or img_size[1] % self.size_multiple:
            raise ModelConfigError(f"img_size {img_size} is not a multiple of {self.size_multiple}", "img_size",
                                   img_size)
        old_grid = self.grid_size
        self.grid_size = grid = self.patch_embed.output_size(img_size)
        if self.absolute_pos_embed is not None:
            self.absolute_pos_embed = resampled_parameter(self.absolute_pos_embed, grid, old_grid)
            self._ape_cache.clear()
        for i, stage in enumerate(self.layers):
            for blk in stage.blocks:
                blk.set_input_resolution((grid[0] // 2 ** i, grid[1] // 2 ** i))
        self.img_size = img_size

    # -- forward ----------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) image -> (B, H/p, W/p, C) tokens."""
        self.check_input(x)
        x = self.patch_embed(x)                                           # (B, Hp, Wp, C)
        if self.absolute_pos_embed is not None:
            B, H, W, C = x.shape
            pos = grid_parameter(self.absolute_pos_embed, (H, W), self.grid_size, 0, self._ape_cache)
            x = x + pos.view(1, H, W, C)
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> normed last-stage features (B, H/32, W/32, C)."""
        x = self._embed(x)
        for stage in self.layers:
            x = self.run_blocks(stage.blocks, x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return self.norm(x)

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
        stages = self.layers[:max_index + 1] if (stop_early or intermediates_only) else self.layers
        intermediates = []
        x = self._embed(x)
        for i, stage in enumerate(stages):
            x = self.run_blocks(stage.blocks, x)
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
            self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


# ------------------------------------------------------------------------------------------- registry
def _create_swin(variant: str, pretrained: bool = False, **kwargs) -> FLattenSwin:
    return build_flatten_model(FLattenSwin, variant, pretrained, **kwargs)


def _cfgs(arch: str, input_size: int = 224) -> dict:
    return pretrained_cfgs(arch, "patch_embed.proj", input_size, pool_size=input_size // 32)


default_cfgs = generate_default_cfgs({
    **_cfgs("flatten_swin_tiny_patch4_224"),
    **_cfgs("flatten_swin_small_patch4_224"),
    **_cfgs("flatten_swin_base_patch4_224"),
    **_cfgs("flatten_swin_base_patch4_384", 384),
    **_cfgs("flatten_softmax_swin_t"),
    **_cfgs("flatten_softmax_swin_s"),
    **_cfgs("flatten_softmax_swin_b"),
    **_cfgs("flatten_softmax_swin_b_384", 384),
})

SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=56, drop_path_rate=0.2)
SWIN_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=56, drop_path_rate=0.3)
SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=56, drop_path_rate=0.5)
SWIN_B_384 = dict(SWIN_B, img_size=384, window_size=96)
SOFTMAX = dict(attn_type="SSSS")


@register_model
def flatten_swin_tiny_patch4_224(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """FLatten-Swin-T (Table 8: 29M params, 4.5 GFLOPs, 82.1 top-1)."""
    return _create_swin("flatten_swin_tiny_patch4_224", pretrained, **{**SWIN_T, **kwargs})


@register_model
def flatten_swin_small_patch4_224(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """FLatten-Swin-S (Table 8: 51M params, 8.7 GFLOPs, 83.5 top-1)."""
    return _create_swin("flatten_swin_small_patch4_224", pretrained, **{**SWIN_S, **kwargs})


@register_model
def flatten_swin_base_patch4_224(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """FLatten-Swin-B (Table 8: 89M params, 15.4 GFLOPs, 83.8 top-1)."""
    return _create_swin("flatten_swin_base_patch4_224", pretrained, **{**SWIN_B, **kwargs})


@register_model
def flatten_swin_base_patch4_384(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """FLatten-Swin-B at 384 (L window 96: stages 1-2 global; S window 12; Table 8: 91M, 46.5G, 85.0)."""
    return _create_swin("flatten_swin_base_patch4_384", pretrained, **{**SWIN_B_384, **kwargs})


# Config names (configs/<name>.yaml) of the same models, from models/released.py.
register_config_names(globals())


# Softmax baselines of Table 8 (configs/baselines/swin_*.yaml): Swin's shifted windows everywhere.
@register_model
def flatten_softmax_swin_t(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """Swin-T (window 7) in this code base (Table 8: 29M params, 4.5 GFLOPs, 81.3 top-1)."""
    return _create_swin("flatten_softmax_swin_t", pretrained, **{**SWIN_T, **SOFTMAX, **kwargs})


@register_model
def flatten_softmax_swin_s(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """Swin-S (window 7) in this code base (Table 8: 50M, 8.7G, 83.0)."""
    return _create_swin("flatten_softmax_swin_s", pretrained, **{**SWIN_S, **SOFTMAX, **kwargs})


@register_model
def flatten_softmax_swin_b(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """Swin-B (window 7) in this code base (Table 8: 88M, 15.4G, 83.5)."""
    return _create_swin("flatten_softmax_swin_b", pretrained, **{**SWIN_B, **SOFTMAX, **kwargs})


@register_model
def flatten_softmax_swin_b_384(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """Swin-B at 384 (window 12) in this code base (Table 8: 88M, 47.0G, 84.5)."""
    return _create_swin("flatten_softmax_swin_b_384", pretrained, **{**SWIN_B_384, **SOFTMAX, **kwargs})
