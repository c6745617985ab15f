"""Training, evaluation and throughput loops (DeiT-style engine).

* :class:`StepUnit`: one optimizer step (autocast, loss scaling, gradient
  accumulation with DDP ``no_sync``, clipping, EMA) on any device.
* :func:`train_one_epoch`: the steps of one epoch; logs progress, replaces
  and counts unreadable images, stops at a step boundary on a signal.
* :func:`evaluate`: exact top-1/top-5 over the whole validation set.
* :func:`fit`: the epochs of a run: train, evaluate, save, log.
* :func:`throughput`: inference images/s on synthetic input.

Loops take plain values and objects (no config) and return dicts of numbers.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import math
import resource
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from data.datasets import DataError
from utils.distributed import all_reduce_sum
from utils.preemption import StopRequest, agree
from utils.schedule import format_lr

__all__ = ["TrainingError", "StepUnit", "StepResult", "train_one_epoch", "evaluate", "fit", "throughput",
           "autocast"]

_logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss); one line naming epoch and step."""


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``device`` in ``amp_dtype``; a no-op context when ``amp_dtype`` is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS (KiB on Linux)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class _NoWatchdog:
    def phase(self, what, waits_for_peers=False) -> None:
        pass


# ----------------------------------------------------------------------------- the step
@dataclass
class StepResult:
    loss: float          # mean loss over the micro-batches (NaN/inf only with a scaler: the step was skipped)
    grad_norm: float     # total gradient norm before clipping (inf/NaN when the scaler skipped the step)
    skipped: bool        # the loss scaler found inf/NaN gradients and skipped the update


class StepUnit:
    """One optimizer step over ``len(micro_batches)`` micro-batches.

    Args:
        model: what runs forward (DDP-wrapped and/or compiled); its ``no_sync``
            is used on every micro-batch but the last.
        criterion: loss on ``(output, target)``.
        optimizer: stepped once per call.
        device: for autocast.
        amp_dtype: autocast dtype, None for full precision.
        scaler: a ``torch.amp.GradScaler`` (any device) or None. With a scaler
            a step whose gradients hold inf/NaN is skipped (``scaler.step``) and
            the scale lowered; ``max_skipped`` skips in a row end training.
        clip_grad: max gradient norm; None or 0: no clipping (the norm is still returned).
        model_ema: timm ``ModelEmaV3`` updated from ``ema_source`` after every applied step.
        ema_source: the bare model (defaults to ``model``).
        max_skipped: consecutive skipped steps before :class:`TrainingError`.

    Without a scaler a non-finite loss is a :class:`TrainingError` at once.
    """

    def __init__(self, model: torch.nn.Module, criterion: Callable, optimizer: torch.optim.Optimizer, *,
                 device: torch.device, amp_dtype: Optional[torch.dtype] = None,
                 scaler: Optional[torch.amp.GradScaler] = None, clip_grad: Optional[float] = None,
                 model_ema=None, ema_source: Optional[torch.nn.Module] = None, max_skipped: int = 20):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.device, self.amp_dtype, self.scaler = device, amp_dtype, scaler
        self.clip_grad = float(clip_grad) if clip_grad else None
        self.model_ema = model_ema
        self.ema_source = ema_source if ema_source is not None else model
        self.max_skipped = max_skipped
        self.skipped_in_a_row = 0
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, micro_batches: Sequence[Tuple[torch.Tensor, torch.Tensor]], where: str = "") -> StepResult:
        accum = len(micro_batches)
        no_sync = getattr(self.model, "no_sync", None)
        loss_sum = 0.0
        for i, (images, targets) in enumerate(micro_batches):
            last = i == accum - 1
            sync_ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
            with sync_ctx:
                with autocast(self.device, self.amp_dtype):
                    loss = self.criterion(self.model(images), targets)
                value = loss.item()
                if not math.isfinite(value) and self.scaler is None:
                    raise TrainingError(f"loss is {value} {where}; stopping (lower the LR, enable gradient "
                                        f"clipping, or use bfloat16 instead of float16)")
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += value / accum

        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        skipped = False
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row >= self.max_skipped:
                raise TrainingError(f"{self.skipped_in_a_row} steps in a row had inf/NaN gradients {where} "
                                    f"(loss scale {self.scaler.get_scale():g}); stopping (lower the LR or use "
                                    f"bfloat16)")
        else:
            self.skipped_in_a_row = 0
            if self.model_ema is not None:
                self.model_ema.update(self.ema_source)
        return StepResult(loss=loss_sum, grad_norm=float(grad_norm), skipped=skipped)


