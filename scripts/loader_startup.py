"""What the loader workers' start method costs: at start-up and per epoch (prints measured figures).

    .venv/bin/python -m scripts.loader_startup [--workers 2] [--epochs 3] [--repeats 3]

For each start method (``fork``, ``forkserver`` (the default), ``spawn``) and
for persistent and per-epoch workers, a fresh Python process builds the
training loader of ``configs/demo/rehearsal.yaml`` (224 px, the full
augmentation) over the photo dataset of :mod:`data.photos` and times:

* ``build``: ``data.build_loader`` (for forkserver this starts the server, whose
  one-time import of the data code then overlaps with whatever the process
  does next: building the model, loading a checkpoint);
* ``first batch``: from ``iter(loader)`` to the first batch (starting the
  workers, sending each the dataset, the first batch);
* ``epoch k``: a whole epoch ``k`` (epoch 1 onwards: how much the workers cost
  per epoch).

It also times what forkserver and spawn add per worker on ImageNet: pickling the
training dataset (1,281,167 samples) to send it to the worker. The median of
``--repeats`` runs is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from config import load_config
from data import build_loader
from data.photos import write_photo_dataset
method, workers, epochs, persistent, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
cfg = load_config("configs/demo/rehearsal.yaml", ["DATA.DATA_PATH", data, "DATA.NUM_WORKERS", workers,
                  "DATA.WORKER_START_METHOD", method, "DATA.PERSISTENT_WORKERS", persistent])
t = time.perf_counter()
loader = build_loader(cfg).loader_train
out = dict(build=time.perf_counter() - t, epochs=[])
for epoch in range(epochs):
    loader.sampler.set_epoch(epoch)
    t = time.perf_counter()
    it = iter(loader)
    next(it)
    if epoch == 0:
        out["first_batch"] = time.perf_counter() - t
    for _ in it:
        pass
    out["epochs"].append(time.perf_counter() - t)
print("RESULT" + json.dumps(out))
"""


def measure(method: str, workers: int, epochs: int, persistent: bool, data: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _CHILD, method, str(workers), str(epochs), "1" if persistent else "0",
                        data], cwd=ROOT, capture_output=True, text=True, check=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    return json.loads(r.stdout.split("RESULT", 1)[1])


def imagenet_pickle_cost() -> dict:
    """Seconds and bytes to pickle / unpickle an ImageFolder dataset of ImageNet's training-set size."""
    import pickle

    from data.datasets import ImageFolderDataset
    ds = ImageFolderDataset.__new__(ImageFolderDataset)   # the object a worker receives, without a folder scan
    ds.__dict__.update(root="/data/imagenet/train", transform=None, target_transform=None, loader=None,
                       classes=[f"n{i:08d}" for i in range(1000)], replace_bad=True, _given_class_to_idx=None)
    ds.class_to_idx = {c: i for i, c in enumerate(ds.classes)}
    ds.samples = [(f"/data/imagenet/train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG", i % 1000)
                  for i in range(1281167)]
    ds.targets = [s[1] for s in ds.samples]
    ds.imgs = ds.samples
    t = time.perf_counter()
    blob = pickle.dumps(ds, protocol=pickle.HIGHEST_PROTOCOL)
    dumped = time.perf_counter() - t
    t = time.perf_counter()
    pickle.loads(blob)
    return dict(pickle_s=dumped, unpickle_s=time.perf_counter() - t, mb=len(blob) / 2 ** 20)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=["fork", "forkserver", "spawn"])
    p.add_argument("--data", default=os.path.join("output", "rehearsal", "data"))
    args = p.parse_args(argv)

    from data.photos import write_photo_dataset
    data = write_photo_dataset(os.path.abspath(args.data))
    print(f"training loader of configs/demo/rehearsal.yaml (224 px, full augmentation, batch 8) over {data}: "
          f"{args.workers} workers, {args.epochs} epochs, median of {args.repeats} fresh processes; seconds")
    header = f"{'start method':<12} {'workers':<11} {'build':>6} {'1st batch':>9} " + " ".join(
        f"{'epoch ' + str(e):>8}" for e in range(args.epochs))
    print(header + "\n" + "-" * len(header))
    for method in args.methods:
        for persistent in (True, False):
            runs = [measure(method, args.workers, args.epochs, persistent, data) for _ in range(args.repeats)]
            med = lambda xs: statistics.median(xs)  # noqa: E731
            row = [med([r["build"] for r in runs]), med([r["first_batch"] for r in runs])]
            row += [med([r["epochs"][e] for r in runs]) for e in range(args.epochs)]
            kind = "persistent" if persistent else "per epoch"
            print(f"{method:<12} {kind:<11} {row[0]:6.2f} {row[1]:9.2f} " + " ".join(f"{v:8.2f}" for v in row[2:]),
                  flush=True)
    cost = imagenet_pickle_cost()
    print(f"\nImageNet-size training set (1,281,167 samples) sent to one forkserver/spawn worker: pickle "
          f"{cost['pickle_s']:.2f} s + unpickle {cost['unpickle_s']:.2f} s, {cost['mb']:.0f} MB (fork: shared, 0 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
