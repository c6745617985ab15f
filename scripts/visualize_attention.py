"""Paper Fig. 3 / Fig. 8: attention weights of one query token, softmax vs linear vs focused.

Runs the model on one image, records q and k of the chosen focused attention
module (``--block``, counted over the model's focused attention modules; see
``--list``) and draws, for the query token at ``--query row,col`` of that
attention's token grid:

* the input with the query token marked in red;
* **Softmax**: ``softmax(q k^T / sqrt(d))`` on the same q, k;
* **Linear**: vanilla ReLU linear attention on the same q, k (the module's
  kernel with the focusing function switched off);
* **Focused**: the module's focused linear attention (for a Table 3 kind:
  that kind's weights);
* **Focused + DWC**: the equivalent attention ``|A + D|`` (D = the depthwise
  conv as an N x N matrix, averaged over its channels), row-normalised -- the
  local term that the rank analysis of Fig. 5 adds.

Weights are averaged over heads unless ``--head`` is given. The paper's
softmax map comes from a separately trained softmax model; here every panel
uses the q, k of one model, which isolates the effect of the mapping function
(the figure says so under the panels). Each map has its own colour bar; a map
made from random weights (no ``--resume``) is marked as such in the figure.
For windowed attention (Swin with a window smaller than the stage) the map
covers one window (``--window``), and ``--query`` is inside it.

Usage (from the repository root)::

    .venv/bin/python -m scripts.visualize_attention --cfg configs/flatten_deit_t.yaml --resume deit.pth \\
        --image cat.jpg --block 2 --query 7,7 --out attention.png
    .venv/bin/python -m scripts.visualize_attention --cfg configs/flatten_swin_t.yaml --list
"""
from __future__ import annotations

import argparse
from typing import List, Optional, Tuple

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it from the repository root as: python -m scripts.visualize_attention ...")

import torch  # noqa: E402

from scripts.core import cli  # noqa: E402
from scripts.core.attention import (add_model_arguments, build_focused, capture_attend, dwc_channel,  # noqa: E402
                                    dwc_row, global_weights, load_image, softmax_weights,
                                    vanilla_linear_weights)
from scripts.core.cli import ScriptError  # noqa: E402
from scripts.core.plotting import image_axes, pyplot, save  # noqa: E402


def parse_query(text: Optional[str], hw: Tuple[int, int]) -> Tuple[int, int]:
    if text is None:
        return hw[0] // 2, hw[1] // 2
    try:
        r, c = (int(t) for t in text.split(","))
    except ValueError:
        raise ScriptError(f"--query expects row,col, got {text!r}") from None
    if not (0 <= r < hw[0] and 0 <= c < hw[1]):
        raise ScriptError(f"--query {r},{c} is outside the {hw[0]}x{hw[1]} token grid of this attention")
    return r, c


