"""Loading released FLatten checkpoints into this code base's models.

Parameter names are those of the official release, so a released state dict
loads as is. :func:`checkpoint_filter_fn` only

* unwraps ``{'model': ...}`` / ``{'state_dict': ...}`` / DDP ``module.`` prefixes,
* drops the buffers listed in :data:`IGNORED_KEYS` (the model rebuilds them), and
* resizes the resolution-bound parameters when the model was built for another
  image size or window: ``positional_encoding``, ``pos_embed*`` (token grids,
  bicubic) and ``relative_position_bias_table`` (bicubic over the offset grid).
"""
from __future__ import annotations

import logging
import re
from typing import Dict, Mapping

import torch
import torch.nn.functional as F

from .focused_linear_attention import resize_positional_encoding

_logger = logging.getLogger(__name__)

# Keys a released checkpoint may carry that this code does not load, with the reason.
IGNORED_KEYS = {
    r"(^|\.)attn_mask$": "Swin shifted-window masks: recomputed from the input size",
    r"(^|\.)relative_position_index$": "Swin relative-position index: recomputed from the window size",
    r"(^|\.)relative_coords_table$": "derived buffer: recomputed",
}


def is_ignored_key(key: str) -> bool:
    return any(re.search(p, key) for p in IGNORED_KEYS)


def unwrap_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint: ``{'model': sd}``, ``{'state_dict': sd}`` or ``sd``."""
    sd = checkpoint
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def resize_rel_pos_table(table: torch.Tensor, new_len: int) -> torch.Tensor:
    """(L, h) table over a (2w-1)^2 offset grid -> (new_len, h), bicubic."""
    old = int(round(table.shape[0] ** 0.5))
    new = int(round(new_len ** 0.5))
    if old * old != table.shape[0] or new * new != new_len:
        raise ValueError(f"cannot resize a relative position table of {table.shape[0]} rows to {new_len}")
    h = table.shape[1]
    t = table.t().reshape(1, h, old, old).float()
    t = F.interpolate(t, size=(new, new), mode="bicubic", align_corners=False)
    return t.reshape(h, new * new).t().to(table.dtype)


def checkpoint_filter_fn(state_dict: Mapping, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Adapt a released (or this project's) state dict to ``model``; see the module doc."""
    sd = unwrap_state_dict(state_dict)
    target = model.state_dict()
    prefix_tokens = getattr(model, "num_prefix_tokens", 0)
    out, ignored = {}, []
    for k, v in sd.items():
        if is_ignored_key(k):
            ignored.append(k)
            continue
        if k in target and torch.is_tensor(v) and v.shape != target[k].shape:
            leaf = k.rsplit(".", 1)[-1]
            if leaf == "positional_encoding" or leaf.startswith("pos_embed"):
                # DeiT's encodings cover the class token too: it is kept, the grid resized.
                v = resize_positional_encoding(v, target[k].shape[1], prefix_tokens)
            elif leaf == "relative_position_bias_table":
                v = resize_rel_pos_table(v, target[k].shape[0])
        out[k] = v
    if ignored:
        _logger.info("checkpoint_filter_fn: ignored %d rebuilt buffers (%s)", len(ignored),
                     ", ".join(sorted({k.rsplit('.', 1)[-1] for k in ignored})))
    return out
