"""utils/schedule.py: the per-step cosine schedule, the no-cosine-phase warning, one LR format."""
import logging

import pytest
import torch

from utils.schedule import build_scheduler, format_lr, schedule_warning


def _lrs(steps_per_epoch, epochs, **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, steps_per_epoch=steps_per_epoch, epochs=epochs, **kw)
    out = []
    for step in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        sched.step_update(num_updates=step + 1)
    return out


def test_schedule_warmup_cosine_cooldown():
    lrs = _lrs(10, 6, warmup_epochs=1, cooldown_epochs=2, min_lr=0.01, warmup_lr=0.001)
    assert lrs[0] == pytest.approx(0.001)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))             # linear warm-up
    assert max(lrs) == lrs[9] and lrs[9] > 0.85
    assert all(a >= b for a, b in zip(lrs[9:40], lrs[10:40]))         # cosine (over warm-up too, as released)
    assert all(lr == pytest.approx(0.01) for lr in lrs[40:])          # cool-down at MIN_LR


def test_no_cosine_phase_is_named_in_the_config_s_terms(caplog):
    msg = schedule_warning(2, 5, 10)
    for key in ("TRAIN.EPOCHS=2", "TRAIN.WARMUP_EPOCHS=5", "TRAIN.COOLDOWN_EPOCHS=10", "above 15"):
        assert key in msg
    assert schedule_warning(310, 5, 10) is None and schedule_warning(6, 5, 0) is None
    assert schedule_warning(5, 5, 0) is not None
    with caplog.at_level(logging.WARNING):
        lrs = _lrs(4, 2, warmup_epochs=5, cooldown_epochs=10, min_lr=0.01, warmup_lr=0.001)
    assert not [r for r in caplog.records if "Cosine annealing" in r.getMessage()]   # timm's notice is silenced
    assert max(lrs) < 0.5                                             # indeed never leaves warm-up
    assert logging.getLogger("timm.scheduler.cosine_lr").level == logging.NOTSET


def test_one_lr_format():
    assert format_lr(1e-3) == "1.000e-03" and format_lr(0.000123456) == "1.235e-04" and format_lr(0) == "0.000e+00"
