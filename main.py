"""Train, evaluate or benchmark a FLatten model.

    torchrun --nproc_per_node=8 main.py --cfg configs/flatten_swin_t.yaml --data-path /data/imagenet
    python main.py --cfg configs/flatten_swin_t.yaml --data-path /data/imagenet --eval --resume flatten_swin_t.pth
    python main.py --cfg configs/flatten_swin_t.yaml --throughput --batch-size 64

One process (``python main.py``) or many (``torchrun``), CPU or GPU. Outputs go
to ``OUTPUT/<config name>/TAG``. User errors (config, data, checkpoint) end
the run with one ``error: ...`` line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import tempfile
import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch

from config import ConfigError, finalize, get_config
from data import build_loader
from data.datasets import DataError
from engine import TrainingError, evaluate, skip_batches, throughput, train_one_epoch
from models import ModelConfigError, build_model
from models.layers import InputSizeError
from utils.checkpoint import (CHECKPOINT_VERSION, CheckpointError, auto_resume, get_rng_state, load_model_state,
                              load_pretrained, publish, safe_load, save_checkpoint, set_rng_state)
from utils.cpu_memory import keep_freed_memory
from utils.distributed import all_reduce_sum, barrier, cleanup, init_distributed
from utils.logging import JsonLogger, TensorboardWriter, create_logger
from utils.optim import build_optimizer
from utils.schedule import build_scheduler

# Errors that are the user's to fix: reported in one line, exit code 2, no traceback.
USER_ERRORS = (ConfigError, DataError, ModelConfigError, CheckpointError, InputSizeError)
EXIT_USER_ERROR = 2

# Test hook: when set to N, every rank sends itself SIGTERM after its N-th optimizer step
# (counted from the start of training), to exercise the preemption path deterministically.
SIGTERM_HOOK_ENV = "FLATTEN_TEST_SIGTERM_AT_STEP"

logger = logging.getLogger("flatten")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("FLatten Transformer: train / evaluate / benchmark", add_help=True)
    p.add_argument("--cfg", metavar="FILE", help="YAML config (configs/<model>.yaml)")
    p.add_argument("--opts", nargs="+", default=None, metavar="KEY VALUE",
                   help="config overrides, e.g. --opts TRAIN.EPOCHS 100 DATA.IMG_SIZE 384")
    p.add_argument("--batch-size", type=int, help="images per process (DATA.BATCH_SIZE)")
    p.add_argument("--data-path", help="ImageFolder root with train/ and val/ (DATA.DATA_PATH)")
    p.add_argument("--dataset", choices=["imagenet", "demo"], help="DATA.DATASET")
    p.add_argument("--num-workers", type=int, help="loader workers per process (DATA.NUM_WORKERS)")
    p.add_argument("--pretrained", metavar="FILE", help="start from these weights (e.g. 224 -> 384 fine-tuning)")
    p.add_argument("--resume", metavar="FILE", help="checkpoint to resume training from, or to evaluate")
    p.add_argument("--accumulation-steps", type=int, help="micro-batches per optimizer step")
    p.add_argument("--use-checkpoint", action="store_true", help="gradient checkpointing (saves memory)")
    p.add_argument("--amp-dtype", choices=["bfloat16", "float16"], help="autocast dtype on GPU")
    p.add_argument("--disable-amp", action="store_true", help="full float32 precision")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--output", metavar="DIR", help="root of the output folders (OUTPUT)")
    p.add_argument("--tag", help="run tag: output goes to OUTPUT/<config name>/TAG")
    p.add_argument("--eval", action="store_true", help="evaluate --resume on the validation set")
    p.add_argument("--throughput", action="store_true", help="measure inference throughput on synthetic input")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact resume)")
    p.add_argument("--seed", type=int, help="random seed (SEED)")
    p.add_argument("--epochs", type=int, help="total epochs (TRAIN.EPOCHS)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- helpers
class StopFlag:
    """Set by SIGTERM; the training loop saves and exits at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handler)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handler(self, signum, frame) -> None:  # keep it minimal: no logging inside a handler
        self.requested = True


