"""Paper Fig. 7: accuracy-runtime curves of FLatten models and their softmax counterparts.

Reads one or more JSON files written by ``python -m scripts.benchmark`` (one panel
per file, e.g. one per machine as in the paper's CPU / 2080Ti / 3090 panels)::

    {"meta": {"hardware": ..., "device": ..., "batch": 64, "dtype": ..., "img_size": 224, ...},
     "results": [{"model": "flatten_swin_t", "impl": "ours", "family": "swin",
                  "attention": "flatten", "img_per_s": 812.3, "ms_per_batch": 78.8}, ...]}

Accuracy is ImageNet top-1 from paper Table 8 (:mod:`scripts.core.paper`),
looked up by the config name in ``model`` (a ``top1`` field in a result
overrides it); runtime is measured. One curve per (family, attention, impl):
FLatten solid, softmax dotted, timm's implementation dashed. Where a FLatten
curve reaches an accuracy that its softmax curve reaches only later, the
largest such speed-up is marked with a bracket, as in the paper. Point
labels (model sizes) are placed where they overlap neither each other nor a
marker.

Usage (from the repository root)::

    .venv/bin/python -m scripts.plot_fig7 bench_cpu.json bench_gpu.json --out fig7.png
    .venv/bin/python -m scripts.plot_fig7 bench.json --x batch --families swin pvt --out fig7.png

The paper's figure: ``python -m scripts.benchmark --models 'flatten_swin_[tsb]' 'swin_[tsb]' 'flatten_pvt_[sml]'
'pvt_[sml]' --batch 1 --json bench.json`` on each machine, then this script with
``--families swin pvt``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it from the repository root as: python -m scripts.plot_fig7 ...")

from scripts.core import cli, paper  # noqa: E402
from scripts.core.cli import ScriptError  # noqa: E402
from scripts.core.models import TIMM_BASELINES  # noqa: E402
from scripts.core.plotting import place_labels, pyplot, save  # noqa: E402

FAMILY_NAMES = {"deit": "DeiT", "pvt": "PVT", "pvt_v2": "PVTv2", "pvtv2": "PVTv2", "swin": "Swin", "cswin": "CSwin"}
FAMILY_STYLE = {  # colour and marker per family (the paper: Swin blue circles, PVT orange crosses)
    "swin": ("tab:blue", "o"), "pvt": ("tab:orange", "X"), "pvt_v2": ("tab:green", "s"),
    "cswin": ("tab:purple", "D"), "deit": ("tab:red", "^"),
}
# timm model names -> config names, for results that name timm's models.
TIMM_TO_CONFIG = {timm_name: config for config, timm_name in TIMM_BASELINES.items()}


def config_name(model: str) -> str:
    """'configs/baselines/swin_t.yaml' / 'baselines/swin_t' / 'swin_t' -> 'swin_t'."""
    name = os.path.splitext(os.path.basename(model))[0]
    return TIMM_TO_CONFIG.get(name) or paper.config_of(name)


def accuracy(result: dict) -> Optional[float]:
    if result.get("top1") is not None:
        return float(result["top1"])
    return paper.top1(config_name(str(result.get("model", ""))))


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


def draw_panel(ax, curves: Dict[tuple, list], title: str, xlabel: str) -> Tuple[list, list]:
    """Curves, speed-up brackets and axes of one panel; returns the point labels to place and the
    brackets' artists, which the labels must keep clear of."""
    labels, brackets = [], []
    for (fam, attention, impl), pts in sorted(curves.items(), key=lambda kv: (kv[0][0], kv[0][1] != "softmax", kv[0][2])):
        color, marker = FAMILY_STYLE.get(fam, ("tab:gray", "o"))
        style = "-" if attention == "flatten" else (":" if impl == "ours" else "--")
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, linestyle=style, marker=marker, color=color, markersize=7, linewidth=2,
                alpha=1.0 if impl == "ours" else 0.6, label=curve_label(fam, attention, impl))
        labels += [(x, y, lab, color) for x, y, lab, _ in pts]
    # speed-up brackets: FLatten (ours) against the softmax curve of the same family
    for fam in sorted({k[0] for k in curves}):
        flat = curves.get((fam, "flatten", "ours"))
        soft = curves.get((fam, "softmax", "ours")) or curves.get((fam, "softmax", "timm"))
        found = best_speedup(flat, soft) if flat and soft else None
        if found and found[0] > 1.0:
            s, acc, fast, slow = found
            y = acc + 0.1
            brackets.append(ax.annotate("", xy=(slow, y), xytext=(fast, y), arrowprops=dict(
                arrowstyle="|-|", color="tab:olive", linewidth=2, mutation_scale=4)))
            brackets.append(ax.annotate(f"{s:.1f}x", ((fast + slow) / 2, y), xytext=(0, 4), textcoords="offset points",
                                        ha="center", va="bottom", color="tab:olive", fontweight="bold",
                                        bbox=dict(boxstyle="square,pad=0.15", facecolor="white", edgecolor="none",
                                                  alpha=0.85)))
    ax.margins(x=0.12, y=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ImageNet top-1 accuracy (%)")
    ax.set_title(title)
    if curves:
        ax.legend(loc="lower right")
    return labels, brackets


def read_benchmark(path: str) -> dict:
    """A models-mode result of ``scripts.benchmark``, or a one-line error."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ScriptError(f"cannot read {path}: {cli.one_line(e)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ScriptError(f"{path} is not a scripts.benchmark result (no 'results' list)")
    mode = (data.get("meta") or {}).get("mode", "models")
    if mode != "models":
        raise ScriptError(f"{path} is a benchmark --{mode} result; Fig. 7 needs the models mode "
                          "(python -m scripts.benchmark --models ... --json FILE)")
    return data


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.plot_fig7", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="JSON", help="scripts.benchmark output(s); one panel each")
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

    panels = []
    for i, path in enumerate(args.inputs):
        data = read_benchmark(path)
        curves, skipped = collect(data, args.x, args.families, args.stat, args.img_size)
        title = args.titles[i] if args.titles and i < len(args.titles) else describe(data.get("meta", {}) or {})
        panels.append((curves, title))
        print(f"{path}: {title}")
        for (fam, attention, impl), pts in sorted(curves.items()):
            row = ", ".join(f"{lab} {rt:.3g} ms {acc:.1f}%" for rt, acc, lab, _ in pts)
            print(f"  {curve_label(fam, attention, impl):<26} {row}")
        for s in skipped:
            print(f"  skipped {s}")

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    xlabel = "Runtime (ms per image)" if args.x == "image" else "Runtime (ms per batch)"
    pending = [(ax, *draw_panel(ax, curves, title, xlabel)) for ax, (curves, title) in zip(axes[0], panels)]
    fig.tight_layout()
    for ax, labels, brackets in pending:          # after the layout: labels are placed in display coordinates
        place_labels(ax, labels, obstacles=brackets)
    print(f"wrote {save(fig, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
