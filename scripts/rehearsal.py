"""`make rehearsal`: a dress rehearsal of the real training path, on real photos, on the CPU.

    .venv/bin/python -m scripts.rehearsal [--output output/rehearsal] [--compare]

1. Writes an ImageFolder of scikit-image photos at 224-320 px in the storage
   forms real collections hold, with two undecodable training files
   (:mod:`data.photos`; once, under ``<output>/data``).
2. Trains ``configs/demo/rehearsal.yaml`` (the full ImageNet recipe, EMA on)
   with ``main.py --nproc-per-node 2`` and 2 loader workers per process, and
   sends SIGTERM to the whole process group in the middle of epoch 1: the job
   must save one mid-epoch checkpoint and exit 143 without a traceback.
3. Reruns the same command: it must resume there and finish (exit 0).
4. Evaluates ``last.pth`` with ``--eval``: the records go to a folder of their
   own; the run folder must keep every byte (sha256 of every file).
5. Reruns the training command once more: a finished run is a no-op (exit 0,
   no byte changed).
6. With ``--compare``: trains the same run uninterrupted under another tag and
   compares the two final checkpoints tensor by tensor (model, optimizer,
   schedule, scaler, EMA, RNG states).

Prints what each step did and writes ``<output>/rehearsal.json``; exits 1 at
the first step that does not behave. About 2-4 minutes on two cores
(``--compare`` adds one more training run).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join("configs", "demo", "rehearsal.yaml")
NAME = "rehearsal"


class RehearsalFailed(Exception):
    pass


def _check(ok: bool, what: str, output: str = "") -> None:
    if not ok:
        raise RehearsalFailed(what + (f"\n--- last output ---\n{output[-3000:]}" if output else ""))


def file_hashes(folder: str) -> dict:
    """{relative path: sha256} of every file under ``folder``."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _env() -> dict:
    env = dict(os.environ)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "FLATTEN_LAUNCH_RECORDS"):
        env.pop(k, None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(cmd, stop_at: str = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a new process group; with ``stop_at``, SIGTERM the whole group when a line of the
    output matches it (the way SLURM or ``timeout -s TERM`` stop a job)."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    lines, sent = [], False
    for line in p.stdout:
        lines.append(line)
        sys.stdout.write("  | " + line)
        if stop_at and not sent and re.search(stop_at, line):
            os.killpg(p.pid, signal.SIGTERM)
            sent = True
            print("  >> SIGTERM sent to the process group", flush=True)
    p.wait()
    print(f"  -> exit {p.returncode} after {time.time() - start:.0f} s", flush=True)
    return subprocess.CompletedProcess(cmd, p.returncode, "".join(lines), "")


def _same(a, b, where: str, diffs: list) -> None:
    import torch
    if torch.is_tensor(a):
        if not (torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)):
            diffs.append(where)
    elif isinstance(a, dict):
        if set(a) != set(b):
            diffs.append(where + " (keys)")
        for k in set(a) & set(b):
            _same(a[k], b[k], f"{where}.{k}", diffs)
    elif isinstance(a, (list, tuple)):
        if len(a) != len(b):
            diffs.append(where + " (length)")
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]", diffs)
    elif a != b:
        diffs.append(where)


