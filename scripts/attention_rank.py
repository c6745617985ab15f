"""Paper Fig. 5: rank of the equivalent attention matrix per block, linear attention alone vs + DWC.

For every focused attention module (or the ``--blocks`` chosen), runs the
model on one image, records its q and k, and computes per head

* ``A``: the N x N weights the linear attention applies (focusing function
  included, as in Fig. 5 (b)); its rank is at most the head dim d;
* ``A + D_c``: the equivalent attention once the depthwise conv is added, with
  ``D_c`` the conv of channel c written as an N x N matrix (Fig. 5 (c)); one
  matrix per value channel, ``--channels`` of them are checked per head.

Ranks are computed in float64 on the grid tokens (DeiT's class token is left
out, as in the paper's 196 x 196 maps). Attentions on more than
``--max-tokens`` tokens are skipped (an SVD of a 3136 x 3136 matrix per head
and channel is slow); key-reduced attention (PVT sr > 1) has no square matrix
and is reported as such. With random weights the result already shows the
effect: rank(A) <= d, rank(A + D) close to N.

``--plot PNG`` draws Fig. 5 for one block (``--plot-block``, default the first
chosen) and head (``--head``): the N x N maps of softmax attention on the same
q, k, of the linear attention A, and of A + D_c for value channel 0, each
titled with its rank; a map from random weights is marked as such.

Usage (from the repository root)::

    .venv/bin/python -m scripts.attention_rank --cfg configs/flatten_deit_t.yaml --resume deit.pth --image img.jpg
    .venv/bin/python -m scripts.attention_rank --cfg configs/flatten_deit_t.yaml --blocks 2 --json rank.json
    .venv/bin/python -m scripts.attention_rank --cfg configs/flatten_deit_t.yaml --blocks 2 --plot fig5.png
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from typing import List, Optional, Tuple

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it from the repository root as: python -m scripts.attention_rank ...")

import torch  # noqa: E402

from scripts.core import cli  # noqa: E402
from scripts.core.attention import (add_model_arguments, build_focused, capture_attend, dwc_channel,  # noqa: E402
                                    dwc_matrix, global_weights, load_image, softmax_weights)
from scripts.core.cli import ScriptError  # noqa: E402
from scripts.core.plotting import image_axes, pyplot, save  # noqa: E402


def block_ranks(module, rec: dict, channels: int, max_tokens: int) -> dict:
    """Ranks of one attention call (first window): per head, A alone and A + D_c."""
    q, k, hw, p = rec["q"][:1], rec["k"][:1], rec["hw"], rec["num_prefix_tokens"]
    n_grid = hw[0] * hw[1]
    out = dict(tokens=n_grid, head_dim=module.head_dim, heads=module.num_heads, grid=list(hw),
               kind=getattr(module, "kind", "focused"), rank_linear=[], rank_dwc=[], note="")
    if k.shape[1] != q.shape[1]:
        out["note"] = f"key reduction ({k.shape[1]} keys for {q.shape[1]} queries): no square matrix"
        return out
    if n_grid > max_tokens:
        out["note"] = f"skipped: {n_grid} tokens > --max-tokens {max_tokens}"
        return out
    with torch.no_grad():
        a = global_weights(module, q.double(), k.double())[0, :, p:, p:].double()   # (h', N, N)
        if out["kind"] == "hydra":
            out["heads"], out["head_dim"] = a.shape[0], 1
        for h in range(a.shape[0]):
            out["rank_linear"].append(int(torch.linalg.matrix_rank(a[h])))
        if module.dwc is not None and out["kind"] != "hydra":
            conv = copy.deepcopy(module.dwc).double()
            for h in range(a.shape[0]):
                ranks = [int(torch.linalg.matrix_rank(a[h] + dwc_matrix(conv, dwc_channel(module, h, c), hw)))
                         for c in range(min(channels, module.head_dim))]
                out["rank_dwc"].append(ranks)
    return out


def summary(values: List[int]) -> str:
    if not values:
        return "-"
    return f"{min(values)}/{statistics.median(values):g}/{max(values)}"


def fig5_matrices(module, rec: dict, head: int, channel: int = 0) -> List[Tuple[str, torch.Tensor]]:
    """[(title, N x N matrix)] of Fig. 5 for one head: softmax on the same q, k, A, and A + D_channel."""
    q, k, hw, p = rec["q"][:1].double(), rec["k"][:1].double(), rec["hw"], rec["num_prefix_tokens"]
    with torch.no_grad():
        soft = softmax_weights(module, q, k)[0, head, p:, p:].double()
        a = global_weights(module, q, k)[0, head, p:, p:].double()
        out = [("(a) softmax, same q, k", soft), ("(b) linear attention A", a)]
        if module.dwc is not None and getattr(module, "kind", "focused") != "hydra":
            conv = copy.deepcopy(module.dwc).double()
            out.append((f"(c) A + DWC (value channel {channel})",
                        a + dwc_matrix(conv, dwc_channel(module, head, channel), hw)))
    return out


def plot_fig5(mats: List[Tuple[str, torch.Tensor]], title: str, random_weights: bool, out: str) -> str:
    """One panel per matrix with its rank in the title and its own colour bar."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(mats), figsize=(3.6 * len(mats), 3.9), squeeze=False)
    n = mats[0][1].shape[0]
    for ax, (name, m) in zip(axes[0], mats):
        rank = int(torch.linalg.matrix_rank(m))
        shown = ax.imshow(m.float().numpy(), cmap="viridis", interpolation="nearest")
        ax.set_title(f"{name}\nrank {rank} / {n}")
        ax.set_xlabel("key token")
        ax.set_ylabel("query token")
        image_axes(ax)
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    if random_weights:
        fig.text(0.01, 0.01, "RANDOM WEIGHTS (no --resume): the ranks already show the bound rank(A) <= d; the "
                 "patterns of a trained model differ.", fontsize=7, color="tab:red")
    fig.tight_layout(rect=(0, 0.05 if random_weights else 0, 1, 0.92))
    return save(fig, out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.attention_rank", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--blocks", type=int, nargs="+", help="indices of focused attention modules (default: all)")
    parser.add_argument("--channels", type=int, default=4, help="value channels (conv matrices) checked per head")
    parser.add_argument("--max-tokens", type=int, default=1024, help="skip attentions over more tokens")
    parser.add_argument("--json", metavar="PATH", help="also write the per-block results to this JSON file")
    parser.add_argument("--plot", metavar="PNG", help="draw Fig. 5 (softmax, A, A + DWC) for one block and head")
    parser.add_argument("--plot-block", type=int, help="block of the plot (default: the first of --blocks)")
    parser.add_argument("--head", type=int, default=0, help="head of the plot (default 0)")
    args = parser.parse_args(argv)

    cfg, model, mods = build_focused(args)
    chosen = args.blocks if args.blocks is not None else list(range(len(mods)))
    bad = [i for i in chosen if not 0 <= i < len(mods)]
    if bad:
        raise ScriptError(f"--blocks {bad}: the model has {len(mods)} focused attention modules")
    x, _ = load_image(args.image, cfg)
    with capture_attend([mods[i][1] for i in chosen]) as records, torch.no_grad():
        model(x)

    header = f"{'#':>3}  {'module':<28} {'N':>5} {'d':>4}  {'rank A (min/med/max)':>22}  {'rank A+DWC':>22}"
    print(f"{cfg.MODEL.NAME}: rank of the equivalent attention matrix per head "
          f"(A + DWC over {args.channels} value channel(s) per head)")
    print(header + "\n" + "-" * len(header))
    rows = []
    for j, i in enumerate(chosen):
        name, module = mods[i]
        r = block_ranks(module, records[j], args.channels, args.max_tokens)
        r.update(index=i, module=name)
        rows.append(r)
        dwc_all = [v for per_head in r["rank_dwc"] for v in per_head]
        line = (f"{i:>3}  {name:<28} {r['tokens']:>5} {r['head_dim']:>4}  {summary(r['rank_linear']):>22}  "
                f"{summary(dwc_all) if r['rank_dwc'] else ('no dwc' if not r['note'] else '-'):>22}")
        print(line + (f"  {r['note']}" if r["note"] else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=cfg.MODEL.NAME, config=args.cfg, checkpoint=args.resume, image=args.image,
                           blocks=rows), f, indent=2)
    if args.plot:
        block = chosen[0] if args.plot_block is None else args.plot_block
        if block not in chosen:
            raise ScriptError(f"--plot-block {block} is not among the blocks analysed ({chosen})")
        name, module = mods[block]
        rec = records[chosen.index(block)]
        n = rec["hw"][0] * rec["hw"][1]
        if rec["k"].shape[1] != rec["q"].shape[1] or n > args.max_tokens:
            raise ScriptError(f"--plot-block {block}: {name} has no square matrix of at most --max-tokens "
                              f"{args.max_tokens} tokens to draw")
        heads = module.num_heads if getattr(module, "kind", "focused") != "hydra" else module.dim
        if not 0 <= args.head < heads:
            raise ScriptError(f"--head {args.head}: {name} has {heads} heads")
        title = (f"{cfg.MODEL.NAME}  {name}  head {args.head}: equivalent {n} x {n} attention maps "
                 f"(paper Fig. 5)")
        print(f"wrote {plot_fig5(fig5_matrices(module, rec, args.head), title, not args.resume, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
