"""Optimizer: timm's ``create_optimizer_v2`` over the weight-decay groups of the recipe.

Two groupings (``TRAIN.WEIGHT_DECAY_GROUPS``):

``released`` (default): the official FLatten code's rule. No weight decay on
    1-d parameters (norm weights, biases), names ending in ``.bias``, and the
    names the released models' ``no_weight_decay()`` / ``no_weight_decay_keywords()``
    returned: ``absolute_pos_embed`` and every ``relative_position_bias_table``
    (Swin), ``cls_token`` (PVT, PVTv2, CSWin), ``pos_embed`` (CSWin; also DeiT,
    whose FLatten variant has no released code: DeiT's own list, ``pos_embed``,
    ``cls_token``, ``dist_token``). The lists named parameters the released
    FLatten models mostly do not have, so the attention temperatures
    (``scale``), the attention positional encodings (``positional_encoding``)
    and PVT's ``pos_embed1..4`` **are decayed**, as in the official runs.

``exempt_position``: a deviation from the release, this code's former default.
    Additionally no decay on every ``scale``, ``positional_encoding``,
    ``pos_embed*``, ``absolute_pos_embed``, ``relative_position_bias_table`` and
    ``cls_token``. This changes training, not inference or checkpoint loading
    (e.g. 8 more undecayed tensors for FLatten-Swin-T, 20 for FLatten-PVT-T).

The groups are ``[decay, no_decay]`` in this order, the order of the official
code, so released optimizer states load into this optimizer.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from timm.optim import create_optimizer_v2

__all__ = ["WEIGHT_DECAY_GROUPS", "is_decay_exempt", "param_groups", "build_optimizer"]

WEIGHT_DECAY_GROUPS = ("released", "exempt_position")

# Exact parameter names the released models exempted, and substrings (keywords) they exempted.
_RELEASED_NAMES = frozenset({"absolute_pos_embed", "cls_token", "dist_token", "pos_embed"})
_RELEASED_KEYWORDS = ("relative_position_bias_table",)
# The deviation: these last name components are exempt too (and any leaf starting with pos_embed).
_POSITION_LEAVES = frozenset({"scale", "positional_encoding", "absolute_pos_embed",
                              "relative_position_bias_table", "cls_token"})


def is_decay_exempt(name: str, param: torch.Tensor, groups: str = "released") -> bool:
    """True when parameter ``name`` gets no weight decay under grouping ``groups``."""
    if groups not in WEIGHT_DECAY_GROUPS:
        raise ValueError(f"TRAIN.WEIGHT_DECAY_GROUPS must be one of {', '.join(WEIGHT_DECAY_GROUPS)}, "
                         f"got {groups!r}")
    if param.ndim <= 1 or name.endswith(".bias"):
        return True
    if name in _RELEASED_NAMES or any(k in name for k in _RELEASED_KEYWORDS):
        return True
    if groups == "exempt_position":
        leaf = name.rsplit(".", 1)[-1]
        return leaf in _POSITION_LEAVES or leaf.startswith("pos_embed")
    return False


def param_groups(model: torch.nn.Module, weight_decay: float, groups: str = "released") -> List[dict]:
    """``[{'params': decayed}, {'params': not decayed, 'weight_decay': 0.}]`` (frozen params left out)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if is_decay_exempt(name, p, groups) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.05,
                    eps: float = 1e-8, betas: Sequence[float] = (0.9, 0.999), momentum: float = 0.9,
                    groups: str = "released"):
    """timm optimizer ``name`` over :func:`param_groups` of ``model``.

    Args:
        model: the bare model (not the DDP wrapper).
        name: any ``timm.optim`` name ('adamw', 'sgd', 'lamb', ...).
        lr: initial learning rate (the scheduler overrides it from the first step).
        weight_decay: decay of the decayed group.
        eps, betas: Adam-family settings; momentum: SGD-family setting.
        groups: ``'released'`` or ``'exempt_position'`` (see the module docstring).
    """
    kwargs = {}
    lower = name.lower()
    if "adam" in lower or "lamb" in lower or "lars" in lower:
        kwargs.update(eps=eps, betas=tuple(betas))
    if "sgd" in lower or "momentum" in lower:
        kwargs.update(momentum=momentum)
    return create_optimizer_v2(model, opt=name, lr=lr, weight_decay=weight_decay,
                               param_group_fn=lambda m: param_groups(m, weight_decay, groups), **kwargs)
