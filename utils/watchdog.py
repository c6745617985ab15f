"""Watchdog: a run that makes no progress for ``WATCHDOG_TIMEOUT`` seconds ends with an error.

A DataLoader worker stuck on a dead network file system, or a rank waiting in
a collective for a peer that never comes, would otherwise hold its GPUs
silently forever. The training and evaluation loops name what they are about
to wait for (:meth:`Watchdog.phase`); a daemon thread checks that no phase
lasts longer than the timeout. When one does it reports one ``error:`` line
naming the phase (through :func:`utils.launch.report`, so the launcher prints
it once), kills this process's loader workers and ends the process with exit
code :data:`EXIT_STUCK`. The launcher (or torchrun) then stops the other ranks.
When several ranks stall (one in its loader, the others in the collective that
waits for it), the cause is what gets reported. A phase that waits for the other
processes (a collective) stalls as a consequence of a peer that never arrives,
so it gets :data:`PEER_GRACE_S` more (at most the timeout again): the process
that stalled on its own fires first, and the launcher stops the others. Should
both fire, the launcher prefers the stall that does not wait for peers, then
the one that began first.

The collectives themselves also get a timeout (``init_process_group``), set a
minute longer than the watchdog's so that the clearer message comes first.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from typing import Optional

__all__ = ["Watchdog", "EXIT_STUCK", "PEER_GRACE_S"]

EXIT_STUCK = 3
PEER_GRACE_S = 30.0   # extra time of a phase that waits for the other processes (capped at the timeout)

_logger = logging.getLogger(__name__)


class Watchdog:
    """Ends the process when one phase lasts more than ``timeout_s`` seconds (0 disables it); a phase
    that waits for the other processes gets ``min(PEER_GRACE_S, timeout_s)`` more.

    Args:
        timeout_s: the bound, in seconds.
        key: the config key that sets it, named in the error line.
    """

    def __init__(self, timeout_s: float, key: str = "WATCHDOG_TIMEOUT"):
        self.timeout_s = float(timeout_s or 0)
        self.peer_grace_s = min(PEER_GRACE_S, self.timeout_s)
        self.key = key
        self._what: Optional[str] = None
        self._peers = False
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    def start(self) -> "Watchdog":
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="flatten-watchdog", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def phase(self, what: Optional[str], waits_for_peers: bool = False) -> None:
        """Start timing ``what`` (a short phrase: "waiting for batch 3 of the training loader");
        None pauses the watchdog (e.g. while nothing can hang). ``waits_for_peers``: the phase
        contains a collective, so it stalls whenever another process does."""
        with self._lock:
            self._what, self._peers = what, waits_for_peers
            self._since = time.monotonic()

    def _run(self) -> None:
        period = min(1.0, self.timeout_s / 10)
        while not self._stop.wait(period):
            with self._lock:
                what, peers, since = self._what, self._peers, self._since
            limit = self.timeout_s + (self.peer_grace_s if peers else 0.0)
            if what is not None and time.monotonic() - since > limit:
                self._fire(what, peers, since, limit)
                return

    def _fire(self, what: str, peers: bool, since: float, limit: float) -> None:
        from .launch import report
        began = time.time() - (time.monotonic() - since)   # when the stall began, on the wall clock
        bound = f"{self.key}={self.timeout_s:g}" + (f" + {self.peer_grace_s:g} s for a wait on the other processes"
                                                     if peers else "")
        report(f"no progress for {limit:g} s while {what} ({bound}); a stuck data loader, file system or "
               f"process ended the run", EXIT_STUCK, kind="stuck", since=began, waits_for_peers=peers)
        for child in multiprocessing.active_children():  # loader workers stuck in I/O would outlive us
            try:
                child.kill()
            except OSError:
                pass
        os._exit(EXIT_STUCK)
