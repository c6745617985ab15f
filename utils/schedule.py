"""Per-iteration learning-rate schedule: timm ``CosineLRScheduler`` stepped per optimizer step.

Timeline in optimizer steps (``n`` = steps per epoch)::

    [0, warmup*n)                   linear warm-up from WARMUP_LR
    [0, (epochs - cooldown)*n)      cosine from the base LR to MIN_LR (warm-up included,
                                    as in the official code)
    [(epochs - cooldown)*n, end)    cool-down at MIN_LR

Call ``scheduler.step_update(num_updates)`` after every optimizer step with the
number of steps done so far.
"""
from __future__ import annotations

from timm.scheduler import CosineLRScheduler

__all__ = ["build_scheduler"]


def build_scheduler(optimizer, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0,
                    cooldown_epochs: int = 0, min_lr: float = 0.0, warmup_lr: float = 0.0,
                    name: str = "cosine") -> CosineLRScheduler:
    """The schedule of the recipe (SPEC section 4).

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
    return CosineLRScheduler(
        optimizer,
        t_initial=decay_steps,
        lr_min=min_lr,
        warmup_lr_init=warmup_lr,
        warmup_t=warmup_steps,
        cycle_limit=1,
        t_in_epochs=False,
    )