def key_grid(m: int, hw: Tuple[int, int]) -> Tuple[int, int]:
    """Grid of the M grid keys: the query grid, or a uniformly reduced one (PVT key reduction)."""
    if m == hw[0] * hw[1]:
        return hw
    r = round((hw[0] * hw[1] / m) ** 0.5)
    if r < 1 or (hw[0] // r) * (hw[1] // r) != m:
        raise ScriptError(f"cannot place {m} keys on a grid related to {hw}")
    return hw[0] // r, hw[1] // r


def query_maps(module, rec: dict, query: Tuple[int, int], head: Optional[int], window: int) -> List[tuple]:
    """[(title, (Hk, Wk) map of the query's weights over the grid keys)] for every panel."""
    q, k, hw, p = rec["q"], rec["k"], rec["hw"], rec["num_prefix_tokens"]
    if not 0 <= window < q.shape[0]:
        raise ScriptError(f"--window {window}: this attention ran on {q.shape[0]} windows")
    q, k = q[window:window + 1].float(), k[window:window + 1].float()
    qi = p + query[0] * hw[1] + query[1]
    q1 = q[:, qi:qi + 1]                                                  # (1, 1, C): weights are per query
    kg = key_grid(k.shape[1] - p, hw)

    def row(weights: torch.Tensor) -> torch.Tensor:                       # (1, h, 1, M) -> (Hk, Wk)
        w = weights[0, :, 0, p:]
        w = w.mean(0) if head is None else w[head]
        return w.reshape(kg)

    kind = getattr(module, "kind", "focused")
    with torch.no_grad():
        focused = global_weights(module, q1, k)
        panels = [("Softmax (same q, k)", row(softmax_weights(module, q1, k))),
                  ("Linear", row(vanilla_linear_weights(module, q1, k))),
                  ("Focused" if kind == "focused" else f"{kind} (Table 3)", row(focused))]
        if module.dwc is not None and kg == tuple(hw):
            heads = range(focused.shape[1]) if head is None else [head]
            if kind == "hydra":
                heads = []
            eq = []
            for h in heads:
                a = focused[0, h, 0, p:]                                   # (N,)
                for c in range(module.head_dim):
                    d = dwc_row(module.dwc, dwc_channel(module, h, c), hw, qi - p).to(a.dtype)
                    e = (a + d).abs()
                    eq.append(e / e.sum())
            if eq:
                title = "Focused + DWC" if kind == "focused" else f"{kind} + DWC"
                panels.append((title, torch.stack(eq).mean(0).reshape(kg)))
    return panels


def draw(panels: List[tuple], image: torch.Tensor, hw: Tuple[int, int], query: Tuple[int, int],
         on_image: bool, title: str, notes: List[str], out: str) -> str:
    """The query panel and one map per entry of ``panels``, each with a colour bar; ``notes`` go under them."""
    from matplotlib.patches import Rectangle
    plt = pyplot()
    n = len(panels) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.9 * n, 3.3), squeeze=False)
    axes = axes[0]
    size = image.shape[0]
    cell = (size / hw[0], size / hw[1]) if on_image else (1.0, 1.0)
    extent = (0, size, size, 0) if on_image else (0, hw[1], hw[0], 0)

    def mark(ax):
        ax.add_patch(Rectangle((query[1] * cell[1], query[0] * cell[0]), cell[1], cell[0],
                               fill=False, edgecolor="red", linewidth=1.5))

    ax = axes[0]
    ax.imshow(image.numpy() if on_image else torch.zeros(hw).numpy(), cmap=None if on_image else "gray",
              extent=extent)
    mark(ax)
    ax.set_title("query (red)")
    for ax, (name, m) in zip(axes[1:], panels):
        m = m.float()
        kh, kw = m.shape
        if on_image:
            ax.imshow(image.mean(-1).numpy(), cmap="gray", extent=extent)      # grey image under the map
            shown = ax.imshow(m.numpy(), cmap="jet", alpha=0.6, extent=extent, interpolation="nearest")
        else:
            shown = ax.imshow(m.numpy(), cmap="Blues", extent=(0, kw, kh, 0), interpolation="nearest")
        if (kh, kw) == tuple(hw):
            mark(ax)
        ax.set_title(name)
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=6)
        bar.set_label("attention weight", fontsize=6)
    for ax in axes:
        image_axes(ax, ticks=False)
    fig.suptitle(title, fontsize=9)
    for i, note in enumerate(notes):
        fig.text(0.01, 0.02 + 0.045 * (len(notes) - 1 - i), note, fontsize=7,
                 color="tab:red" if note.startswith("RANDOM") else "0.3")
    fig.tight_layout(rect=(0, 0.05 * len(notes), 1, 0.93))
    return save(fig, out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.visualize_attention", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--block", type=int, default=0, help="index of the focused attention module (see --list)")
    parser.add_argument("--query", metavar="ROW,COL", help="query token on the attention's grid (default: centre)")
    parser.add_argument("--head", type=int, help="one head (default: mean over heads)")
    parser.add_argument("--window", type=int, default=0, help="window index for windowed attention (default 0)")
    parser.add_argument("--out", default="attention.png", help="PNG to write")
    parser.add_argument("--npz", metavar="PATH", help="also save the maps (numpy .npz)")
    parser.add_argument("--list", action="store_true", help="list the focused attention modules and exit")
    args = parser.parse_args(argv)

    cfg, model, mods = build_focused(args)
    if args.list:
        for i, (name, m) in enumerate(mods):
            print(f"{i:>3}  {name}  ({m.extra_repr()})")
        return 0
    if not 0 <= args.block < len(mods):
        raise ScriptError(f"--block {args.block}: the model has {len(mods)} focused attention modules "
                         f"(0..{len(mods) - 1}); see --list")
    name, module = mods[args.block]
    if args.head is not None and not 0 <= args.head < module.num_heads:
        raise ScriptError(f"--head {args.head}: this attention has {module.num_heads} heads")
    x, show = load_image(args.image, cfg)
    with capture_attend([module]) as records, torch.no_grad():
        model(x)
    rec = records[0]
    hw = rec["hw"]
    query = parse_query(args.query, hw)
    panels = query_maps(module, rec, query, args.head, args.window)
    on_image = rec["q"].shape[0] == x.shape[0]                            # one window = the whole image
    head = "mean over heads" if args.head is None else f"head {args.head}"
    title = (f"{cfg.MODEL.NAME}  {name}  query {query[0]},{query[1]} on {hw[0]}x{hw[1]}  ({head}"
             + ("" if on_image else f", window {args.window}") + ")")
    notes = ["Softmax: softmax(q k^T / sqrt(d)) of this model's own q, k (the paper's softmax map comes from "
             "a separately trained softmax model)."]
    if not args.resume:
        notes.insert(0, "RANDOM WEIGHTS (no --resume): the maps show the mechanism, not what a trained model "
                        "attends to.")
    draw(panels, show, hw, query, on_image, title, notes, args.out)
    if args.npz:
        import numpy as np
        np.savez(args.npz, **{t.lower().replace(" ", "_").replace("+", "plus"): m.numpy() for t, m in panels})
    print(f"{name}: " + ", ".join(f"{t} max {m.max():.4f}" for t, m in panels))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