def rehearse(output: str, compare: bool = False) -> dict:
    from data.photos import CORRUPT_FILES, write_photo_dataset
    from utils.checkpoint import safe_load

    output = os.path.abspath(output)
    data = write_photo_dataset(os.path.join(output, "data"))
    runs = os.path.join(output, "runs")
    run_dir = os.path.join(runs, NAME, "default")
    train = [sys.executable, "main.py", "--nproc-per-node", "2", "--cfg", CONFIG, "--data-path", data,
             "--output", runs]
    report = dict(data=data, run_dir=run_dir)

    # 2. preempted in the middle of epoch 1
    r = _run(train, stop_at=r"Train: \[1/3\]\[3/\d+\]")
    _check(r.returncode == 143, f"the preempted run should exit 143, got {r.returncode}", r.stdout)
    _check("Traceback" not in r.stdout, "a traceback after SIGTERM", r.stdout)
    ckpt = safe_load(os.path.join(run_dir, "last.pth"))
    mid = ckpt.get("mid_epoch")
    _check(bool(mid) and mid["epoch"] == 1, f"last.pth should be a mid-epoch checkpoint of epoch 1, got {mid}")
    logs = "".join(open(os.path.join(run_dir, f)).read() for f in ("log_rank0.txt", "log_rank1.txt"))
    replaced = [ln for ln in logs.splitlines() if "unreadable training image replaced (epoch 0" in ln]
    _check(all(any(name in ln for ln in replaced) for name in CORRUPT_FILES),
           "both undecodable files should have been replaced in epoch 0 and named in the logs", logs)
    report.update(preempted_exit=r.returncode, mid_epoch=mid, replaced_lines=len(replaced))

    # 3. the rerun resumes and finishes
    r = _run(train)
    _check(r.returncode == 0, f"the resumed run should exit 0, got {r.returncode}", r.stdout)
    _check(f"at epoch 1 step {mid['step']}" in r.stdout, "the rerun should resume at the saved step", r.stdout)
    final = read_json(os.path.join(run_dir, "eval.json"))
    report.update(resumed_exit=r.returncode, final_eval=final)

    # 4. evaluation: records of its own, the run folder untouched
    before = file_hashes(run_dir)
    r = _run([sys.executable, "main.py", "--cfg", CONFIG, "--data-path", data, "--output", runs, "--eval",
              "--resume", os.path.join(run_dir, "last.pth"), "--num-workers", "2"])
    _check(r.returncode == 0, f"--eval should exit 0, got {r.returncode}", r.stdout)
    _check(file_hashes(run_dir) == before, "--eval changed the run folder")
    eval_root = os.path.join(runs, NAME, "eval", "default")
    eval_json = os.path.join(eval_root, sorted(os.listdir(eval_root))[-1], "eval.json")
    evaluated = read_json(eval_json)
    _check(evaluated["images"] == final["images"] and evaluated["acc1"] == final["acc1"],
           f"--eval of last.pth should repeat the run's final evaluation: {evaluated} vs {final}")
    report.update(eval_record=eval_json, eval=evaluated)

    # 5. a rerun after the end is a no-op
    r = _run(train)
    _check(r.returncode == 0 and "nothing to do" in r.stdout, "the rerun after the end should be a no-op", r.stdout)
    _check(file_hashes(run_dir) == before, "the rerun after the end changed the run folder")
    report.update(noop_exit=r.returncode, run_files=len(before))

    # 6. an uninterrupted run, tensor by tensor
    if compare:
        r = _run(train + ["--tag", "uninterrupted"])
        _check(r.returncode == 0, f"the uninterrupted run should exit 0, got {r.returncode}", r.stdout)
        a = safe_load(os.path.join(run_dir, "last.pth"))
        b = safe_load(os.path.join(runs, NAME, "uninterrupted", "last.pth"))
        diffs = []
        keys = ("model", "optimizer", "lr_scheduler", "scaler", "model_ema", "rng", "epoch", "max_accuracy",
                "max_accuracy_ema")
        for key in keys:
            _same(a[key], b[key], key, diffs)
        tensors = sum(1 for k in ("model", "model_ema") for _ in a[k].values())
        _check(not diffs, f"the resumed run differs from the uninterrupted one at {diffs[:10]}")
        report.update(compared=list(keys), identical=True, model_tensors=tensors)
    return report


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default=os.path.join("output", "rehearsal"), help="data, runs and the summary")
    p.add_argument("--compare", action="store_true", help="also train uninterrupted and compare the checkpoints")
    args = p.parse_args(argv)
    start = time.time()
    try:
        report = rehearse(args.output, compare=args.compare)
    except RehearsalFailed as e:
        print(f"rehearsal: FAILED: {e}", flush=True)
        return 1
    report["seconds"] = round(time.time() - start)
    with open(os.path.join(os.path.abspath(args.output), "rehearsal.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nrehearsal: OK in {report['seconds']} s: preempted at epoch {report['mid_epoch']['epoch']} step "
          f"{report['mid_epoch']['step']} (exit 143), resumed, Acc@1 {report['final_eval']['acc1']:.2f} on "
          f"{report['final_eval']['images']} photos, --eval in its own folder, rerun after the end a no-op"
          + (", identical to the uninterrupted run" if report.get("identical") else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
