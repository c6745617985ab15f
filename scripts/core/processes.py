"""A process and everything it started, found through /proc.

torchrun's agent and the loader workers start sessions of their own, so neither a
process group nor a session reaches all of a training command's processes; a
walk of the parent links does (Linux; elsewhere only the process itself).
"""
from __future__ import annotations

import os
import signal
from typing import Dict, List

__all__ = ["process_tree", "kill_tree"]


def process_tree(pid: int) -> List[int]:
    """``pid`` and every process below it, children before their parents."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out[::-1]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process it started (stopped first, so that none starts another meanwhile)."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for p in process_tree(pid):
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
