"""Paper Fig. 7: accuracy-runtime curves of FLatten models and their softmax counterparts.

Reads one or more JSON files written by ``scripts/benchmark.py`` (one panel
per file, e.g. one per machine as in the paper's CPU / 2080Ti / 3090 panels)::

    {"meta": {"hardware": ..., "device": ..., "batch": 64, "dtype": ..., "img_size": 224, ...},
     "results": [{"model": "flatten_swin_t", "impl": "ours", "family": "swin",
                  "attention": "flatten", "img_per_s": 812.3, "ms_per_batch": 78.8}, ...]}

Accuracy is ImageNet top-1 from paper Table 8 (``scripts/model_table.TABLE8_TOP1``),
looked up by the config name in ``model`` (a ``top1`` field in a result
overrides it); runtime is measured. One curve per (family, attention, impl):
FLatten solid, softmax dotted, timm's implementation dashed. Where a FLatten
curve reaches an accuracy that its softmax curve reaches only later, the
largest such speed-up is marked with a bracket, as in the paper.

Usage (from the repository root)::

    .venv/bin/python scripts/plot_fig7.py bench_cpu.json bench_gpu.json --out fig7.png
    .venv/bin/python scripts/plot_fig7.py bench.json --x batch --families swin pvt --out fig7.png

The paper's figure: ``benchmark.py --models 'flatten_swin_[tsb]' 'swin_[tsb]' 'flatten_pvt_[sml]'
'pvt_[sml]' --batch 1 --json bench.json`` on each machine, then this script with
``--families swin pvt``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from models.released import TABLE8 as _TABLE8  # noqa: E402
from scripts.model_table import TABLE8_TOP1  # noqa: E402

FAMILY_NAMES = {"deit": "DeiT", "pvt": "PVT", "pvt_v2": "PVTv2", "pvtv2": "PVTv2", "swin": "Swin", "cswin": "CSwin"}
FAMILY_STYLE = {  # colour and marker per family (the paper: Swin blue circles, PVT orange crosses)
    "swin": ("tab:blue", "o"), "pvt": ("tab:orange", "X"), "pvt_v2": ("tab:green", "s"),
    "cswin": ("tab:purple", "D"), "deit": ("tab:red", "^"),
}
# timm model names -> config names, for results that name timm's models.
TIMM_TO_CONFIG = {
    "deit_tiny_patch16_224": "deit_t",
    "swin_tiny_patch4_window7_224": "swin_t", "swin_small_patch4_window7_224": "swin_s",
    "swin_base_patch4_window7_224": "swin_b", "swin_base_patch4_window12_384": "swin_b_384",
    **{f"pvt_v2_b{i}": f"pvt_v2_b{i}" for i in range(5)},
}
# ... and this code base's registered names and aliases (models/released.py).
TIMM_TO_CONFIG.update({n: r.config for r in _TABLE8 for n in (r.timm_name, r.alias) if n})


def config_name(model: str) -> str:
    """'configs/baselines/swin_t.yaml' / 'baselines/swin_t' / 'swin_t' -> 'swin_t'."""
    name = os.path.splitext(os.path.basename(model))[0]
    return TIMM_TO_CONFIG.get(name, name)


def accuracy(result: dict) -> Optional[float]:
    if result.get("top1") is not None:
        return float(result["top1"])
    return TABLE8_TOP1.get(config_name(str(result.get("model", ""))))


def family_key(result: dict) -> str:
    fam = str(result.get("family") or "").lower()
    if not fam:  # derive from the config name
        fam = re.sub(r"_(t|s|m|l|b|b\d)(_384)?$", "", config_name(str(result.get("model", ""))))
    return fam.removeprefix("flatten_").replace("-", "_")


def size_label(model: str) -> str:
    """Short point label: 'flatten_swin_b_384' -> 'B-384', 'pvt_v2_b2' -> 'B2'."""
    m = re.search(r"_(t|s|m|l|b\d?)(_384)?$", config_name(model))
    return (m.group(1).upper() + ("-384" if m.group(2) else "")) if m else config_name(model)


def native_size(model: str) -> int:
    """Resolution of a config's Table 8 row: 384 for the *_384 models, else 224."""
    return 384 if config_name(model).endswith("_384") else 224