def _any_rank(flag: bool, world_size: int) -> bool:
    if world_size == 1:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def _amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype: only on CUDA and only with AMP on; bfloat16 falls back to float16 on old GPUs."""
    if not cfg.AMP or device.type != "cuda":
        return None
    if cfg.AMP_DTYPE == "bfloat16":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        logger.warning("this GPU has no bfloat16: using float16 with a loss scaler")
    return torch.float16


def _write_json(path: str, record: Dict[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _write_text(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _gather_rng(world_size: int):
    state = get_rng_state()
    if world_size == 1:
        return [state]
    import torch.distributed as dist
    out = [None] * world_size
    dist.all_gather_object(out, state)
    return out


def _criterion(mixup_fn, smoothing: float):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if mixup_fn is not None:
        return SoftTargetCrossEntropy()   # Mixup/CutMix produce soft targets (smoothing included)
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return torch.nn.CrossEntropyLoss()


def _ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP without per-forward buffer broadcasts (the models' buffers are constants)."""
    import inspect
    from torch.nn.parallel import DistributedDataParallel as DDP
    kwargs = dict(device_ids=[device.index] if device.type == "cuda" else None)
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:
        kwargs["broadcast_buffers"] = False
    # mkldnn's depthwise-conv gradients come in another memory layout than DDP's buckets: harmless.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DDP(model, **kwargs)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- modes
def run_throughput(cfg, device, rank: int, amp_dtype) -> int:
    model = build_model(cfg).to(device)
    if cfg.COMPILE:
        model = torch.compile(model)
    logger.info(f"model {cfg.MODEL.NAME}: {_num_params(model) / 1e6:.2f}M parameters")
    stats = throughput(model, cfg.DATA.BATCH_SIZE, cfg.DATA.IMG_SIZE, device, amp_dtype, logger=logger)
    if rank == 0:
        _write_json(os.path.join(cfg.OUTPUT, "throughput.json"), dict(stats, model=cfg.MODEL.NAME))
    return 0


def run_eval(cfg, device, rank: int, world_size: int, amp_dtype) -> int:
    path = cfg.MODEL.RESUME or cfg.MODEL.PRETRAINED
    if not path:
        raise ConfigError("--eval needs weights: pass --resume <checkpoint>")
    _, dataset_val, _, loader_val, _ = build_loader(cfg, rank=rank, world_size=world_size, eval_only=True)
    model = build_model(cfg)
    ckpt = None
    if cfg.MODEL.RESUME:
        ckpt = safe_load(path)
        load_model_state(model, ckpt, path)
    else:
        load_pretrained(model, path, logger)
    model.to(device)
    logger.info(f"evaluating {path} ({cfg.MODEL.NAME}, {_num_params(model) / 1e6:.2f}M parameters) "
                f"on {len(dataset_val)} images, {world_size} process(es)")
    eval_model = torch.compile(model) if cfg.COMPILE else model
    stats = evaluate(eval_model, loader_val, device, amp_dtype, cfg.PRINT_FREQ, logger)
    logger.info(f"Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.4f} "
                f"({stats['images']} images)")
    record = dict(stats, checkpoint=os.path.abspath(path), model=cfg.MODEL.NAME, img_size=cfg.DATA.IMG_SIZE)
    if ckpt is not None and cfg.TRAIN.EMA.ENABLE and isinstance(ckpt.get("model_ema"), dict):
        ema = build_model(cfg)
        load_model_state(ema, ckpt["model_ema"], path, what="model_ema")
        ema.to(device)
        ema_stats = evaluate(ema, loader_val, device, amp_dtype, cfg.PRINT_FREQ, logger)
        logger.info(f"EMA Acc@1 {ema_stats['acc1']:.3f} Acc@5 {ema_stats['acc5']:.3f} loss {ema_stats['loss']:.4f}")
        record.update({f"ema_{k}": v for k, v in ema_stats.items() if k != "images"})
    if rank == 0:
        _write_json(os.path.join(cfg.OUTPUT, "eval.json"), record)
    return 0


def run_train(cfg, device, rank: int, world_size: int, amp_dtype) -> int:
    if cfg.TRAIN.LR_SCHEDULER.NAME != "cosine":
        raise ConfigError(f"TRAIN.LR_SCHEDULER.NAME {cfg.TRAIN.LR_SCHEDULER.NAME!r} is not supported; use 'cosine'")
    stop = StopFlag()
    stop.install()  # before the loaders start workers, which inherit the handler
    try:
        return _train(cfg, device, rank, world_size, amp_dtype, stop)
    finally:
        stop.uninstall()


