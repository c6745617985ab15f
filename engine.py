"""Training, evaluation and throughput loops (DeiT-style engine).

Plain functions taking explicit values (no config) and returning dicts of
numbers; ``main.py`` wires them together.
"""
from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import math
import resource
import time
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from utils.distributed import all_reduce_sum

__all__ = ["TrainingError", "train_one_epoch", "evaluate", "throughput", "skip_batches", "autocast"]

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


class _Skip(Sampler):
    """The items of ``sampler`` after the first ``n`` (its order must not depend on global RNG state)."""

    def __init__(self, sampler, n: int):
        self.sampler, self.n = sampler, n

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.n, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.n)


def skip_batches(loader: DataLoader, n: int) -> DataLoader:
    """A loader over the batches of ``loader`` after its first ``n`` (same epoch, same samples).

    Skipped samples are not loaded. Used to resume inside an epoch: with the
    seeded sampler of :mod:`data` the remaining batches, and their augmentation,
    are those the uninterrupted run would have seen.
    """
    if n <= 0:
        return loader
    kwargs = dict(batch_size=loader.batch_size, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                  pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
                  worker_init_fn=loader.worker_init_fn, generator=loader.generator)
    if loader.num_workers > 0:
        kwargs.update(prefetch_factor=loader.prefetch_factor)
    return DataLoader(loader.dataset, sampler=_Skip(loader.sampler, n * loader.batch_size), **kwargs)


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


