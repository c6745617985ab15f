"""Logging: console + per-rank log files, one JSON line per epoch, TensorBoard scalars.

``create_logger`` configures the *root* logger, so messages of every module
(``logging.getLogger(__name__)``, timm's own) reach the same console and files;
it returns the logger named ``name`` for the caller's messages.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import sys
from typing import Any, Mapping

__all__ = ["create_logger", "JsonLogger", "append_json_line", "TensorboardWriter", "LOG_FORMAT"]

LOG_FORMAT = "[%(asctime)s %(name)s] %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_TAG = "_flatten_handler"  # marks the handlers installed here, so a second call replaces them


def create_logger(output_dir: str, rank: int = 0, name: str = "flatten") -> logging.Logger:
    """Rank 0 logs INFO to the console; every rank logs to ``output_dir/log_rank{rank}.txt``.

    Calling it again (another run in the same process) replaces the handlers
    installed by the previous call instead of adding more.
    """
    os.makedirs(output_dir, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _TAG, False):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.INFO)
    formatter = logging.Formatter(LOG_FORMAT, datefmt=DATE_FORMAT)

    handlers = [logging.FileHandler(os.path.join(output_dir, f"log_rank{rank}.txt"), mode="a")]
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stdout))
    for h in handlers:
        h.setLevel(logging.INFO)
        h.setFormatter(formatter)
        setattr(h, _TAG, True)
        root.addHandler(h)

    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    return logger


def _jsonable(value: Any) -> Any:
    """Numbers from torch / numpy as plain floats/ints; NaN and inf as strings."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            value = value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def append_json_line(path: str, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` (flushed to disk)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = json.dumps(_jsonable(dict(record)), sort_keys=False)
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


class JsonLogger:
    """One JSON line per epoch in ``output_dir/log.jsonl`` (rank 0 only; other ranks no-op)."""

    def __init__(self, output_dir: str, rank: int = 0, filename: str = "log.jsonl"):
        self.path = os.path.join(output_dir, filename)
        self.enabled = rank == 0

    def log(self, record: Mapping[str, Any]) -> None:
        if self.enabled:
            append_json_line(self.path, record)


class TensorboardWriter:
    """Thin ``SummaryWriter`` wrapper: rank 0 only, a no-op when tensorboard is missing."""

    def __init__(self, log_dir: str, rank: int = 0, enabled: bool = True):
        self.writer = None
        if not (enabled and rank == 0):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as e:  # tensorboard not installed or broken: log and carry on
            logging.getLogger(__name__).warning("TensorBoard disabled (%s)", " ".join(str(e).split()))
            return
        self.writer = SummaryWriter(log_dir=log_dir)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def add_scalar(self, tag: str, value: Any, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(_jsonable(value)), step)

    def add_scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        """``add_scalar`` for every numeric entry, tags ``prefix + key``."""
        if self.writer is None:
            return
        for key, value in values.items():
            value = _jsonable(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(prefix + key, float(value), step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
