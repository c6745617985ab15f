"""One plot style for every figure, and the two helpers the figures need.

* :func:`plain_log_axis`: log axes with ticks written as plain numbers
  (``20``, ``50``, ``100``; matplotlib's default writes ``2x10^1``).
* :func:`place_labels`: point labels that do not overlap each other or the
  markers: each label takes the first free spot around its point, found with
  the rendered text extents, and gets a leader line when it had to move away.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 200,
    "figure.dpi": 100,
}


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, with :data:`STYLE` applied."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update(STYLE)
    return plt


def save(fig, path: str) -> str:
    """Write ``fig`` as a PNG (tight bounding box), close it and return ``path``."""
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    return path


def image_axes(ax, ticks: bool = True) -> None:
    """Axes that show an image or a matrix: a full frame, no grid (and no ticks with ``ticks=False``)."""
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(True)
    if not ticks:
        ax.set_xticks([])
        ax.set_yticks([])


def _plain(value: float, _pos=None) -> str:
    if value <= 0:
        return ""
    return f"{value:g}" if 1e-3 <= value < 1e5 else f"{value:.0e}"


def plain_log_axis(ax, axis: str = "y", subs: Sequence[float] = (1.0, 2.0, 5.0),
                   ticks: Optional[Sequence[float]] = None) -> None:
    """Log scale on ``axis`` ('x' or 'y') with ticks at 1-2-5 steps (or ``ticks``) written plainly."""
    from matplotlib import ticker
    getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    if ticks is not None:
        target.set_major_locator(ticker.FixedLocator(list(ticks)))
    else:
        target.set_major_locator(ticker.LogLocator(base=10.0, subs=tuple(subs)))
    target.set_major_formatter(ticker.FuncFormatter(_plain))
    target.set_minor_formatter(ticker.NullFormatter())


# A faint white box behind a label keeps it legible over grid lines and curves.
_BACKING = dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.75)

# Offsets (points) tried around a point, nearest first, with the text alignment that keeps
# the label on that side of the marker.
_SPOTS: List[Tuple[float, float, str, str]] = [
    (6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"), (-6, -4, "right", "top"),
    (0, 8, "center", "bottom"), (0, -8, "center", "top"), (8, 0, "left", "center"), (-8, 0, "right", "center"),
]
_RINGS = (1.0, 2.0, 3.0, 4.5, 6.0, 8.0)


def place_labels(ax, items: Sequence[Tuple[float, float, str, str]], fontsize: float = 7.5,
                 marker_px: float = 6.0, merge_px: float = 14.0, pad_px: float = 2.0,
                 obstacles: Sequence = ()) -> List:
    """Annotate points ``(x, y, text, color)`` without overlaps; returns the text artists.

    The labels also keep clear of the ``obstacles`` (artists already drawn, such as
    an annotation of the panel).

    Points closer than ``merge_px`` on screen that carry the same text (the same
    model size on two nearly equal curves) share one label. Call it once the
    axes limits are final (after plotting, margins and ``tight_layout``):
    positions are computed in display coordinates.
    """
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    taken = [a.get_window_extent(renderer) for a in obstacles]
    for x, y, *_ in items:   # markers are obstacles too
        cx, cy = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(cx - marker_px, cy - marker_px, cx + marker_px, cy + marker_px))
    unique: List[Tuple[float, float, str, str]] = []
    for x, y, text, color in items:
        px = ax.transData.transform((x, y))
        if not any(t == text and ((px - ax.transData.transform((ux, uy))) ** 2).sum() < merge_px ** 2
                   for ux, uy, t, _ in unique):
            unique.append((x, y, text, color))
    inside = ax.get_window_extent(renderer)
    placed = []
    for x, y, text, color in unique:
        art = box = None
        for ring in _RINGS:
            for dx, dy, ha, va in _SPOTS:
                leader = dict(arrowstyle="-", color=color, lw=0.6, shrinkA=0, shrinkB=3) if ring > 1 else None
                art = ax.annotate(text, (x, y), xytext=(dx * ring, dy * ring), textcoords="offset points",
                                  ha=ha, va=va, fontsize=fontsize, color=color, arrowprops=leader, bbox=_BACKING)
                art.update_positions(renderer)                    # the offset text's place in display units
                box = Text.get_window_extent(art, renderer)       # the text alone, not the leader
                box = Bbox.from_extents(box.x0 - pad_px, box.y0 - pad_px, box.x1 + pad_px, box.y1 + pad_px)
                if (not any(box.overlaps(o) for o in taken) and inside.x0 <= box.x0 and box.x1 <= inside.x1
                        and inside.y0 <= box.y0 and box.y1 <= inside.y1):
                    break
                art.remove()
                art = None
            if art is not None:
                break
        if art is None:   # no free spot: the first one, so that the label is there at all
            dx, dy, ha, va = _SPOTS[0]
            art = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              fontsize=fontsize, color=color, bbox=_BACKING)
            art.update_positions(renderer)
            box = Text.get_window_extent(art, renderer)
        taken.append(box)
        placed.append(art)
    return placed
