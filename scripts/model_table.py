"""Reproduce the model-size columns of paper Table 8: params (M) and FLOPs (G).

For every FLatten config in ``configs/*.yaml`` and its softmax baseline in
``configs/baselines/``, the model is built from the config (on the CPU, random
weights) and measured with :mod:`utils.flops` (fvcore, multiply-adds, one image
at the config's resolution). The paper's values are in :data:`TABLE8`.

A value matches when it is within one unit of the last digit the paper prints
(6.19M vs "6.1" ok, 29.3M vs "29" ok). The exit status is 1 when a FLatten
model does not match; the baselines are reported only (Table 8 copies their
numbers from the original papers, measured with other tools).

Usage (from the repository root)::

    .venv/bin/python scripts/model_table.py
    .venv/bin/python scripts/model_table.py --only flatten_swin_t --only swin_t --json table.json
    .venv/bin/python scripts/model_table.py --ablations            # Tables 3-7 (configs/ablations/)
    .venv/bin/python scripts/model_table.py --ablations --only t5   # one table

With ``--ablations`` every row of paper Tables 3-7 is built from its config
(``configs/ablations/``, or the main / baseline config for the "Ours" and
softmax rows) and printed beside the paper's params, FLOPs and accuracy
(:data:`ABLATIONS`). These rows are reported only (exit status 0 unless a
config fails to build): Table 4 prints 5.7M for the variants without DWC,
which matches no way of counting the positional encoding they keep.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from typing import Dict, List, NamedTuple, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CONFIG_DIR = os.path.join(ROOT, "configs")

from models.released import TABLE8 as _ROWS, table8_top1  # noqa: E402


class PaperRow(NamedTuple):
    model: str        # name in Table 8
    resolution: int
    params: str       # as printed (millions), the number of digits sets the tolerance
    flops: str        # as printed (GFLOPs)


# Paper Table 8 (appendix), keyed by config name (configs/<name>.yaml, configs/baselines/<name>.yaml);
# the values come from the one table of the paper's models, models/released.py.
TABLE8: Dict[str, PaperRow] = {r.config: PaperRow(r.paper_name, r.resolution, r.params, r.flops) for r in _ROWS}

# Paper Table 8 top-1 (%), keyed like TABLE8 (used by scripts/plot_fig7.py and scripts/eval_released.py).
TABLE8_TOP1: Dict[str, float] = table8_top1()


class AblationRow(NamedTuple):
    table: str                # paper table ("3a", "3b", "4", ..., "7")
    row: str                  # the row as the paper labels it
    config: str               # config path relative to configs/, without .yaml
    params: Optional[str]     # paper #Param (M) as printed; None = not given / not legible
    flops: Optional[str]      # paper FLOPs (G) as printed
    acc: Optional[str]        # paper top-1 (%) as printed


ABLATION_TITLES: Dict[str, str] = {
    "3a": "Table 3(a): other linear attentions, DeiT-T setting",
    "3b": "Table 3(b): other linear attentions, Swin-T setting",
    "4": "Table 4: focused function and DWC, DeiT-T",
    "5": "Table 5: focusing factor p, FLatten-Swin-T",
    "6": "Table 6: window size of focused attention, FLatten-Swin-T",
    "7": "Table 7: stages with focused attention, Swin-T",
}

# Paper Tables 3-7. In our copy of the paper (shared/paper) the last two rows of
# Table 3(b) are not legible: their values are None rather than guessed.
ABLATIONS: List[AblationRow] = [
    AblationRow("3a", "Hydra Attn", "ablations/t3_deit_t_hydra", "5.7", "1.1", "68.3"),
    AblationRow("3a", "Efficient Attn", "ablations/t3_deit_t_efficient", "5.7", "1.1", "70.2"),
    AblationRow("3a", "Linear Angular Attn", "ablations/t3_deit_t_angular", "5.7", "1.1", "70.8"),
    AblationRow("3a", "Enhanced Linear Attn", "ablations/t3_deit_t_enhanced", "5.8", "1.1", "72.9"),
    AblationRow("3a", "Ours", "flatten_deit_t", "6.1", "1.1", "74.1"),
    AblationRow("3b", "Hydra Attn", "ablations/t3_swin_t_hydra", "29", "4.5", "80.7"),
    AblationRow("3b", "Efficient Attn", "ablations/t3_swin_t_efficient", "29", "4.5", "81.0"),
    AblationRow("3b", "Linear Angular Attn", "ablations/t3_swin_t_angular", None, None, None),
    AblationRow("3b", "Enhanced Linear Attn", "ablations/t3_swin_t_enhanced", None, None, None),
    AblationRow("3b", "Ours", "flatten_swin_t", "29", "4.5", "82.1"),
    AblationRow("4", "Vanilla Linear Attention", "ablations/t4_deit_t_linear", "5.7", "1.1", "70.5"),
    AblationRow("4", "+ Focused Function", "ablations/t4_deit_t_linear_fp", "5.7", "1.1", "71.8"),
    AblationRow("4", "+ DWC", "ablations/t4_deit_t_linear_fp_dwc", "6.1", "1.1", "74.1"),
    AblationRow("4", "DeiT-T", "baselines/deit_t", "5.7", "1.2", "72.2"),
    AblationRow("5", "p = 2", "ablations/t5_swin_t_p2", None, None, "82.03"),
    AblationRow("5", "p = 3", "ablations/t5_swin_t_p3", None, None, "82.11"),
    AblationRow("5", "p = 4", "ablations/t5_swin_t_p4", None, None, "81.94"),
    AblationRow("5", "p = 8", "ablations/t5_swin_t_p8", None, None, "81.99"),
    AblationRow("5", "p = 32", "ablations/t5_swin_t_p32", None, None, "81.88"),
    AblationRow("6", "window 7^2", "ablations/t6_swin_t_win7", "29", "4.5", "81.6"),
    AblationRow("6", "window 14^2", "ablations/t6_swin_t_win14", "29", "4.5", "81.8"),
    AblationRow("6", "window 28^2", "ablations/t6_swin_t_win28", "29", "4.5", "81.9"),
    AblationRow("6", "window 56^2", "ablations/t6_swin_t_win56", "29", "4.5", "82.1"),
    AblationRow("6", "Swin-T (window 7^2)", "baselines/swin_t", "29", "4.5", "81.3"),
    AblationRow("7", "stage 1", "ablations/t7_swin_t_lsss", "29", "4.5", "81.7"),
    AblationRow("7", "stages 1-2", "ablations/t7_swin_t_llss", "29", "4.5", "82.1"),
    AblationRow("7", "stages 1-3", "ablations/t7_swin_t_llls", "30", "4.5", "82.0"),
    AblationRow("7", "stages 1-4", "ablations/t7_swin_t_llll", "30", "4.5", "81.9"),
    AblationRow("7", "Swin-T", "baselines/swin_t", "29", "4.5", "81.3"),
]


def tolerance(printed: str) -> float:
    """One unit of the last printed digit: '6.1' -> 0.1, '29' -> 1."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return 10.0 ** -decimals


