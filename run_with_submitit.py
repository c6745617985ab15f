"""Submit main.py to Slurm (or run it locally) through submitit: one task per GPU, requeued on a time limit.

    .venv/bin/python run_with_submitit.py --nodes 2 --gpus-per-node 8 --timeout 2880 --partition gpu \\
        --cfg configs/flatten_swin_t.yaml --data-path /path/to/imagenet
    .venv/bin/python run_with_submitit.py --local --gpus-per-node 0 --tasks-per-node 2 --wait \\
        --cfg configs/demo/demo.yaml --data-path demo_data --epochs 2

The options below are submitit's; every other argument goes to main.py as it is. Each task is one training
process: :class:`Trainer` sets the torchrun-style variables (rank, local rank, world size, address and port
of the first node) from ``submitit.JobEnvironment()`` and calls ``main.main(argv)`` in the task.

**Time limit and requeue.** Slurm sends the job ``SIGTERM`` ``--signal-delay`` seconds before its time limit:
submitit's preemption signal is set to TERM here (``SUBMITIT_PREEMPT_SIGNAL``), the signal the training
already stops on (:mod:`utils.preemption`): every rank finishes the step under way, rank 0 saves
``last.pth``, main.py returns 143, and the loader workers ignore it. submitit's default, SIGUSR2, would kill
the loader workers (Slurm signals every process of a job step). With the checkpoint on disk,
:class:`Trainer` hands over to submitit's own handler: on rank 0 it calls :meth:`Trainer.checkpoint`, which
resubmits the same command (the rerun resumes from the run folder's ``last.pth``: ``TRAIN.AUTO_RESUME``),
and requeues the job; after ``--max-requeue`` time limits it gives up. A plain ``scancel`` also stops the
training with a checkpoint, but the job stays cancelled: a task requeues only while Slurm still counts the
job as running (the time-limit warning, or ``scancel --signal=TERM <job>``).

Files: submitit's logs and pickles in ``--job-dir``/<job id>/ (one ``<job id>_<task>_log.out`` per task);
the training writes its run folder as main.py does.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import zlib
from typing import Optional, Sequence

# submitit reads its preemption signal when it is imported, here and in every task (which inherits this
# environment): SIGTERM, so that the time-limit warning takes the training's own checkpoint path
os.environ["SUBMITIT_PREEMPT_SIGNAL"] = "TERM"

import submitit  # noqa: E402  (after the variable above)

ROOT = os.path.dirname(os.path.abspath(__file__))
STOPPED_BY_SIGTERM = 128 + signal.SIGTERM


class JobStopped(RuntimeError):
    """The training ended without finishing (a user error, a failure, or a stop that is not requeued)."""


def _port(job_id: str) -> int:
    """The rendezvous port of job ``job_id``: ``MASTER_PORT`` if set, else one derived from the id."""
    if os.environ.get("MASTER_PORT", "").isdigit():
        return int(os.environ["MASTER_PORT"])
    from utils.cluster import slurm_port
    return slurm_port(int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode()))


def _slurm_job_running(job_id: str) -> bool:
    """Whether Slurm still counts ``job_id`` as running (not COMPLETING after a scancel, nor requeued)."""
    try:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                               timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return True        # cannot tell: let submitit try (its requeue fails on a job that is gone)
    return state == "RUNNING"


class Trainer:
    """What each task runs: ``main.main(argv)`` as one process of the job; submitit pickles it."""

    def __init__(self, argv: Sequence[str], root: str = ROOT):
        self.argv = list(argv)
        self.root = root

    def __call__(self) -> int:
        if self.root not in sys.path:
            sys.path.insert(0, self.root)
        from utils.cluster import World, export_world

        job = submitit.JobEnvironment()
        tasks_per_node = max(job.num_tasks // max(job.num_nodes, 1), 1)
        export_world(World(rank=job.global_rank, world_size=job.num_tasks, local_rank=job.local_rank,
                           local_world_size=tasks_per_node, master_addr=job.hostnames[0],
                           master_port=_port(job.job_id), source="submitit", node=job.hostname))
        # submitit's SIGTERM handler (checkpoint, requeue) runs at most once: the requeue itself makes Slurm
        # send SIGTERM to the job's processes again
        requeue = signal.getsignal(signal.SIGTERM)

        def once(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            requeue(signum, frame)

        if callable(requeue):
            signal.signal(signal.SIGTERM, once)   # a SIGTERM before or after the training: straight to submitit

        import main
        sys.argv = [os.path.join(self.root, "main.py")] + self.argv      # what run.json records as the command
        code = main.main(self.argv)
        if code == 0:
            return 0
        if code != STOPPED_BY_SIGTERM:
            raise JobStopped(f"main.py exited with code {code} (its error is in this task's log)")
        # last.pth is saved: now submitit's handler, which on rank 0 resubmits checkpoint() and requeues the job
        # (and on the other ranks does nothing); not after a scancel, which Slurm shows as COMPLETING
        if callable(requeue) and (job.cluster != "slurm" or _slurm_job_running(job.job_id)):
            once(signal.SIGTERM, None)
            if job.global_rank != 0:
                return code            # rank 0 requeues the job; this task's result is not the job's
        raise JobStopped("main.py was stopped by SIGTERM after saving its checkpoint and the job is not "
                         "requeued (cancelled): submit the same command again to resume")

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """The job to requeue: the same command, which resumes from the run folder's last.pth."""
        return submitit.helpers.DelayedSubmission(type(self)(self.argv, self.root))


