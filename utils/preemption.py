"""Preemption: SIGTERM / SIGINT become one mid-epoch checkpoint and a non-zero exit.

Where a stop signal can arrive, and what happens:

* **A training process (rank)**: :class:`StopRequest` records the signal and
  returns; the training loop finishes the optimizer step under way, all ranks
  agree on the same step (:func:`agree`, one small all-reduce per step), the
  state after that step is saved once, and every rank exits with
  ``128 + signal number`` (143 for SIGTERM, 130 for SIGINT).
* **Its DataLoader workers**: they ignore SIGTERM and SIGINT, so a signal sent
  to the whole process group (SLURM, ``timeout -s TERM``, Ctrl-C in a terminal)
  no longer kills them under the rank's feet; they end when the rank ends.
  With the default ``forkserver`` start method the fork server is started under
  :func:`children_ignore_stop_signals` (it survives the signal, and every worker
  inherits its dispositions); PyTorch then installs its own SIGTERM handler in
  each worker, and the worker's init (``data.WorkerInit``) ignores SIGTERM again
  with :func:`ignore_stop_signals`, a few instructions later. SIGINT is ignored
  throughout.
* **The launcher** (``python main.py --nproc-per-node N``, :mod:`utils.launch`):
  forwards the signal to every rank and waits for them to save and exit.
  A plain ``torchrun`` forwards it too, but gives the ranks only
  ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` (30 s by default) before SIGKILL and
  prints its own traceback.

The handler only stores the signal number: the same signal arriving twice (the
process group's copy and the launcher's forwarded copy) is one request.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Optional, Tuple

__all__ = ["STOP_SIGNALS", "StopRequest", "ignore_stop_signals", "children_ignore_stop_signals", "agree",
           "exit_code"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell convention for "ended by signal ``signum``": 128 + signum."""
    return 128 + int(signum)


def ignore_stop_signals() -> None:
    """Make this process (a loader worker) ignore SIGTERM and SIGINT."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def children_ignore_stop_signals():
    """Processes started (fork + exec) inside this block ignore SIGTERM and SIGINT from their first instruction.

    An ignored disposition survives ``exec``. For the few milliseconds of the
    block this process ignores them too, with both signals blocked in the main
    thread first, so one that arrives meanwhile stays pending and reaches the
    restored handler afterwards (Linux never discards a blocked signal).
    Outside the main thread it does nothing (dispositions can only change there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class StopRequest:
    """Records the first SIGTERM/SIGINT this process receives while installed.

    Use as a context manager around training; the previous handlers come back
    on exit. ``signum`` is 0 until a signal arrives.
    """

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _handler(self, signum, frame) -> None:  # no logging or I/O inside a handler
        if not self.signum:
            self.signum = int(signum)

    def install(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()


def agree(stop: Optional[StopRequest], bad_files: int, world_size: int) -> Tuple[int, int]:
    """What every rank must act on after a step: ``(signal number or 0, bad files summed over ranks)``.

    One all-reduce of three numbers when there is a process group: whether any
    rank got SIGTERM, whether any got SIGINT, and the count of unreadable
    training images this step. SIGTERM wins when both arrived.
    """
    signum = stop.signum if stop is not None else 0
    if world_size == 1:
        return signum, int(bad_files)
    from .distributed import all_reduce_sum
    term, intr, bad = all_reduce_sum([float(signum == signal.SIGTERM), float(signum == signal.SIGINT),
                                      float(bad_files)])
    if term > 0:
        return int(signal.SIGTERM), int(bad)
    if intr > 0:
        return int(signal.SIGINT), int(bad)
    return 0, int(bad)
