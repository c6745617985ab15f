"""Per-iteration learning-rate schedule: timm ``CosineLRScheduler`` stepped per optimizer step.

Timeline in optimizer steps (``n`` = steps per epoch)::

    [0, warmup*n)                   linear warm-up from WARMUP_LR
    [0, (epochs - cooldown)*n)      cosine from the base LR to MIN_LR (warm-up included,
                                    as in the official code)
    [(epochs - cooldown)*n, end)    cool-down at MIN_LR

Call ``scheduler.step_update(num_updates)`` after every optimizer step with the
number of steps done so far. The recipe is in docs/model.md, section 4.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Optional

from timm.scheduler import CosineLRScheduler

__all__ = ["build_scheduler", "schedule_warning", "format_lr"]


def format_lr(lr: float) -> str:
    """The one format of learning rates in logs and summaries (``1.000e-03``)."""
    return f"{float(lr):.3e}"


def schedule_warning(epochs: int, warmup_epochs: float, cooldown_epochs: int) -> Optional[str]:
    """A warning when the epochs leave no cosine phase (the LR would never leave warm-up), else None."""
    cosine_end = epochs - cooldown_epochs
    if cosine_end > warmup_epochs:
        return None
    return (f"TRAIN.EPOCHS={epochs} leaves no cosine phase after TRAIN.WARMUP_EPOCHS={warmup_epochs:g} and "
            f"TRAIN.COOLDOWN_EPOCHS={cooldown_epochs}: the learning rate never reaches its peak; raise "
            f"TRAIN.EPOCHS above {warmup_epochs + cooldown_epochs:g} or lower the warm-up / cool-down epochs")


@contextlib.contextmanager
def _without_timm_notice():
    """timm warns "Cosine annealing scheduler will have no effect..." for a one-step cosine;
    :func:`schedule_warning` says what is wrong in the config's own terms instead."""
    log = logging.getLogger("timm.scheduler.cosine_lr")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def build_scheduler(optimizer, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0,
                    cooldown_epochs: int = 0, min_lr: float = 0.0, warmup_lr: float = 0.0,
                    name: str = "cosine") -> CosineLRScheduler:
    """The schedule of the recipe (docs/model.md, section 4).

    Args:
        optimizer: its current ``lr`` is the peak LR.
        steps_per_epoch: optimizer steps per epoch (micro-batches / accumulation).
        epochs: total epochs, cool-down included.
        warmup_epochs: linear warm-up length (fractions allowed).
        cooldown_epochs: epochs at ``min_lr`` after the cosine.
        min_lr, warmup_lr: end of the cosine and start of the warm-up (already scaled).
        name: only 'cosine'.
    """
    if name != "cosine":
        raise ValueError(f"TRAIN.LR_SCHEDULER.NAME {name!r} is not supported (only 'cosine')")
    decay_steps = max(1, int((epochs - cooldown_epochs) * steps_per_epoch))
    warmup_steps = int(warmup_epochs * steps_per_epoch)
    with _without_timm_notice():
        return CosineLRScheduler(
            optimizer,
            t_initial=decay_steps,
            lr_min=min_lr,
            warmup_lr_init=warmup_lr,
            warmup_t=warmup_steps,
            cycle_limit=1,
            t_in_epochs=False,
        )
