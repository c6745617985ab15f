"""Small pieces shared by the families."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import trunc_normal_


class InputSizeError(ValueError):
    """An input image of a size the model was not built for."""


def check_input_size(x: torch.Tensor, img_size: Tuple[int, int], model_name: str) -> None:
    """One-line error when ``x`` (B, C, H, W) is not the size the model was built for."""
    if tuple(x.shape[-2:]) != tuple(img_size):
        raise InputSizeError(
            f"{model_name} was built for {img_size[0]}x{img_size[1]} input but got "
            f"{x.shape[-2]}x{x.shape[-1]}; build it with img_size={x.shape[-2]} "
            f"(config DATA.IMG_SIZE) to run at that size")


def to_2tuple_size(img_size) -> Tuple[int, int]:
    if isinstance(img_size, int):
        return (img_size, img_size)
    return tuple(img_size)


def parse_attn_type(attn_type: str, num_stages: int) -> Sequence[str]:
    """'LLSS' -> ['L', 'L', 'S', 'S'], checked against the number of stages."""
    if len(attn_type) != num_stages or any(c not in "LS" for c in attn_type):
        raise ValueError(f"attn_type must have one letter L or S per stage ({num_stages} stages), "
                         f"got {attn_type!r}")
    return list(attn_type)


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


class ClassifierMixin:
    """The classifier part of timm's model surface, shared by the families.

    A family sets ``global_pools`` (the pooling names it accepts, the first is
    the default), ``num_features`` (the head's input width) and ``head``.
    """

    global_pools: Tuple[str, ...] = ("avg", "")

    @classmethod
    def checked_global_pool(cls, global_pool: str) -> str:
        if global_pool not in cls.global_pools:
            allowed = " or ".join(repr(p) for p in cls.global_pools)
            raise ValueError(f"global_pool must be {allowed}, got {global_pool!r}")
        return global_pool

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new, freshly initialised head for ``num_classes`` (0: no head, features out)."""
        if global_pool is not None:
            self.global_pool = self.checked_global_pool(global_pool)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        init_linear_and_norm(self.head)
