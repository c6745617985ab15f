"""Datasets and samplers: ImageFolder (ImageNet layout), the embedded digits demo,
seeded training order and exact (unpadded) distributed evaluation.

Layout expected under a data path::

    <root>/train/<class>/<image>     (training)
    <root>/val/<class>/<image>       (evaluation; same class folders as train/)

Reproducibility of training data: :class:`SeededTrainSampler` yields
``(index, sample_seed)`` pairs whose order and seeds depend only on
``(seed, epoch)``; :class:`ImageFolderDataset` runs the transform of that
sample under RNGs seeded with ``sample_seed``. The augmentation of an image is
therefore the same whatever the number of workers, whether workers persist
across epochs, and whether the run was resumed in the middle.

Unreadable training images: a training sample whose file cannot be decoded is
replaced by another image drawn from its ``sample_seed`` (the same one on every
run), and the sample carries the path and the reason, so that the training
loop can log it and count it against ``DATA.MAX_BAD_FILES``. Evaluation never
replaces: an unreadable validation image is an error that names the file.

Labels: class folders are numbered in sorted order, except when every folder
name is an ImageNet-1k wnid (``n01440764`` ...) and the model has 1000 outputs:
then labels follow ImageNet's class order (timm's ``imagenet_synsets.txt``), so
a subset of the ImageNet validation set evaluates a 1000-class checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = [
    "DataError", "check_image_folder", "check_same_classes", "build_dataset", "pil_rgb_loader",
    "ImageFolderDataset", "write_demo_dataset", "SeededTrainSampler", "ExactDistributedSampler",
    "mix_seed", "resolve_classes", "ClassInfo", "TRAIN_SPLIT", "VAL_SPLIT", "MAX_REPLACEMENT_TRIES",
]

_logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
VAL_SPLIT = "val"
_WORKER_PREFIX = "Caught DataError"
_DEMO_MARKER = "DEMO_COMPLETE.json"
_DEMO_VERSION = 1
MAX_REPLACEMENT_TRIES = 16   # unreadable images in a row before a training sample gives up
IMAGENET_CLASSES = 1000
_WNID = re.compile(r"^n\d{8}$")


class DataError(ValueError):
    """A user error about the data, in one line that names the offending path.

    When a DataLoader worker raises it, PyTorch re-raises a ``DataError`` in the
    main process whose message is the worker's whole traceback; that case is
    recognised here and reduced to the original one-line message (the full text
    stays in ``worker_traceback``).
    """

    def __init__(self, message: str = ""):
        message = str(message)
        self.worker_traceback = None
        if message.startswith(_WORKER_PREFIX):
            self.worker_traceback = message
            lines = [ln for ln in message.strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else message
            _, sep, rest = last.partition("DataError: ")
            message = rest if sep else last
            where = lines[0][len(_WORKER_PREFIX):].strip(" .") if lines else ""
            if where:
                message = f"{message} ({where})"
        super().__init__(message)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------- layout checks
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _has_image(folder: str) -> bool:
    """True when ``folder`` holds an image at any depth (ImageFolder walks class folders).

    Stops at the first image, so a class folder of thousands of files costs one
    directory read at most.
    """
    pending = [folder]
    while pending:
        subdirs = []
        with os.scandir(pending.pop()) as it:
            for entry in it:
                if entry.is_dir():
                    subdirs.append(entry.path)
                elif _is_image(entry.name):
                    return True
        pending.extend(subdirs)
    return False


def check_image_folder(root: str, split: str) -> List[str]:
    """Check that ``root/split`` is an ImageFolder tree; return its sorted class names.

    Raises:
        DataError: data path or split missing, images placed directly in the
            split folder, no class folders, or a class folder without images.
    """
    if not root:
        raise DataError("no data path given (DATA.DATA_PATH / --data-path)")
    if not os.path.isdir(root):
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        raise DataError(f"data path {root} {what}")
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise DataError(f"missing split: {path} {what} (expected {root}/{split}/<class>/<image>)")

    classes, loose = [], []
    with os.scandir(path) as it:
        for entry in it:
            if entry.is_dir():
                classes.append(entry.name)
            elif _is_image(entry.name):
                loose.append(entry.name)
    if loose:
        raise DataError(f"wrong layout: {path} has {len(loose)} image(s) directly inside "
                        f"(e.g. {loose[0]}); expected one folder per class")
    if not classes:
        raise DataError(f"wrong layout: {path} has no class folders; expected {path}/<class>/<image>")
    classes.sort()
    for name in classes:
        if not _has_image(os.path.join(path, name)):
            raise DataError(f"empty class folder {os.path.join(path, name)} "
                            f"(no file with an image extension)")
    return classes


def check_same_classes(root: str, splits: Sequence[str] = (TRAIN_SPLIT, VAL_SPLIT)) -> List[str]:
    """Check every split of ``root`` and that they share one class list; return it."""
    per_split = {s: check_image_folder(root, s) for s in splits}
    first, ref = splits[0], per_split[splits[0]]
    for split in splits[1:]:
        other = per_split[split]
        if other != ref:
            only_a = sorted(set(ref) - set(other))
            only_b = sorted(set(other) - set(ref))
            parts = []
            if only_a:
                parts.append(f"only in {first}: {_preview(only_a)}")
            if only_b:
                parts.append(f"only in {split}: {_preview(only_b)}")
            raise DataError(f"class folders differ between {os.path.join(root, first)} and "
                            f"{os.path.join(root, split)}: " + "; ".join(parts))
    return ref


def _preview(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _imagenet_wnids() -> List[str]:
    from timm.data import ImageNetInfo
    return list(ImageNetInfo("imagenet-1k").label_names())


@dataclass
class ClassInfo:
    """Labels of a data folder: ``class_to_idx``, the classifier size and how they were chosen."""
    class_to_idx: Dict[str, int]
    num_classes: int
    order: str          # 'imagenet' or 'folders'
    note: Optional[str] = None   # a warning for the log, if any


def resolve_classes(classes: Sequence[str], num_classes: Optional[int], where: str) -> ClassInfo:
    """Labels and classifier size for the class folders ``classes`` (sorted names).

    Args:
        classes: the class folder names.
        num_classes: ``MODEL.NUM_CLASSES``; None or 0 = automatic.
        where: the folder, for messages.

    Rules: automatic is the number of folders, or 1000 when every name is an
    ImageNet-1k wnid (labels then follow ImageNet's order). An explicit value
    smaller than the folders need is an error; a larger one is allowed, with a
    note (a 1000-class model evaluated on a few classes).

    Raises:
        DataError: ``num_classes`` cannot hold the classes.
    """
    n = len(classes)
    num_classes = int(num_classes or 0)
    if num_classes < 0:
        raise DataError(f"MODEL.NUM_CLASSES must be >= 0 (0 = one per class folder), got {num_classes}")
    wnids = n > 0 and all(_WNID.match(c) for c in classes)
    order = None
    if wnids and num_classes in (0, IMAGENET_CLASSES):
        index = {w: i for i, w in enumerate(_imagenet_wnids())}
        if all(c in index for c in classes):
            order = {c: index[c] for c in classes}
    if order is not None:
        note = None
        if num_classes == 0 and n < IMAGENET_CLASSES:
            note = (f"{where} has {n} ImageNet class folders: labels follow ImageNet's class order and the "
                    f"classifier has {IMAGENET_CLASSES} outputs (pass --num-classes {n} for a {n}-way "
                    f"classifier in folder order)")
        return ClassInfo(order, IMAGENET_CLASSES, "imagenet", note)
    if num_classes and num_classes < n:
        raise DataError(f"{where} has {n} class folders but MODEL.NUM_CLASSES is {num_classes}; "
                        f"use --num-classes {n} (or 0: one output per class folder)")
    note = None
    if num_classes > n:
        note = (f"MODEL.NUM_CLASSES is {num_classes} but {where} has {n} class folders: "
                f"{num_classes - n} outputs will never be a target")
    return ClassInfo({c: i for i, c in enumerate(classes)}, num_classes or n, "folders", note)


# ----------------------------------------------------------------------------- dataset
def pil_rgb_loader(path: str) -> Image.Image:
    """Open an image as RGB; an unreadable or corrupt file raises DataError naming it."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # the direct P -> RGB conversion warns; the colours are the same
            return img.convert("RGB")  # forces the full decode while the file is open
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"unreadable image {path}: {_one_line(e) or type(e).__name__}") from None