def train_one_epoch(
        model: torch.nn.Module,
        criterion: Callable,
        loader,
        optimizer: torch.optim.Optimizer,
        scheduler,
        device: torch.device,
        epoch: int,
        *,
        steps_per_epoch: int,
        start_step: int = 0,
        mixup_fn: Optional[Callable] = None,
        amp_dtype: Optional[torch.dtype] = None,
        scaler: Optional[torch.amp.GradScaler] = None,
        clip_grad: Optional[float] = None,
        accumulation_steps: int = 1,
        model_ema=None,
        ema_target: Optional[torch.nn.Module] = None,
        print_freq: int = 100,
        num_epochs: Optional[int] = None,
        should_stop: Optional[Callable[[int], bool]] = None,
        tb=None,
        logger: Optional[logging.Logger] = None,
) -> Dict[str, float]:
    """Train ``steps_per_epoch - start_step`` optimizer steps of epoch ``epoch``.

    Args:
        model: the model to run (DDP-wrapped and/or compiled).
        criterion: loss on ``(output, target)``.
        loader: yields ``(images, targets)``; already positioned at ``start_step``
            (see :func:`skip_batches`).
        optimizer, scheduler: ``scheduler.step_update(num_updates)`` follows every step.
        device: where the batches go.
        epoch: epoch index (for the schedule and the log).
        steps_per_epoch: optimizer steps in a full epoch (``len(loader) // accumulation_steps``);
            left-over micro-batches of an epoch are not used.
        start_step: optimizer steps of this epoch already done (resume inside an epoch).
        mixup_fn: timm ``Mixup`` or None.
        amp_dtype: autocast dtype, None for full precision.
        scaler: ``GradScaler`` for float16 (None otherwise).
        clip_grad: max gradient norm; None or 0 disables clipping (the norm is still logged).
        accumulation_steps: micro-batches per optimizer step (DDP gradients are
            synchronised on the last one only).
        model_ema: timm ``ModelEmaV3`` updated after every step from ``ema_target``
            (the bare model; defaults to ``model``).
        print_freq: progress line every this many optimizer steps.
        num_epochs: total epochs (progress line only).
        should_stop: called after every optimizer step with the global step count;
            True ends the epoch early (the caller saves a mid-epoch checkpoint).
        tb: optional TensorBoard writer (``add_scalar``), fed at every progress line.
        logger: where progress goes (module logger by default).

    Returns:
        dict(loss, lr, grad_norm, steps, stopped, time): mean loss and grad norm over the
        steps done here (averaged over ranks), last learning rate, optimizer steps done,
        whether ``should_stop`` ended the epoch early.
    """
    log = logger or _logger
    model.train()
    accum = max(1, int(accumulation_steps))
    ema_target = ema_target if ema_target is not None else model
    params = [p for group in optimizer.param_groups for p in group["params"]]
    no_sync = getattr(model, "no_sync", None)
    total_micro = steps_per_epoch * accum
    micro = start_step * accum
    step = start_step
    num_updates = epoch * steps_per_epoch + step

    loss_sum = norm_sum = 0.0
    steps_done = 0
    stopped = False
    start = step_start = tic = time.time()
    data_time = step_time = 0.0   # waiting for batches / whole optimizer steps, over the print window
    window_loss = window_norm = 0.0
    window_steps = 0

    optimizer.zero_grad(set_to_none=True)
    for images, targets in loader:
        if micro >= total_micro:
            break
        data_time += time.time() - tic
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)

        last_micro = (micro + 1) % accum == 0
        sync_ctx = no_sync() if (no_sync is not None and not last_micro) else contextlib.nullcontext()
        with sync_ctx:
            with autocast(device, amp_dtype):
                outputs = model(images)
                loss = criterion(outputs, targets)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingError(f"loss is {loss_value} at epoch {epoch} step {step}; stopping "
                                    f"(lower the LR, enable gradient clipping, or use bfloat16 instead of float16)")
            scaled = loss / accum
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        micro += 1
        window_loss += loss_value / accum
        loss_sum += loss_value / accum
        if not last_micro:
            tic = time.time()
            continue

        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip_grad:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if model_ema is not None:
            model_ema.update(ema_target)

        step += 1
        steps_done += 1
        num_updates += 1
        scheduler.step_update(num_updates=num_updates)
        norm = float(grad_norm)
        if math.isfinite(norm):  # float16 overflow steps (skipped by the scaler) stay out of the mean
            norm_sum += norm
            window_norm += norm
        window_steps += 1
        _sync(device)
        now = time.time()
        step_time += now - step_start
        step_start = tic = now

        if step % print_freq == 0 or step == steps_per_epoch:
            lr = optimizer.param_groups[0]["lr"]
            per_step = (time.time() - start) / steps_done
            eta = per_step * (steps_per_epoch - step)
            log.info(
                f"Train: [{epoch}/{num_epochs if num_epochs is not None else '?'}][{step}/{steps_per_epoch}]  "
                f"eta {_format_eta(eta)}  lr {lr:.6g}  loss {window_loss / window_steps:.4f} "
                f"({loss_sum / steps_done:.4f})  grad_norm {window_norm / window_steps:.4f}  "
                f"data {data_time / window_steps:.3f}s  step {step_time / window_steps:.3f}s  "
                f"mem {_memory_mb(device):.0f}MB")
            if tb is not None:
                tb.add_scalar("train/loss", window_loss / window_steps, num_updates)
                tb.add_scalar("train/lr", lr, num_updates)
                tb.add_scalar("train/grad_norm", window_norm / window_steps, num_updates)
            window_loss = window_norm = data_time = step_time = 0.0
            window_steps = 0

        if should_stop is not None and should_stop(num_updates) and step < steps_per_epoch:
            stopped = True
            break

    sums = all_reduce_sum([loss_sum, norm_sum, float(steps_done)])
    n = max(sums[2], 1.0)
    return dict(loss=sums[0] / n, grad_norm=sums[1] / n, lr=optimizer.param_groups[0]["lr"],
                steps=steps_done, stopped=stopped, time=time.time() - start)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             print_freq: int = 100, logger: Optional[logging.Logger] = None) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over the whole validation set.

    Every rank evaluates its share (the exact sampler of :mod:`data`: each image
    once, no padding); correct@1, correct@5, loss sum and image count are summed
    over ranks in float64. Pass the bare model, not the DDP wrapper: ranks may
    run different numbers of batches.

    Returns:
        dict(acc1, acc5, loss, images).
    """
    log = logger or _logger
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss, count
    n_batches = len(loader)
    start = time.time()
    for i, (images, targets) in enumerate(loader):
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
    total = all_reduce_sum(sums).cpu().tolist()
    model.train(was_training)
    count = total[3]
    if count == 0:
        return dict(acc1=0.0, acc5=0.0, loss=float("nan"), images=0)
    return dict(acc1=100.0 * total[0] / count, acc5=100.0 * total[1] / count, loss=total[2] / count,
                images=int(count))


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
