"""Logging: console + per-rank log files, one JSON line per epoch, TensorBoard scalars.

:func:`create_logger` configures the *root* logger, so messages of every module
(``logging.getLogger(__name__)``, timm's own) reach the same console and files.
It starts before the run's folder exists (nothing may be written before the
inputs are validated): records are kept in memory until :func:`attach_log_file`
names the folder, then written there first. The console (rank 0) shows INFO;
the files also get the DEBUG records of the ``flatten.detail`` logger (the full
config, per-file details), which stay off the console.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import math
import numbers
import os
import sys
from typing import Any, Mapping, Optional

__all__ = ["create_logger", "attach_log_file", "close_log_handlers", "detail_logger", "JsonLogger",
           "append_json_line", "TensorboardWriter", "LOG_FORMAT"]

LOG_FORMAT = "[%(asctime)s %(name)s] %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_TAG = "_flatten_handler"  # marks the handlers installed here, so a second call replaces them
_DETAIL = "flatten.detail"


def _tag(handler: logging.Handler, level: int) -> logging.Handler:
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt=DATE_FORMAT))
    setattr(handler, _TAG, True)
    return handler


def close_log_handlers() -> None:
    """Remove and close the handlers installed by :func:`create_logger` / :func:`attach_log_file`."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _TAG, False):
            root.removeHandler(h)
            h.close()


def detail_logger() -> logging.Logger:
    """Logger for details that belong in the log file only (emit them at DEBUG)."""
    log = logging.getLogger(_DETAIL)
    log.setLevel(logging.DEBUG)
    return log


def create_logger(output_dir: Optional[str] = None, rank: int = 0, name: str = "flatten") -> logging.Logger:
    """Rank 0 logs INFO to the console; records wait in memory for :func:`attach_log_file`.

    With ``output_dir`` the file is attached at once. Calling it again (another
    run in the same process) replaces the handlers of the previous call.
    """
    close_log_handlers()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if rank == 0:
        root.addHandler(_tag(logging.StreamHandler(sys.stdout), logging.INFO))
    # capacity is large: the buffer only covers the start-up, before the folder exists
    root.addHandler(_tag(logging.handlers.MemoryHandler(capacity=100000, flushLevel=logging.CRITICAL + 1),
                         logging.DEBUG))
    detail_logger()
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    if output_dir is not None:
        attach_log_file(output_dir, rank)
    return logger


def attach_log_file(output_dir: str, rank: int = 0) -> str:
    """Log to ``output_dir/log_rank{rank}.txt`` (appending), starting with the records kept so far."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"log_rank{rank}.txt")
    root = logging.getLogger()
    file_handler = _tag(logging.FileHandler(path, mode="a"), logging.DEBUG)
    for h in list(root.handlers):
        if getattr(h, _TAG, False) and isinstance(h, logging.handlers.MemoryHandler):
            h.setTarget(file_handler)
            h.flush()
            root.removeHandler(h)
            h.setTarget(None)
            h.close()
    root.addHandler(file_handler)
    return path


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
