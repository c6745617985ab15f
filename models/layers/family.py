"""What the five families share: the errors, the input-size check and the model base class.

:class:`FLattenModel` holds the parts of timm's model surface that do not
depend on a family's layout: the classifier (``get_classifier``,
``reset_classifier``, ``forward_head``, ``forward``), the gradient-checkpointing
loop over blocks, the input-size check, ``load_pretrained`` for released files
and ``model_name``. A family sets, in its constructor, ``img_size``,
``dynamic_img_size``, ``num_classes``, ``global_pool``, ``num_features``,
``head_hidden_size``, ``head_drop``, ``head`` and ``feature_info``, and
implements ``forward_features``, ``forward_intermediates``,
``prune_intermediate_layers``, ``set_input_size``, ``no_weight_decay`` and
``group_matcher``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn as nn
from timm.layers import register_notrace_function, trunc_normal_
from torch.utils.checkpoint import checkpoint

from .grid import Grid
from .weights import load_checkpoint

__all__ = ["ModelConfigError", "InputSizeError", "check_input_size", "parse_attn_type", "check_per_stage",
           "check_heads", "init_linear_and_norm", "FLattenModel"]


class ModelConfigError(ValueError):
    """A constructor argument a model cannot take (one line).

    ``argument`` names the argument (``'img_size'``, ``'attn_type'``,
    ``'la_kwargs.kind'``, ...) and ``value`` holds what was given, so that
    ``models.build_model`` can name the config key instead. Any other exception
    raised while building a model is a bug and is left as it is.
    """

    def __init__(self, message: str, argument: Optional[str] = None, value: Any = None):
        super().__init__(message)
        self.argument = argument
        self.value = value


class InputSizeError(ValueError):
    """An input image of a size the model cannot run (one line)."""


@torch.fx.wrap
@register_notrace_function
def check_input_size(x: torch.Tensor, img_size: Grid, dynamic: bool, multiple: int, model_name: str) -> None:
    """Refuse inputs the model cannot run, with one line that says what would work.

    Without ``dynamic`` the input must be ``img_size``; with it, any size whose
    sides are multiples of ``multiple`` (the total stride). One opaque call under
    torch.fx (the check needs the concrete size).
    """
    H, W = x.shape[-2], x.shape[-1]          # symbolic under torch.compile: no int() that would specialise
    if dynamic:
        if H % multiple or W % multiple or H < multiple or W < multiple:
            raise InputSizeError(
                f"{model_name} runs at sizes whose sides are multiples of {multiple} (dynamic_img_size), "
                f"got {H}x{W}")
    elif (H, W) != tuple(img_size):
        raise InputSizeError(
            f"{model_name} was built for {img_size[0]}x{img_size[1]} input but got {H}x{W}; build it with "
            f"img_size={H if H == W else (H, W)} (config DATA.IMG_SIZE) or dynamic_img_size=True to run at that size")


def parse_attn_type(attn_type: str, num_stages: int) -> Sequence[str]:
    """'LLSS' -> ['L', 'L', 'S', 'S'], checked against the number of stages."""
    if not isinstance(attn_type, str) or len(attn_type) != num_stages or any(c not in "LS" for c in attn_type):
        raise ModelConfigError(f"attn_type must have one letter L or S per stage ({num_stages} stages), "
                               f"got {attn_type!r}", "attn_type", attn_type)
    return list(attn_type)


def check_per_stage(name: str, value: Sequence, num_stages: int) -> list:
    """``value`` as a list, checked to hold one entry per stage."""
    value = list(value)
    if len(value) != num_stages:
        raise ModelConfigError(f"{name} needs one value per stage ({num_stages}), got {value}", name, value)
    return value


def check_heads(dim: int, num_heads: int) -> None:
    if num_heads < 1 or dim % num_heads:
        raise ModelConfigError(f"width {dim} is not divisible by num_heads {num_heads}", "num_heads", num_heads)


def init_linear_and_norm(m: nn.Module) -> None:
    """The initialisation every family applies module by module (``model.apply``):
    truncated-normal (std .02) Linear weights with zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class FLattenModel(nn.Module):
    """Base of the FLatten families (see the module doc).

    Class attributes a family may override:
        global_pools: pooling names ``global_pool`` accepts; the first is the default.
        output_fmt: layout of ``forward_features``: 'NCHW' (PVT, PVTv2, CSWin), 'NHWC' (Swin)
            or 'NLC' (DeiT's tokens).
        size_multiple: with ``dynamic_img_size`` inputs must be multiples of it (the total stride).
    """

    global_pools: Tuple[str, ...] = ("avg", "")
    output_fmt: str = "NCHW"
    size_multiple: int = 32

    # -- set-up helpers ----------------------------------------------------------------
    @classmethod
    def checked_global_pool(cls, global_pool: str) -> str:
        if global_pool not in cls.global_pools:
            allowed = " or ".join(repr(p) for p in cls.global_pools)
            raise ModelConfigError(f"global_pool must be {allowed}, got {global_pool!r}", "global_pool",
                                   global_pool)
        return global_pool

    def init_surface(self, img_size: Grid, num_classes: int, global_pool: str, num_features: int,
                     head_drop_rate: float, dynamic_img_size: bool) -> None:
        """Set the attributes of the classifier surface and the input size (called by constructors).

        ``head_drop_rate``: dropout before the head (0 where the family's original has none).
        """
        if img_size[0] < self.size_multiple or img_size[1] < self.size_multiple:
            raise ModelConfigError(f"img_size {img_size[0]}x{img_size[1]} is smaller than the total stride "
                                   f"{self.size_multiple}", "img_size", img_size)
        if num_classes < 0:
            raise ModelConfigError(f"num_classes must be >= 0, got {num_classes}", "num_classes", num_classes)
        self.img_size = img_size
        self.dynamic_img_size = bool(dynamic_img_size)
        self.num_classes = num_classes
        self.global_pool = self.checked_global_pool(global_pool)
        self.num_features = self.head_hidden_size = num_features
        self.grad_checkpointing = False
        self.head_drop = nn.Dropout(head_drop_rate)

    def make_head(self, num_classes: int) -> nn.Module:
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        init_linear_and_norm(head)
        return head

    @property
    def model_name(self) -> str:
        """The registered name (the class name when built directly)."""
        return getattr(self, "pretrained_cfg", {}).get("architecture") or type(self).__name__

    # -- classifier ----------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new, freshly initialised head for ``num_classes`` (0: no head, features out)."""
        if global_pool is not None:
            self.global_pool = self.checked_global_pool(global_pool)
        self.num_classes = num_classes
        self.head = self.make_head(num_classes)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global average over the spatial axes of ``forward_features``' layout."""
        dims = {"NCHW": (2, 3), "NHWC": (1, 2), "NLC": (1,)}[self.output_fmt]
        return x.mean(dim=dims)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled (or, with ``global_pool=''``, unpooled) features -> logits.

        Without pooling the head is applied at every position (channels stay where
        ``output_fmt`` puts them).
        """
        if self.global_pool:
            x = self.pool(x)
        x = self.head_drop(x)
        if pre_logits:
            return x
        if not self.global_pool and self.output_fmt == "NCHW":
            return self.head(x.movedim(1, -1)).movedim(-1, 1)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- blocks, checkpointing, input size ---------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def run_blocks(self, blocks: Sequence[nn.Module], x: torch.Tensor, *args) -> torch.Tensor:
        """``x = block(x, *args)`` for every block; checkpointed when enabled and gradients are recorded."""
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        for blk in blocks:
            if use_ckpt:
                x = checkpoint(blk, x, *args, use_reentrant=False)
            else:
                x = blk(x, *args)
        return x

    def check_input(self, x: torch.Tensor) -> None:
        """One-line :class:`InputSizeError` for sizes the model cannot run."""
        check_input_size(x, self.img_size, self.dynamic_img_size, self.size_multiple, self.model_name)

    # -- released weights (timm's ``custom_load`` hook) ---------------------------------------
    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, prefix: str = "") -> None:
        """Load a released (or this project's) checkpoint file strictly, without running pickled code.

        Called by timm for ``create_model(..., pretrained=True)``, including
        ``pretrained_cfg_overlay=dict(file=path)``; see :func:`models.layers.weights.load_checkpoint`.
        """
        load_checkpoint(self, checkpoint_path)