def matches(measured: float, printed: str) -> bool:
    return abs(measured - float(printed)) <= tolerance(printed) + 1e-9


def config_path(name: str) -> str:
    """configs/<name>.yaml for FLatten models, configs/baselines/<name>.yaml otherwise."""
    sub = "" if name.startswith("flatten_") else "baselines"
    return os.path.join(CONFIG_DIR, sub, name + ".yaml")


def table_configs() -> List[str]:
    """Config names in Table 8 order: each FLatten config after its baseline, where present."""
    present = {os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))
               + glob.glob(os.path.join(CONFIG_DIR, "baselines", "*.yaml"))}
    names = [n for n in TABLE8 if n in present]
    extra = sorted(n for n in present if n.startswith("flatten_") and n not in TABLE8)
    return names + extra


def measure(name: str) -> dict:
    """Params / FLOPs of the model of config ``name``, with the paper's values and the verdict."""
    import config as config_lib
    import models
    from utils.flops import count_flops, count_params

    cfg = config_lib.load_config(config_path(name))
    paper = TABLE8.get(name)
    row = dict(config=name, paper_model=paper.model if paper else "", model=cfg.MODEL.NAME,
               attn_type=cfg.MODEL.LA.ATTN_TYPE, resolution=cfg.DATA.IMG_SIZE,
               params_m=None, gflops=None, paper_params_m=None, paper_gflops=None,
               params_ok=None, flops_ok=None, error="")
    if paper:
        row.update(paper_params_m=float(paper.params), paper_gflops=float(paper.flops))
    try:
        model = models.build_model(cfg)
        row["params_m"] = count_params(model)
        row["gflops"] = count_flops(model, cfg.DATA.IMG_SIZE)
    except Exception as e:  # reported in the table, not fatal for the other rows
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    if paper:
        row["params_ok"] = matches(row["params_m"], paper.params)
        row["flops_ok"] = matches(row["gflops"], paper.flops)
    return row


def select(names: List[str], only: Optional[List[str]]) -> List[str]:
    if not only:
        return names
    chosen = []
    for pattern in only:
        exact = [n for n in names if n == pattern]
        hits = exact or [n for n in names if pattern in n]
        if not hits:
            raise SystemExit(f"--only {pattern}: no config matches; known: {', '.join(names)}")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def verdict(ok: Optional[bool]) -> str:
    """The check column: blank when the paper gives no value."""
    return "" if ok is None else ("ok" if ok else "DIFF")


def format_row(r: dict) -> str:
    if r["error"]:
        return f"{r['config']:<20} {r['resolution']:>4}  error: {r['error']}"
    pp = TABLE8.get(r["config"])
    return (f"{r['config']:<20} {r['resolution']:>4} {r['attn_type']:>5} "
            f"{r['params_m']:>8.2f} {pp.params if pp else '-':>6} {verdict(r['params_ok']):>4}  "
            f"{r['gflops']:>7.2f} {pp.flops if pp else '-':>6} {verdict(r['flops_ok']):>4}  "
            f"{r['paper_model']}")


def measure_ablation(row: AblationRow, cache: Optional[Dict[str, tuple]] = None) -> dict:
    """Params / FLOPs of one Table 3-7 row, with the paper's values and the verdicts."""
    import config as config_lib
    import models
    from utils.flops import count_flops, count_params

    out = dict(table=row.table, row=row.row, config=row.config, params_m=None, gflops=None,
               paper_params_m=row.params, paper_gflops=row.flops, paper_top1=row.acc,
               params_ok=None, flops_ok=None, kind="", attn_type="", error="")
    cache = {} if cache is None else cache
    try:
        if row.config not in cache:
            cfg = config_lib.load_config(os.path.join(CONFIG_DIR, row.config + ".yaml"))
            model = models.build_model(cfg)
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
        raise SystemExit(f"--only {' '.join(only or [])}: no ablation row matches")
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
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
    sys.exit(main())