def runtime_ms(result: dict, meta: dict, per: str, stat: str = "median") -> Optional[float]:
    """Runtime in ms per image (``per='image'``) or per batch; ``stat='best'``: the fastest round."""
    batch = result.get("batch") or meta.get("batch")
    if stat == "best":
        ms_batch, ips = result.get("ms_min"), result.get("img_per_s_best")
    else:
        ms_batch, ips = result.get("ms_per_batch"), result.get("img_per_s")
    if per == "batch":
        if ms_batch is not None:
            return float(ms_batch)
        return 1000.0 * batch / ips if ips and batch else None
    if ips:
        return 1000.0 / float(ips)
    return float(ms_batch) / batch if ms_batch is not None and batch else None


def curve_label(fam: str, attention: str, impl: str) -> str:
    name = FAMILY_NAMES.get(fam, fam)
    if attention == "flatten":
        return f"FLatten-{name} (ours)" if impl == "ours" else f"FLatten-{name} ({impl})"
    return name if impl == "ours" else f"{name} ({impl})"


def describe(meta: dict) -> str:
    """One-line panel title from the benchmark's meta block."""
    def text(v):
        if isinstance(v, dict):
            for k in ("gpu", "name", "cpu", "device"):
                if v.get(k):
                    return str(v[k])
            return ", ".join(f"{k}={x}" for k, x in v.items() if isinstance(x, (str, int, float)))[:60]
        return str(v) if v is not None else ""
    hw = text(meta.get("hardware")) or text(meta.get("device")) or "unknown device"
    extra = [f"batch {meta['batch']}" if meta.get("batch") else "", text(meta.get("dtype")),
             f"{meta['img_size']}px" if meta.get("img_size") else ""]
    return hw + (" (" + ", ".join(e for e in extra if e) + ")" if any(extra) else "")


def collect(data: dict, per: str, families: Optional[List[str]], stat: str = "median",
            img_size: Optional[int] = None) -> Tuple[Dict[tuple, list], List[str]]:
    """Curves {(family, attention, impl): [(runtime, acc, label, model), ...]} and skipped models.

    Only rows at the model's own resolution (224, or 384 for *_384) are used,
    or at ``img_size`` when given.
    """
    meta = data.get("meta", {}) or {}
    curves: Dict[tuple, list] = defaultdict(list)
    skipped = []
    for r in data.get("results", []):
        model = str(r.get("model", "?"))
        if r.get("error"):
            skipped.append(f"{model} ({r.get('impl', '?')}): error in benchmark")
            continue
        size = r.get("img_size") or meta.get("img_size")
        if size and size != (img_size or native_size(model)):
            skipped.append(f"{model} ({r.get('impl', '?')}): measured at {size}px")
            continue
        acc, rt = accuracy(r), runtime_ms(r, meta, per, stat)
        if acc is None or rt is None:
            skipped.append(f"{model} ({r.get('impl', '?')}): " + ("no Table 8 accuracy" if acc is None else "no runtime"))
            continue
        fam = family_key(r)
        if families and fam not in families:
            continue
        attention = str(r.get("attention") or ("flatten" if config_name(model).startswith("flatten_") else "softmax"))
        curves[(fam, attention, str(r.get("impl", "ours")))].append((rt, acc, size_label(model), model))
    for pts in curves.values():
        pts.sort()
    return curves, skipped


def best_speedup(flatten: list, softmax: list) -> Optional[Tuple[float, float, float, float]]:
    """Largest runtime ratio at equal or better accuracy: (speed-up, acc, fast runtime, slow runtime)."""
    best = None
    for rt_f, acc_f, *_ in flatten:
        slower = [rt_s for rt_s, acc_s, *_ in softmax if acc_s <= acc_f + 1e-9 and rt_s > rt_f]
        if slower:
            s = max(slower) / rt_f
            if best is None or s > best[0]:
                best = (s, acc_f, rt_f, max(slower))
    return best


