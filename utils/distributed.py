"""Process-group helpers.

A process group exists only when the job has more than one process (torchrun's
``WORLD_SIZE > 1``, or an srun step of several tasks: :mod:`utils.cluster`):
NCCL on GPUs, Gloo on CPUs. A plain
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
from torch.distributed.constants import default_pg_timeout

from .cluster import export_world, world_from_env
from .hardware import check_gpu

__all__ = ["init_distributed", "choose_device", "check_distinct_gpus", "DeviceError", "is_dist", "barrier",
           "all_reduce_sum", "broadcast_object", "gather_objects", "cleanup"]

_logger = logging.getLogger(__name__)


class DeviceError(ValueError):
    """The processes and the visible GPUs do not fit together (a user error: one line)."""


def choose_device(local_rank: int, local_world_size: Optional[int], visible_gpus: int) -> torch.device:
    """The device of local process ``local_rank`` (of ``local_world_size`` on the node, None if unknown) when
    ``visible_gpus`` GPUs are visible to it.

    * no GPU: the CPU;
    * fewer GPUs than processes on the node: the launcher gave each process GPUs of its own through
      ``CUDA_VISIBLE_DEVICES`` (``srun --gpus-per-task=1``, submitit), so the first visible one;
    * otherwise (torchrun, ``srun --gpus-per-node``: every process sees every GPU): GPU ``local_rank``,
      or the only visible one.

    Two processes that end up on one GPU are found by :func:`check_distinct_gpus`.
    """
    if visible_gpus <= 0:
        return torch.device("cpu")
    if local_world_size is not None and local_world_size > visible_gpus:
        return torch.device("cuda", 0)
    if local_rank < visible_gpus:
        return torch.device("cuda", local_rank)
    if visible_gpus == 1:
        return torch.device("cuda", 0)
    raise DeviceError(f"LOCAL_RANK={local_rank} but only {visible_gpus} GPUs are visible "
                      f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); start at most "
                      f"that many processes per node, or give each process a GPU of its own")


def _gpu_identity(device: torch.device) -> Optional[str]:
    """What tells one physical GPU from another (its UUID), or None on the CPU."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    uuid = str(getattr(props, "uuid", "") or "") or f"pci {getattr(props, 'pci_bus_id', '?')}"
    return f"{props.name} ({uuid})"


def check_distinct_gpus(store, rank: int, world_size: int, node: str, identity: Optional[str]) -> None:
    """Fail on every process, in one line, when two processes of one node would use one GPU.

    Uses the rendezvous ``store`` (no GPU communication yet, so NCCL never sees the
    duplicate): each process counts its (node, GPU); two barriers on store counters
    make every process see the verdict. ``identity`` None (CPU) skips the check.
    """
    if identity is None or world_size <= 1:
        return
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefix = f"flatten/gpus/{attempt}/"

    def barrier_(name: str) -> None:
        if store.add(prefix + name, 1) == world_size:
            store.set(prefix + name + "/all", "1")
        store.wait([prefix + name + "/all"])

    key = f"{prefix}use/{node}/{identity}"
    store.add(key, 1)
    barrier_("counted")
    sharing = store.add(key, 0)
    if sharing > 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        store.set(prefix + "message", f"{sharing} processes on node {node} would share one GPU, {identity} "
                                     f"(rank {rank} sees CUDA_VISIBLE_DEVICES={visible}, "
                                     f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPU(s)): "
                                     f"give each process a GPU of its own (srun --gpus-per-task=1) or every "
                                     f"process all of the node's GPUs, or start fewer processes per node")
    barrier_("checked")
    if store.check([prefix + "message"]):
        raise DeviceError(store.get(prefix + "message").decode())


def init_distributed(timeout_s: Optional[float] = None) -> Tuple[int, int, int, torch.device]:
    """Join the job, if any: torchrun's variables, or Slurm's under srun (:mod:`utils.cluster`).

    Args:
        timeout_s: how long a collective may wait for the other processes before
            it fails (``init_process_group(timeout=...)``); None keeps PyTorch's default.

    Returns:
        ``(rank, world_size, local_rank, device)``; ``device`` follows
        :func:`choose_device`. With one process: ``(0, 1, 0, device)`` and no
        process group. A Slurm job is exported as torchrun's variables first.

    Raises:
        DeviceError: more processes per node than GPUs to go round, or two
            processes of a node on one GPU (every process raises it).
        HardwareError: a GPU this PyTorch build has no kernels for (:func:`utils.hardware.check_gpu`).
    """
    world = world_from_env()
    export_world(world)
    rank, world_size, local_rank = world.rank, world.world_size, world.local_rank
    device = choose_device(local_rank, world.local_world_size,
                           torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if device.type == "cuda":
        check_gpu(device)                     # before the first kernel, and before NCCL
        torch.cuda.set_device(device)
    if world_size > 1 and not is_dist():
        timeout = datetime.timedelta(seconds=float(timeout_s)) if timeout_s else default_pg_timeout
        store, rank, world_size = next(dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=timeout))
        store.set_timeout(timeout)
        check_distinct_gpus(dist.PrefixStore("flatten", store), rank, world_size, world.node, _gpu_identity(device))
        store = dist.PrefixStore("default_pg", store)
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", store=store, rank=rank, world_size=world_size, timeout=timeout,
                                    device_id=device)
        else:
            dist.init_process_group(backend="gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
        _logger.info("process group: rank %d of %d (local rank %d, from %s), backend %s, device %s",
                     rank, world_size, local_rank, world.source, dist.get_backend(), device)
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
