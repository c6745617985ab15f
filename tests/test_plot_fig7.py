"""scripts.plot_fig7: accuracy-runtime curves from benchmark JSON, with readable point labels."""
import json
import os
import subprocess
import sys

import pytest

from scripts.plot_fig7 import best_speedup, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def bench(rows, tmp_path, name="bench.json"):
    results = [dict(model=m, impl=impl, family=fam, attention=att, ms_per_batch=ms * 2, img_per_s=2000.0 / ms)
               for m, fam, att, impl, ms in rows]
    path = tmp_path / name
    path.write_text(json.dumps(dict(meta=dict(hardware="test cpu", device="cpu", batch=2, dtype="float32",
                                              img_size=224), results=results)))
    return str(path)


def test_writes_png_and_marks_speedup(tmp_path, capsys):
    rows = [("swin_t", "swin", "softmax", "ours", 130), ("swin_s", "swin", "softmax", "ours", 250),
            ("swin_b", "swin", "softmax", "ours", 400), ("flatten_swin_t", "swin", "flatten", "ours", 120),
            ("flatten_swin_s", "swin", "flatten", "ours", 200), ("pvt_s", "pvt", "softmax", "ours", 100),
            ("pvt_l", "pvt", "softmax", "ours", 250), ("flatten_pvt_s", "pvt", "flatten", "ours", 120),
            ("swin_t", "swin", "softmax", "timm", 125), ("unknown_net", "x", "softmax", "ours", 1)]
    src = bench(rows, tmp_path)
    out = tmp_path / "fig" / "fig7.png"
    assert main([src, src, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    text = capsys.readouterr().out
    assert "FLatten-Swin (ours)" in text and "skipped unknown_net" in text
    # FLatten-Swin-S (83.5 at 200 ms) vs Swin-B (83.5 at 400 ms): 2.0x, as in the paper's CPU panel
    s = best_speedup([(120, 82.1), (200, 83.5)], [(130, 81.3), (250, 83.0), (400, 83.5)])
    assert s[0] == pytest.approx(2.0)


def test_point_labels_do_not_overlap(tmp_path, monkeypatch):
    """PVTv2-B0/B1 of three nearly equal curves: the labels (one per size where points coincide)
    overlap neither each other nor a marker."""
    from matplotlib.text import Text

    import scripts.plot_fig7 as fig7
    placed = []
    original = fig7.place_labels

    def spy(ax, items, **kw):
        arts = original(ax, items, **kw)
        renderer = ax.figure.canvas.get_renderer()     # before the figure is saved and closed
        placed.append([(a.get_text(), Text.get_window_extent(a, renderer)) for a in arts])
        return arts
    monkeypatch.setattr(fig7, "place_labels", spy)
    rows = []
    for impl, att, prefix, shift in (("ours", "softmax", "", 0.0), ("timm", "softmax", "", 0.4),
                                     ("ours", "flatten", "flatten_", 0.8)):
        rows += [(f"{prefix}pvt_v2_b{i}", "pvt_v2", att, impl, 10 + 9 * i + shift) for i in range(3)]
    assert main([bench(rows, tmp_path), "--out", str(tmp_path / "f.png")]) == 0
    (labels,) = placed
    assert {text for text, _ in labels} == {"B0", "B1", "B2"}
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            assert not labels[i][1].overlaps(labels[j][1]), (labels[i][0], labels[j][0])


def test_bad_input_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "scripts.plot_fig7", str(bad)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith(f"error: cannot read {bad}")
    assert out.stderr.count("\n") == 1


def test_from_benchmark_smoke(tmp_path):
    """The benchmark's own JSON is valid input."""
    src = tmp_path / "bench.json"
    out = subprocess.run([sys.executable, "-m", "scripts.benchmark", "--smoke", "--impl", "ours", "--json", str(src)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    png = tmp_path / "fig7.png"
    assert main([str(src), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG
