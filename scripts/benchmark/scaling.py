"""Resolution scaling: FLatten-Swin-T against Swin-T and against softmax over the same global windows.

At each resolution (``--resolutions 224,384,512,768``) three or four models run:
FLatten-Swin-T with global focused attention in stages 1-2 (window = the stage
grid, cost linear in the tokens), our Swin-T (7x7 windows, or the window the
released rule picks), timm's Swin-T, and FLatten-Swin-T with its focused
attention replaced by softmax over the same global windows (cost quadratic in
the tokens). One resolution that a model cannot take is reported as an error
row; the others go on, and the table, the JSON and the plot are still written.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from scripts.core.cli import ScriptError
from scripts.core.plotting import plain_log_axis, pyplot, save
from scripts.core.timing import Candidate, prepare, step_ms

from .common import make_meta
from .model_speed import measure, with_compile
from .report import fmt_mem, print_results


class GlobalSoftmaxAttention(nn.Module):
    """Softmax attention over the same (global) windows as a focused stage: the quadratic counterpart.

    Reuses the focused block's ``qkv`` and ``proj``; exists only in this benchmark.
    """

    def __init__(self, focused: nn.Module):
        super().__init__()
        self.num_heads = focused.num_heads
        self.qkv, self.proj = focused.qkv, focused.proj

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


def tiling_window(grids: Sequence[int], preferred: int) -> int:
    """``preferred`` if it tiles every grid (a grid not larger than the window is global), else the
    smallest of 7, 8, 12, 16, ... that does."""
    def tiles(w):
        return all(g <= w or g % w == 0 for g in grids)
    for w in [preferred, 7, 8, 12, 16, 24, 32]:
        if tiles(w):
            return w
    raise ScriptError(f"no softmax window tiles the stage grids {list(grids)}")


def candidates(res: int, with_timm: bool, quadratic: bool) -> List[Candidate]:
    import timm
    grids = [res // 4 // 2 ** i for i in range(4)]
    rule = 7 if res // 4 <= 56 else 12                      # the released S window for window_size = res / 4

    def flatten_swin():
        return timm.create_model("flatten_swin_tiny_patch4_224", img_size=res, window_size=res // 4,
                                 softmax_window=tiling_window(grids[2:], rule))

    def swin_ours():
        win = tiling_window(grids, 7 if res <= 224 else rule)
        return timm.create_model("flatten_swin_tiny_patch4_224", img_size=res, attn_type="SSSS",
                                 window_size=win, softmax_window=win)

    def swin_global():
        model = flatten_swin()
        for stage in model.layers:
            for blk in stage.blocks:
                if blk.attn_type == "L":
                    blk.attn = GlobalSoftmaxAttention(blk.attn)
        return model

    cands = [Candidate("flatten_swin_t", "ours", "swin", "flatten", flatten_swin, res,
                       extra={"windows": "global L stages 1-2"}),
             Candidate("swin_t", "ours", "swin", "softmax", swin_ours, res, extra={"windows": "S windows"})]
    if with_timm:
        cands.append(Candidate("swin_t", "timm", "swin", "softmax",
                               lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=res), res,
                               extra={"windows": "7 (padded)", "timm_name": "swin_tiny_patch4_window7_224"}))
    if quadratic:
        cands.append(Candidate("swin_t_global_softmax", "ours", "swin", "softmax", swin_global, res,
                               extra={"windows": "global softmax in stages 1-2"}))
    return cands


def series(results: List[Dict[str, Any]]) -> Dict[Tuple[str, str], List[Dict[str, Any]]]:
    out: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in results:
        if not r.get("error"):
            out.setdefault((r["model"], r["impl"]), []).append(r)
    return out


def growth_exponent(rows: List[Dict[str, Any]], stat: str = "median") -> Optional[float]:
    """Slope of log(time per image) against log(tokens): ~1 linear, ~2 quadratic."""
    pts = [(math.log(r["tokens_stage1"]), math.log(step_ms(r, stat) / r["batch"])) for r in rows]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def print_table(results: List[Dict[str, Any]], stat: str = "median") -> None:
    res_list = sorted({r["img_size"] for r in results})
    print(f"resolution scaling: img/s ({'fastest round' if stat == 'best' else 'median over rounds'}) (peak MB)")
    print(f"{'model':<34}" + "".join(f"{r:>20}" for r in res_list) + f"{'time ~ N^k':>12}")
    names = list(dict.fromkeys((r["model"], r["impl"]) for r in results))
    ok = series(results)
    for name, impl in names:
        by_res = {r["img_size"]: r for r in results if (r["model"], r["impl"]) == (name, impl)}

        def cell(res: int) -> str:
            r = by_res.get(res)
            if r is None:
                return f"{'-':>20}"
            if r.get("error"):
                return f"{'error':>20}"
            ips = 1e3 * r["batch"] / step_ms(r, stat)
            return f"{ips:>10.3f} ({fmt_mem(r.get('peak_mem_mb')).strip():>7})"
        k = growth_exponent(ok.get((name, impl), []), stat)
        print(f"{name + ' (' + impl + ')':<34}{''.join(cell(r) for r in res_list)}"
              f"{(f'{k:.2f}' if k is not None else '-'):>12}")
    for r in results:
        if r.get("error"):
            print(f"  {r['model']} ({r['impl']}) at {r['img_size']}px: {r['error']}")


LABELS = {("flatten_swin_t", "ours"): "FLatten-Swin-T (global focused attention, stages 1-2)",
          ("swin_t", "ours"): "Swin-T, ours (windowed softmax)",
          ("swin_t", "timm"): "Swin-T, timm (windowed softmax)",
          ("swin_t_global_softmax", "ours"): "global softmax in stages 1-2 (quadratic)"}
STYLES = {("flatten_swin_t", "ours"): ("tab:blue", "-", "o"), ("swin_t", "ours"): ("tab:orange", ":", "s"),
          ("swin_t", "timm"): ("tab:green", "--", "^"), ("swin_t_global_softmax", "ours"): ("tab:red", "-.", "D")}


def plot(results: List[Dict[str, Any]], meta: Dict[str, Any], path: str, stat: str = "median") -> str:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    sizes = sorted({r["img_size"] for r in results})
    for key, rows in series(results).items():
        rows = sorted(rows, key=lambda r: r["img_size"])
        color, line, marker = STYLES.get(key, ("tab:gray", "-", "o"))
        k = growth_exponent(rows, stat)
        label = LABELS.get(key, f"{key[0]} ({key[1]})") + (f"; time ~ N^{k:.2f}" if k is not None else "")
        ax1.plot([r["img_size"] for r in rows], [1e3 * r["batch"] / step_ms(r, stat) for r in rows],
                 color=color, linestyle=line, marker=marker, label=label)
        mem = [(r["img_size"], r["peak_mem_mb"] - r.get("params_mb", 0.0)) for r in rows if r.get("peak_mem_mb")]
        if mem:
            ax2.plot([m[0] for m in mem], [m[1] for m in mem], color=color, linestyle=line, marker=marker,
                     label=LABELS.get(key, f"{key[0]} ({key[1]})"))
    speed = "images / s" + (" (fastest round)" if stat == "best" else " (median round)")
    memory = ("peak GPU memory above the weights (MB)" if meta["device"] == "cuda"
              else "peak memory of live tensors above the weights (MB)")
    for ax, ylabel in ((ax1, speed), (ax2, memory)):
        plain_log_axis(ax, "x", ticks=sizes)
        plain_log_axis(ax, "y")
        ax.set_xlabel("input resolution (px); stage-1 tokens N = (res / 4)^2")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    ax1.set_title("throughput")
    ax2.set_title("memory")
    ax1.legend(loc="lower left", fontsize=7)
    if meta["device"] != "cuda":
        ax2.text(0.02, 0.98, "CPU: tensors alive during one eager forward. The softmax in\n"
                 "stages 1-2 runs as one fused SDPA kernel that never stores\n"
                 "the N x N matrix, so it is charged only for q, k, v and its output;\n"
                 "the windowed and focused models keep their intermediate tensors.",
                 transform=ax2.transAxes, va="top", ha="left", fontsize=6.5, color="0.3")
    fig.suptitle(f"FLatten-Swin-T vs Swin-T across resolutions ({meta['hardware']}; batch {meta['batch']}; "
                 f"{meta['dtype']}; torch {meta['torch']})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save(fig, path)


def run(args, device: torch.device):
    try:
        resolutions = [int(r) for r in args.resolutions.split(",") if r.strip()]
    except ValueError:
        raise ScriptError(f"--resolutions expects integers separated by commas, got {args.resolutions!r}") from None
    bad = [r for r in resolutions if r % 32]
    if bad:
        raise ScriptError(f"--resolutions {bad}: Swin-T needs multiples of 32 (patch 4 x three 2x merges)")
    meta = make_meta(args, device, "resolutions")
    meta["img_size"] = resolutions
    meta["scaling_stat"] = args.stat
    results: List[Dict[str, Any]] = []
    for res in resolutions:
        cands = with_compile(candidates(res, "timm" in args.impl, not args.no_quadratic), args.compile,
                             args.eager_too)
        rows = measure(prepare(cands, device, args.batch, args.train, args.amp, args.channels_last), args, device)
        for r in rows:
            r["tokens_stage1"] = (res // 4) ** 2
        results += rows
        print_results(rows, meta)
        print()
    print_table(results, args.stat)
    if args.plot:
        print(f"wrote {plot(results, meta, args.plot, args.stat)}")
    return meta, results
