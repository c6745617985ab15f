"""Keep the CPU allocator from handing memory back to the OS between steps.

On Linux, glibc's malloc serves every large block (a 16 x 3136 x 96 float
tensor is 19 MB) with a fresh ``mmap`` and returns it with ``munmap`` when the
tensor dies, so the next step faults the same pages in again and the kernel
zeroes them: on the 2-core CPU of ``docs/speed.md`` that costs about a fifth
of an eager inference step (13 s of system time against 41 s of user time
in 14 FLatten-Swin-T batches of 16). :func:`keep_freed_memory` switches the
process to heap-only allocation that keeps what it frees, as jemalloc or
tcmalloc would; resident memory then stays near the peak of a step (after a
few steps in which the heap settles) instead of dropping between steps.

It is applied by ``main.py`` when it runs on the CPU and by
``python -m scripts.benchmark`` (for every model it times, ours and the official one
alike). Set ``FLATTEN_CPU_MALLOC=default`` to leave glibc's defaults alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Optional

ENV = "FLATTEN_CPU_MALLOC"
# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_state: Optional[str] = None


def keep_freed_memory() -> str:
    """Tune glibc malloc once per process; returns what was done ('tuned', or why not)."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV, "").lower() == "default":
        _state = f"default ({ENV}=default)"
    elif not sys.platform.startswith("linux"):
        _state = "default (not Linux)"
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            _state = "default (no glibc mallopt)"
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # No mmap for large blocks (they come from the heap and are reused), and no trimming of
            # the heap's free top below 1 GiB.
            ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
            _state = "tuned" if ok else "default (mallopt refused)"
    return _state
