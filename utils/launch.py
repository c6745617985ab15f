"""Launcher: ``python main.py --nproc-per-node N ...`` runs N training processes like torchrun,
but reports the way a single process does.

It drives PyTorch's own elastic agent (the engine inside ``torchrun``:
``torch.distributed.launcher.api.launch_agent``) in this process, so
rendezvous, environment variables and worker monitoring are torchrun's. What
it changes:

* **Errors.** Each process reports its outcome in one line (:func:`report`) to a
  private folder instead of stderr. When the processes have ended, the
  launcher prints the root cause (the earliest error) once, as the last line
  of the output: ``error: ...``, and exits with that process's code (2 for a
  user error), instead of torchrun's traceback and ``ChildFailedError`` report
  with exit code 1.
* **Signals.** SIGTERM/SIGINT/SIGHUP to the launcher, or to the whole process
  group, are forwarded to the processes, which save a mid-epoch checkpoint and
  exit (:mod:`utils.preemption`); the launcher waits up to
  :data:`SHUTDOWN_TIMEOUT_S` for them (torchrun: 30 s, then SIGKILL) and exits
  with their code (143 for SIGTERM, 130 for SIGINT), without a traceback.

Without the launcher (plain ``python main.py``, or ``torchrun main.py``),
:func:`report` prints ``error: ...`` to stderr.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Dict, List, Optional, Sequence

__all__ = ["report", "launch", "SHUTDOWN_TIMEOUT_S", "RECORDS_ENV"]

RECORDS_ENV = "FLATTEN_LAUNCH_RECORDS"
SHUTDOWN_TIMEOUT_S = 900   # how long the processes get to save and exit after a signal
_FAILURE_KINDS = ("error", "stuck", "failed")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def report(line: str, code: int, kind: str = "error", since: Optional[float] = None,
           waits_for_peers: bool = False) -> None:
    """Report this process's outcome in one line.

    Args:
        line: the message, without the ``error:`` prefix.
        code: the exit code the process is about to return.
        kind: ``error`` (a user error), ``failed`` (training cannot go on),
            ``stuck`` (the watchdog fired), ``peer`` (a collective lost another
            process, which reports the cause itself) or ``stopped`` (a signal).
        since: when the failure began (wall clock; the watchdog's stall start), if
            earlier than now: the launcher orders failures by it.
        waits_for_peers: the failure is a stall in a phase that waits for the other
            processes (a collective), so it may be a consequence of another's failure.

    Under the launcher the line goes to the launcher, which prints one line for
    the whole job; otherwise errors are printed to stderr as ``error: <line>``
    (``stopped`` is not printed: the training log already says it).
    The launcher prefers error/failed/stuck lines over ``peer`` and ``stopped``
    lines, and among them those that do not wait for peers, then the earliest, so
    the cause is what it prints.
    """
    text = _one_line(line)
    folder = os.environ.get(RECORDS_ENV, "")
    if folder and os.path.isdir(folder):
        rank = os.environ.get("RANK", "0")
        now = time.time()
        record = dict(time=now if since is None else min(now, since), rank=int(rank) if rank.isdigit() else 0,
                      code=int(code), kind=kind, line=text, waits_for_peers=bool(waits_for_peers))
        path = os.path.join(folder, f"rank{rank}.{kind}.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)
        return
    if kind != "stopped":
        print(f"error: {text}", file=sys.stderr, flush=True)


def _read_records(folder: str) -> List[Dict]:
    records = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as f:
                    records.append(json.load(f))
            except (OSError, ValueError):
                continue
    return records


def _quiet_torch_elastic() -> None:
    """torchrun's agent logs every child failure and signal at WARNING/ERROR; the launcher sums them up."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _summarize(records: List[Dict], failed_code: Optional[int], failed_rank: Optional[int], signum: int) -> int:
    failures = [r for r in records if r.get("kind") in _FAILURE_KINDS]
    if failures:
        root = min(failures, key=lambda r: (bool(r.get("waits_for_peers")), r["time"]))
        print(f"error: {root['line']}", file=sys.stderr, flush=True)
        return int(root["code"])
    stopped = sorted((r for r in records if r.get("kind") == "stopped"), key=lambda r: r["rank"])
    if stopped:
        print(stopped[0]["line"], flush=True)
        return int(stopped[0]["code"])
    peers = sorted((r for r in records if r.get("kind") == "peer"), key=lambda r: r["time"])
    if peers:
        print(f"error: {peers[0]['line']}", file=sys.stderr, flush=True)
        return int(peers[0]["code"])
    if signum:
        return 128 + signum
    if failed_code is not None:
        how = f"was killed by signal {-failed_code}" if failed_code < 0 else f"exited with code {failed_code}"
        print(f"error: process rank {failed_rank} {how} (its output is above)", file=sys.stderr, flush=True)
        return failed_code if failed_code > 0 else 1
    return 0


def launch(script: str, argv: Sequence[str], nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: Optional[str] = None, master_port: Optional[int] = None) -> int:
    """Run ``python script argv...`` in ``nproc_per_node`` processes per node; return the job's exit code.

    One node: a standalone rendezvous on a free port (torchrun ``--standalone``).
    Several nodes: torchrun's static rendezvous at ``master_addr:master_port``
    (run the same command on every node with its ``node_rank``).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import launch_agent
    from torch.distributed.run import config_from_args, parse_args

    targs = [f"--nproc-per-node={int(nproc_per_node)}", f"--nnodes={int(nnodes)}"]
    if int(nnodes) > 1 or master_addr:
        targs += [f"--node-rank={int(node_rank)}", f"--master-addr={master_addr or '127.0.0.1'}",
                  f"--master-port={int(master_port or 29500)}"]
    args = parse_args(targs + [script] + list(argv))
    if int(nnodes) == 1 and not master_addr:   # what torchrun --standalone does: the OS picks the port
        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    if args.master_port is None:
        args.master_port = 29500
    _quiet_torch_elastic()
    config, cmd, cmd_args = config_from_args(args)
    config.shutdown_timeout = SHUTDOWN_TIMEOUT_S
    _quiet_torch_elastic()

    folder = tempfile.mkdtemp(prefix="flatten-launch-")
    previous = os.environ.get(RECORDS_ENV)
    os.environ[RECORDS_ENV] = folder
    failed_code = failed_rank = None
    signum = 0
    try:
        try:
            launch_agent(config, cmd, cmd_args)
        except ChildFailedError as e:
            failed_rank, failure = e.get_first_failure()
            failed_code = failure.exitcode
        except SignalException as e:
            signum = int(e.sigval)
        except KeyboardInterrupt:  # before the agent installed its handlers
            signum = 2
        records = _read_records(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if previous is None:
            os.environ.pop(RECORDS_ENV, None)
        else:
            os.environ[RECORDS_ENV] = previous
    return _summarize(records, failed_code, failed_rank, signum)
