"""Small pieces shared by the families."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch


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
