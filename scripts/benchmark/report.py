"""Printing and saving benchmark results."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from scripts.core.environment import loadavg, tag


def fmt_mem(v: Optional[float]) -> str:
    return f"{v:9.0f}" if isinstance(v, (int, float)) else f"{'-':>9}"


def mode(r: Dict[str, Any]) -> str:
    return "compiled" if r.get("compiled") else "eager"


def print_results(results: List[Dict[str, Any]], meta: Dict[str, Any]) -> None:
    print(f"{'model':<22} {'impl':<9} {'mode':<9} {'attention':<9} {'img/s':>9} {'ms/batch':>10} {'(min)':>9} "
          f"{'peak MB':>9}  context")
    for r in results:
        if r.get("error"):
            print(f"{r['model']:<22} {r['impl']:<9} {mode(r):<9} {r['attention']:<9} ERROR {r['error']}")
            continue
        print(f"{r['model']:<22} {r['impl']:<9} {mode(r):<9} {r['attention']:<9} {r['img_per_s']:9.2f} "
              f"{r['ms_per_batch']:10.1f} {r['ms_min']:9.1f} {fmt_mem(r.get('peak_mem_mb'))}  "
              f"{tag(meta, r.get('img_size'), r.get('compiled'))}")
    lines = speedups(results)
    if lines:
        print("\nspeed-ups (img/s ratio of medians; of best rounds in brackets):")
        for line in lines:
            print("  " + line)


def speedups(results: List[Dict[str, Any]]) -> List[str]:
    """Our FLatten models against the official ones, our softmax baselines and timm's, every mode pair."""
    ok = [r for r in results if not r.get("error") and r.get("img_per_s")]
    lines = []
    for r in ok:
        if r["impl"] != "ours" or not r["model"].startswith("flatten_"):
            continue
        base = r["model"].removeprefix("flatten_")
        for o in ok:
            if o is r:
                continue
            if o["model"] == r["model"] and o["impl"] == "official":
                label = f"official {o['model']}"
            elif o["model"] == base and o["impl"] in ("ours", "timm"):
                label = f"{'our' if o['impl'] == 'ours' else 'timm'} softmax {base}"
            elif o["model"] == r["model"] and o["impl"] == "ours":
                label = f"ours {o['model']}"
            else:
                continue
            lines.append(f"ours {r['model']} ({mode(r)}) vs {label} ({mode(o)}): "
                         f"{r['img_per_s'] / o['img_per_s']:.2f}x ({r['img_per_s_best'] / o['img_per_s_best']:.2f}x)")
    return lines


def write_json(path: Optional[str], meta: Dict[str, Any], results: List[Dict[str, Any]]) -> None:
    if not path:
        return
    meta = dict(meta, load_avg_end=loadavg())
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(f"wrote {path}")
