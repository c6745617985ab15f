"""Where each command writes its records, and how.

* Training: ``OUTPUT/NAME/TAG/`` (the run folder), written only by that run and
  its reruns: ``config.yaml`` (the config as given; works as ``--cfg``),
  ``run.json`` (derived values: world size, scaled LRs, resolved classes, ...),
  logs, TensorBoard, checkpoints, ``eval.json`` at the end.
* ``--eval``: ``OUTPUT/NAME/eval/TAG/<time>/`` and ``--throughput``:
  ``OUTPUT/NAME/throughput/TAG/<time>/``, a new folder per invocation
  (``<time>`` is ``YYYYmmdd-HHMMSS``, with ``-2``, ``-3``... when two start in
  the same second). So ``eval`` and ``throughput`` are not training tags.

Nothing is created before the command's inputs are checked (the callers make
the folders last), and every file is written atomically with the umask's
permissions (:func:`utils.checkpoint.atomic_write`).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

from .checkpoint import atomic_write
from .logging import _jsonable

__all__ = ["RECORD_KINDS", "run_dir", "record_root", "make_record_dir", "write_json", "write_text"]

RECORD_KINDS = ("eval", "throughput")


def run_dir(output: str, name: str, tag: str) -> str:
    """The training run folder ``output/name/tag``.

    Raises:
        ValueError: ``tag`` is one of :data:`RECORD_KINDS` (their records live there).
    """
    if tag in RECORD_KINDS:
        raise ValueError(f"TAG {tag!r} is reserved for the records of --{tag}; choose another --tag for training")
    return os.path.join(output, name, tag)


def record_root(output: str, name: str, kind: str, tag: str) -> str:
    """The folder holding the ``kind`` records of ``tag``: ``output/name/kind/tag``."""
    return os.path.join(output, name, kind, tag)


def make_record_dir(root: str) -> str:
    """Create and return a new ``root/<time>`` folder (never an existing one)."""
    os.makedirs(root, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10000):
        path = os.path.join(root, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise OSError(f"no free record folder name under {root}")


def write_json(path: str, record: Mapping[str, Any]) -> str:
    text = json.dumps(_jsonable(dict(record)), indent=2) + "\n"
    return atomic_write(path, lambda f: f.write(text), binary=False, sync=False)


def write_text(path: str, text: str) -> str:
    return atomic_write(path, lambda f: f.write(text), binary=False, sync=False)
