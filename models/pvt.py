"""FLatten-PVT: the Pyramid Vision Transformer (v1) with focused linear attention.

Four stages; stage i embeds its input with ``patch_embed{i}`` (a strided conv +
LayerNorm), adds the absolute position embedding ``pos_embed{i}`` and runs the
blocks ``block{i}.{j}``; ``to_map{i}`` (no parameters) gives the stage's output
as an NCHW map, the input of the next stage. ``forward_features`` returns the
last map (B, C, H/32, W/32); the classifier sees its mean.

The released checkpoints also hold a final ``norm`` that the released forward
never applies. This model has no such layer: the checkpoint filter drops
``norm.weight`` / ``norm.bias`` from released files (``ignored_checkpoint_keys``,
reported when it happens), which then load strictly.

Per stage the attention is ``L`` (a linear attention, focused by default,
optionally over spatially reduced keys, ``la_sr_ratios``) or ``S`` (PVT's
spatial-reduction softmax attention, ``sr_ratios``). The block and the stage
machinery defined here are shared with FLatten-PVTv2 (``models/pvt_v2.py``).

Any input size: built with ``dynamic_img_size=True`` the model runs at every
size whose sides are multiples of 32; position embeddings and positional
encodings are resampled to the current grids as on checkpoint load.

Parameter names equal those of the official release (``block1.0.attn.q.weight``,
``pos_embed4``, ...).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ._builder import build_flatten_model, pretrained_cfgs, register_config_names
from .layers.attention import checked_la_kwargs, create_linear_attention
from .layers.family import (FLattenModel, ModelConfigError, check_heads, check_per_stage, init_linear_and_norm,
                            parse_attn_type)
from .layers.grid import Grid, PatchEmbed, TokensToMap, map_to_tokens, to_2tuple_size, tokens_to_map
from .layers.pos_embed import GridCache, grid_parameter, resampled_parameter

__all__ = ["FLattenPVT", "PvtBlock", "SpatialReductionAttention", "GridMlp"]


class SpatialReductionAttention(nn.Module):
    """PVT's softmax attention over spatially reduced keys and values (the ``S`` stages).

    Args:
        dim: channels C.
        num_heads: heads h.
        sr_ratio: key reduction r (1 = none): ``sr`` Conv k = s = r + ``norm``.
        qkv_bias: bias of ``q`` and ``kv``.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, qkv_bias: bool = True,
                 attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)    # (B, h, N, d)
        src = x
        if self.sr_ratio > 1:
            src = self.norm(map_to_tokens(self.sr(tokens_to_map(x, hw))))               # (B, N / r^2, C)
        kv = self.kv(src).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)                                                           # (B, h, M, d) each
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.)
        x = x.transpose(1, 2).reshape(b, n, c)                                        # (B, N, C)
        return self.proj_drop(self.proj(x))


class GridMlp(Mlp):
    """timm's Mlp with the block's ``(x, hw)`` call signature (the grid is not used)."""

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        return super().forward(x)


class PvtBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), x + mlp(norm2(x)), with DropPath.

    Args:
        dim: channels C.
        num_heads: heads h.
        grid: token grid (H, W) of the stage at the built size.
        attn_type: 'L' linear attention (``la_kwargs``) or 'S' spatial-reduction softmax attention.
        sr_ratio: key reduction of the attention.
        mlp_ratio: hidden width of the MLP relative to C.
        qkv_bias: bias of the q / kv projections.
        proj_drop: dropout after the attention and MLP projections.
        attn_drop: dropout on softmax attention weights (S only).
        drop_path: stochastic depth rate.
        la_kwargs: linear attention options (L only).
        mlp_layer: MLP class called as ``mlp(x, hw)``.
        norm_layer: block norm (LayerNorm, eps 1e-6 in PVT).
    """

    def __init__(self, dim: int, num_heads: int, grid: Grid, attn_type: str = "L", sr_ratio: int = 1,
                 mlp_ratio: float = 4., qkv_bias: bool = True, proj_drop: float = 0., attn_drop: float = 0.,
                 drop_path: float = 0., la_kwargs: Optional[dict] = None, mlp_layer: Callable = GridMlp,
                 norm_layer: Callable = partial(nn.LayerNorm, eps=1e-6)):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if attn_type == "L":
            la = checked_la_kwargs(la_kwargs)
            self.attn = create_linear_attention(la.pop("kind"), dim, num_heads, grid, qkv="q_kv", qkv_bias=qkv_bias,
                                                sr_ratio=sr_ratio, proj_drop=proj_drop, **la)
        else:
            self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias,
                                                  attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        x = x + self.drop_path(self.mlp(self.norm2(x), hw))
        return x


class FLattenPVT(FLattenModel):
    """FLatten-PVT (v1): four stages of patch embedding + position embedding + blocks.

    Args:
        img_size: input size the model is built for (int or (H, W)).
        in_chans: input channels.
        num_classes: classifier outputs (0: no head).
        global_pool: 'avg' (mean of the last map) or '' (no pooling).
        drop_rate: dropout after the position embedding and in every attention / MLP projection.
        drop_path_rate: stochastic depth, increasing linearly over all blocks.
        attn_type: one letter per stage, 'L' linear (focused) attention, 'S' softmax SRA.
        la_kwargs: linear attention options (kind, focusing_factor, kernel_size, use_dwc, focused, use_pe).
        embed_dims: channels per stage.
        depths: blocks per stage.
        num_heads: heads per stage.
        mlp_ratios: MLP width ratio per stage.
        sr_ratios: key reduction of the S stages.
        la_sr_ratios: key reduction of the L stages (one int per stage).
        qkv_bias: bias of the q / kv projections.
        attn_drop_rate: dropout on softmax attention weights.
        dynamic_img_size: run at any size whose sides are multiples of 32.
    """

    num_prefix_tokens = 0
    mlp_layer: Callable = GridMlp
    # Released checkpoints carry a final norm the released forward never applies (docs/model.md, section 2).
    ignored_checkpoint_keys = {r"^norm\.(weight|bias)$": "PVT v1's final norm: in the released files, never applied"}

    def __init__(self, img_size: Union[int, Grid] = 224, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0., drop_path_rate: float = 0.1,
                 attn_type: str = "LLLL", la_kwargs: Optional[dict] = None,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (2, 2, 2, 2),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), la_sr_ratios: Sequence[int] = (1, 1, 1, 1),
                 qkv_bias: bool = True, attn_drop_rate: float = 0., dynamic_img_size: bool = False):
        super().__init__()
        self.num_stages = len(depths)
        n = self.num_stages
        embed_dims = check_per_stage("embed_dims", embed_dims, n)
        num_heads = check_per_stage("num_heads", num_heads, n)
        mlp_ratios = check_per_stage("mlp_ratios", mlp_ratios, n)
        sr_ratios = check_per_stage("sr_ratios", sr_ratios, n)
        if isinstance(la_sr_ratios, str) or any(not isinstance(r, int) or r < 1 for r in la_sr_ratios):
            raise ModelConfigError(f"la_sr_ratios must be one int >= 1 per stage, got {la_sr_ratios!r}",
                                   "la_sr_ratios", la_sr_ratios)
        la_sr_ratios = check_per_stage("la_sr_ratios", la_sr_ratios, n)
        self.attn_type = "".join(parse_attn_type(attn_type, n))
        la_kwargs = checked_la_kwargs(la_kwargs)
        self.init_surface(to_2tuple_size(img_size), num_classes, global_pool, embed_dims[-1], 0., dynamic_img_size)
        self.embed_dims = embed_dims
        self.drop_rate = drop_rate
        self._grid_caches: Dict[str, GridCache] = {}

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        grid, in_chs, cur = self.img_size, in_chans, 0
        self.feature_info = []
        self.grids: List[Grid] = []
        for i in range(n):
            dim, kind = embed_dims[i], self.attn_type[i]
            patch_embed = self._make_patch_embed(i, in_chs, dim)
            grid = patch_embed.output_size(grid)
            if min(grid) < 1:
                raise ModelConfigError(f"img_size {self.img_size} is too small for {n} stages", "img_size",
                                       self.img_size)
            r = la_sr_ratios[i] if kind == "L" else sr_ratios[i]
            if r > min(grid):
                raise ModelConfigError(f"key reduction {r} of stage {i + 1} is larger than its {grid[0]}x{grid[1]} "
                                       f"grid", "la_sr_ratios" if kind == "L" else "sr_ratios", r)
            blocks = nn.ModuleList([
                PvtBlock(dim, num_heads[i], grid, attn_type=kind, sr_ratio=r, mlp_ratio=mlp_ratios[i],
                         qkv_bias=qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[cur + j],
                         la_kwargs=la_kwargs, mlp_layer=self.mlp_layer)
                for j in range(depths[i])])
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"block{i + 1}", blocks)
            self._make_stage_extras(i, dim, grid)
            setattr(self, f"to_map{i + 1}", TokensToMap())
            cur += depths[i]
            in_chs = dim
            self.grids.append(grid)
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"to_map{i + 1}"))

        self.head = self.make_head(num_classes)
        self.init_weights()

    # -- family hooks (overridden by PVTv2) ------------------------------------------------
    def _make_patch_embed(self, i: int, in_chs: int, dim: int) -> PatchEmbed:
        patch = 4 if i == 0 else 2
        return PatchEmbed(in_chs, dim, kernel_size=patch, stride=patch)

    def _make_stage_extras(self, i: int, dim: int, grid: Grid) -> None:
        """pos_embed{i} (1, H_i W_i, C_i) and its dropout."""
        setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim)))
        setattr(self, f"pos_drop{i + 1}", nn.Dropout(self.drop_rate))
        self._grid_caches[f"pos_embed{i + 1}"] = GridCache()

    def _after_embed(self, i: int, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        name = f"pos_embed{i + 1}"
        pos = grid_parameter(getattr(self, name), hw, self.grids[i], 0, self._grid_caches[name])
        return getattr(self, f"pos_drop{i + 1}")(x + pos)

    def _after_blocks(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x

    # -- initialisation ----------------------------------------------------------------------
    def init_weights(self) -> None:
        for i in range(self.num_stages):
            pos_embed = getattr(self, f"pos_embed{i + 1}", None)
            if pos_embed is not None:
                trunc_normal_(pos_embed, std=.02)
        self.apply(self._init_weights)

    # Applied module by module; PVTv2 extends it to its convs.
    _init_weights = staticmethod(init_linear_and_norm)

    # -- timm surface --------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters()
                if n.startswith("pos_embed") or n.rsplit(".", 1)[-1] in ("scale", "positional_encoding")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed1|^pos_embed1", blocks=r"^(?:block|patch_embed|pos_embed|norm)(\d+)")

    def token_grids(self) -> Dict[str, Tuple[Grid, int]]:
        """{parameter: (grid, prefix tokens)} of the model's own token-grid parameters."""
        return {f"pos_embed{i + 1}": (g, 0) for i, g in enumerate(self.grids) if hasattr(self, f"pos_embed{i + 1}")}

    def set_input_size(self, img_size: Union[int, Grid]) -> None:
        """Build for another input size: stage grids, position embeddings and positional encodings follow."""
        img_size = to_2tuple_size(img_size)
        grid, grids = img_size, []
        for i in range(self.num_stages):
            grid = getattr(self, f"patch_embed{i + 1}").output_size(grid)
            grids.append(grid)
        for i, (old, new) in enumerate(zip(self.grids, grids)):
            name = f"pos_embed{i + 1}"
            if hasattr(self, name):
                setattr(self, name, resampled_parameter(getattr(self, name), new, old))
                self._grid_caches[name].clear()
            for blk in getattr(self, f"block{i + 1}"):
                if hasattr(blk.attn, "set_grid"):
                    blk.attn.set_grid(new)
        self.grids = grids
        self.img_size = img_size

    # -- forward -----------------------------------------------------------------------------
    def _forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage i on an image / NCHW map -> NCHW map (B, C_i, H_i, W_i)."""
        x = getattr(self, f"patch_embed{i + 1}")(x)                       # (B, H_i, W_i, C_i)
        B, H, W, C = x.shape
        hw = (H, W)
        x = x.reshape(B, H * W, C)
        x = self._after_embed(i, x, hw)
        x = self.run_blocks(getattr(self, f"block{i + 1}"), x, hw)
        x = self._after_blocks(i, x)
        return getattr(self, f"to_map{i + 1}")(x, hw)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) -> last-stage map (B, C_4, H/32, W/32)."""
        self.check_input(x)
        for i in range(self.num_stages):
            x = self._forward_stage(i, x)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Per-stage NCHW maps (B, C_i, H_i, W_i) of the stages in ``indices``.

        ``norm`` is accepted for timm compatibility; stage outputs are returned as
        the next stage consumes them (PVTv2: after its stage norm).
        Returns the list, or (the last map as ``forward_features`` gives it, list).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        self.check_input(x)
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        last = max_index if (stop_early or intermediates_only) else self.num_stages - 1
        intermediates = []
        for i in range(last + 1):
            x = self._forward_stage(i, x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last one in ``indices`` (and the head); returns the indices."""
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            for name in (f"patch_embed{i + 1}", f"block{i + 1}", f"pos_embed{i + 1}", f"pos_drop{i + 1}",
                         f"norm{i + 1}", f"to_map{i + 1}"):
                if hasattr(self, name):
                    delattr(self, name)
        if max_index < self.num_stages - 1:
            self.num_stages = max_index + 1
            self.grids = self.grids[:max_index + 1]
            self.feature_info = self.feature_info[:max_index + 1]
            self.num_features = self.head_hidden_size = self.feature_info[-1]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# ------------------------------------------------------------------------------------------- registry
def create_pvt(cls, variant: str, pretrained: bool, arch: Dict[str, Any], **kwargs):
    """timm build of a PVT-family ``cls`` with ``arch`` defaults that ``kwargs`` may override."""
    return build_flatten_model(cls, variant, pretrained, **{**arch, **kwargs})


def _create_pvt(variant: str, pretrained: bool, arch: Dict[str, Any], **kwargs) -> FLattenPVT:
    return create_pvt(FLattenPVT, variant, pretrained, arch, **kwargs)


def _cfgs(arch: str) -> dict:
    return pretrained_cfgs(arch, "patch_embed1.proj")


default_cfgs = generate_default_cfgs({
    **_cfgs("flatten_pvt_tiny"), **_cfgs("flatten_pvt_small"), **_cfgs("flatten_pvt_medium"),
    **_cfgs("flatten_pvt_large"),
    **_cfgs("flatten_softmax_pvt_t"), **_cfgs("flatten_softmax_pvt_s"), **_cfgs("flatten_softmax_pvt_m"),
    **_cfgs("flatten_softmax_pvt_l"),
})

# Shared by every FLatten-PVT size (the released models use qkv bias and these ratios).
PVT_COMMON = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                  sr_ratios=(8, 4, 2, 1), la_sr_ratios=(1, 1, 1, 1), qkv_bias=True, attn_type="LLLL")
SOFTMAX = dict(attn_type="SSSS")
PVT_DEPTHS = dict(t=(2, 2, 2, 2), s=(3, 4, 6, 3), m=(3, 4, 18, 3), l=(3, 8, 27, 3))


@register_model
def flatten_pvt_tiny(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVT-T (Table 8: 12.2M params, 2.0 GFLOPs, 77.8 top-1)."""
    return _create_pvt("flatten_pvt_tiny", pretrained, dict(PVT_COMMON, depths=PVT_DEPTHS["t"]), **kwargs)


@register_model
def flatten_pvt_small(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVT-S (Table 8: 21.7M params, 4.0 GFLOPs, 81.7 top-1)."""
    return _create_pvt("flatten_pvt_small", pretrained, dict(PVT_COMMON, depths=PVT_DEPTHS["s"]), **kwargs)


@register_model
def flatten_pvt_medium(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVT-M (Table 8: 37.2M params, 7.0 GFLOPs, 83.0 top-1)."""
    return _create_pvt("flatten_pvt_medium", pretrained, dict(PVT_COMMON, depths=PVT_DEPTHS["m"]), **kwargs)


@register_model
def flatten_pvt_large(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVT-L (released as ``flatten_pvt_b``; Table 8: 50.6M params, 10.4 GFLOPs, 83.4 top-1)."""
    return _create_pvt("flatten_pvt_large", pretrained, dict(PVT_COMMON, depths=PVT_DEPTHS["l"]), **kwargs)


# Config names (configs/<name>.yaml) of the same models, from models/released.py.
register_config_names(globals())


# Softmax baselines of Table 8 (configs/baselines/pvt_*.yaml): spatial-reduction attention everywhere.
@register_model
def flatten_softmax_pvt_t(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """PVT-T in this code base (Table 8: 13.2M params, 1.9 GFLOPs, 75.1 top-1)."""
    return _create_pvt("flatten_softmax_pvt_t", pretrained, dict(PVT_COMMON, **SOFTMAX, depths=PVT_DEPTHS["t"]),
                       **kwargs)


@register_model
def flatten_softmax_pvt_s(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """PVT-S in this code base (Table 8: 24.5M, 3.8G, 79.8)."""
    return _create_pvt("flatten_softmax_pvt_s", pretrained, dict(PVT_COMMON, **SOFTMAX, depths=PVT_DEPTHS["s"]),
                       **kwargs)


@register_model
def flatten_softmax_pvt_m(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """PVT-M in this code base (Table 8: 44.2M, 6.7G, 81.2)."""
    return _create_pvt("flatten_softmax_pvt_m", pretrained, dict(PVT_COMMON, **SOFTMAX, depths=PVT_DEPTHS["m"]),
                       **kwargs)


@register_model
def flatten_softmax_pvt_l(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """PVT-L in this code base (Table 8: 61.4M, 9.8G, 81.7)."""
    return _create_pvt("flatten_softmax_pvt_l", pretrained, dict(PVT_COMMON, **SOFTMAX, depths=PVT_DEPTHS["l"]),
                       **kwargs)
