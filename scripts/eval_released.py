"""Evaluate the released FLatten checkpoints you have and compare with the published accuracy.

For every checkpoint found, runs ``main.py --eval`` in a subprocess (one
process, or ``--nproc`` processes through main.py's launcher) with the model's
config ``configs/<name>.yaml``, reads the ``eval.json`` of that evaluation's own
record folder (``OUTPUT/<name>/eval/released/<time>/``) and prints measured vs
published Acc@1 / Acc@5 (:mod:`scripts.core.paper`; docs/model.md, section 3):
the official evaluation logs of the four T/B0 models (three decimals, Acc@5
too), the README / paper Table 8 top-1 for the others. Checkpoints of other
FLatten configs (your own training runs) are compared with Table 8.

Checkpoints are found as ``<ckpt-dir>/<name>.pth`` (also ``.pt``,
``.pth.tar``; ``flatten_pvt_b`` is accepted for ``flatten_pvt_l`` as in the
release's config names) or given one by one with ``--ckpt name=path``.
Names without a file are listed as skipped.

Usage (from the repository root)::

    .venv/bin/python -m scripts.eval_released --ckpt-dir ~/flatten_weights --data-path /data/imagenet
    .venv/bin/python -m scripts.eval_released --ckpt flatten_swin_t=/tmp/swin.pth --data-path /data/imagenet \\
        --nproc 8 --batch-size 128
    .venv/bin/python -m scripts.eval_released --ckpt-dir weights --data-path /data/imagenet --dry-run

Exit status: 0 when every evaluated checkpoint is within ``--tol`` of its
published Acc@1 (and Acc@5 where published), 1 otherwise, 2 on usage errors.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it from the repository root as: python -m scripts.eval_released ...")

from scripts.core import cli, paper  # noqa: E402
from scripts.core.cli import ScriptError  # noqa: E402
from scripts.core.models import ROOT, config_files  # noqa: E402

EXTENSIONS = (".pth", ".pt", ".pth.tar")
TAG = "eval_released"


def known_names() -> List[str]:
    """Config names that can be evaluated: the released ones first, then every configs/flatten_*.yaml."""
    present = sorted(n for n in config_files() if n.startswith("flatten_"))
    released = paper.released_configs()
    return [n for n in released if n in present] + [n for n in present if n not in released]


def find_checkpoints(ckpt_dir: Optional[str], pairs: List[str], names: List[str]) -> Dict[str, str]:
    """{config name: checkpoint path} from --ckpt-dir and --ckpt name=path (the latter win)."""
    found: Dict[str, str] = {}
    if ckpt_dir:
        if not os.path.isdir(ckpt_dir):
            raise ScriptError(f"--ckpt-dir {ckpt_dir} is not a directory")
        stems = {n: n for n in names}
        stems.update({paper.official_name(n): n for n in names})
        for stem, name in stems.items():
            for ext in EXTENSIONS:
                path = os.path.join(ckpt_dir, stem + ext)
                if os.path.isfile(path) and name not in found:
                    found[name] = path
    for pair in pairs:
        if "=" not in pair:
            raise ScriptError(f"--ckpt expects name=path, got {pair!r}")
        name, path = pair.split("=", 1)
        name = paper.from_official_name(name)
        if name not in names:
            raise ScriptError(f"--ckpt {name}: no configs/{name}.yaml; known: {', '.join(names)}")
        found[name] = path
    return found


def eval_command(name: str, ckpt: str, args: argparse.Namespace, extra: List[str]) -> List[str]:
    cfg = os.path.join("configs", name + ".yaml")
    cmd = [sys.executable, "main.py"] + (["--nproc-per-node", str(args.nproc)] if args.nproc > 1 else [])
    cmd += ["--cfg", cfg, "--eval", "--resume", os.path.abspath(ckpt), "--data-path", args.data_path,
            "--output", args.output, "--tag", TAG,
            "--num-classes", "1000"]   # released files are ImageNet-1k models, whatever the folders
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.num_workers is not None:
        cmd += ["--num-workers", str(args.num_workers)]
    return cmd + extra


def eval_records_dir(name: str, output: str) -> str:
    """Where main.py --eval makes one folder per evaluation: OUTPUT/<config name>/eval/TAG/<time>/."""
    return os.path.join(os.path.abspath(output), name, "eval", TAG)


def _record_folders(root: str) -> set:
    return set(os.listdir(root)) if os.path.isdir(root) else set()


def run_one(name: str, ckpt: str, args: argparse.Namespace, extra: List[str]) -> dict:
    a1_pub, a5_pub, source = paper.published(name)
    row = dict(model=name, checkpoint=ckpt, acc1=None, acc5=None, images=None, published_acc1=a1_pub,
               published_acc5=a5_pub, source=source, status="", seconds=None, log="")
    cmd = eval_command(name, ckpt, args, extra)
    if args.dry_run:
        print(" ".join(cmd))
        row["status"] = "dry-run"
        return row
    records = eval_records_dir(name, args.output)
    earlier = _record_folders(records)           # never report a previous evaluation's numbers
    log_path = os.path.join(records, "eval_released.log")
    os.makedirs(records, exist_ok=True)
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    row["seconds"] = round(time.time() - t0, 1)
    row["log"] = log_path
    new = sorted(f for f in _record_folders(records) - earlier if os.path.isdir(os.path.join(records, f)))
    out_json = os.path.join(records, new[-1], "eval.json") if new else ""
    if proc.returncode != 0 or not os.path.exists(out_json):
        with open(log_path) as f:
            tail = f.read().strip().splitlines()[-5:]
        row["status"] = f"FAILED (exit {proc.returncode})"
        print(f"[{name}] failed; last lines of {log_path}:\n    " + "\n    ".join(tail), flush=True)
        return row
    with open(out_json) as f:
        res = json.load(f)
    row.update(acc1=res.get("acc1"), acc5=res.get("acc5"), images=res.get("images"))
    ok1 = a1_pub is None or abs(row["acc1"] - a1_pub) <= args.tol
    ok5 = a5_pub is None or row["acc5"] is None or abs(row["acc5"] - a5_pub) <= args.tol
    row["status"] = "ok" if ok1 and ok5 else "DIFF"
    if row["images"] not in (None, 50000):
        row["status"] += f" ({row['images']} images, not the 50000 of ImageNet val)"
    return row


def fmt(v: Optional[float], nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def print_table(rows: List[dict], skipped: List[str]) -> None:
    header = (f"{'model':<22} {'Acc@1':>7} {'publ.':>7} {'diff':>7}  {'Acc@5':>7} {'publ.':>7} {'diff':>7}  "
              f"{'images':>6}  status / source")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        d1 = None if r["acc1"] is None or r["published_acc1"] is None else r["acc1"] - r["published_acc1"]
        d5 = None if r["acc5"] is None or r["published_acc5"] is None else r["acc5"] - r["published_acc5"]
        print(f"{r['model']:<22} {fmt(r['acc1']):>7} {fmt(r['published_acc1']):>7} {fmt(d1):>7}  "
              f"{fmt(r['acc5']):>7} {fmt(r['published_acc5']):>7} {fmt(d5):>7}  "
              f"{r['images'] if r['images'] is not None else '-':>6}  {r['status']} ({r['source']})")
    if skipped:
        print(f"\nskipped (no checkpoint file): {', '.join(skipped)}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.eval_released", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Arguments not listed here are passed on to main.py.")
    parser.add_argument("--ckpt-dir", metavar="DIR", help="folder with <name>.pth files (release names)")
    parser.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH",
                        help="one checkpoint for configs/NAME.yaml; repeatable")
    parser.add_argument("--data-path", help="ImageNet root with val/ (ImageFolder layout)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="evaluate only these config names")
    parser.add_argument("--nproc", type=int, default=1, help="processes per run (main.py --nproc-per-node; default 1)")
    parser.add_argument("--batch-size", type=int, help="images per process (main.py --batch-size)")
    parser.add_argument("--num-workers", type=int, help="loader workers per process")
    parser.add_argument("--output", default=os.path.join("output", "released"),
                        help="main.py output root (eval.json in OUTPUT/<name>/eval/%s/<time>/)" % TAG)
    parser.add_argument("--tol", type=float, default=0.1, help="accepted |measured - published| in %% (default 0.1)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows to this JSON file")
    parser.add_argument("--dry-run", action="store_true", help="print the main.py commands only")
    args, extra = parser.parse_known_args(argv)
    if not args.ckpt_dir and not args.ckpt:
        parser.error("give --ckpt-dir DIR or --ckpt name=path")
    if not args.data_path and not args.dry_run:
        parser.error("--data-path is required (ImageNet with a val/ folder)")
    args.data_path = args.data_path or "<imagenet>"
    args.output = os.path.abspath(args.output)

    names = known_names()
    if args.only:
        unknown = [n for n in args.only if paper.from_official_name(n) not in names]
        if unknown:
            parser.error(f"--only: unknown {', '.join(unknown)}; known: {', '.join(names)}")
        names = [n for n in names if n in {paper.from_official_name(o) for o in args.only}]
    found = find_checkpoints(args.ckpt_dir, args.ckpt, names)
    released = paper.released_configs()
    candidates = [n for n in names if n in released or n in found]
    skipped = [n for n in candidates if n not in found]
    rows = [run_one(n, found[n], args, extra) for n in names if n in found]
    if not args.dry_run:
        print_table(rows, skipped)
    elif skipped:
        print(f"skipped (no checkpoint file): {', '.join(skipped)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, skipped=skipped), f, indent=2)
    if not rows:
        print("no checkpoint found: nothing evaluated")
        return 0
    bad = [r["model"] for r in rows if not (r["status"].startswith("ok") or r["status"] == "dry-run")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
