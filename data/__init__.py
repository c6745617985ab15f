"""Data pipeline: ``build_loader(config)`` -> datasets, loaders and Mixup/CutMix.

Training order and augmentation depend only on ``(SEED, epoch)`` (see
:mod:`data.datasets`); evaluation visits every image exactly once across ranks.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from .datasets import (DataError, ExactDistributedSampler, SeededTrainSampler,
                       TRAIN_SPLIT, VAL_SPLIT, build_dataset, check_image_folder, check_same_classes,
                       mix_seed, write_demo_dataset)
from .transforms import build_eval_transform, build_train_transform

__all__ = [
    "build_loader", "build_mixup", "WorkerSeeder", "DataError", "DEMO_DATA_PATH",
    "build_dataset", "build_eval_transform", "build_train_transform", "check_image_folder",
    "write_demo_dataset", "ExactDistributedSampler", "SeededTrainSampler",
]

_logger = logging.getLogger(__name__)

DEMO_DATA_PATH = "demo_data"    # where DATA.DATASET 'demo' writes the digits when DATA.DATA_PATH is empty


class WorkerSeeder:
    """``worker_init_fn`` seeding python, numpy and torch from ``(seed, rank, worker_id)``."""

    def __init__(self, seed: int, rank: int):
        self.seed = int(seed)
        self.rank = int(rank)

    def __call__(self, worker_id: int) -> None:
        s = mix_seed(self.seed, self.rank, worker_id)
        random.seed(s)
        np.random.seed(s % 2 ** 32)
        torch.manual_seed(s)


def build_mixup(config, num_classes: Optional[int] = None):
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
                 num_classes=num_classes if num_classes is not None else config.MODEL.NUM_CLASSES)


def _data_root(config) -> str:
    data = config.DATA
    if data.DATASET == "imagenet":
        if not data.DATA_PATH:
            raise DataError("DATA.DATA_PATH is empty; pass --data-path <folder holding train/ and val/>")
        return data.DATA_PATH
    if data.DATASET == "demo":
        return write_demo_dataset(data.DATA_PATH or DEMO_DATA_PATH)
    raise DataError(f"unknown DATA.DATASET {data.DATASET!r}; use 'imagenet' (ImageFolder layout) or 'demo'")


def build_loader(config, rank: int = 0, world_size: int = 1, eval_only: bool = False):
    """Datasets, loaders and Mixup for this process.

    Args:
        config: frozen CfgNode of :mod:`config` (DATA.*, AUG.*, TEST.CROP,
            MODEL.NUM_CLASSES, MODEL.LABEL_SMOOTHING, SEED).
        rank, world_size: this process's place in the job (1 process: 0, 1).
        eval_only: build only the validation side; ``train/`` is not needed.

    Returns:
        ``(dataset_train, dataset_val, loader_train, loader_val, mixup_fn)``;
        the training entries and ``mixup_fn`` are ``None`` when ``eval_only``.
        ``loader_train.sampler.set_epoch(epoch)`` must be called every epoch.

    Raises:
        DataError: one-line message naming the path or key at fault.
    """
    data = config.DATA
    root = _data_root(config)
    splits = (VAL_SPLIT,) if eval_only else (TRAIN_SPLIT, VAL_SPLIT)
    classes = check_same_classes(root, splits)
    if len(classes) > config.MODEL.NUM_CLASSES:
        raise DataError(f"{os.path.join(root, splits[0])} has {len(classes)} class folders but "
                        f"MODEL.NUM_CLASSES is {config.MODEL.NUM_CLASSES}")
    mixup_fn = None if eval_only else build_mixup(config)

    common = dict(batch_size=data.BATCH_SIZE, num_workers=data.NUM_WORKERS,
                  pin_memory=bool(data.PIN_MEMORY) and torch.cuda.is_available(),  # pinning needs a GPU
                  persistent_workers=data.NUM_WORKERS > 0 and data.PERSISTENT_WORKERS,
                  worker_init_fn=WorkerSeeder(config.SEED, rank))

    eval_tf = build_eval_transform(data.IMG_SIZE, config.TEST.CROP, interpolation=data.INTERPOLATION)
    dataset_val = build_dataset(False, root, eval_tf)
    loader_val = DataLoader(
        dataset_val, sampler=ExactDistributedSampler(dataset_val, world_size, rank), shuffle=False,
        drop_last=False, generator=torch.Generator().manual_seed(mix_seed(config.SEED, rank, 1)), **common)

    dataset_train = loader_train = None
    if not eval_only:
        aug = config.AUG
        train_tf = build_train_transform(
            data.IMG_SIZE, color_jitter=aug.COLOR_JITTER, auto_augment=aug.AUTO_AUGMENT,
            reprob=aug.REPROB, remode=aug.REMODE, recount=aug.RECOUNT, interpolation=data.INTERPOLATION,
            hflip=0.0 if data.DATASET == "demo" else 0.5)  # digits are not mirror-symmetric
        dataset_train = build_dataset(True, root, train_tf)
        if len(dataset_train) < data.BATCH_SIZE * world_size:
            raise DataError(f"{os.path.join(root, TRAIN_SPLIT)} has {len(dataset_train)} images, fewer than "
                            f"one global batch (DATA.BATCH_SIZE={data.BATCH_SIZE} x {world_size} processes)")
        sampler = SeededTrainSampler(dataset_train, num_replicas=world_size, rank=rank, seed=config.SEED)
        loader_train = DataLoader(
            dataset_train, sampler=sampler, drop_last=True,
            generator=torch.Generator().manual_seed(mix_seed(config.SEED, rank, 0)), **common)

    _logger.info("data: %s, %d classes, %s train / %d val images, batch %d per process x %d",
                 root, len(classes), len(dataset_train) if dataset_train is not None else "no",
                 len(dataset_val), data.BATCH_SIZE, world_size)
    return dataset_train, dataset_val, loader_train, loader_val, mixup_fn
