"""Optimizer: timm's ``create_optimizer_v2`` with the no-weight-decay rule of the recipe.

No weight decay on 1-d parameters (norms), biases and the names the model returns
from ``no_weight_decay()`` (and ``no_weight_decay_keywords()`` when it has one).
An entry matches a parameter by its full name, a glob pattern, or its last
components (``'scale'`` matches ``layers.0.blocks.0.attn.scale``).

The groups are ``[decay, no_decay]`` in this order, the order of the official
(Swin) code, so released optimizer states load into this optimizer.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, List, Sequence, Set

import torch
from timm.optim import create_optimizer_v2

__all__ = ["no_weight_decay_names", "param_groups", "build_optimizer"]


def no_weight_decay_names(model: torch.nn.Module) -> Set[str]:
    names: Set[str] = set()
    for attr in ("no_weight_decay", "no_weight_decay_keywords"):
        fn = getattr(model, attr, None)
        if callable(fn):
            names |= set(fn())
    return names


def _skip(name: str, patterns: Iterable[str]) -> bool:
    for p in patterns:
        if name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p) or ("." + p + ".") in ("." + name):
            return True
    return False


def param_groups(model: torch.nn.Module, weight_decay: float, skip: Sequence[str] = ()) -> List[dict]:
    """``[{'params': decayed}, {'params': not decayed, 'weight_decay': 0.}]`` (frozen params left out)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or _skip(name, skip):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.05,
                    eps: float = 1e-8, betas: Sequence[float] = (0.9, 0.999), momentum: float = 0.9):
    """timm optimizer ``name`` over :func:`param_groups` of ``model``.

    Args:
        model: the bare model (not the DDP wrapper).
        name: any ``timm.optim`` name ('adamw', 'sgd', 'lamb', ...).
        lr: initial learning rate (the scheduler overrides it from the first step).
        weight_decay: decay of the decayed group.
        eps, betas: Adam-family settings; momentum: SGD-family setting.
    """
    skip = sorted(no_weight_decay_names(model))
    kwargs = {}
    lower = name.lower()
    if "adam" in lower or "lamb" in lower or "lars" in lower:
        kwargs.update(eps=eps, betas=tuple(betas))
    if "sgd" in lower or "momentum" in lower:
        kwargs.update(momentum=momentum)
    return create_optimizer_v2(model, opt=name, lr=lr, weight_decay=weight_decay,
                               param_group_fn=lambda m: param_groups(m, weight_decay, skip), **kwargs)
