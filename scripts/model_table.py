"""Reproduce the model-size columns of paper Table 8: params (M) and FLOPs (G).

For every FLatten config in ``configs/*.yaml`` and its softmax baseline in
``configs/baselines/``, the model is built from the config (on the CPU, random
weights) and measured with :mod:`utils.flops` (fvcore, multiply-adds, one image
at the config's resolution), beside the paper's values (:mod:`scripts.core.paper`).

A value matches when it is within one unit of the last digit the paper prints
(6.19M vs "6.1" ok, 29.3M vs "29" ok). The exit status is 1 when a FLatten
model does not match; the baselines are reported only (Table 8 copies their
numbers from the original papers, measured with other tools).

Usage (from the repository root)::

    .venv/bin/python -m scripts.model_table
    .venv/bin/python -m scripts.model_table --only flatten_swin_t --only swin_t --json table.json
    .venv/bin/python -m scripts.model_table --ablations            # Tables 3-7 (configs/ablations/)
    .venv/bin/python -m scripts.model_table --ablations --only t5   # one table

With ``--ablations`` every row of paper Tables 3-7 is built from its config
(``configs/ablations/``, or the main / baseline config for the "Ours" and
softmax rows) and printed beside the paper's params, FLOPs and accuracy
(:data:`scripts.core.paper.ABLATIONS`). These rows are reported only (exit status 0 unless a
config fails to build): Table 4 prints 5.7M for the variants without DWC,
which matches no way of counting the positional encoding they keep.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Dict, List, Optional

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it from the repository root as: python -m scripts.model_table ...")

from scripts.core import cli, paper  # noqa: E402
from scripts.core import models as zoo  # noqa: E402
from scripts.core.cli import ScriptError  # noqa: E402
from scripts.core.paper import ABLATION_TITLES, ABLATIONS, AblationRow, matches  # noqa: E402


def table_configs() -> List[str]:
    """Config names in Table 8 order: each FLatten config after its baseline, where present."""
    present = set(zoo.config_files())
    names = [n for n in paper.table8() if n in present]
    extra = sorted(n for n in present if n.startswith("flatten_") and n not in paper.table8())
    return names + extra


def measure(name: str) -> dict:
    """Params / FLOPs of the model of config ``name``, with the paper's values and the verdict."""
    from utils.flops import count_flops, count_params

    cfg = zoo.load(name)
    row8 = paper.table8().get(name)
    row = dict(config=name, paper_model=row8.model if row8 else "", model=cfg.MODEL.NAME,
               attn_type=cfg.MODEL.LA.ATTN_TYPE, resolution=cfg.DATA.IMG_SIZE,
               params_m=None, gflops=None, paper_params_m=None, paper_gflops=None,
               params_ok=None, flops_ok=None, error="")
    if row8:
        row.update(paper_params_m=float(row8.params), paper_gflops=float(row8.flops))
    try:
        model = zoo.build(cfg)
        row["params_m"] = count_params(model)
        row["gflops"] = count_flops(model, cfg.DATA.IMG_SIZE)
    except Exception as e:  # reported in the table, not fatal for the other rows
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    if row8:
        row["params_ok"] = matches(row["params_m"], row8.params)
        row["flops_ok"] = matches(row["gflops"], row8.flops)
    return row


def select(names: List[str], only: Optional[List[str]]) -> List[str]:
    if not only:
        return names
    chosen = []
    for pattern in only:
        exact = [n for n in names if n == pattern]
        hits = exact or [n for n in names if pattern in n]
        if not hits:
            raise ScriptError(f"--only {pattern}: no config matches; known: {', '.join(names)}")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def verdict(ok: Optional[bool]) -> str:
    """The check column: blank when the paper gives no value."""
    return "" if ok is None else ("ok" if ok else "DIFF")


def format_row(r: dict) -> str:
    if r["error"]:
        return f"{r['config']:<20} {r['resolution']:>4}  error: {r['error']}"
    pp = paper.table8().get(r["config"])
    return (f"{r['config']:<20} {r['resolution']:>4} {r['attn_type']:>5} "
            f"{r['params_m']:>8.2f} {pp.params if pp else '-':>6} {verdict(r['params_ok']):>4}  "
            f"{r['gflops']:>7.2f} {pp.flops if pp else '-':>6} {verdict(r['flops_ok']):>4}  "
            f"{r['paper_model']}")


