"""Checkpoints: safe loading, atomic saving, automatic resume, state-dict checks.

Format (a plain dict, written with ``torch.save``)::

    model          state dict of the model (parameter names of the official release)
    optimizer      optimizer.state_dict()
    lr_scheduler   timm scheduler state_dict()
    scaler         torch.amp.GradScaler state_dict() ({} when fp16 is off)
    model_ema      EMA weights (state dict), only when TRAIN.EMA.ENABLE
    epoch          index of the last *finished* epoch (Swin convention: resume at epoch + 1)
    mid_epoch      {'epoch': e, 'step': k} when saved inside epoch e after k optimizer
                   steps (SIGTERM); absent for end-of-epoch checkpoints
    max_accuracy   best validation Acc@1 so far (max_accuracy_ema for the EMA)
    rng            per-rank RNG states: list indexed by rank of {torch, numpy, python, cuda}
    world_size     number of processes that wrote ``rng``
    steps_per_epoch  optimizer steps per epoch of the run that wrote it
    num_classes    classifier outputs (resolved from the class folders when MODEL.NUM_CLASSES is 0)
    started_from   {'resume': path, 'pretrained': path} the run was first started with ('' when unused)
    config         the run's config, as the user gave it, as a YAML string
    version        format version

Released checkpoints (Swin-style pickles whose ``config`` is a yacs ``CfgNode``
and which may hold numpy scalars) load through the same :func:`safe_load`
(defined in ``models/layers/weights.py``, re-exported here): PyTorch's restricted
``weights_only`` unpickler with a small allow-list; the ``CfgNode`` is read as a
plain mapping and rebuilt afterwards, so no class of the file gets to run code.
Anything outside the allow-list is refused.
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

# The safe unpickler and CheckpointError live with the models (models/layers/weights.py), which
# load released files through them; re-exported here unchanged.
from models.layers.weights import (CheckpointError, checkpoint_filter_fn, describe_mismatch, is_ignored_key,
                                   listing, safe_load, state_dict_mismatch, unwrap_state_dict)

__all__ = [
    "CheckpointError", "safe_load", "atomic_write", "save_checkpoint", "publish", "auto_resume",
    "load_model_state", "load_pretrained", "get_rng_state", "set_rng_state", "prune_numbered",
    "numbered_checkpoints", "disk_usage", "CHECKPOINT_VERSION",
]

_logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------- atomic saving
def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)   # no procfs: the classic set-and-restore (a short window for other threads)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True, sync: bool = True) -> str:
    """Write ``path`` atomically: ``write(f)`` into a temp file of the same folder, then ``os.replace``.

    The file gets the permissions a plain ``open(path, 'w')`` would give (``0o666``
    minus the umask), not the ``0o600`` of ``tempfile.mkstemp``. A crash or a
    full disk leaves the previous ``path`` untouched and no temp file behind
    (unless the process is killed outright: then a ``.<name>.*.tmp`` remains,
    which :func:`auto_resume` ignores).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if sync:
        _fsync_dir(folder)
    return path


def save_checkpoint(path: str, state: Mapping[str, Any]) -> str:
    """``torch.save(state)`` to ``path`` through :func:`atomic_write` (creating the folder)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return atomic_write(path, lambda f: torch.save(dict(state), f))


def publish(src: str, dst: str) -> str:
    """Make ``dst`` a copy of the finished file ``src`` atomically (a hard link when possible)."""
    folder = os.path.dirname(os.path.abspath(dst))
    tmp = os.path.join(folder, f".{os.path.basename(dst)}.{os.getpid()}.tmp")
    try:
        if os.path.exists(tmp):
            os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links on this file system
            shutil.copyfile(src, tmp)
            shutil.copymode(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
    return dst


_NUMBERED_RE = re.compile(r"^ckpt_epoch_(\d+)\.pth$")


def numbered_checkpoints(folder: str) -> List[Tuple[int, str]]:
    """``[(epoch, path)]`` of the ``ckpt_epoch_<e>.pth`` files of ``folder``, oldest epoch first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = _NUMBERED_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(found)


def prune_numbered(folder: str, keep: int) -> List[str]:
    """Delete all but the ``keep`` newest numbered checkpoints; return the deleted paths.

    ``last.pth``, ``best.pth`` and ``best_ema.pth`` are never touched (they are
    separate names; a hard link shared with a deleted file keeps its data).
    """
    numbered = numbered_checkpoints(folder)
    doomed = numbered[:max(0, len(numbered) - max(0, int(keep)))]
    for _, path in doomed:
        os.remove(path)
    return [p for _, p in doomed]


def disk_usage(folder: str, pattern: str = r".*\.pth$") -> int:
    """Bytes used by the files of ``folder`` matching ``pattern``; hard links count once."""
    seen, total = set(), 0
    if not os.path.isdir(folder):
        return 0
    for name in os.listdir(folder):
        if not re.match(pattern, name):
            continue
        st = os.stat(os.path.join(folder, name))
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


