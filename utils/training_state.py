"""The state of a training run: building its parts, choosing where it starts, restoring and saving.

Where a run starts, in this order of precedence (:func:`find_start`):

1. **auto-resume**: the newest complete checkpoint of the run's own folder
   (``TRAIN.AUTO_RESUME``, on by default), so rerunning a command continues it;
2. ``--resume FILE``: a training checkpoint (weights, optimizer, schedule,
   position) or a file of weights only (then training starts at epoch 0);
3. ``--pretrained FILE``: weights adapted to this model (positional encodings
   resized, a classifier of another size dropped), training from epoch 0.

A ``--resume`` or ``--pretrained`` that the run in the folder was not started
with is an error (it would be ignored): continue without the flag, or start a
fresh run with another ``--tag``. Both flags at once are an error too.

With several processes, rank 0 makes that choice and broadcasts it
(:func:`decide_start`); the others load the same file or end the job in one line.

Everything here that can fail on user input (checkpoint files, model sizes)
runs before the run writes anything.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from .checkpoint import (CHECKPOINT_VERSION, CheckpointError, auto_resume, disk_usage, get_rng_state,
                         load_model_state, load_pretrained, numbered_checkpoints, prune_numbered, publish,
                         safe_load, save_checkpoint, set_rng_state)
from .cluster import world_from_env
from .distributed import barrier, broadcast_object, gather_objects, is_dist

__all__ = ["StartError", "StartPoint", "find_start", "decide_start", "build_model_checked", "TrainingState",
           "FRESH_RUN_HINT"]

_logger = logging.getLogger(__name__)

FRESH_RUN_HINT = "--tag <new name>"
_TRAINING_KEYS = ("model", "optimizer", "lr_scheduler", "epoch")


def _abs(path: Optional[str]) -> str:
    return os.path.abspath(path) if path else ""


# ----------------------------------------------------------------------------- where to start
class StartError(ValueError):
    """Conflicting starting points (a user error: one line naming both and the way out)."""


@dataclass
class StartPoint:
    """Where a training run starts: ``kind`` is fresh | auto | resume | pretrained."""
    kind: str
    path: Optional[str] = None
    ckpt: Optional[Dict[str, Any]] = None
    started_from: Dict[str, str] = field(default_factory=dict)

    def finished(self, epochs: int) -> bool:
        """True when the checkpoint already holds every epoch of the run (a rerun is a no-op)."""
        c = self.ckpt
        if c is None or not all(k in c for k in _TRAINING_KEYS) or c.get("mid_epoch"):
            return False
        return int(c["epoch"]) + 1 >= epochs


def find_start(run_dir: str, *, resume: str = "", pretrained: str = "", auto: bool = True) -> StartPoint:
    """Choose and load the starting point of a training run (the precedence of the module docstring).

    Raises:
        CheckpointError: a given file cannot be read.
        StartError: conflicting flags; one line naming both sides and the flag
            that starts a fresh run.
    """
    given = {"resume": _abs(resume), "pretrained": _abs(pretrained)}
    if resume and pretrained:
        raise StartError(f"--resume {resume} and --pretrained {pretrained} both given: --resume continues a "
                          f"run, --pretrained starts a new one from weights; pass one of them")
    found, ckpt = auto_resume(run_dir) if auto else (None, None)
    if found:
        recorded = dict(ckpt.get("started_from") or {})
        for flag, path in given.items():
            if path and path != os.path.abspath(found) and path != recorded.get(flag, ""):
                raise StartError(
                    f"{run_dir} already holds a run ({os.path.basename(found)}, epoch {ckpt.get('epoch')}) that was "
                    f"not started from --{flag} {path}, which would be ignored: drop --{flag} to continue that "
                    f"run, or add {FRESH_RUN_HINT} to start a fresh run from it")
        return StartPoint("auto", found, ckpt, started_from=recorded or given)
    if not auto and numbered_or_last(run_dir):
        raise StartError(f"TRAIN.AUTO_RESUME is False but {run_dir} already holds checkpoints of a run, which a "
                          f"new run would overwrite: add {FRESH_RUN_HINT} to start a fresh run in its own folder")
    if resume:
        return StartPoint("resume", resume, safe_load(resume), started_from=given)
    if pretrained:
        if not os.path.isfile(pretrained):
            safe_load(pretrained)  # the one message for a missing / unreadable file
        return StartPoint("pretrained", pretrained, None, started_from=given)
    return StartPoint("fresh", started_from=given)


def decide_start(run_dir: str, *, resume: str = "", pretrained: str = "", auto: bool = True) -> StartPoint:
    """:func:`find_start` decided once for the whole job: by rank 0, then broadcast.

    Every other rank loads the file rank 0 chose (the same path), so all ranks
    start from one checkpoint even when some nodes see other files (no shared
    file system). A rank that cannot read it ends the job on every rank with
    one :class:`StartError` line naming its node, its rank and the path; an
    error of rank 0's choice is raised on every rank. Never a hang.
    """
    if not is_dist():
        return find_start(run_dir, resume=resume, pretrained=pretrained, auto=auto)
    rank = dist.get_rank()
    start, choice = None, None
    if rank == 0:
        try:
            start = find_start(run_dir, resume=resume, pretrained=pretrained, auto=auto)
            choice = ("ok", start.kind, start.path, dict(start.started_from))
        except Exception as e:     # every rank must hear of it, or they wait for the choice until the timeout
            choice = ("error", type(e).__name__, " ".join(str(e).split()))
            broadcast_object(choice)
            raise
    choice = broadcast_object(choice)
    if choice[0] == "error":
        error = {"StartError": StartError, "CheckpointError": CheckpointError}.get(choice[1])
        if error is None:
            raise StartError(f"rank 0 could not choose where the run starts ({choice[1]}: {choice[2]})")
        raise error(choice[2])
    _, kind, path, started_from = choice
    problem = None
    if rank != 0:
        try:
            ckpt = None
            if kind in ("auto", "resume"):
                ckpt = safe_load(path)
            elif kind == "pretrained":
                with open(path, "rb") as f:
                    f.read(1)
            start = StartPoint(kind, path, ckpt, started_from=started_from)
        except (CheckpointError, OSError) as e:
            problem = (rank, world_from_env().node, " ".join(str(e).split()))
    problems = [p for p in gather_objects(problem) if p is not None]
    if problems:
        bad_rank, bad_node, why = problems[0]
        others = f" (and {len(problems) - 1} more rank(s))" if len(problems) > 1 else ""
        raise StartError(f"rank {bad_rank} on node {bad_node}{others} cannot read {path}, the starting point "
                         f"rank 0 chose ({kind}): {why}; every node needs the run folder and any --resume/--pretrained "
                         f"file at the same path (a shared file system, or a copy)")
    return start


def numbered_or_last(folder: str) -> bool:
    return bool(numbered_checkpoints(folder)) or os.path.isfile(os.path.join(folder, "last.pth"))


# ----------------------------------------------------------------------------- the model
def build_model_checked(cfg, num_classes: int, device: torch.device) -> torch.nn.Module:
    """``models.build_model(cfg, num_classes=...)`` on ``device``.

    Config values the model cannot take (an image size that is not a multiple of
    the family's stride, an attention string of the wrong length, a key of
    another family) raise ``models.ModelConfigError`` in one line that names
    the key and the value, before anything is written; any other exception of
    a constructor is a bug and propagates as such.
    """
    import models
    return models.build_model(cfg, num_classes=num_classes).to(device)


# ----------------------------------------------------------------------------- the state
class TrainingState:
    """The parts of a training run (model, optimizer, schedule, loss scaler, EMA) and its position.

    ``epoch`` is the next epoch to run and ``step`` the optimizer steps of it
    already done; ``max_acc`` / ``max_acc_ema`` the best validation Acc@1 so far.
    Build with :meth:`build`, then :meth:`restore`, then :meth:`prepare` (DDP,
    EMA, compile, RNG states), then train; :meth:`save` writes checkpoints.
    """

    def __init__(self, *, model, optimizer, scheduler, scaler, steps_per_epoch: int, rank: int, world_size: int,
                 device: torch.device, num_classes: int, config_yaml: str, ema_decay: Optional[float] = None):
        self.model = model                      # the bare model (state dicts, evaluation)
        self.train_model = model                # what the step runs: DDP-wrapped and/or compiled
        self.eval_model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.model_ema = None
        self.ema_decay = ema_decay
        self.steps_per_epoch = int(steps_per_epoch)
        self.rank, self.world_size, self.device = rank, world_size, device
        self.num_classes = int(num_classes)
        self.config_yaml = config_yaml
        self.epoch, self.step = 0, 0
        self.max_acc: Optional[float] = None
        self.max_acc_ema: Optional[float] = None
        self.started_from: Dict[str, str] = {}
        self.resumed_from: Optional[str] = None
        self._pending_ema: Optional[Dict[str, Any]] = None
        self._pending_rng: Optional[Any] = None
        self._rng_note: Optional[str] = None

    # -- building
    @classmethod
    def build(cls, cfg, *, num_classes: int, steps_per_epoch: int, device: torch.device,
              amp_dtype: Optional[torch.dtype], rank: int, world_size: int, config_yaml: str) -> "TrainingState":
        """The parts for ``cfg`` (the config with derived values, see ``config.finalize``)."""
        from .optim import build_optimizer
        from .schedule import build_scheduler

        t = cfg.TRAIN
        model = build_model_checked(cfg, num_classes, device)
        if t.USE_CHECKPOINT:
            model.set_grad_checkpointing(True)
        optimizer = build_optimizer(model, t.OPTIMIZER.NAME, lr=t.BASE_LR, weight_decay=t.WEIGHT_DECAY,
                                    eps=t.OPTIMIZER.EPS, betas=t.OPTIMIZER.BETAS, momentum=t.OPTIMIZER.MOMENTUM,
                                    groups=t.WEIGHT_DECAY_GROUPS)
        scheduler = build_scheduler(optimizer, steps_per_epoch, t.EPOCHS, t.WARMUP_EPOCHS, t.COOLDOWN_EPOCHS,
                                    min_lr=t.MIN_LR, warmup_lr=t.WARMUP_LR, name=t.LR_SCHEDULER.NAME)
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        return cls(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                   steps_per_epoch=steps_per_epoch, rank=rank, world_size=world_size, device=device,
                   num_classes=num_classes, config_yaml=config_yaml,
                   ema_decay=float(t.EMA.DECAY) if t.EMA.ENABLE else None)

    # -- restoring
    def restore(self, start: StartPoint, logger: Optional[logging.Logger] = None) -> None:
        """Load the starting point into the parts (weights, optimizer, schedule, scaler, position)."""
        log = logger or _logger
        self.started_from = dict(start.started_from)
        if start.kind == "fresh":
            return
        if start.kind == "pretrained":
            load_pretrained(self.model, start.path, log)
            return
        ckpt, path = start.ckpt, start.path
        load_model_state(self.model, ckpt.get("model", ckpt), path)
        if not all(k in ckpt for k in _TRAINING_KEYS):
            log.info(f"loaded weights from {path} (no training state: starting at epoch 0)")
            return
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit this model's optimizer "
                                  f"({' '.join(str(e).split())})") from None
        saved_steps = int(ckpt.get("steps_per_epoch", self.steps_per_epoch))
        if saved_steps == self.steps_per_epoch:
            self.scheduler.load_state_dict(ckpt["lr_scheduler"])
        else:  # another world size or batch: the schedule of this run's config, in its own steps
            log.warning(f"{path} has {saved_steps} steps per epoch, this run {self.steps_per_epoch}: "
                        f"the LR schedule follows this run's config")
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]) + 1, 0
        mid = ckpt.get("mid_epoch")
        if mid:
            self.epoch, self.step = int(mid["epoch"]), int(mid["step"])
            if saved_steps != self.steps_per_epoch:  # the same fraction of the epoch in this run's steps
                self.step = min(self.step * self.steps_per_epoch // saved_steps, self.steps_per_epoch)
        self.scheduler.step_update(num_updates=self.epoch * self.steps_per_epoch + self.step)
        if ckpt.get("max_accuracy") is not None:
            self.max_acc = float(ckpt["max_accuracy"])
        if ckpt.get("max_accuracy_ema") is not None:
            self.max_acc_ema = float(ckpt["max_accuracy_ema"])
        if isinstance(ckpt.get("model_ema"), dict):
            self._pending_ema = ckpt["model_ema"]
        if "rng" in ckpt:
            if int(ckpt.get("world_size", -1)) == self.world_size and len(ckpt["rng"]) == self.world_size:
                self._pending_rng = ckpt["rng"][self.rank]
            else:
                self._rng_note = (f"{path} was written by {ckpt.get('world_size')} process(es), this run has "
                                  f"{self.world_size}: random states start afresh (training goes on, "
                                  f"not bit-exactly)")
        self.resumed_from = path

    def prepare(self, compile_model: bool = False, seed: int = 0) -> None:
        """DDP (several processes), EMA (from every rank's identical weights), compile, RNG states last."""
        if self.world_size > 1:
            self.train_model = _ddp(self.model, self.device)
        if self.ema_decay is not None:
            from timm.utils import ModelEmaV3
            self.model_ema = ModelEmaV3(self.model, decay=self.ema_decay)
            if self._pending_ema is not None:
                load_model_state(self.model_ema.module, self._pending_ema, str(self.resumed_from), what="model_ema")
        self._pending_ema = None
        if compile_model:
            self.train_model, self.eval_model = torch.compile(self.train_model), torch.compile(self.model)
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
        elif self._rng_note is not None:
            _logger.warning(self._rng_note)
            _reseed(seed + self.rank + 1000 * self.epoch)
        self._pending_rng = None

    # -- saving
    def state_dict(self, mid_epoch: bool) -> Dict[str, Any]:
        """The checkpoint dict; a collective (every rank's RNG state), so every rank calls it."""
        rng = gather_objects(get_rng_state())
        s = dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                 lr_scheduler=self.scheduler.state_dict(),
                 scaler=self.scaler.state_dict() if self.scaler is not None else {},
                 epoch=self.epoch - 1,
                 max_accuracy=self.max_acc, max_accuracy_ema=self.max_acc_ema, rng=rng,
                 world_size=self.world_size, steps_per_epoch=self.steps_per_epoch, num_classes=self.num_classes,
                 started_from=dict(self.started_from), config=self.config_yaml, version=CHECKPOINT_VERSION)
        if self.model_ema is not None:
            s["model_ema"] = self.model_ema.module.state_dict()
        if mid_epoch:
            s["mid_epoch"] = dict(epoch=self.epoch, step=self.step)
        return s

    def save(self, run_dir: str, *, mid_epoch: bool = False, numbered: bool = False, is_best: bool = False,
             ema_best: bool = False, keep: int = 3, logger: Optional[logging.Logger] = None) -> str:
        """Write ``last.pth`` (rank 0) and publish the other names; every rank returns after it is on disk.

        ``mid_epoch``: the state after ``step`` steps of ``epoch`` (preemption).
        Otherwise the state after the whole of ``epoch - 1`` (the caller has
        advanced ``epoch``); ``numbered`` also publishes ``ckpt_epoch_<e>.pth``
        and keeps the ``keep`` newest of those; ``is_best`` / ``ema_best``
        publish ``best.pth`` / ``best_ema.pth``.
        """
        log = logger or _logger
        state = self.state_dict(mid_epoch)
        last = os.path.join(run_dir, "last.pth")
        if self.rank == 0:
            start = time.time()
            save_checkpoint(last, state)
            size = os.path.getsize(last)
            names, pruned = [], []
            done = state["epoch"]
            if not mid_epoch:
                if numbered:
                    names.append(os.path.basename(publish(last, os.path.join(run_dir, f"ckpt_epoch_{done}.pth"))))
                    pruned = prune_numbered(run_dir, keep)
                if is_best:
                    names.append(os.path.basename(publish(last, os.path.join(run_dir, "best.pth"))))
                if ema_best:
                    names.append(os.path.basename(publish(last, os.path.join(run_dir, "best_ema.pth"))))
            links = f"; {', '.join(names)}: same file" if names else ""
            gone = f"; removed {', '.join(os.path.basename(p) for p in pruned)} (SAVE_KEEP {keep})" if pruned else ""
            log.info(f"saved {last} ({size / 2 ** 20:.1f} MB, {time.time() - start:.1f} s){links}{gone}; "
                     f"checkpoints in the folder: {disk_usage(run_dir) / 2 ** 20:.1f} MB")
        del state
        barrier()
        return last


def _reseed(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP without per-forward buffer broadcasts (the models' buffers are constants)."""
    import inspect
    import warnings

    from torch.nn.parallel import DistributedDataParallel as DDP
    kwargs = dict(device_ids=[device.index] if device.type == "cuda" else None)
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:
        kwargs["broadcast_buffers"] = False
    # mkldnn's depthwise-conv gradients come in another memory layout than DDP's buckets: harmless.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DDP(model, **kwargs)
