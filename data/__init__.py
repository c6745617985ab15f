"""Data pipeline: ``build_loader(config)`` -> datasets, loaders, labels and Mixup/CutMix.

Training order and augmentation depend only on ``(SEED, epoch)`` (see
:mod:`data.datasets`); evaluation visits every image exactly once across ranks.

Loader workers (``DATA.NUM_WORKERS > 0``) are started with
``DATA.WORKER_START_METHOD`` (``forkserver`` by default): each worker is forked
from a small single-threaded server process, never from the training process,
whose threads (process-group, TensorBoard, pin-memory and queue-feeder threads
of the other loader) can hold locks at the moment of a ``fork`` and leave the
child deadlocked. The server is started while checking the inputs, so its
one-time import of the data code overlaps with building the model. Workers
persist across epochs (created once per loader), ignore SIGTERM/SIGINT
(:mod:`utils.preemption`) and are seeded from ``(SEED, rank, worker id)``.

Because the workers ignore SIGTERM, Python's own exit handler, which
terminates daemon processes with SIGTERM and then waits for them, would wait
forever for a loader still alive at exit. :func:`shutdown_workers` ends every
loader's workers the regular way (and kills any that do not end); ``main.py``
calls it when a command ends and it is also registered to run at exit, before
that handler. Workers also end when the training process ends, however it ends
(:class:`WorkerInit`).

One window remains: PyTorch installs its own SIGTERM handler in each new worker
(to exit quietly when its parent asks), a few instructions before
:class:`WorkerInit` ignores the signal again; a SIGTERM landing in that window,
once per worker and loader with persistent workers, still ends the worker.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import random
import select
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from .datasets import (DataError, ExactDistributedSampler, ImageFolderDataset, SeededTrainSampler,
                       TRAIN_SPLIT, VAL_SPLIT, build_dataset, check_image_folder, check_same_classes,
                       mix_seed, resolve_classes, write_demo_dataset)
from .transforms import build_eval_transform, build_train_transform

__all__ = [
    "build_loader", "build_mixup", "shutdown_workers", "DataBundle", "WorkerInit", "DataError", "DEMO_DATA_PATH",
    "WORKER_START_METHODS", "build_dataset", "build_eval_transform", "build_train_transform",
    "check_image_folder", "write_demo_dataset", "ExactDistributedSampler", "SeededTrainSampler",
    "ImageFolderDataset",
]

_logger = logging.getLogger(__name__)

DEMO_DATA_PATH = "demo_data"    # where DATA.DATASET 'demo' writes the digits when DATA.DATA_PATH is empty
WORKER_START_METHODS = ("forkserver", "spawn", "fork")
_LOADERS: "weakref.WeakSet[DataLoader]" = weakref.WeakSet()
_AT_EXIT = []


def _track(loader: DataLoader) -> DataLoader:
    """Remember a loader with workers, for :func:`shutdown_workers`."""
    if loader.num_workers > 0:
        _LOADERS.add(loader)
        _register_at_exit()
    return loader


def _register_at_exit() -> None:
    if not _AT_EXIT:   # registered after multiprocessing's own exit handler, so it runs before it
        atexit.register(_at_exit)
        _AT_EXIT.append(True)


def _at_exit() -> None:
    """At interpreter exit: :func:`shutdown_workers`, then kill the daemon processes still alive (loaders
    made outside :func:`build_loader`), which multiprocessing would SIGTERM and wait for."""
    shutdown_workers()
    for child in multiprocessing.active_children():
        if child.daemon and child.is_alive():
            child.kill()
            child.join()


def shutdown_workers() -> int:
    """End the workers of every loader :func:`build_loader` made; return how many had to be killed.

    Each live iterator is shut down as the DataLoader does it (a stop message,
    then a join); a worker still alive after that (e.g. stuck in a read) is killed.
    """
    killed = 0
    for loader in list(_LOADERS):
        it = getattr(loader, "_iterator", None)
        if it is None:
            continue
        loader._iterator = None
        workers = list(getattr(it, "_workers", []))
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join()
                killed += 1
    return killed


def _exit_when_gone(pid: int) -> None:
    """Block until process ``pid`` has ended, then end this process (run in a daemon thread)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):   # no pidfd (old kernel): look once a second
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
            time.sleep(1.0)
    select.select([fd], [], [])
    os._exit(0)


