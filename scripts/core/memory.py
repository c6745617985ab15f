"""Peak memory of one step: the CUDA allocator's peak, or on the CPU the tensors alive op by op."""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from .timing import sync


class LiveTensors(TorchDispatchMode):
    """Peak bytes of the CPU storages created while active (each storage counted once)."""

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        super().__init__()
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}   # counted separately (weights, ...)
        self.live: Dict[int, List[int]] = {}     # storage ptr -> [bytes, tensors alive]
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if not key or not nbytes or key in self.exclude:
                    continue
                if key in self.live:
                    self.live[key][1] += 1
                else:
                    self.live[key] = [nbytes, 1]
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
                weakref.finalize(t, self._release, key)
        return out


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def peak_memory_mb(model: nn.Module, step: Callable[[], object], x: torch.Tensor, device: torch.device,
                   opt: Optional[torch.optim.Optimizer] = None) -> float:
    """MB at the peak of one ``step``: the CUDA allocator's peak, or on the CPU parameters + buffers +
    input (+ optimizer state) + the peak of the tensors the eager step keeps alive at once.

    The CPU figure counts tensors, not the allocator: a fused kernel that never
    materialises an intermediate (SDPA's attention matrix, say) is not charged
    for it, while the same math written op by op is.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    base = list(model.parameters()) + list(model.buffers()) + [x]
    if opt is not None:
        base += [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    tracker = LiveTensors(exclude=base)
    with tracker:
        step()
    return (tensor_bytes(base) + tracker.peak) / 2 ** 20