# ----------------------------------------------------------------------------- one epoch
def train_one_epoch(
        step_unit: StepUnit,
        loader,
        scheduler,
        *,
        epoch: int,
        num_epochs: int,
        steps_per_epoch: int,
        start_step: int = 0,
        accumulation_steps: int = 1,
        device: torch.device,
        mixup_fn: Optional[Callable] = None,
        stop: Optional[StopRequest] = None,
        world_size: int = 1,
        max_bad_files: int = 0,
        watchdog=None,
        print_freq: int = 100,
        tb=None,
        logger: Optional[logging.Logger] = None,
) -> Dict[str, float]:
    """Run optimizer steps ``start_step .. steps_per_epoch - 1`` of epoch ``epoch``.

    Args:
        step_unit: runs each step.
        loader: yields ``(images, targets, bad)`` positioned at ``start_step``
            (the sampler skips the steps already done); ``bad`` lists, per sample,
            the unreadable files the dataset replaced.
        scheduler: ``scheduler.step_update(num_updates)`` follows every step.
        epoch, num_epochs: for the schedule and the log.
        steps_per_epoch: optimizer steps of a full epoch; left-over micro-batches are not used.
        start_step: steps of this epoch already done (resume inside an epoch).
        accumulation_steps: micro-batches per optimizer step.
        device: where the batches go.
        mixup_fn: timm ``Mixup`` or None.
        stop: the process's :class:`StopRequest`; after every step all ranks
            agree whether one of them got a signal, and stop together.
        world_size: processes of the job.
        max_bad_files: unreadable training images allowed per epoch over all
            ranks; one more is a :class:`DataError` naming the files.
        watchdog: a :class:`utils.watchdog.Watchdog` told what is being waited for.
        print_freq: progress line every this many optimizer steps.
        tb: optional TensorBoard writer (``add_scalar``), fed at every progress line.

    Returns:
        dict(loss, grad_norm, lr, steps, stopped, skipped, bad_files, time): mean
        loss and grad norm over the steps done here (averaged over ranks), last
        LR, steps done, the signal number that ended the epoch early (0: none),
        steps skipped by the loss scaler, unreadable images replaced (all ranks).
    """
    log = logger or _logger
    wd = watchdog or _NoWatchdog()
    step_unit.model.train()
    accum = max(1, int(accumulation_steps))
    num_updates = epoch * steps_per_epoch + start_step
    loss_sum = norm_sum = 0.0
    steps_done = skipped = 0
    norm_steps = 0
    epoch_bad = 0
    bad_seen: List[str] = []
    stopped = 0
    start = step_start = time.time()
    data_time = step_time = 0.0
    window_loss = window_norm = 0.0
    window_steps = window_norm_steps = 0

    batches = iter(loader) if start_step < steps_per_epoch else None
    for step in range(start_step, steps_per_epoch):
        micro, bad_here = [], []
        tic = time.time()
        for m in range(accum):
            wd.phase(f"waiting for batch {step * accum + m + 1} of epoch {epoch} from the training data loader")
            images, targets, bad = next(batches)
            bad_here.extend(line for entry in bad if entry for line in entry.split("\n"))
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if mixup_fn is not None:
                images, targets = mixup_fn(images, targets)
            micro.append((images, targets))
        data_time += time.time() - tic
        wd.phase(f"training step {step + 1} of epoch {epoch} (forward, backward and the gradient all-reduce)",
                 waits_for_peers=True)
        result = step_unit(micro, where=f"at epoch {epoch} step {step}")
        num_updates += 1
        scheduler.step_update(num_updates=num_updates)
        for entry in bad_here:
            log.warning(f"unreadable training image replaced (epoch {epoch} step {step}): {entry}")
        bad_seen.extend(bad_here)
        wd.phase(f"exchanging stop signals and bad-file counts with the other processes after step {step + 1}",
                 waits_for_peers=True)
        signum, bad_total = agree(stop, len(bad_here), world_size)
        wd.phase(None)
        epoch_bad += bad_total
        if epoch_bad > max_bad_files:
            mine = f" (this process: {'; '.join(bad_seen[:3])}{' ...' if len(bad_seen) > 3 else ''})" \
                if bad_seen else ""
            raise DataError(f"{epoch_bad} unreadable training images in epoch {epoch}, more than "
                            f"DATA.MAX_BAD_FILES={max_bad_files}{mine}; remove or fix them, or raise "
                            f"DATA.MAX_BAD_FILES")

        steps_done += 1
        loss_sum += result.loss if math.isfinite(result.loss) else 0.0
        window_loss += result.loss if math.isfinite(result.loss) else 0.0
        skipped += int(result.skipped)
        if math.isfinite(result.grad_norm):  # float16 overflow steps (skipped by the scaler) stay out of the mean
            norm_sum += result.grad_norm
            window_norm += result.grad_norm
            norm_steps += 1
            window_norm_steps += 1
        window_steps += 1
        _sync(device)
        now = time.time()
        step_time += now - step_start
        step_start = now

        done = step + 1
        if done % print_freq == 0 or done == steps_per_epoch:
            lr = step_unit.optimizer.param_groups[0]["lr"]
            eta = (now - start) / steps_done * (steps_per_epoch - done)
            log.info(
                f"Train: [{epoch}/{num_epochs}][{done}/{steps_per_epoch}]  eta {_format_eta(eta)}  "
                f"lr {format_lr(lr)}  loss {window_loss / window_steps:.4f} ({loss_sum / steps_done:.4f})  "
                f"grad_norm {window_norm / max(window_norm_steps, 1):.4f}  data {data_time / window_steps:.3f}s  "
                f"step {step_time / window_steps:.3f}s  mem {_memory_mb(device):.0f}MB")
            if tb is not None:
                tb.add_scalar("train/loss", window_loss / window_steps, num_updates)
                tb.add_scalar("train/lr", lr, num_updates)
                tb.add_scalar("train/grad_norm", window_norm / max(window_norm_steps, 1), num_updates)
            window_loss = window_norm = data_time = step_time = 0.0
            window_steps = window_norm_steps = 0
        if signum:
            stopped = signum
            break

    wd.phase(f"averaging the epoch's loss over the processes (epoch {epoch})", waits_for_peers=True)
    sums = all_reduce_sum([loss_sum, norm_sum, float(steps_done), float(norm_steps)])
    wd.phase(None)
    return dict(loss=sums[0] / max(sums[2], 1.0), grad_norm=sums[1] / max(sums[3], 1.0),
                lr=step_unit.optimizer.param_groups[0]["lr"], steps=steps_done, stopped=stopped,
                skipped=skipped, bad_files=epoch_bad, time=time.time() - start)


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             print_freq: int = 100, logger: Optional[logging.Logger] = None, watchdog=None) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over the whole validation set.

    Every rank evaluates its share (the exact sampler of :mod:`data`: each image
    once, no padding); correct@1, correct@5, loss sum and image count are summed
    over ranks in float64. Pass the bare model, not the DDP wrapper: ranks may
    run different numbers of batches.

    Returns:
        dict(acc1, acc5, loss, images).
    """
    log = logger or _logger
    wd = watchdog or _NoWatchdog()
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss, count
    n_batches = len(loader)
    start = time.time()
    batches = iter(loader)
    for i in range(n_batches):
        wd.phase(f"waiting for batch {i + 1} of {n_batches} from the validation data loader")
        images, targets = next(batches)
        wd.phase(f"evaluating batch {i + 1} of {n_batches}")
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            outputs = model(images)
        outputs = outputs.float()
        loss = F.cross_entropy(outputs, targets, reduction="sum")
        k = min(5, outputs.shape[1])
        top = outputs.topk(k, dim=1).indices                    # (B, k)
        hit = top.eq(targets[:, None])                           # (B, k)
        sums += torch.stack([hit[:, 0].sum().double(), hit.any(dim=1).sum().double(), loss.double(),
                             torch.tensor(float(targets.shape[0]), dtype=torch.float64, device=device)])
        if (i + 1) % print_freq == 0:
            log.info(f"Test: [{i + 1}/{n_batches}]  {time.time() - start:.1f}s")
    wd.phase("summing the evaluation over the processes", waits_for_peers=True)
    total = all_reduce_sum(sums).cpu().tolist()
    wd.phase(None)
    model.train(was_training)
    count = total[3]
    if count == 0:
        return dict(acc1=0.0, acc5=0.0, loss=float("nan"), images=0)
    return dict(acc1=100.0 * total[0] / count, acc5=100.0 * total[1] / count, loss=total[2] / count,
                images=int(count))


# ----------------------------------------------------------------------------- the run
def fit(state, data, criterion, run_dir: str, *, epochs: int, device: torch.device,
        amp_dtype: Optional[torch.dtype], accumulation_steps: int, clip_grad: Optional[float],
        stop: Optional[StopRequest], watchdog, max_bad_files: int, save_freq: int, save_keep: int,
        print_freq: int, tb=None, jlog=None, logger: Optional[logging.Logger] = None) -> Dict[str, object]:
    """Train ``state`` (a :class:`utils.training_state.TrainingState`) from where it stands to ``epochs``.

    Every epoch: train, evaluate the model (and the EMA), save ``last.pth``
    (plus numbered / best files), log one JSON line. On a stop signal: save the
    state after the current step once (``mid_epoch``) and return.

    Returns:
        dict(stopped=signal number or 0, val=last validation dict or None).
    """
    log = logger or _logger
    wd = watchdog or _NoWatchdog()
    step_unit = StepUnit(state.train_model, criterion, state.optimizer, device=device, amp_dtype=amp_dtype,
                         scaler=state.scaler, clip_grad=clip_grad, model_ema=state.model_ema,
                         ema_source=state.model)
    loader = data.loader_train
    batch = loader.batch_size
    val = None
    while state.epoch < epochs:
        epoch = state.epoch
        loader.sampler.set_epoch(epoch, start=state.step * accumulation_steps * batch)
        stats = train_one_epoch(
            step_unit, loader, state.scheduler, epoch=epoch, num_epochs=epochs,
            steps_per_epoch=state.steps_per_epoch, start_step=state.step, accumulation_steps=accumulation_steps,
            device=device, mixup_fn=data.mixup_fn, stop=stop, world_size=state.world_size,
            max_bad_files=max_bad_files, watchdog=watchdog, print_freq=print_freq, tb=tb, logger=log)
        state.step += stats["steps"]
        if stats["stopped"]:
            name = {2: "SIGINT", 15: "SIGTERM"}.get(stats["stopped"], f"signal {stats['stopped']}")
            wd.phase("saving the mid-epoch checkpoint")
            path = state.save(run_dir, mid_epoch=True, keep=save_keep, logger=log)
            wd.phase(None)
            log.info(f"{name}: saved {path} at epoch {epoch} step {state.step}/{state.steps_per_epoch}; "
                     f"run the same command again to resume")
            return dict(stopped=stats["stopped"], val=val, checkpoint=path, epoch=epoch, step=state.step)

        val = evaluate(state.eval_model, data.loader_val, device, amp_dtype, print_freq, log, watchdog)
        is_best = state.max_acc is None or val["acc1"] > state.max_acc
        state.max_acc = val["acc1"] if is_best else state.max_acc
        record = dict(epoch=epoch, train_loss=stats["loss"], lr=stats["lr"], grad_norm=stats["grad_norm"],
                      val_acc1=val["acc1"], val_acc5=val["acc5"], val_loss=val["loss"], max_acc1=state.max_acc,
                      epoch_time=stats["time"], skipped_steps=stats["skipped"], bad_files=stats["bad_files"])
        ema_best = False
        if state.model_ema is not None:
            ema_val = evaluate(state.model_ema.module, data.loader_val, device, amp_dtype, print_freq, log,
                               watchdog)
            ema_best = state.max_acc_ema is None or ema_val["acc1"] > state.max_acc_ema
            state.max_acc_ema = ema_val["acc1"] if ema_best else state.max_acc_ema
            record.update(ema_acc1=ema_val["acc1"], ema_acc5=ema_val["acc5"], ema_loss=ema_val["loss"],
                          max_ema_acc1=state.max_acc_ema)
        log.info(f"epoch {epoch}: train loss {stats['loss']:.4f}  val Acc@1 {val['acc1']:.3f} "
                 f"Acc@5 {val['acc5']:.3f} loss {val['loss']:.4f}  (best Acc@1 {state.max_acc:.3f})"
                 + (f"  EMA Acc@1 {record['ema_acc1']:.3f}" if state.model_ema is not None else ""))

        state.epoch, state.step = epoch + 1, 0
        numbered = (epoch + 1) % save_freq == 0 or epoch == epochs - 1
        wd.phase("saving the checkpoint of the epoch")
        state.save(run_dir, numbered=numbered, is_best=is_best, ema_best=ema_best, keep=save_keep, logger=log)
        wd.phase(None)
        if jlog is not None:
            jlog.log(record)
        if tb is not None:
            tb.add_scalars({"loss": stats["loss"], "lr": stats["lr"]}, epoch, prefix="epoch/train_")
            tb.add_scalars({"acc1": val["acc1"], "acc5": val["acc5"], "loss": val["loss"]}, epoch,
                           prefix="epoch/val_")
            tb.flush()
    return dict(stopped=0, val=val)


# ----------------------------------------------------------------------------- throughput
@torch.inference_mode()
def throughput(model: torch.nn.Module, batch_size: int, img_size: int, device: torch.device,
               amp_dtype: Optional[torch.dtype] = None, warmup: int = 10, iters: int = 30,
               in_chans: int = 3, logger: Optional[logging.Logger] = None) -> Dict[str, object]:
    """Inference images/s on synthetic input.

    ``warmup`` untimed forward passes, then ``iters`` timed ones (device
    synchronised before and after).

    Returns:
        dict(images_per_s, batch_size, img_size, dtype, device, iters).
    """
    log = logger or _logger
    model.eval()
    x = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
    dtype = str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32"
    with autocast(device, amp_dtype):
        for _ in range(warmup):
            model(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
        _sync(device)
        elapsed = time.perf_counter() - start
    ips = batch_size * iters / elapsed
    log.info(f"throughput: {ips:.1f} img/s (batch {batch_size}, {img_size}x{img_size}, dtype {dtype}, "
             f"device {device}, {iters} timed iterations after {warmup} warm-up)")
    return dict(images_per_s=ips, batch_size=batch_size, img_size=img_size, dtype=dtype, device=str(device),
                iters=iters)