# ----------------------------------------------------------------------------- resume
_CKPT_RE = re.compile(r"^(last|ckpt_epoch_\d+)\.pth$")


def _is_training_state(ckpt: Mapping) -> bool:
    return all(k in ckpt for k in ("model", "optimizer", "lr_scheduler", "epoch"))


def auto_resume(output_dir: str) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """The newest complete training checkpoint of ``output_dir`` (``last.pth``, ``ckpt_epoch_*.pth``).

    Candidates are tried newest first; one that does not load or lacks the
    training state is skipped with a warning. Returns ``(path, checkpoint)`` or
    ``(None, None)``.
    """
    if not os.path.isdir(output_dir):
        return None, None
    names = [n for n in os.listdir(output_dir) if _CKPT_RE.match(n)]
    paths = [os.path.join(output_dir, n) for n in names]

    def key(p: str):
        name = os.path.basename(p)
        m = re.match(r"ckpt_epoch_(\d+)\.pth$", name)
        return (os.path.getmtime(p), name == "last.pth", int(m.group(1)) if m else -1)

    for path in sorted(paths, key=key, reverse=True):
        try:
            ckpt = safe_load(path)
        except CheckpointError as e:
            _logger.warning("auto-resume: skipping %s", e)
            continue
        if not _is_training_state(ckpt):
            _logger.warning("auto-resume: skipping %s: no training state", path)
            continue
        return path, ckpt
    return None, None


# ----------------------------------------------------------------------------- state dicts
def load_model_state(model: torch.nn.Module, state: Mapping[str, Any], source: str,
                     what: str = "model") -> None:
    """Load ``state`` (a state dict or a checkpoint holding one) into ``model``, all keys exactly.

    Keys on the model's ignore list (rebuilt buffers of the release such as
    ``attn_mask``, ``relative_position_index``; PVT v1's unused final ``norm``) are
    ignored on both sides; DDP ``module.`` prefixes are removed.

    Raises:
        CheckpointError: naming ``source`` and listing missing, unexpected and
            mis-shaped keys (the first ten of each).
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: '{what}' is a {type(state).__name__}, not a state dict")
    sd = {k: v for k, v in unwrap_state_dict(state).items() if not is_ignored_key(k, model)}
    missing, unexpected, shapes = state_dict_mismatch(model, sd)
    if missing or unexpected or shapes:
        name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        hint = ""
        head = sd.get("head.weight")
        target = model.state_dict().get("head.weight")
        if torch.is_tensor(head) and torch.is_tensor(target) and head.shape[0] != target.shape[0]:
            hint = (f"; its classifier has {head.shape[0]} classes, this model {target.shape[0]}: "
                    f"pass --num-classes {head.shape[0]} if the class folders are a subset of its classes")
        raise CheckpointError(f"{source} does not fit {name}: {describe_mismatch(missing, unexpected, shapes)}{hint}")
    model.load_state_dict(sd, strict=False)


def load_pretrained(model: torch.nn.Module, path: str, logger: Optional[logging.Logger] = None) -> Dict[str, Any]:
    """Initialise ``model`` from weights of another run (e.g. 224 weights for 384 fine-tuning).

    The weights go through :func:`models.layers.checkpoint_filter_fn`
    (positional encodings / relative tables resized to this model), a classifier
    of another size is dropped, and the rest loads with ``strict=False``;
    missing and unexpected keys are logged.

    Raises:
        CheckpointError: unreadable file, or a parameter outside the classifier
            whose shape still differs.
    """
    log = logger or _logger
    ckpt = safe_load(path)
    try:
        sd = checkpoint_filter_fn(ckpt, model)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot adapt to this model ({_one_line(e)})") from None
    target = model.state_dict()
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "head")
    heads = (head,) if isinstance(head, str) else tuple(head)
    dropped = [k for k, v in sd.items() if k in target and torch.is_tensor(v) and v.shape != target[k].shape
               and any(k == h or k.startswith(h + ".") for h in heads)]
    for k in dropped:
        del sd[k]
    if dropped:
        log.info("pretrained %s: classifier of another size dropped (%s)", path, ", ".join(dropped))
    missing, unexpected, shapes = state_dict_mismatch(model, sd)
    if shapes:
        raise CheckpointError(f"{path} does not fit this model: {len(shapes)} of another shape "
                              f"({listing(shapes)})")
    model.load_state_dict(sd, strict=False)
    if missing:
        log.warning("pretrained %s: %d missing keys (%s)", path, len(missing), listing(missing))
    if unexpected:
        log.warning("pretrained %s: %d unexpected keys (%s)", path, len(unexpected), listing(unexpected))
    log.info("loaded pretrained weights from %s", path)
    return {"missing": missing, "unexpected": unexpected, "dropped": dropped}


# ----------------------------------------------------------------------------- RNG
def get_rng_state() -> Dict[str, Any]:
    """RNG states of this process as plain tensors / tuples (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
