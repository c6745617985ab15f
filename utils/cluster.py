"""Where this process sits in its job: rank, world size, local rank and rendezvous address.

Three ways a training process is started, read in this order:

* **torchrun** (or ``main.py --nproc-per-node``, or a launcher that sets the same
  variables, such as ``run_with_submitit.py``): ``WORLD_SIZE``, ``RANK``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``.
* **Slurm's srun** (one task per GPU, ``srun python main.py ...``): the task's
  ``SLURM_PROCID``, ``SLURM_LOCALID``, the step's task count
  (``SLURM_STEP_NUM_TASKS``) and tasks per node, and the first host of the
  step's node list as the rendezvous address, unless ``MASTER_ADDR`` is set.
  The port is ``MASTER_PORT`` or one derived from the job id, so two jobs that
  share a node do not collide. Only job *steps* count: the batch script itself
  (``python main.py`` in an sbatch file without srun) is one process even when
  the job holds more tasks; :func:`world_from_env` says so in ``note``.
* **one process** otherwise.

:func:`world_from_env` only reads; :func:`export_world` writes the
torchrun-style variables that ``torch.distributed``'s ``env://`` rendezvous
reads, so the rest of the code knows one convention.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional

__all__ = ["World", "world_from_env", "export_world", "expand_hostlist", "tasks_on_node", "slurm_port",
           "ClusterEnvError"]

DEFAULT_PORT = 29500
_SLURM_PORT_BASE, _SLURM_PORT_SPAN = 20000, 20000


class ClusterEnvError(ValueError):
    """A launcher's environment that cannot describe a job (a user error: names the variable)."""


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: Optional[int]  # processes on this node; None when the launcher does not say
    master_addr: Optional[str]
    master_port: Optional[int]
    source: str                      # 'torchrun' | 'slurm' | 'single'
    node: str = ""                   # this host's name as the launcher knows it
    note: str = ""                   # something the start summary should say (e.g. sbatch without srun)


def _int(env: Mapping[str, str], name: str, default: Optional[int] = None) -> int:
    value = env.get(name, "")
    if value == "":
        if default is None:
            raise ClusterEnvError(f"environment variable {name} is missing")
        return default
    try:
        return int(value)
    except ValueError:
        raise ClusterEnvError(f"environment variable {name}={value!r} is not an integer") from None


def expand_hostlist(hostlist: str) -> List[str]:
    """Slurm's compressed host list as names: ``'gpu[01-03,7],login1'`` -> ``['gpu01', 'gpu02', 'gpu03',
    'gpu7', 'login1']`` (zero padding kept; several bracket groups in one name are expanded in order)."""
    hosts: List[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", hostlist.strip()):
        names = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            parts = [literal]
            if ranges:
                parts = []
                for r in ranges.split(","):
                    lo, _, hi = r.partition("-")
                    if not lo.isdigit() or (hi and not hi.isdigit()):
                        raise ClusterEnvError(f"cannot read the Slurm host list {hostlist!r}")
                    width = len(lo)
                    parts += [literal + str(i).zfill(width) for i in range(int(lo), int(hi or lo) + 1)]
            names = [n + p for n in names for p in parts]
        hosts += [n for n in names if n]
    return hosts


def tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """Tasks of node ``node_id`` from Slurm's ``'2(x3),1'`` form (2 tasks on each of 3 nodes, then 1)."""
    counts: List[int] = []
    for item in tasks_per_node.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise ClusterEnvError(f"cannot read Slurm's tasks per node {tasks_per_node!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    if not 0 <= node_id < len(counts):
        raise ClusterEnvError(f"node {node_id} is not in Slurm's tasks per node {tasks_per_node!r}")
    return counts[node_id]


def slurm_port(job_id: int) -> int:
    """The rendezvous port of a Slurm job without ``MASTER_PORT``: one of 20000-39999, from the job id."""
    return _SLURM_PORT_BASE + job_id % _SLURM_PORT_SPAN


def world_from_env(env: Optional[Mapping[str, str]] = None) -> World:
    """This process's place in its job, from ``env`` (default ``os.environ``); see the module docstring."""
    env = os.environ if env is None else env
    node = env.get("SLURMD_NODENAME") or os.uname().nodename
    if env.get("WORLD_SIZE", "") != "":
        world_size = _int(env, "WORLD_SIZE")
        if world_size <= 1:
            return World(0, 1, 0, 1, None, None, "single", node)
        port = env.get("MASTER_PORT")
        local_world = _int(env, "LOCAL_WORLD_SIZE") if env.get("LOCAL_WORLD_SIZE", "") != "" else None
        return World(_int(env, "RANK"), world_size, _int(env, "LOCAL_RANK", 0), local_world,
                     env.get("MASTER_ADDR") or None,
                     int(port) if port and port.isdigit() else None, "torchrun", node)
    if env.get("SLURM_STEP_NUM_TASKS", "") != "" and env.get("SLURM_PROCID", "") != "":
        world_size = _int(env, "SLURM_STEP_NUM_TASKS")
        if world_size <= 1:
            return World(0, 1, 0, 1, None, None, "single", node)
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
        hosts = expand_hostlist(nodelist) if nodelist else []
        addr = env.get("MASTER_ADDR") or (hosts[0] if hosts else None)
        if addr is None:
            raise ClusterEnvError("SLURM_STEP_NODELIST is missing: cannot tell the address of the first node "
                                  "(set MASTER_ADDR)")
        port = _int(env, "MASTER_PORT", slurm_port(_int(env, "SLURM_JOB_ID", 0)))
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "")
        local_world = tasks_on_node(per_node, _int(env, "SLURM_NODEID", 0)) if per_node else world_size
        return World(_int(env, "SLURM_PROCID"), world_size, _int(env, "SLURM_LOCALID", 0), local_world, addr, port,
                     "slurm", node)
    note = ""
    if env.get("SLURM_JOB_ID") and _int(env, "SLURM_NTASKS", 1) > 1:
        note = (f"Slurm job {env['SLURM_JOB_ID']} holds {env['SLURM_NTASKS']} tasks, but this process was not "
                f"started by srun: training runs in this one process (start it with srun, one task per GPU)")
    return World(0, 1, 0, 1, None, None, "single", node, note)


def export_world(world: World, env: Optional[dict] = None) -> None:
    """Write the torchrun-style variables of ``world`` into ``env`` (default ``os.environ``), which
    ``torch.distributed``'s ``env://`` rendezvous and the rest of this code read."""
    env = os.environ if env is None else env
    if world.world_size <= 1:
        return
    env.update(RANK=str(world.rank), WORLD_SIZE=str(world.world_size), LOCAL_RANK=str(world.local_rank))
    if world.local_world_size is not None:
        env["LOCAL_WORLD_SIZE"] = str(world.local_world_size)
    if world.master_addr:
        env["MASTER_ADDR"] = world.master_addr
    if world.master_port:
        env["MASTER_PORT"] = str(world.master_port)
