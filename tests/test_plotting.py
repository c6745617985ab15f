"""scripts.core.plotting: plain log ticks and non-overlapping labels."""
from matplotlib.text import Text

from scripts.core.plotting import place_labels, plain_log_axis, pyplot


def test_log_ticks_are_plain_numbers():
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([224, 384, 512, 768], [20, 6, 3, 1.2])
    plain_log_axis(ax, "x", ticks=[224, 384, 512, 768])
    plain_log_axis(ax, "y")
    fig.canvas.draw()
    xs = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    ys = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert xs == ["224", "384", "512", "768"]
    assert {"2", "5", "10", "20"} <= set(ys) and not any("10^" in y or "times" in y for y in ys)
    plt.close(fig)


def test_crowded_labels_do_not_overlap():
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    pts = [(1.0 + 0.02 * i, 1.0 + 0.01 * (i % 3), f"L{i}", "k") for i in range(8)]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o")
    ax.set_xlim(0, 2)
    ax.set_ylim(0, 2)
    arts = place_labels(ax, pts)
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, renderer) for a in arts]
    assert len(arts) == 8
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(8) for j in range(i + 1, 8))
    plt.close(fig)


def test_same_label_on_coinciding_points_is_drawn_once():
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    arts = place_labels(ax, [(5, 5, "B0", "k"), (5.05, 5.05, "B0", "r"), (8, 2, "B0", "k")])
    assert [a.get_text() for a in arts] == ["B0", "B0"]       # the far one keeps its own label
    plt.close(fig)


def test_labels_keep_clear_of_obstacles():
    """A label whose first choice of spot is taken by another artist (a speed-up bracket) goes elsewhere."""
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    renderer = fig.canvas.get_renderer()
    (free,) = place_labels(ax, [(5, 5, "S", "k")])
    spot = Text.get_window_extent(free, renderer)
    free.remove()
    x, y = ax.transData.inverted().transform(((spot.x0 + spot.x1) / 2, (spot.y0 + spot.y1) / 2))
    bracket = ax.text(x, y, "1.5x", ha="center", va="center", fontsize=12)
    (label,) = place_labels(ax, [(5, 5, "S", "k")], obstacles=[bracket])
    assert Text.get_window_extent(bracket, renderer).overlaps(spot)
    assert not Text.get_window_extent(bracket, renderer).overlaps(Text.get_window_extent(label, renderer))
    plt.close(fig)
