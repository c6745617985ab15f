"""`make demo`: train a small FLatten model on a real image dataset on the CPU, then evaluate it.

1. Writes scikit-learn's handwritten digits (1797 images, 10 classes) as an
   ImageFolder tree of 32x32 images under ``demo_data/`` (once).
2. Trains ``configs/demo/demo.yaml`` (a 4-stage FLatten-PVTv2 with focused linear
   attention in every stage) with ``main.py --nproc-per-node 2`` (2 processes, gloo, CPU).
3. Evaluates the best checkpoint with ``main.py --eval`` (records in
   ``output/demo/eval/default/<time>/``) and prints its accuracy next to chance
   (10 %). Exits 1 unless the accuracy is far above chance.

Run again to re-evaluate (training finds its run in output/demo/default done:
a no-op); ``make clean-demo`` starts over. Extra arguments go to the training
command, e.g. ``python -m scripts.demo --epochs 4``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = os.path.join("configs", "demo", "demo.yaml")
DATA = "demo_data"
CHANCE = 10.0          # % for 10 classes
PASS_ACC1 = 50.0       # "far above chance": 5x chance; the demo reaches ~95 %


def _run(cmd, env=None) -> None:
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc != 0:
        sys.exit(f"demo: command failed with exit code {rc}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--output", default="output", help="output root (default output/ -> output/demo/default)")
    args, extra = p.parse_known_args(argv)

    from data.datasets import write_demo_dataset
    write_demo_dataset(os.path.join(ROOT, DATA), img_size=32)

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    common = ["--cfg", CONFIG, "--data-path", DATA, "--output", args.output]
    start = time.time()
    _run([sys.executable, "main.py", "--nproc-per-node", str(args.nproc)] + common + extra, env)
    train_time = time.time() - start

    out = os.path.join(ROOT, args.output, "demo", "default")
    best = os.path.join(out, "best.pth")
    _run([sys.executable, "main.py"] + common + ["--eval", "--resume", best], env)
    records = os.path.join(ROOT, args.output, "demo", "eval", "default")
    with open(os.path.join(records, sorted(os.listdir(records))[-1], "eval.json")) as f:
        result = json.load(f)

    acc1 = result["acc1"]
    print(f"\ndemo: FLatten-PVTv2 (tiny) on sklearn digits, {result['images']} validation images")
    print(f"demo: Acc@1 {acc1:.2f} %  Acc@5 {result['acc5']:.2f} %  (chance {CHANCE:.0f} %)  "
          f"train command {train_time:.0f} s with {args.nproc} processes")
    print(f"demo: checkpoints and logs in {out}")
    if acc1 < PASS_ACC1:
        print(f"demo: FAILED: Acc@1 {acc1:.2f} % is not far above chance (needs >= {PASS_ACC1:.0f} %)")
        return 1
    print("demo: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