class WorkerInit:
    """``worker_init_fn``: ignore stop signals, follow the training process, seed from ``(seed, rank, worker_id)``.

    PyTorch's workers notice the death of their *parent*; a worker forked by the
    fork server has the server as parent, so each worker also watches the
    training process itself and ends with it (even when that was killed with
    SIGKILL), instead of lingering with the server.
    """

    def __init__(self, seed: int, rank: int):
        self.seed = int(seed)
        self.rank = int(rank)
        self.owner = os.getpid()   # the training process that builds the loader

    def __call__(self, worker_id: int) -> None:
        from utils.preemption import ignore_stop_signals
        ignore_stop_signals()
        if os.getppid() != self.owner:
            threading.Thread(target=_exit_when_gone, args=(self.owner,), name="follow-owner", daemon=True).start()
        s = mix_seed(self.seed, self.rank, worker_id)
        random.seed(s)
        np.random.seed(s % 2 ** 32)
        torch.manual_seed(s)


@dataclass
class DataBundle:
    """What :func:`build_loader` returns (training entries are None with ``eval_only``)."""
    root: str
    num_classes: int
    class_to_idx: Dict[str, int]
    label_order: str                       # 'imagenet' or 'folders'
    dataset_val: ImageFolderDataset
    loader_val: DataLoader
    dataset_train: Optional[ImageFolderDataset] = None
    loader_train: Optional[DataLoader] = None
    mixup_fn: Optional[object] = None
    notes: list = field(default_factory=list)   # warnings for the log (class count, ...)


def build_mixup(config, num_classes: int):
    """timm ``Mixup`` from ``config.AUG`` (None when Mixup and CutMix are off).

    Raises:
        DataError: Mixup/CutMix on with an odd per-process batch (timm mixes pairs
            of images within a batch).
    """
    from timm.data import Mixup

    aug = config.AUG
    minmax = aug.CUTMIX_MINMAX
    if minmax is not None and not isinstance(minmax, (list, tuple)):
        raise DataError(f"AUG.CUTMIX_MINMAX must be None or [min, max], got {minmax!r}")
    if not (aug.MIXUP > 0 or aug.CUTMIX > 0 or minmax is not None):
        return None
    batch = config.DATA.BATCH_SIZE
    if batch % 2:
        raise DataError(f"DATA.BATCH_SIZE={batch} is odd; Mixup/CutMix needs an even per-GPU batch "
                        f"(use an even DATA.BATCH_SIZE or set AUG.MIXUP 0 AUG.CUTMIX 0)")
    return Mixup(mixup_alpha=aug.MIXUP, cutmix_alpha=aug.CUTMIX,
                 cutmix_minmax=list(minmax) if minmax is not None else None,
                 prob=aug.MIXUP_PROB, switch_prob=aug.MIXUP_SWITCH_PROB, mode=aug.MIXUP_MODE,
                 label_smoothing=config.MODEL.LABEL_SMOOTHING,
                 num_classes=num_classes)


def _data_root(config) -> str:
    data = config.DATA
    if data.DATASET == "imagenet":
        if not data.DATA_PATH:
            raise DataError("DATA.DATA_PATH is empty; pass --data-path <folder holding train/ and val/>")
        return data.DATA_PATH
    if data.DATASET == "demo":
        return write_demo_dataset(data.DATA_PATH or DEMO_DATA_PATH)
    raise DataError(f"unknown DATA.DATASET {data.DATASET!r}; use 'imagenet' (ImageFolder layout) or 'demo'")


def _worker_context(method: str):
    if method not in WORKER_START_METHODS:
        raise DataError(f"DATA.WORKER_START_METHOD must be one of {', '.join(WORKER_START_METHODS)}, "
                        f"got {method!r}")
    ctx = multiprocessing.get_context(method)
    _register_at_exit()   # workers of this context ignore SIGTERM: never let the exit handler wait for them
    if method == "forkserver":
        # The server imports the data package once; each worker is then a cheap fork of it. Starting it
        # now lets that import overlap with building the model and loading checkpoints.
        ctx.set_forkserver_preload(["data"])
        from multiprocessing import forkserver

        from utils.preemption import children_ignore_stop_signals
        with children_ignore_stop_signals():   # the server and every worker it forks ignore SIGTERM/SIGINT
            forkserver.ensure_running()
    return ctx


