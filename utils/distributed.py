"""Process-group helpers.

A process group exists only when ``torchrun`` starts more than one process
(environment ``WORLD_SIZE > 1``): NCCL on GPUs, Gloo on CPUs. A plain
``python main.py`` run has no group, and every helper below then acts on the
single process (rank 0 of 1) without touching ``torch.distributed``.
"""
from __future__ import annotations

import datetime
import logging
import os
from numbers import Number
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_dist", "barrier", "all_reduce_sum", "broadcast_object", "gather_objects",
           "cleanup"]

_logger = logging.getLogger(__name__)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(timeout_s: Optional[float] = None) -> Tuple[int, int, int, torch.device]:
    """Join the torchrun job, if any.

    Args:
        timeout_s: how long a collective may wait for the other processes before
            it fails (``init_process_group(timeout=...)``); None keeps PyTorch's default.

    Returns:
        ``(rank, world_size, local_rank, device)``; ``device`` is ``cuda:<local_rank>``
        when CUDA is available, else ``cpu``. Without torchrun (or with one
        process): ``(0, 1, 0, device)`` and no process group.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0) if world_size > 1 else 0
    local_rank = _env_int("LOCAL_RANK", 0) if world_size > 1 else 0
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are "
                               f"visible; start at most that many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not is_dist():
        kwargs = {}
        if timeout_s:
            kwargs["timeout"] = datetime.timedelta(seconds=float(timeout_s))
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device, **kwargs)
        else:
            dist.init_process_group(backend="gloo", **kwargs)
        _logger.info("process group: rank %d of %d (local rank %d), backend %s",
                     rank, world_size, local_rank, dist.get_backend())
    return rank, world_size, local_rank, device


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_dist():
        dist.barrier()


def _comm_device() -> torch.device:
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


Numbers = Union[torch.Tensor, Number, Sequence[Number]]


def all_reduce_sum(values: Numbers) -> Numbers:
    """Sum over ranks in float64 (exact for counts below 2**53).

    Args:
        values: a tensor, a number, or a sequence of numbers.

    Returns:
        The sums, of the same kind: a float64 tensor on the input's device, a
        float, or a list of floats. Without a process group the values are only
        converted.
    """
    if isinstance(values, torch.Tensor):
        t = values.detach().to(device=_comm_device(), dtype=torch.float64, copy=True)
        if is_dist():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(values.device)
    scalar = isinstance(values, Number)
    floats = [float(values)] if scalar else [float(v) for v in values]
    t = torch.tensor(floats, dtype=torch.float64, device=_comm_device())
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    out = t.cpu().tolist()
    return out[0] if scalar else out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects; ``obj`` itself without a group)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a group)."""
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if is_dist():
        dist.destroy_process_group()