def _train(cfg, device, rank: int, world_size: int, amp_dtype, stop: StopFlag) -> int:
    t = cfg.TRAIN
    hook = int(os.environ.get(SIGTERM_HOOK_ENV, "0") or 0)

    dataset_train, dataset_val, loader_train, loader_val, mixup_fn = build_loader(cfg, rank=rank, world_size=world_size)
    model = build_model(cfg)
    if t.USE_CHECKPOINT:
        model.set_grad_checkpointing(True)
    model.to(device)
    logger.info(f"model {cfg.MODEL.NAME}: {_num_params(model) / 1e6:.2f}M parameters")

    accum = t.ACCUMULATION_STEPS
    steps_per_epoch = len(loader_train) // accum
    if steps_per_epoch == 0:
        raise ConfigError(f"TRAIN.ACCUMULATION_STEPS={accum} exceeds the {len(loader_train)} batches of an epoch")
    optimizer = build_optimizer(model, t.OPTIMIZER.NAME, lr=t.BASE_LR, weight_decay=t.WEIGHT_DECAY,
                                eps=t.OPTIMIZER.EPS, betas=t.OPTIMIZER.BETAS, momentum=t.OPTIMIZER.MOMENTUM)
    scheduler = build_scheduler(optimizer, steps_per_epoch, t.EPOCHS, t.WARMUP_EPOCHS, t.COOLDOWN_EPOCHS,
                                min_lr=t.MIN_LR, warmup_lr=t.WARMUP_LR, name=t.LR_SCHEDULER.NAME)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    criterion = _criterion(mixup_fn, cfg.MODEL.LABEL_SMOOTHING)
    clip_grad = float(t.CLIP_GRAD) if t.CLIP_GRAD else None

    # ---- where to start: auto-resume > --resume > --pretrained
    ckpt, ckpt_path = None, cfg.MODEL.RESUME or None
    if t.AUTO_RESUME:
        found, found_ckpt = auto_resume(cfg.OUTPUT)
        if found:
            if ckpt_path and os.path.abspath(ckpt_path) != os.path.abspath(found):
                logger.warning(f"auto-resume: {found} in the output folder takes precedence over --resume {ckpt_path}")
            ckpt, ckpt_path = found_ckpt, found
        del found_ckpt
    if ckpt_path and ckpt is None:
        ckpt = safe_load(ckpt_path)

    start_epoch, start_step = 0, 0
    max_acc, max_acc_ema = None, None
    if ckpt is not None:
        load_model_state(model, ckpt.get("model", ckpt), ckpt_path)
        if all(k in ckpt for k in ("optimizer", "lr_scheduler", "epoch")):
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError, RuntimeError) as e:
                raise CheckpointError(f"{ckpt_path}: optimizer state does not fit this model's optimizer "
                                      f"({' '.join(str(e).split())})") from None
            saved_steps = int(ckpt.get("steps_per_epoch", steps_per_epoch))
            if saved_steps == steps_per_epoch:
                scheduler.load_state_dict(ckpt["lr_scheduler"])
            else:  # another world size or batch: the schedule of this run's config, in its own steps
                logger.warning(f"{ckpt_path} has {saved_steps} steps per epoch, this run {steps_per_epoch}: "
                               f"the LR schedule follows this run's config")
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start_epoch = int(ckpt["epoch"]) + 1
            mid = ckpt.get("mid_epoch")
            if mid:
                start_epoch, start_step = int(mid["epoch"]), int(mid["step"])
                if saved_steps != steps_per_epoch:  # same fraction of the epoch in this run's steps
                    start_step = min(start_step * steps_per_epoch // saved_steps, steps_per_epoch - 1)
            scheduler.step_update(num_updates=start_epoch * steps_per_epoch + start_step)
            if ckpt.get("max_accuracy") is not None:
                max_acc = float(ckpt["max_accuracy"])
            if ckpt.get("max_accuracy_ema") is not None:
                max_acc_ema = float(ckpt["max_accuracy_ema"])
            logger.info(f"resumed from {ckpt_path}: epoch {start_epoch}, step {start_step}")
        else:
            logger.info(f"loaded weights from {ckpt_path} (no training state: starting at epoch 0)")
    elif cfg.MODEL.PRETRAINED:
        load_pretrained(model, cfg.MODEL.PRETRAINED, logger)

    model_without_ddp = model
    if world_size > 1:
        model = _ddp(model, device)
    model_ema = None
    if t.EMA.ENABLE:  # after DDP: every rank starts from rank 0's weights
        from timm.utils import ModelEmaV3
        model_ema = ModelEmaV3(model_without_ddp, decay=t.EMA.DECAY)
        if ckpt is not None and isinstance(ckpt.get("model_ema"), dict):
            load_model_state(model_ema.module, ckpt["model_ema"], ckpt_path, what="model_ema")
    train_model, eval_model = model, model_without_ddp
    if cfg.COMPILE:
        train_model, eval_model = torch.compile(model), torch.compile(model_without_ddp)

    if ckpt is not None and "rng" in ckpt:
        if int(ckpt.get("world_size", -1)) == world_size and len(ckpt["rng"]) == world_size:
            set_rng_state(ckpt["rng"][rank])
        else:
            logger.warning(f"{ckpt_path} was written by {ckpt.get('world_size')} process(es), this run has "
                           f"{world_size}: random states start afresh (training goes on, not bit-exactly)")
            _seed_everything(cfg.SEED + rank + 1000 * start_epoch)
    del ckpt

    tb = TensorboardWriter(os.path.join(cfg.OUTPUT, "tensorboard"), rank)
    jlog = JsonLogger(cfg.OUTPUT, rank)
    last_path = os.path.join(cfg.OUTPUT, "last.pth")

    def should_stop(num_updates: int) -> bool:
        if hook and num_updates == hook:
            os.kill(os.getpid(), signal.SIGTERM)
        return _any_rank(stop.requested, world_size)

    def state(epoch_done: int, mid_epoch=None) -> Dict[str, Any]:
        rng = _gather_rng(world_size)  # collective: every rank calls it
        s = dict(model=model_without_ddp.state_dict(), optimizer=optimizer.state_dict(),
                 lr_scheduler=scheduler.state_dict(), scaler=scaler.state_dict() if scaler is not None else {},
                 epoch=epoch_done, max_accuracy=max_acc, max_accuracy_ema=max_acc_ema, rng=rng,
                 world_size=world_size, steps_per_epoch=steps_per_epoch, config=cfg.dump(),
                 version=CHECKPOINT_VERSION)
        if model_ema is not None:
            s["model_ema"] = model_ema.module.state_dict()
        if mid_epoch is not None:
            s["mid_epoch"] = mid_epoch
        return s

    logger.info(f"training {cfg.MODEL.NAME} for epochs {start_epoch}..{t.EPOCHS - 1}: {steps_per_epoch} steps "
                f"per epoch, global batch {cfg.DATA.BATCH_SIZE * world_size * accum}, peak lr {t.BASE_LR:.4g}, "
                f"amp {str(amp_dtype).replace('torch.', '') if amp_dtype else 'off'}, {world_size} process(es), "
                f"device {device}")
    if start_epoch >= t.EPOCHS:
        logger.info(f"nothing to do: {ckpt_path} finished all {t.EPOCHS} epochs")
        return 0

    val = None
    for epoch in range(start_epoch, t.EPOCHS):
        loader_train.sampler.set_epoch(epoch)
        loader = skip_batches(loader_train, start_step * accum)
        stats = train_one_epoch(
            train_model, criterion, loader, optimizer, scheduler, device, epoch,
            steps_per_epoch=steps_per_epoch, start_step=start_step, mixup_fn=mixup_fn, amp_dtype=amp_dtype,
            scaler=scaler, clip_grad=clip_grad, accumulation_steps=accum, model_ema=model_ema,
            ema_target=model_without_ddp, print_freq=cfg.PRINT_FREQ, num_epochs=t.EPOCHS,
            should_stop=should_stop, tb=tb, logger=logger)
        if stats["stopped"]:
            step = start_step + stats["steps"]
            s = state(epoch - 1, mid_epoch=dict(epoch=epoch, step=step))
            if rank == 0:
                save_checkpoint(last_path, s)
            barrier()
            logger.info(f"SIGTERM: saved {last_path} at epoch {epoch} step {step}/{steps_per_epoch}; "
                        f"run the same command again to resume")
            return 0
        start_step = 0

        val = evaluate(eval_model, loader_val, device, amp_dtype, cfg.PRINT_FREQ, logger)
        is_best = max_acc is None or val["acc1"] > max_acc
        max_acc = val["acc1"] if is_best else max_acc
        record = dict(epoch=epoch, train_loss=stats["loss"], lr=stats["lr"], grad_norm=stats["grad_norm"],
                      val_acc1=val["acc1"], val_acc5=val["acc5"], val_loss=val["loss"], max_acc1=max_acc,
                      epoch_time=stats["time"])
        ema_best = False
        if model_ema is not None:
            ema_val = evaluate(model_ema.module, loader_val, device, amp_dtype, cfg.PRINT_FREQ, logger)
            ema_best = max_acc_ema is None or ema_val["acc1"] > max_acc_ema
            max_acc_ema = ema_val["acc1"] if ema_best else max_acc_ema
            record.update(ema_acc1=ema_val["acc1"], ema_acc5=ema_val["acc5"], ema_loss=ema_val["loss"],
                          max_ema_acc1=max_acc_ema)
        logger.info(f"epoch {epoch}: train loss {stats['loss']:.4f}  val Acc@1 {val['acc1']:.3f} "
                    f"Acc@5 {val['acc5']:.3f} loss {val['loss']:.4f}  (best Acc@1 {max_acc:.3f})"
                    + (f"  EMA Acc@1 {record['ema_acc1']:.3f}" if model_ema is not None else ""))

        s = state(epoch)
        if rank == 0:
            save_checkpoint(last_path, s)
            if (epoch + 1) % cfg.SAVE_FREQ == 0 or epoch == t.EPOCHS - 1:
                publish(last_path, os.path.join(cfg.OUTPUT, f"ckpt_epoch_{epoch}.pth"))
            if is_best:
                publish(last_path, os.path.join(cfg.OUTPUT, "best.pth"))
            if ema_best:
                publish(last_path, os.path.join(cfg.OUTPUT, "best_ema.pth"))
        del s
        jlog.log(record)
        tb.add_scalars({"loss": stats["loss"], "lr": stats["lr"]}, epoch, prefix="epoch/train_")
        tb.add_scalars({"acc1": val["acc1"], "acc5": val["acc5"], "loss": val["loss"]}, epoch, prefix="epoch/val_")
        tb.flush()

        if _any_rank(stop.requested, world_size) and epoch < t.EPOCHS - 1:
            barrier()
            logger.info(f"SIGTERM: stopped after epoch {epoch}; {last_path} saved; run the same command to resume")
            return 0

    tb.close()
    if val is not None and rank == 0:
        _write_json(os.path.join(cfg.OUTPUT, "eval.json"),
                    dict(val, checkpoint=os.path.abspath(last_path), model=cfg.MODEL.NAME,
                         img_size=cfg.DATA.IMG_SIZE, epoch=t.EPOCHS - 1))
    barrier()
    logger.info(f"done: best Acc@1 {max_acc:.3f}; checkpoints in {cfg.OUTPUT}")
    return 0


def run(args) -> int:
    cfg = get_config(args)
    rank, world_size, _, device = init_distributed()
    name = os.path.splitext(os.path.basename(args.cfg))[0] if args.cfg else cfg.MODEL.NAME
    cfg = finalize(cfg, world_size, name)
    os.makedirs(cfg.OUTPUT, exist_ok=True)
    create_logger(cfg.OUTPUT, rank)
    if rank == 0:
        _write_text(os.path.join(cfg.OUTPUT, "config.yaml"), cfg.dump())
    logger.info(f"{' '.join(sys.argv)}\n{cfg.dump()}")
    if device.type == "cpu":
        logger.info(f"CPU malloc: {keep_freed_memory()} (utils/cpu_memory.py)")
    _seed_everything(cfg.SEED + rank)
    _set_determinism(cfg.DETERMINISTIC)
    amp_dtype = _amp_dtype(cfg, device)
    if cfg.THROUGHPUT_MODE:
        return run_throughput(cfg, device, rank, amp_dtype)
    if cfg.EVAL_MODE:
        return run_eval(cfg, device, rank, world_size, amp_dtype)
    return run_train(cfg, device, rank, world_size, amp_dtype)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except USER_ERRORS as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:  # unreadable / unwritable paths, full disk
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