@contextlib.contextmanager
def _seeded_rngs(seed: int):
    """Seed python, numpy and torch (CPU) RNGs for one sample; restore them afterwards."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class ImageFolderDataset(ImageFolder):
    """torchvision ImageFolder with a loader that reports unreadable files as DataError.

    ``dataset[i]`` behaves as ImageFolder's: ``(image, target)``, and an
    unreadable file raises :class:`DataError` naming it (evaluation).
    ``dataset[(i, seed)]`` (what :class:`SeededTrainSampler` yields) is a
    training sample: ``(image, target, bad)``. The transform runs under RNGs
    seeded with ``seed``, leaving the caller's RNG states untouched; when
    ``replace_bad`` is set, an unreadable file is replaced by the image at
    ``mix_seed(seed, try) % len`` and ``bad`` lists ``"path: reason"`` of each
    file that failed (one per line; ``""`` when none).

    Args:
        root: the split folder (``<data>/train``).
        transform: applied to the RGB PIL image.
        class_to_idx: labels of the class folders (default: sorted order).
        replace_bad: replace unreadable training images instead of raising.
    """

    def __init__(self, root: str, transform: Optional[Callable] = None,
                 class_to_idx: Optional[Dict[str, int]] = None, replace_bad: bool = False):
        self._given_class_to_idx = dict(class_to_idx) if class_to_idx is not None else None
        self.replace_bad = replace_bad
        super().__init__(root, transform=transform, loader=pil_rgb_loader)

    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        classes, class_to_idx = super().find_classes(directory)
        if self._given_class_to_idx is None:
            return classes, class_to_idx
        missing = [c for c in classes if c not in self._given_class_to_idx]
        if missing:
            raise DataError(f"{directory}: class folders without a label: {_preview(missing)}")
        return classes, {c: self._given_class_to_idx[c] for c in classes}

    def _load(self, index: int):
        path, target = self.samples[index]
        img = self.loader(path)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __getitem__(self, index: Union[int, Tuple[int, int]]):
        if not isinstance(index, (tuple, list)):
            return self._load(int(index))
        index, seed = int(index[0]), int(index[1])
        bad: List[str] = []
        with _seeded_rngs(seed):
            for attempt in range(MAX_REPLACEMENT_TRIES):
                try:
                    img, target = self._load(index)
                    return img, target, "\n".join(bad)
                except DataError as e:
                    if not self.replace_bad:
                        raise
                    bad.append(str(e)[len("unreadable image "):] if str(e).startswith("unreadable image ")
                               else str(e))
                    index = mix_seed(seed, attempt + 1) % len(self.samples)
        raise DataError(f"{MAX_REPLACEMENT_TRIES} unreadable training images in a row, the last "
                        f"{bad[-1]}; is {self.root} readable?")


def build_dataset(is_train: bool, data_path: str, transform: Optional[Callable],
                  class_to_idx: Optional[Dict[str, int]] = None) -> ImageFolderDataset:
    """``data_path/train`` or ``data_path/val`` as an ImageFolder, checked first.

    Training sets replace unreadable images (see :class:`ImageFolderDataset`).
    """
    split = TRAIN_SPLIT if is_train else VAL_SPLIT
    check_image_folder(data_path, split)
    try:
        return ImageFolderDataset(os.path.join(data_path, split), transform=transform,
                                  class_to_idx=class_to_idx, replace_bad=is_train)
    except FileNotFoundError as e:  # layout changed between the check and the scan
        raise DataError(_one_line(e)) from None


# ----------------------------------------------------------------------------- demo data
def write_demo_dataset(root: str, img_size: int = 32, seed: int = 0) -> str:
    """Write scikit-learn's bundled digits (no download) as an ImageFolder tree.

    1797 8x8 grey digits, upscaled (bicubic) to ``img_size`` and stored as RGB
    PNGs under ``root/train/<digit>/`` and ``root/val/<digit>/`` (stratified
    80/20 split drawn with ``seed``). Idempotent: a complete tree (marker file
    with the same parameters) is left as is. The tree is written in a temporary
    folder beside ``root`` and renamed into place, so concurrent callers (every
    rank of a torchrun job) never see a partial dataset.

    Returns:
        ``root``.
    """
    params = dict(version=_DEMO_VERSION, img_size=int(img_size), seed=int(seed))

    def write(tmp: str) -> dict:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        labels = digits.target
        idx = np.arange(len(labels))
        train_idx, val_idx = train_test_split(idx, test_size=0.2, stratify=labels, random_state=seed)
        counts = {}
        for split, split_idx in ((TRAIN_SPLIT, train_idx), (VAL_SPLIT, val_idx)):
            for i in sorted(split_idx):
                folder = os.path.join(tmp, split, str(labels[i]))
                os.makedirs(folder, exist_ok=True)
                img = Image.fromarray(images[i])  # uint8 (H, W) -> mode L
                img = img.resize((img_size, img_size), Image.BICUBIC).convert("RGB")
                img.save(os.path.join(folder, f"{i:04d}.png"))
            counts[split] = int(len(split_idx))
        return dict(counts=counts, source="sklearn.datasets.load_digits")

    generated_dataset(root, _DEMO_MARKER, params, write, "demo dataset")
    _logger.info("demo dataset (sklearn digits, %dx%d) ready in %s", img_size, img_size, root)
    return root


def generated_dataset(root: str, marker: str, params: dict, write: Callable[[str], dict], what: str) -> str:
    """A dataset this code generates (demo digits, rehearsal photos), written once under ``root``.

    Idempotent: a complete tree (``marker`` file holding the same ``params``) is
    left as is. ``write(folder)`` fills a temporary folder beside ``root`` and
    returns more facts for the marker; the folder is then renamed into place, so
    concurrent callers (every rank of a job) never see a partial dataset.

    Raises:
        DataError: ``root`` exists and is not a tree this code wrote.
    """
    if _marker_matches(root, marker, params):
        return root
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"{what} path {root} exists and is not a directory")
    if os.path.isdir(root) and os.listdir(root) and not os.path.isfile(os.path.join(root, marker)):
        raise DataError(f"{what} path {root} exists and is not a {what} written by this code; remove it or "
                        f"choose another DATA.DATA_PATH")
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-dataset-", dir=parent)
    try:
        facts = write(tmp)
        with open(os.path.join(tmp, marker), "w") as f:
            json.dump(dict(params, **facts), f)
        _install(tmp, root, marker, params)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _marker_matches(root: str, marker: str, params: dict) -> bool:
    try:
        with open(os.path.join(root, marker)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return all(meta.get(k) == v for k, v in params.items())


def _install(tmp: str, root: str, marker: str, params: dict) -> None:
    """Move the finished tree ``tmp`` to ``root``; another writer may have won the race."""
    old = None
    if os.path.isdir(root):
        if _marker_matches(root, marker, params):
            return
        if os.listdir(root):  # an older tree of this code (other parameters): set it aside
            old = tempfile.mkdtemp(prefix=".old-dataset-", dir=os.path.dirname(tmp))
            try:
                os.rename(root, os.path.join(old, "tree"))
            except OSError:
                pass  # another process moved it first
        else:
            with contextlib.suppress(OSError):
                os.rmdir(root)
    try:
        os.rename(tmp, root)
    except OSError:
        if not _marker_matches(root, marker, params):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- samplers
_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A well-spread non-negative 63-bit seed from integers (splitmix64 chain)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


class SeededTrainSampler(DistributedSampler):
    """Shuffled training sampler whose epoch depends only on ``(seed, epoch)``.

    The order is ``DistributedSampler``'s (a permutation drawn with
    ``seed + epoch``, padded to a multiple of ``num_replicas`` and strided over
    ranks); with one replica it is a plain seeded shuffle. It yields
    ``(index, sample_seed)`` pairs, ``sample_seed = mix_seed(seed, epoch, index)``,
    which :class:`ImageFolderDataset` uses to seed that sample's augmentation.
    Call ``set_epoch(epoch)`` before iterating each epoch; ``set_epoch(epoch, start)``
    skips this rank's first ``start`` samples (resuming inside an epoch: the
    skipped images are not loaded, and a loader with persistent workers keeps them).
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=False)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = max(0, int(start))

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        seed, epoch = self.seed, self.epoch
        for i, index in enumerate(super().__iter__()):
            if i >= self.start:
                yield index, mix_seed(seed, epoch, index)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class ExactDistributedSampler(Sampler):
    """Evaluation sampler: rank ``r`` of ``n`` takes indices ``r, r + n, r + 2n, ...``.

    Every index is visited exactly once over all ranks (no padding, no
    duplicates), so summing correct/total across ranks gives the exact accuracy.
    Ranks may get lengths that differ by one.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for {num_replicas} replicas")
        self.dataset_len = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_len, self.num_replicas))

    def __len__(self) -> int:
        return max(0, math.ceil((self.dataset_len - self.rank) / self.num_replicas))

    def set_epoch(self, epoch: int) -> None:
        """No-op (the order is fixed); present so the sampler is interchangeable."""