def draw_panel(ax, curves: Dict[tuple, list], title: str, xlabel: str) -> None:
    for (fam, attention, impl), pts in sorted(curves.items(), key=lambda kv: (kv[0][0], kv[0][1] != "softmax", kv[0][2])):
        color, marker = FAMILY_STYLE.get(fam, ("tab:gray", "o"))
        style = "-" if attention == "flatten" else (":" if impl == "ours" else "--")
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, linestyle=style, marker=marker, color=color, markersize=8, linewidth=2,
                alpha=1.0 if impl == "ours" else 0.6, label=curve_label(fam, attention, impl))
        for x, y, lab, _ in pts:
            ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, -12), fontsize=7, color=color)
    # speed-up brackets: FLatten (ours) against the softmax curve of the same family
    for fam in sorted({k[0] for k in curves}):
        flat = curves.get((fam, "flatten", "ours"))
        soft = curves.get((fam, "softmax", "ours")) or curves.get((fam, "softmax", "timm"))
        found = best_speedup(flat, soft) if flat and soft else None
        if found and found[0] > 1.0:
            s, acc, fast, slow = found
            y = acc + 0.1
            ax.annotate("", xy=(slow, y), xytext=(fast, y),
                        arrowprops=dict(arrowstyle="|-|", color="tab:olive", linewidth=2, mutation_scale=4))
            ax.text((fast + slow) / 2, y + 0.05, f"{s:.1f}x", ha="center", va="bottom", color="tab:olive",
                    fontweight="bold")
    ax.margins(x=0.08, y=0.12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8, loc="lower right")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="JSON", help="benchmark.py output(s); one panel each")
    parser.add_argument("--out", default="fig7.png", help="PNG to write (default fig7.png)")
    parser.add_argument("--x", choices=["image", "batch"], default="image",
                        help="runtime axis: ms per image (default) or ms per batch")
    parser.add_argument("--families", nargs="+", metavar="FAMILY",
                        help="only these families (e.g. swin pvt, the paper's two)")
    parser.add_argument("--stat", choices=["median", "best"], default="median",
                        help="runtime: median over rounds (default) or the fastest round (shared machines)")
    parser.add_argument("--img-size", type=int,
                        help="use rows measured at this resolution (default: each model's own, 224 / 384)")
    parser.add_argument("--titles", nargs="+", help="panel titles (default: hardware from each file's meta)")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for i, path in enumerate(args.inputs):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            print(f"error: cannot read {path}: {e}", file=sys.stderr)
            return 2
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            print(f"error: {path} is not a benchmark.py result (no 'results' list)", file=sys.stderr)
            return 2
        mode = (data.get("meta") or {}).get("mode", "models")
        if mode != "models":
            print(f"error: {path} is a benchmark.py --{mode} result; Fig. 7 needs the models mode "
                  "(benchmark.py --models ... --json FILE)", file=sys.stderr)
            return 2
        curves, skipped = collect(data, args.x, args.families, args.stat, args.img_size)
        title = args.titles[i] if args.titles and i < len(args.titles) else describe(data.get("meta", {}) or {})
        panels.append((curves, title))
        print(f"{path}: {title}")
        for (fam, attention, impl), pts in sorted(curves.items()):
            row = ", ".join(f"{lab} {rt:.3g} ms {acc:.1f}%" for rt, acc, lab, _ in pts)
            print(f"  {curve_label(fam, attention, impl):<26} {row}")
        for s in skipped:
            print(f"  skipped {s}")

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    xlabel = "Runtime (ms per image)" if args.x == "image" else "Runtime (ms per batch)"
    for ax, (curves, title) in zip(axes[0], panels):
        draw_panel(ax, curves, title, xlabel)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=150)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
