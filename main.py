"""Train, evaluate or benchmark a FLatten model.

    python main.py --nproc-per-node 8 --cfg configs/flatten_swin_t.yaml --data-path /data/imagenet
    python main.py --cfg configs/flatten_swin_t.yaml --data-path /data/imagenet --eval --resume flatten_swin_t.pth
    python main.py --cfg configs/flatten_swin_t.yaml --throughput --batch-size 64

One process (``python main.py``), several (``--nproc-per-node N``, a launcher
around torchrun's agent: :mod:`utils.launch`; plain ``torchrun main.py`` works
too), CPU or GPU. This file is the command line and the dispatch to the three
modes; the work is in :mod:`engine` (loops), :mod:`utils.training_state`
(parts, starting point, checkpoints), :mod:`data` and :mod:`utils.records`
(where each mode writes). Exit codes: 0 done, 1 training failed, 2 user error
(one ``error: ...`` line, nothing written), 3 watchdog (no progress),
128 + signal when stopped by SIGTERM/SIGINT after saving a checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from config import ConfigError, derived_values, finalize, get_config
from data import build_loader, shutdown_workers
from data.datasets import DataError
from engine import TrainingError, evaluate, fit, throughput
from models import ModelConfigError
from models.layers import InputSizeError
from models.layers.attention import attention_impl_problem
from utils.checkpoint import CheckpointError, load_model_state, load_pretrained, safe_load
from utils.cpu_memory import keep_freed_memory
from utils.cluster import ClusterEnvError, world_from_env
from utils.distributed import DeviceError, barrier, broadcast_object, cleanup, init_distributed
from utils.hardware import HardwareError, choose_amp_dtype, set_tf32, tf32_state
from utils.launch import launch, report
from utils.logging import JsonLogger, TensorboardWriter, attach_log_file, create_logger, detail_logger
from utils.preemption import StopRequest, exit_code
from utils.records import make_record_dir, record_root, run_dir, write_json, write_text
from utils.schedule import format_lr, schedule_warning
from utils.training_state import StartError, TrainingState, build_model_checked, decide_start
from utils.watchdog import PEER_GRACE_S, Watchdog

# Errors that are the user's to fix: reported in one line, exit code 2, no traceback.
USER_ERRORS = (ConfigError, DataError, ModelConfigError, CheckpointError, InputSizeError, StartError, DeviceError,
               HardwareError, ClusterEnvError)
EXIT_USER_ERROR = 2
EXIT_FAILED = 1
_LAUNCH_FLAGS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port")

logger = logging.getLogger("flatten")


def _launch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("several processes (torchrun's agent; see utils/launch.py)")
    g.add_argument("--nproc-per-node", type=int, metavar="N", help="start N training processes on this node")
    g.add_argument("--nnodes", type=int, default=1, help="nodes of the job (run the command on each)")
    g.add_argument("--node-rank", type=int, default=0, help="this node's index (0 .. nnodes-1)")
    g.add_argument("--master-addr", help="address of node 0 (several nodes)")
    g.add_argument("--master-port", type=int, help="port on node 0 (several nodes; default 29500)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("FLatten Transformer: train / evaluate / benchmark", parents=[_launch_parser()],
                                allow_abbrev=False)
    p.add_argument("--cfg", metavar="FILE", help="YAML config (configs/<model>.yaml, or a run's config.yaml)")
    p.add_argument("--opts", nargs="+", default=None, metavar="KEY VALUE",
                   help="config overrides, e.g. --opts TRAIN.EPOCHS 100 DATA.IMG_SIZE 384")
    p.add_argument("--batch-size", type=int, help="images per process (DATA.BATCH_SIZE)")
    p.add_argument("--data-path", help="ImageFolder root with train/ and val/ (DATA.DATA_PATH)")
    p.add_argument("--dataset", choices=["imagenet", "demo"], help="DATA.DATASET")
    p.add_argument("--num-workers", type=int, help="loader workers per process (DATA.NUM_WORKERS)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (MODEL.NUM_CLASSES; default: one per "
                                                   "class folder, 1000 for ImageNet wnids)")
    p.add_argument("--pretrained", metavar="FILE", help="start a new run from these weights (e.g. 224 -> 384)")
    p.add_argument("--resume", metavar="FILE", help="checkpoint to continue training from, or to evaluate")
    p.add_argument("--accumulation-steps", type=int, help="micro-batches per optimizer step")
    p.add_argument("--use-checkpoint", action="store_true", help="gradient checkpointing (saves memory)")
    p.add_argument("--amp-dtype", choices=["bfloat16", "float16"], help="autocast dtype on GPU")
    p.add_argument("--disable-amp", action="store_true", help="full float32 precision")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--output", metavar="DIR", help="root of the output folders (OUTPUT)")
    p.add_argument("--tag", help="run tag: training writes to OUTPUT/<NAME>/TAG")
    p.add_argument("--eval", action="store_true", help="evaluate --resume on the validation set")
    p.add_argument("--throughput", action="store_true", help="measure inference throughput on synthetic input")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact resume)")
    p.add_argument("--seed", type=int, help="random seed (SEED)")
    p.add_argument("--epochs", type=int, help="total epochs (TRAIN.EPOCHS)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- process set-up
@dataclass
class Process:
    rank: int
    world_size: int
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    amp_note: str = ""


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


def _amp_dtype(cfg, device: torch.device) -> Tuple[Optional[torch.dtype], str]:
    """Autocast dtype and why: with AMP on, on CUDA (and on the CPU with AMP_CPU); bfloat16 only on GPUs that
    compute it natively, else float16 (utils/hardware.py). float16 trains with a loss scaler on either device."""
    if not cfg.AMP or (device.type != "cuda" and not (device.type == "cpu" and cfg.AMP_CPU)):
        return None, "off" + ("" if cfg.AMP else " (AMP False)")
    return choose_amp_dtype(cfg.AMP_DTYPE, device)


def _criterion(mixup_fn, smoothing: float):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if mixup_fn is not None:
        return SoftTargetCrossEntropy()   # Mixup/CutMix produce soft targets (smoothing included)
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return torch.nn.CrossEntropyLoss()


def _num_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6


def _start_records(cfg, folder: str, proc: Process, derived: dict) -> None:
    """Write ``config.yaml`` (as given) and ``run.json`` (derived values) to ``folder``; log to it from now on."""
    if proc.rank == 0:
        os.makedirs(folder, exist_ok=True)
        write_text(os.path.join(folder, "config.yaml"), cfg.dump())
        write_json(os.path.join(folder, "run.json"), dict(derived, output=os.path.abspath(folder),
                                                         command=" ".join(sys.argv)))
    barrier()
    attach_log_file(folder, proc.rank)
    detail_logger().debug("config:\n%s", cfg.dump())


def _record_dir(cfg, kind: str, proc: Process) -> str:
    """A new folder for the records of this ``--eval`` / ``--throughput`` invocation (rank 0 makes it)."""
    folder = make_record_dir(record_root(cfg.OUTPUT, cfg.NAME, kind, cfg.TAG)) if proc.rank == 0 else None
    return broadcast_object(folder)


# ----------------------------------------------------------------------------- modes
def run_throughput(cfg, proc: Process) -> int:
    num_classes = cfg.MODEL.NUM_CLASSES or 1000
    model = build_model_checked(cfg, num_classes, proc.device)
    if cfg.COMPILE:
        model = torch.compile(model)
    folder = _record_dir(cfg, "throughput", proc)
    _start_records(cfg, folder, proc, dict(derived_values(cfg, proc.world_size), num_classes=num_classes))
    logger.info(f"throughput of {cfg.NAME} ({cfg.MODEL.NAME}, {_num_params(model):.2f}M parameters) on "
                f"{proc.device}; records in {folder}")
    stats = throughput(model, cfg.DATA.BATCH_SIZE, cfg.DATA.IMG_SIZE, proc.device, proc.amp_dtype, logger=logger)
    if proc.rank == 0:
        write_json(os.path.join(folder, "throughput.json"), dict(stats, model=cfg.MODEL.NAME))
    return 0


def run_eval(cfg, proc: Process) -> int:
    path = cfg.MODEL.RESUME or cfg.MODEL.PRETRAINED
    if not path:
        raise ConfigError("--eval needs weights: pass --resume <checkpoint>")
    data = build_loader(cfg, rank=proc.rank, world_size=proc.world_size, eval_only=True)
    model = build_model_checked(cfg, data.num_classes, proc.device)
    ckpt = None
    if cfg.MODEL.RESUME:
        ckpt = safe_load(path)
        load_model_state(model, ckpt, path)
    else:
        load_pretrained(model, path, logger)
    ema = None
    if ckpt is not None and cfg.TRAIN.EMA.ENABLE and isinstance(ckpt.get("model_ema"), dict):
        ema = build_model_checked(cfg, data.num_classes, proc.device)
        load_model_state(ema, ckpt["model_ema"], path, what="model_ema")
    del ckpt
    folder = _record_dir(cfg, "eval", proc)          # inputs are valid: records from here on
    _start_records(cfg, folder, proc, dict(derived_values(cfg, proc.world_size), num_classes=data.num_classes,
                                           label_order=data.label_order))
    for note in data.notes:
        logger.warning(note)
    logger.info(f"evaluating {path} ({cfg.MODEL.NAME}, {_num_params(model):.2f}M parameters) on "
                f"{len(data.dataset_val)} images of {data.root}, {proc.world_size} process(es); records in {folder}")
    with Watchdog(cfg.WATCHDOG_TIMEOUT) as wd:
        eval_model = torch.compile(model) if cfg.COMPILE else model
        stats = evaluate(eval_model, data.loader_val, proc.device, proc.amp_dtype, cfg.PRINT_FREQ, logger, wd)
        logger.info(f"Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.4f} "
                    f"({stats['images']} images)")
        record = dict(stats, checkpoint=os.path.abspath(path), model=cfg.MODEL.NAME, img_size=cfg.DATA.IMG_SIZE)
        if ema is not None:
            ema_stats = evaluate(ema, data.loader_val, proc.device, proc.amp_dtype, cfg.PRINT_FREQ, logger, wd)
            logger.info(f"EMA Acc@1 {ema_stats['acc1']:.3f} Acc@5 {ema_stats['acc5']:.3f} "
                        f"loss {ema_stats['loss']:.4f}")
            record.update({f"ema_{k}": v for k, v in ema_stats.items() if k != "images"})
    if proc.rank == 0:
        write_json(os.path.join(folder, "eval.json"), record)
    return 0


def _summary(cfg, eff, proc: Process, data, state, out: str, start) -> List[str]:
    t, accum = eff.TRAIN, eff.TRAIN.ACCUMULATION_STEPS
    where = {"fresh": "from scratch", "pretrained": f"from the weights of {start.path}",
             "auto": f"resumed from {start.path}", "resume": f"resumed from {start.path}"}[start.kind]
    if state.epoch or state.step:
        where += f" at epoch {state.epoch} step {state.step}"
    workers = eff.DATA.NUM_WORKERS
    return [
        f"training {cfg.NAME} ({cfg.MODEL.NAME}, {_num_params(state.model):.2f}M parameters, "
        f"{data.num_classes} classes) {where}; records in {out}",
        f"data: {data.root}: {len(data.class_to_idx)} class folders ({data.label_order} order), "
        f"{len(data.dataset_train)} train / {len(data.dataset_val)} val images, "
        f"{workers} loader worker(s) per process" + (f" ({eff.DATA.WORKER_START_METHOD})" if workers else ""),
        f"schedule: {t.EPOCHS} epochs (warm-up {t.WARMUP_EPOCHS:g}, cool-down {t.COOLDOWN_EPOCHS}), "
        f"{state.steps_per_epoch} steps per epoch, global batch "
        f"{eff.DATA.BATCH_SIZE * proc.world_size * accum} ({eff.DATA.BATCH_SIZE} x {proc.world_size} process(es)"
        f" x {accum}), lr {format_lr(t.BASE_LR)} (warm-up from {format_lr(t.WARMUP_LR)}, min "
        f"{format_lr(t.MIN_LR)}), weight decay {t.WEIGHT_DECAY:g} ({t.WEIGHT_DECAY_GROUPS} groups)",
        f"device {proc.device}, autocast {proc.amp_note}"
        + (f", TF32 {tf32_state()}" if proc.device.type == "cuda" else "")
        + f"; full config in {os.path.join(out, 'config.yaml')}",
    ]


def run_train(cfg, proc: Process) -> int:
    eff = finalize(cfg, proc.world_size)
    try:
        out = run_dir(cfg.OUTPUT, cfg.NAME, cfg.TAG)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # ---- check every input before writing anything
    data = build_loader(eff, rank=proc.rank, world_size=proc.world_size)
    accum = eff.TRAIN.ACCUMULATION_STEPS
    steps_per_epoch = len(data.loader_train) // accum
    if steps_per_epoch == 0:
        raise ConfigError(f"TRAIN.ACCUMULATION_STEPS={accum} exceeds the {len(data.loader_train)} batches of an "
                          f"epoch")
    start = decide_start(out, resume=cfg.MODEL.RESUME, pretrained=cfg.MODEL.PRETRAINED, auto=cfg.TRAIN.AUTO_RESUME)
    if start.finished(eff.TRAIN.EPOCHS):
        logger.info(f"nothing to do: {start.path} holds all {eff.TRAIN.EPOCHS} epochs of this run")
        return 0
    state = TrainingState.build(eff, num_classes=data.num_classes, steps_per_epoch=steps_per_epoch,
                                device=proc.device, amp_dtype=proc.amp_dtype, rank=proc.rank,
                                world_size=proc.world_size, config_yaml=cfg.dump())
    state.restore(start, logger)
    start.ckpt = None

    # ---- inputs are valid: the run's records
    derived = dict(derived_values(cfg, proc.world_size), num_classes=data.num_classes,
                   label_order=data.label_order, steps_per_epoch=steps_per_epoch, start=start.kind,
                   start_path=os.path.abspath(start.path) if start.path else None)
    _start_records(cfg, out, proc, derived)
    for line in _summary(cfg, eff, proc, data, state, out, start):
        logger.info(line)
    warnings = list(data.notes)
    schedule = schedule_warning(eff.TRAIN.EPOCHS, eff.TRAIN.WARMUP_EPOCHS, eff.TRAIN.COOLDOWN_EPOCHS)
    warnings += [schedule] if schedule else []
    for line in warnings:
        logger.warning(line)

    state.prepare(compile_model=eff.COMPILE, seed=eff.SEED)
    tb = TensorboardWriter(os.path.join(out, "tensorboard"), proc.rank)
    with StopRequest() as stop, Watchdog(eff.WATCHDOG_TIMEOUT) as wd:
        try:
            result = fit(state, data, _criterion(data.mixup_fn, eff.MODEL.LABEL_SMOOTHING), out,
                         epochs=eff.TRAIN.EPOCHS, device=proc.device, amp_dtype=proc.amp_dtype,
                         accumulation_steps=accum, clip_grad=eff.TRAIN.CLIP_GRAD, stop=stop, watchdog=wd,
                         max_bad_files=eff.DATA.MAX_BAD_FILES, save_freq=eff.SAVE_FREQ, save_keep=eff.SAVE_KEEP,
                         print_freq=eff.PRINT_FREQ, tb=tb, jlog=JsonLogger(out, proc.rank), logger=logger)
        except USER_ERRORS + (TrainingError,):
            raise
        except Exception as e:
            if not stop.signum:
                raise
            # the launcher (or torchrun) stopped us because another process failed: it reports that one
            logger.info(f"stopped by signal {stop.signum} while another process was failing "
                        f"({' '.join(str(e).split())[:200]})")
            report(f"stopped by signal {stop.signum}", exit_code(stop.signum), kind="stopped")
            return exit_code(stop.signum)
    tb.close()
    if result["stopped"]:
        signum = result["stopped"]
        name = {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        report(f"stopped by {name} at epoch {result['epoch']} step {result['step']}: saved "
               f"{result['checkpoint']}; run the same command again to resume", exit_code(signum), kind="stopped")
        return exit_code(signum)
    val = result["val"]
    if val is not None and proc.rank == 0:
        write_json(os.path.join(out, "eval.json"),
                   dict(val, checkpoint=os.path.abspath(os.path.join(out, "last.pth")), model=cfg.MODEL.NAME,
                        img_size=cfg.DATA.IMG_SIZE, epoch=eff.TRAIN.EPOCHS - 1))
    barrier()
    best = f"best Acc@1 {state.max_acc:.3f}" if state.max_acc is not None else "no evaluation"
    logger.info(f"done: {best}; checkpoints in {out}")
    return 0


def run(args) -> int:
    """Config -> process group -> the mode of ``args``; returns the exit code."""
    cfg = get_config(args)
    # the collectives' own timeout ends after the watchdog's longest bound, so that its message comes first
    timeout = cfg.WATCHDOG_TIMEOUT + PEER_GRACE_S + 30 if cfg.WATCHDOG_TIMEOUT else None
    rank, world_size, _, device = init_distributed(timeout_s=timeout)
    create_logger(rank=rank)
    if device.type == "cpu":
        logger.info(f"CPU malloc: {keep_freed_memory()} (utils/cpu_memory.py)")
    problem = attention_impl_problem(device)
    if problem:
        raise ConfigError(problem)
    _seed_everything(cfg.SEED + rank)
    _set_determinism(cfg.DETERMINISTIC)
    set_tf32(cfg.TF32)
    proc = Process(rank, world_size, device, *_amp_dtype(cfg, device))
    for note in (world_from_env().note, proc.amp_note if proc.amp_dtype == torch.float16 and
                 cfg.AMP_DTYPE == "bfloat16" else ""):
        if note:
            logger.warning(note)
    if cfg.THROUGHPUT_MODE:
        return run_throughput(cfg, proc)
    if cfg.EVAL_MODE:
        return run_eval(cfg, proc)
    return run_train(cfg, proc)


def _is_peer_loss(e: BaseException) -> bool:
    """An error of a collective whose other side went away (a process that failed or was killed)."""
    import torch.distributed as dist
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(k in text for k in ("connection closed by peer", "connection reset",
                                                                   "broken pipe", "gloo"))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.nproc_per_node:
        if os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("LOCAL_RANK"):
            print("error: --nproc-per-node inside a process started by torchrun or the launcher", file=sys.stderr)
            return EXIT_USER_ERROR
        _, rank_argv = _launch_parser().parse_known_args(argv)
        return launch(os.path.abspath(__file__), rank_argv, args.nproc_per_node, nnodes=args.nnodes,
                      node_rank=args.node_rank, master_addr=args.master_addr, master_port=args.master_port)
    try:
        return run(args)
    except USER_ERRORS as e:
        report(str(e), EXIT_USER_ERROR)
        return EXIT_USER_ERROR
    except TrainingError as e:
        report(str(e), EXIT_FAILED, kind="failed")
        return EXIT_FAILED
    except KeyboardInterrupt:
        report("interrupted", exit_code(2), kind="stopped")
        return exit_code(2)
    except OSError as e:  # unreadable / unwritable paths, full disk
        report(str(e), EXIT_USER_ERROR)
        return EXIT_USER_ERROR
    except Exception as e:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and _is_peer_loss(e):
            report(f"lost contact with another process ({' '.join(str(e).split())[:200]}); its own error "
                   f"says why", EXIT_FAILED, kind="peer")
            return EXIT_FAILED
        raise
    finally:
        shutdown_workers()
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