def measure_ablation(row: AblationRow, cache: Optional[Dict[str, tuple]] = None) -> dict:
    """Params / FLOPs of one Table 3-7 row, with the paper's values and the verdicts."""
    from utils.flops import count_flops, count_params

    out = dict(table=row.table, row=row.row, config=row.config, params_m=None, gflops=None,
               paper_params_m=row.params, paper_gflops=row.flops, paper_top1=row.acc,
               params_ok=None, flops_ok=None, kind="", attn_type="", error="")
    cache = {} if cache is None else cache
    try:
        if row.config not in cache:
            cfg = zoo.load(zoo.config_path(row.config))
            model = zoo.build(cfg)
            cache[row.config] = (count_params(model), count_flops(model, cfg.DATA.IMG_SIZE),
                                 cfg.MODEL.LA.KIND, cfg.MODEL.LA.ATTN_TYPE)
        out["params_m"], out["gflops"], out["kind"], out["attn_type"] = cache[row.config]
    except Exception as e:  # reported in the table, not fatal for the other rows
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    if row.params:
        out["params_ok"] = matches(out["params_m"], row.params)
    if row.flops:
        out["flops_ok"] = matches(out["gflops"], row.flops)
    return out


def format_ablation(r: dict) -> str:
    if r["error"]:
        return f"{r['config']:<34} error: {r['error']}"
    return (f"{r['config']:<34} {r['params_m']:>7.2f} {r['paper_params_m'] or '-':>5} {verdict(r['params_ok']):>4}  "
            f"{r['gflops']:>6.2f} {r['paper_gflops'] or '-':>5} {verdict(r['flops_ok']):>4}  "
            f"{r['paper_top1'] or '-':>6}  {r['row']}")


def run_ablations(only: Optional[List[str]], json_path: Optional[str]) -> int:
    """Print paper Tables 3-7 beside the measured params / FLOPs of their configs."""
    def wanted(r: AblationRow, pattern: str) -> bool:
        table = pattern.lower().removeprefix("table").removeprefix("t")
        return table in (r.table, r.table[0]) or pattern in r.config

    rows = [r for r in ABLATIONS if not only or any(wanted(r, p) for p in only)]
    if not rows:
        raise ScriptError(f"--only {' '.join(only or [])}: no ablation row matches")
    header = (f"{'config':<34} {'params':>7} {'paper':>5} {'':>4}  {'GFLOPs':>6} {'paper':>5} {'':>4}  "
              f"{'top-1':>6}  paper row")
    out, cache, table = [], {}, None
    for r in rows:
        if r.table != table:
            table = r.table
            print(f"\n{ABLATION_TITLES[table]}\n{header}\n{'-' * len(header)}")
        res = measure_ablation(r, cache)
        out.append(res)
        print(format_ablation(res), flush=True)
    errors = [r["config"] for r in out if r["error"]]
    checked = [r for r in out if r["params_ok"] is not None or r["flops_ok"] is not None]
    agree = [r for r in checked if r["params_ok"] is not False and r["flops_ok"] is not False]
    print(f"\nrows whose params and FLOPs agree with the paper (one printed digit): {len(agree)}/{len(checked)}"
          + (f"; failed to build: {', '.join(errors)}" if errors else ""))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2)
    return 1 if errors else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.model_table", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="config name (exact, else substring: 'swin' = every Swin row); repeatable")
    parser.add_argument("--json", metavar="PATH", help="also write the rows to this JSON file")
    parser.add_argument("--ablations", action="store_true",
                        help="paper Tables 3-7 (configs/ablations/) instead of Table 8; --only then takes a "
                             "table ('t3', '5') or a config substring")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.ablations:
        return run_ablations(args.only, args.json)

    names = select(table_configs(), args.only)
    header = (f"{'config':<20} {'res':>4} {'attn':>5} {'params':>8} {'paper':>6} {'':>4}  "
              f"{'GFLOPs':>7} {'paper':>6} {'':>4}  Table 8 model")
    print(header)
    print("-" * len(header))
    rows = []
    for name in names:
        t0 = time.time()
        row = measure(name)
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(format_row(row), flush=True)

    flatten = [r for r in rows if r["config"].startswith("flatten_")]
    bad = [r["config"] for r in flatten if r["error"] or r["params_ok"] is False or r["flops_ok"] is False]
    print(f"\nFLatten models matching Table 8 (params and FLOPs within one printed digit): "
          f"{len(flatten) - len(bad)}/{len(flatten)}" + (f"; differ: {', '.join(bad)}" if bad else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
