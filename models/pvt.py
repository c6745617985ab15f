"""FLatten-PVT: the Pyramid Vision Transformer (v1) with focused linear attention.

Four stages; stage i embeds its input with ``patch_embed{i}`` (a strided conv +
LayerNorm), adds the absolute position embedding ``pos_embed{i}`` and runs the
blocks ``block{i}.{j}``. The classifier sees the mean of the last stage's
tokens. The final ``norm`` is kept so that released checkpoints load, but, as in
the released models, it is not applied.

Per stage the attention is ``L`` (focused linear attention, optionally over
spatially reduced keys, ``la_sr_ratios``) or ``S`` (PVT's spatial-reduction
softmax attention, ``sr_ratios``). The two attention modules, the block and the
stage machinery defined here are shared with FLatten-PVTv2 (``models/pvt_v2.py``).

Parameter names equal those of the official release (``block1.0.attn.q.weight``,
``pos_embed4``, ...), so released state dicts load as they are.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .layers import FocusedLinearAttention, check_input_size, make_la_kwargs, parse_attn_type, to_2tuple_size
from .layers.common import ClassifierMixin, init_linear_and_norm
from .layers.weights import checkpoint_filter_fn

__all__ = ["PyramidVisionTransformer", "PvtFocusedAttention", "SpatialReductionAttention", "PvtBlock",
           "PatchEmbed"]

Grid = Tuple[int, int]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def spatial_reduction(x: torch.Tensor, hw: Grid, sr: Optional[nn.Module], norm: Optional[nn.Module]) -> torch.Tensor:
    """Tokens (B, N, C) on an H x W grid -> key/value source (B, N / r^2, C).

    With ``sr`` None (ratio 1) the tokens are returned unchanged.
    """
    if sr is None:
        return x
    b, n, c = x.shape
    grid = x.transpose(1, 2).reshape(b, c, hw[0], hw[1])      # (B, C, H, W)
    x = sr(grid).flatten(2).transpose(1, 2)                     # (B, H/r * W/r, C)
    return norm(x)


class PvtFocusedAttention(FocusedLinearAttention):
    """Focused linear attention with PVT's projections (``q``, ``kv``, ``proj``).

    With ``sr_ratio`` r > 1 the keys and values come from the tokens reduced by
    ``sr`` (Conv k = s = r) + ``norm``; ``positional_encoding`` then covers the
    N / r^2 key tokens and v is resized back to N tokens for the ``dwc`` term.

    Args:
        dim: channels C.
        num_heads: heads h.
        grid: token grid (H, W) of the stage the module is built for.
        sr_ratio: key reduction r (1 = none).
        qkv_bias: bias of ``q`` and ``kv``.
        proj_drop: dropout after ``proj``.
        **la_kwargs: focusing_factor, kernel_size, use_dwc, focused (see the base class).
    """

    def __init__(self, dim: int, num_heads: int, grid: Grid, sr_ratio: int = 1, qkv_bias: bool = True,
                 proj_drop: float = 0., **la_kwargs):
        num_kv = (grid[0] // sr_ratio) * (grid[1] // sr_ratio)
        super().__init__(dim, num_heads, num_kv, **la_kwargs)
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr = self.norm = None

    def project_qkv(self, x: torch.Tensor, hw: Grid) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, N, C), k and v (B, n_kv, C), before the kernel (also used for analysis)."""
        q = self.q(x)
        k, v = self.kv(spatial_reduction(x, hw, self.sr, self.norm)).chunk(2, dim=-1)
        return q, k, v

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        q, k, v = self.project_qkv(x, hw)
        x = self.attend(q, k, v, hw)                              # (B, N, C)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", sr_ratio={self.sr_ratio}"


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
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
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
        else:
            self.sr = self.norm = None

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)    # (B, h, N, d)
        kv = self.kv(spatial_reduction(x, hw, self.sr, self.norm))                    # (B, M, 2C)
        kv = kv.reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
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
        grid: token grid (H, W) of the stage.
        attn_type: 'L' focused linear attention or 'S' spatial-reduction softmax attention.
        sr_ratio: key reduction of the attention.
        mlp_ratio: hidden width of the MLP relative to C.
        qkv_bias: bias of the q / kv projections.
        proj_drop: dropout after the attention and MLP projections.
        attn_drop: dropout on softmax attention weights (S only).
        drop_path: stochastic depth rate.
        la_kwargs: focused attention options (L only).
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
            self.attn = PvtFocusedAttention(dim, num_heads, grid, sr_ratio=sr_ratio, qkv_bias=qkv_bias,
                                            proj_drop=proj_drop, **(la_kwargs or {}))
        elif attn_type == "S":
            self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias,
                                                  attn_drop=attn_drop, proj_drop=proj_drop)
        else:
            raise ValueError(f"attn_type must be 'L' or 'S', got {attn_type!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: torch.Tensor, hw: Grid) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        x = x + self.drop_path(self.mlp(self.norm2(x), hw))
        return x


class PatchEmbed(nn.Module):
    """Conv patch embedding + LayerNorm: (B, C_in, H, W) -> tokens (B, H' W', C), grid (H', W').

    ``kernel_size == stride`` gives PVT's non-overlapping embedding; PVTv2 uses
    overlapping ones (kernel 7 / stride 4, then 3 / 2, padding kernel // 2).
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, stride: int, padding: int = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim)

    def output_size(self, hw: Grid) -> Grid:
        return tuple(_conv_out(s, self.kernel_size, self.stride, self.padding) for s in hw)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        x = self.proj(x)                                           # (B, C, H', W')
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)                           # (B, H' W', C)
        return self.norm(x), hw


class PyramidVisionTransformer(ClassifierMixin, nn.Module):
    """FLatten-PVT (v1): four stages of patch embedding + position embedding + blocks.

    Args:
        img_size: input resolution the model is built for (position embeddings and
            positional encodings are sized for it).
        in_chans: input channels.
        num_classes: classifier outputs (0: no head).
        drop_rate: dropout after the position embedding and in every attention / MLP projection.
        drop_path_rate: stochastic depth, increasing linearly over all blocks.
        attn_type: one letter per stage, 'L' focused linear attention, 'S' softmax SRA.
        la_kwargs: focused attention options (focusing_factor, kernel_size, use_dwc, focused).
        embed_dims: channels per stage.
        depths: blocks per stage.
        num_heads: heads per stage.
        mlp_ratios: MLP width ratio per stage.
        sr_ratios: key reduction of the S stages.
        la_sr_ratios: key reduction of the L stages (list of ints, or a string such as '1111').
        qkv_bias: bias of the q / kv projections.
        attn_drop_rate: dropout on softmax attention weights.
    """

    num_prefix_tokens = 0
    mlp_layer: Callable = GridMlp

    def __init__(self, img_size: Union[int, Grid] = 224, in_chans: int = 3, num_classes: int = 1000,
                 drop_rate: float = 0., drop_path_rate: float = 0.1, attn_type: str = "LLLL",
                 la_kwargs: Optional[dict] = None, embed_dims: Sequence[int] = (64, 128, 320, 512),
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (1, 2, 5, 8),
                 mlp_ratios: Sequence[float] = (8, 8, 4, 4), sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 la_sr_ratios: Union[str, Sequence[int]] = (1, 1, 1, 1), qkv_bias: bool = True,
                 attn_drop_rate: float = 0.):
        super().__init__()
        self.num_stages = len(depths)
        for name, value in dict(embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios,
                                sr_ratios=sr_ratios, la_sr_ratios=la_sr_ratios).items():
            if len(value) != self.num_stages:
                raise ValueError(f"{name} needs one value per stage ({self.num_stages}), got {value!r}")
        self.img_size = to_2tuple_size(img_size)
        self.num_classes = num_classes
        self.attn_type = "".join(parse_attn_type(attn_type, self.num_stages))
        self.la_kwargs = make_la_kwargs(**(la_kwargs or {}))
        self.embed_dims = list(embed_dims)
        self.drop_rate = drop_rate
        la_sr_ratios = [int(r) for r in la_sr_ratios]
        self.grad_checkpointing = False

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        grid, in_chs, cur = self.img_size, in_chans, 0
        self.feature_info = []
        self.grids: List[Grid] = []
        for i in range(self.num_stages):
            dim, kind = embed_dims[i], self.attn_type[i]
            patch_embed = self._make_patch_embed(i, in_chs, dim)
            grid = patch_embed.output_size(grid)
            if min(grid) < 1:
                raise ValueError(f"img_size {self.img_size} is too small for {self.num_stages} stages")
            blocks = nn.ModuleList([
                PvtBlock(dim, num_heads[i], grid, attn_type=kind,
                         sr_ratio=la_sr_ratios[i] if kind == "L" else sr_ratios[i],
                         mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias, proj_drop=drop_rate,
                         attn_drop=attn_drop_rate, drop_path=dpr[cur + j], la_kwargs=self.la_kwargs,
                         mlp_layer=self.mlp_layer)
                for j in range(depths[i])])
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"block{i + 1}", blocks)
            self._make_stage_extras(i, dim, grid)
            cur += depths[i]
            in_chs = dim
            self.grids.append(grid)
            reduction = self.img_size[0] // grid[0]
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"block{i + 1}"))
        self._make_final_norm(embed_dims[-1])

        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.global_pool = "avg"
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # -- family hooks (overridden by PVTv2) ------------------------------------------------
    def _make_patch_embed(self, i: int, in_chs: int, dim: int) -> PatchEmbed:
        patch = 4 if i == 0 else 2
        return PatchEmbed(in_chs, dim, kernel_size=patch, stride=patch)

    def _make_stage_extras(self, i: int, dim: int, grid: Grid) -> None:
        """pos_embed{i} (1, H_i W_i, C_i) and its dropout."""
        setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim)))
        setattr(self, f"pos_drop{i + 1}", nn.Dropout(self.drop_rate))

    def _make_final_norm(self, dim: int) -> None:
        # Present in the released checkpoints, not applied by the released forward. Frozen, so
        # that DDP needs no find_unused_parameters and the optimizer keeps no state for it.
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.norm.requires_grad_(False)

    def _after_embed(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"pos_drop{i + 1}")(x + getattr(self, f"pos_embed{i + 1}"))

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
    @property
    def model_name(self) -> str:
        return getattr(self, "pretrained_cfg", {}).get("architecture", type(self).__name__)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters()
                if n.startswith("pos_embed") or n.rsplit(".", 1)[-1] in ("scale", "positional_encoding")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed1|^pos_embed1", blocks=r"^(?:block|patch_embed|pos_embed|norm)(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # -- forward -----------------------------------------------------------------------------
    def _forward_stage(self, i: int, x: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        """Stage i on an image / NCHW map -> tokens (B, H_i W_i, C_i) and the grid (H_i, W_i)."""
        x, hw = getattr(self, f"patch_embed{i + 1}")(x)
        x = self._after_embed(i, x)
        for blk in getattr(self, f"block{i + 1}"):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        return self._after_blocks(i, x), hw

    @staticmethod
    def _to_nchw(x: torch.Tensor, hw: Grid) -> torch.Tensor:
        b, _, c = x.shape
        return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])        # (B, C, H, W)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) -> last-stage tokens (B, H_4 W_4, C_4)."""
        check_input_size(x, self.img_size, self.model_name)
        for i in range(self.num_stages):
            x, hw = self._forward_stage(i, x)
            if i < self.num_stages - 1:
                x = self._to_nchw(x, hw)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)                                       # (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Per-stage NCHW features (B, C_i, H_i, W_i) of the stages in ``indices``.

        ``norm`` is accepted for timm compatibility; stage outputs are returned as
        the next stage consumes them (PVTv2: after its stage norm).
        Returns the list, or (last-stage tokens as ``forward_features`` gives them, list).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        check_input_size(x, self.img_size, self.model_name)
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        last = max_index if (stop_early or intermediates_only) else self.num_stages - 1
        intermediates = []
        for i in range(last + 1):
            tokens, hw = self._forward_stage(i, x)
            x = self._to_nchw(tokens, hw)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return tokens, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last one in ``indices`` (and the head); returns the indices."""
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            for name in (f"patch_embed{i + 1}", f"block{i + 1}", f"pos_embed{i + 1}", f"pos_drop{i + 1}",
                         f"norm{i + 1}"):
                if hasattr(self, name):
                    delattr(self, name)
        if max_index < self.num_stages - 1:
            self.num_stages = max_index + 1
            self.feature_info = self.feature_info[:max_index + 1]
            self.num_features = self.head_hidden_size = self.feature_info[-1]["num_chs"]
        if prune_norm and isinstance(getattr(self, "norm", None), nn.LayerNorm):
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# ------------------------------------------------------------------------------------------- registry
def _cfg(**kwargs) -> dict:
    return dict(url="", num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875,
                crop_mode="squash", interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                first_conv="patch_embed1.proj", classifier="head", **kwargs)


default_cfgs = generate_default_cfgs({
    "flatten_pvt_tiny": _cfg(),
    "flatten_pvt_small": _cfg(),
    "flatten_pvt_medium": _cfg(),
    "flatten_pvt_large": _cfg(),
})

# Shared by every FLatten-PVT size (the released models use qkv bias and these ratios).
PVT_COMMON = dict(embed_dims=[64, 128, 320, 512], num_heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4],
                  sr_ratios=[8, 4, 2, 1], la_sr_ratios=[1, 1, 1, 1], qkv_bias=True, attn_type="LLLL")


def build_pvt(cls, variant: str, pretrained: bool, arch: dict, **kwargs):
    """timm build of ``cls`` with ``arch`` defaults that ``kwargs`` may override."""
    return build_model_with_cfg(cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
                                **{**arch, **kwargs})


@register_model
def flatten_pvt_tiny(pretrained: bool = False, **kwargs) -> PyramidVisionTransformer:
    return build_pvt(PyramidVisionTransformer, "flatten_pvt_tiny", pretrained,
                     dict(PVT_COMMON, depths=[2, 2, 2, 2]), **kwargs)


@register_model
def flatten_pvt_small(pretrained: bool = False, **kwargs) -> PyramidVisionTransformer:
    return build_pvt(PyramidVisionTransformer, "flatten_pvt_small", pretrained,
                     dict(PVT_COMMON, depths=[3, 4, 6, 3]), **kwargs)


@register_model
def flatten_pvt_medium(pretrained: bool = False, **kwargs) -> PyramidVisionTransformer:
    return build_pvt(PyramidVisionTransformer, "flatten_pvt_medium", pretrained,
                     dict(PVT_COMMON, depths=[3, 4, 18, 3]), **kwargs)


@register_model
def flatten_pvt_large(pretrained: bool = False, **kwargs) -> PyramidVisionTransformer:
    """FLatten-PVT-L (released as ``flatten_pvt_b``)."""
    return build_pvt(PyramidVisionTransformer, "flatten_pvt_large", pretrained,
                     dict(PVT_COMMON, depths=[3, 8, 27, 3]), **kwargs)