def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(
        "run_with_submitit.py", allow_abbrev=False,
        description="Submit main.py through submitit; arguments not listed here go to main.py.")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node, one task each (default 8)")
    p.add_argument("--tasks-per-node", type=int,
                   help="training processes per node (default: one per GPU, or 1 without GPUs)")
    p.add_argument("--cpus-per-task", type=int, help="CPUs per task (default: the cluster's)")
    p.add_argument("--timeout", type=int, default=2880, help="time limit in minutes (default 2880, 48 h)")
    p.add_argument("--signal-delay", type=int, default=120,
                   help="SIGTERM this many seconds before the time limit (default 120)")
    p.add_argument("--max-requeue", type=int, default=10,
                   help="requeues after a time limit before the job gives up (default 10)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--job-dir", default=os.path.join("output", "submitit"),
                   help="submitit's folder: logs and pickles under <job-dir>/<job id> (default output/submitit)")
    p.add_argument("--name", default="flatten", help="job name (default flatten)")
    p.add_argument("--local", action="store_true",
                   help="submitit's local executor: the tasks run on this machine (one node)")
    p.add_argument("--wait", action="store_true", help="wait for the job; exit 0 if it finished, else 1")
    args, rest = p.parse_known_args(argv)
    tasks = args.tasks_per_node or max(args.gpus_per_node, 1)
    if args.gpus_per_node and tasks != args.gpus_per_node:
        p.error(f"--tasks-per-node {tasks} with --gpus-per-node {args.gpus_per_node}: one task per GPU")
    if args.local and args.nodes != 1:
        p.error("--local runs on one node")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from main import parse_args as main_args      # main.py's own errors before anything is submitted
    if main_args(rest).nproc_per_node:
        p.error("--nproc-per-node: submitit starts the processes (--tasks-per-node / --gpus-per-node)")
    args.tasks_per_node = tasks
    return args, rest


def _executor(args) -> submitit.core.core.Executor:
    folder = os.path.join(args.job_dir, "%j")
    if args.local:
        executor = submitit.LocalExecutor(folder, max_num_timeout=args.max_requeue)
        executor.update_parameters(timeout_min=args.timeout, tasks_per_node=args.tasks_per_node,
                                   gpus_per_node=args.gpus_per_node, signal_delay_s=args.signal_delay)
        return executor
    executor = submitit.SlurmExecutor(folder, max_num_timeout=args.max_requeue)
    params = dict(job_name=args.name, nodes=args.nodes, ntasks_per_node=args.tasks_per_node, time=args.timeout,
                  signal_delay_s=args.signal_delay)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.cpus_per_task:
        # srun (Slurm >= 22.05) does not take the job's --cpus-per-task: ask for it again for the step
        params.update(cpus_per_task=args.cpus_per_task, srun_args=[f"--cpus-per-task={args.cpus_per_task}"])
    if args.partition:
        params["partition"] = args.partition
    executor.update_parameters(**params)
    return executor


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, rest = parse_args(argv)
    if not args.local and shutil.which("sbatch") is None:
        print("error: sbatch not found: run on a Slurm login node, or pass --local", file=sys.stderr)
        return 2
    job = _executor(args).submit(Trainer(rest))
    where = "locally" if args.local else "to Slurm"
    print(f"submitted job {job.job_id} {where}: {args.nodes} node(s) x {args.tasks_per_node} task(s); "
          f"logs in {job.paths.folder}", flush=True)
    if not args.wait:
        return 0
    try:
        job.results()        # every task's; rank 0's is the job's
    except Exception as e:   # submitit re-raises the task's error with its traceback
        print(f"error: job {job.job_id} failed: {' '.join(str(e).split())[-800:]}", file=sys.stderr)
        return 1
    print(f"job {job.job_id} finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
