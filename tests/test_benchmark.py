"""scripts.benchmark: the modes write consistent JSON, one failing candidate or size loses nothing,
the time breakdown adds up, and the official-code importer gives an independently written
official-layout model our weights and our outputs."""
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(ROOT, "tests", "fixtures", "official_standin")

RESULT_KEYS = {"model", "impl", "family", "attention", "img_per_s", "ms_per_batch", "ms_min", "rounds_ms",
               "peak_mem_mb", "batch", "img_size", "compiled", "params_m", "params_mb"}
META_KEYS = {"hardware", "device", "torch", "timm", "batch", "dtype", "img_size", "compile", "train", "mode"}


def run(args, timeout=600):
    return subprocess.run([sys.executable, "-m", "scripts.benchmark", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def check_consistent(data, rounds):
    """Figures that must agree with each other in every result row."""
    assert META_KEYS <= set(data["meta"])
    assert data["results"]
    for r in data["results"]:
        assert "error" not in r, r
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert len(r["rounds_ms"]) == rounds
        assert r["ms_per_batch"] == pytest.approx(statistics.median(r["rounds_ms"]), abs=0.01)
        assert r["ms_min"] == pytest.approx(min(r["rounds_ms"]), abs=0.01)
        assert r["img_per_s"] == pytest.approx(1e3 * r["batch"] / r["ms_per_batch"], rel=1e-9)
        # the peak counts the weights (float32) and the input at least
        assert r["peak_mem_mb"] >= r["params_mb"] + r["batch"] * 3 * r["img_size"] ** 2 * 4 / 2 ** 20
        assert r["params_mb"] == pytest.approx(r["params_m"] * 4e6 / 2 ** 20)


def test_smoke_models_json(tmp_path):
    path = tmp_path / "bench.json"
    out = run(["--smoke", "--breakdown", "--json", str(path)])
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(path.read_text())
    check_consistent(data, rounds=2)
    got = {(r["model"], r["impl"]): r for r in data["results"]}
    assert set(got) == {("flatten_pvt_v2_b0", "ours"), ("pvt_v2_b0", "ours"), ("pvt_v2_b0", "timm")}
    # our softmax PVTv2-B0 and timm's are the same architecture; FLatten-PVTv2-B0 is Table 8's 3.6M
    assert got[("pvt_v2_b0", "ours")]["params_m"] == pytest.approx(got[("pvt_v2_b0", "timm")]["params_m"])
    assert abs(got[("flatten_pvt_v2_b0", "ours")]["params_m"] - 3.6) <= 0.1
    for r in data["results"]:   # --breakdown: the parts of every eager model add up
        b = r["breakdown"]
        assert b["linear_ms"] > 0 and b["attention_core_ms"] > 0 and b["rest_ms"] >= 0
        assert b["linear_ms"] + b["attention_core_ms"] + b["rest_ms"] == pytest.approx(b["total_ms"])
    assert data["meta"]["device"] == "cpu" and data["meta"]["batch"] == 1
    # every printed figure carries its context
    rows = [line for line in out.stdout.splitlines() if line.startswith(("flatten_pvt_v2_b0 ", "pvt_v2_b0 "))
            and "[" in line]
    assert len(rows) == 3 and all("torch" in line and "batch 1" in line and "cpu" in line for line in rows)


def test_smoke_train_step(tmp_path):
    path = tmp_path / "train.json"
    out = run(["--smoke", "--train", "--models", "flatten_deit_t", "--impl", "ours", "--json", str(path)])
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(path.read_text())
    check_consistent(data, rounds=2)
    assert data["meta"]["train"] is True and "train step" in out.stdout


class Tiny(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = size
        self.head = nn.Linear(3, 10)

    def forward(self, x):
        if x.shape[-1] != self.size:
            raise ValueError(f"built for {self.size} px")
        return self.head(x.mean((2, 3)))


def test_a_failing_candidate_or_size_loses_nothing(tmp_path, capsys):
    """One candidate that cannot be built, one that fails while timed: both become error rows, the
    others are timed, and the scaling table and plot are still written."""
    from scripts.benchmark import scaling
    from scripts.benchmark.model_speed import measure
    from scripts.core.timing import Candidate, prepare

    def broken():
        raise RuntimeError("cannot take 64 px")

    class Args:
        batch, warmup, rounds, iters = 2, 1, 2, 1

    results = []
    for size in (32, 64):
        cands = [Candidate("flatten_swin_t", "ours", "swin", "flatten", lambda s=size: Tiny(s), size),
                 Candidate("swin_t", "ours", "swin", "softmax", broken if size == 64 else (lambda: Tiny(32)), size),
                 Candidate("swin_t", "timm", "swin", "softmax", lambda: Tiny(32), size)]
        rows = measure(prepare(cands, torch.device("cpu"), 2, False, "none"), Args, torch.device("cpu"))
        for r in rows:
            r["tokens_stage1"] = (size // 4) ** 2
        results += rows
    errors = {(r["model"], r["impl"], r["img_size"]): r["error"] for r in results if "error" in r}
    assert set(errors) == {("swin_t", "ours", 64), ("swin_t", "timm", 64)}
    assert "cannot take 64 px" in errors[("swin_t", "ours", 64)]
    assert "built for 32 px" in errors[("swin_t", "timm", 64)]
    assert sum("error" not in r for r in results) == 4
    scaling.print_table(results)
    table = capsys.readouterr().out
    assert "error" in table and "cannot take 64 px" in table
    meta = dict(device="cpu", hardware="test", batch=2, dtype="float32", torch=torch.__version__)
    png = scaling.plot(results, meta, str(tmp_path / "scaling.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_smoke_resolutions_and_op(tmp_path):
    png, path = tmp_path / "scaling.png", tmp_path / "scaling.json"
    out = run(["--smoke", "--resolutions", "224,320", "--no-quadratic", "--plot", str(png), "--json", str(path)])
    data = json.loads(path.read_text())
    assert png.stat().st_size > 1000
    ok = [r for r in data["results"] if "error" not in r]
    assert {(r["model"], r["img_size"]) for r in ok} >= {("flatten_swin_t", 224), ("flatten_swin_t", 320),
                                                          ("swin_t", 224)}
    assert out.returncode == (1 if len(ok) < len(data["results"]) else 0), out.stderr[-3000:]
    out = run(["--smoke", "--op", "--json", str(path)])
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(path.read_text())
    assert {r["impl"] for r in data["results"]} == {"ours", "reference", "official"}
    assert all(r["max_rel_diff_vs_official"] < 1e-4 for r in data["results"])


def test_wrong_official_path_is_one_line_error(tmp_path):
    out = run(["--smoke", "--impl", "ours", "official", "--official-path", str(tmp_path / "nowhere")])
    assert out.returncode == 2
    err = out.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "nowhere" in err and "flatten_swin.py" in err
    out = run(["--smoke", "--impl", "official"])
    assert out.returncode == 2 and "--official-path" in out.stderr


def test_direct_run_names_the_module_form():
    out = subprocess.run([sys.executable, os.path.join("scripts", "benchmark", "__main__.py")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "python -m scripts.benchmark" in out.stderr


OFFICIAL_CHECK = f"""
import torch, timm
from scripts.core import models as zoo
from scripts.core.official import OfficialCode, load_same_weights
off = OfficialCode({STANDIN!r})
opts = ["MODEL.EMBED_DIM", "32", "MODEL.DEPTHS", "[1, 1, 2, 1]", "MODEL.NUM_HEADS", "[1, 2, 4, 8]",
        "MODEL.WINDOW_SIZE", "56", "MODEL.LA.ATTN_TYPE", "LLLL", "MODEL.DROP_PATH_RATE", "0.0"]
ours = zoo.build(zoo.load("flatten_swin_t", opts)).eval()
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in ours.parameters():          # every weight matters: none is left at its zero / one init
        p.copy_(torch.randn(p.shape, generator=g) * 0.2)
official = off.build("tiny_swin_llll", "swin").eval()
assert type(official).__module__ == "flatten_official.flatten_swin"
load_same_weights(official, ours)
x = torch.randn(2, 3, 224, 224, generator=g)
with torch.no_grad():
    a, b = ours(x), official(x)
err = ((a - b).abs().max() / b.abs().max()).item()
assert err < 1e-4, err
model = timm.create_model("flatten_swin_tiny_patch4_224")     # ours again, not the stand-in's
assert type(model).__module__.startswith("models."), type(model).__module__
print(f"official ok {{err:.1e}}")
"""


def test_official_importer_against_an_official_layout_standin():
    out = subprocess.run([sys.executable, "-c", OFFICIAL_CHECK], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("official ok")      # the stand-in's import-time print is swallowed
    assert "stand-in imported" not in out.stdout


class FakeClock:
    """A perf_counter the toy model advances by known amounts (seconds)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def spend(self, ms):
        self.now += ms / 1e3


class SlowLinear(nn.Linear):
    clock = None

    def forward(self, x):
        self.clock.spend(5)
        return super().forward(x)


def test_breakdown_splits_linear_attention_core_and_rest(monkeypatch):
    """Known costs on a fake clock: each linear 5 ms, 60 ms in the attention's own code, 40 ms elsewhere."""
    from scripts.benchmark import breakdown

    clock = FakeClock()
    monkeypatch.setattr(breakdown.time, "perf_counter", clock)
    SlowLinear.clock = clock

    class ToyAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = SlowLinear(8, 24), SlowLinear(8, 8)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            clock.spend(60)
            return self.proj(v)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.head = ToyAttention(), SlowLinear(8, 4)

        def forward(self, x):
            x = self.attn(x)
            clock.spend(40)
            return self.head(x)

    model = Toy()
    assert [n for n, _ in breakdown.attention_modules(model)] == ["attn"]
    x = torch.randn(2, 8)
    b = breakdown.time_breakdown(model, lambda: model(x), torch.device("cpu"), reps=3)
    assert b == pytest.approx({"total_ms": 115.0, "linear_ms": 15.0, "attention_core_ms": 60.0, "rest_ms": 40.0})
    assert not model._forward_hooks and not model.attn.qkv._forward_pre_hooks   # hooks removed


def test_breakdown_finds_outermost_attention_of_every_family():
    import timm

    import models  # noqa: F401  (registers the FLatten models)
    from scripts.benchmark import breakdown

    # (model, attention modules): Swin-T 2+2+6+2 blocks, PVTv2-B0 2+2+2+2, DeiT-T 12, CSWin-T: one per
    # L block (stages 1-2: 2+4) and, in S blocks, one per cross-shaped branch (two in stage 3, one in stage 4)
    for name, expect in [("flatten_swin_tiny_patch4_224", 12), ("flatten_pvt_v2_b0", 8),
                         ("flatten_cswin_tiny_224", 2 + 4 + 2 * 18 + 1), ("flatten_deit_tiny_patch16_224", 12)]:
        found = breakdown.attention_modules(timm.create_model(name))
        names = [n for n, _ in found]
        assert all(not a.startswith(b + ".") for a in names for b in names), names
        assert len(found) == expect, (name, names)