def build_loader(config, rank: int = 0, world_size: int = 1, eval_only: bool = False) -> DataBundle:
    """Datasets, loaders, labels and Mixup for this process. Reads and checks, writes nothing
    (except the demo dataset, ``DATA.DATASET demo``); workers start at the first iteration.

    Args:
        config: frozen CfgNode of :mod:`config` (DATA.*, AUG.*, TEST.CROP,
            MODEL.NUM_CLASSES, MODEL.LABEL_SMOOTHING, SEED).
        rank, world_size: this process's place in the job (1 process: 0, 1).
        eval_only: build only the validation side; ``train/`` is not needed.

    ``loader_train.sampler.set_epoch(epoch, start)`` must be called every epoch;
    training batches are ``(images, targets, bad)``, ``bad`` a list of strings
    naming the unreadable files replaced in each sample.

    Raises:
        DataError: one-line message naming the path or key at fault.
    """
    data = config.DATA
    root = _data_root(config)
    splits = (VAL_SPLIT,) if eval_only else (TRAIN_SPLIT, VAL_SPLIT)
    classes = check_same_classes(root, splits)
    info = resolve_classes(classes, config.MODEL.NUM_CLASSES, os.path.join(root, splits[0]))
    mixup_fn = None if eval_only else build_mixup(config, info.num_classes)

    workers = int(data.NUM_WORKERS)
    common = dict(batch_size=data.BATCH_SIZE, num_workers=workers,
                  pin_memory=bool(data.PIN_MEMORY) and torch.cuda.is_available(),  # pinning needs a GPU
                  persistent_workers=workers > 0 and bool(data.PERSISTENT_WORKERS),
                  worker_init_fn=WorkerInit(config.SEED, rank))
    if workers > 0:
        common["multiprocessing_context"] = _worker_context(data.WORKER_START_METHOD)

    eval_tf = build_eval_transform(data.IMG_SIZE, config.TEST.CROP, interpolation=data.INTERPOLATION)
    dataset_val = build_dataset(False, root, eval_tf, class_to_idx=info.class_to_idx)
    loader_val = _track(DataLoader(
        dataset_val, sampler=ExactDistributedSampler(dataset_val, world_size, rank), shuffle=False,
        drop_last=False, generator=torch.Generator().manual_seed(mix_seed(config.SEED, rank, 1)), **common))

    dataset_train = loader_train = None
    if not eval_only:
        aug = config.AUG
        train_tf = build_train_transform(
            data.IMG_SIZE, color_jitter=aug.COLOR_JITTER, auto_augment=aug.AUTO_AUGMENT,
            reprob=aug.REPROB, remode=aug.REMODE, recount=aug.RECOUNT, interpolation=data.INTERPOLATION,
            hflip=0.0 if data.DATASET == "demo" else 0.5)  # digits are not mirror-symmetric
        dataset_train = build_dataset(True, root, train_tf, class_to_idx=info.class_to_idx)
        if len(dataset_train) < data.BATCH_SIZE * world_size:
            raise DataError(f"{os.path.join(root, TRAIN_SPLIT)} has {len(dataset_train)} images, fewer than "
                            f"one global batch (DATA.BATCH_SIZE={data.BATCH_SIZE} x {world_size} processes)")
        sampler = SeededTrainSampler(dataset_train, num_replicas=world_size, rank=rank, seed=config.SEED)
        loader_train = _track(DataLoader(
            dataset_train, sampler=sampler, drop_last=True,
            generator=torch.Generator().manual_seed(mix_seed(config.SEED, rank, 0)), **common))

    return DataBundle(root=root, num_classes=info.num_classes, class_to_idx=info.class_to_idx,
                      label_order=info.order, dataset_val=dataset_val, loader_val=loader_val,
                      dataset_train=dataset_train, loader_train=loader_train, mixup_fn=mixup_fn,
                      notes=[info.note] if info.note else [])
