"""scripts/benchmark.py on the CPU: smoke runs write valid JSON; the official-code plumbing works."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "benchmark.py")

RESULT_KEYS = {"model", "impl", "family", "attention", "img_per_s", "ms_per_batch", "peak_mem_mb", "batch",
               "img_size", "compiled"}
META_KEYS = {"hardware", "device", "torch", "timm", "batch", "dtype", "img_size", "compile", "train"}


def run(args, timeout=300):
    out = subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return out


def check_schema(data):
    assert META_KEYS <= set(data["meta"])
    assert data["results"]
    for r in data["results"]:
        assert "error" not in r, r
        assert RESULT_KEYS <= set(r), set(r) ^ RESULT_KEYS
        assert r["impl"] in ("ours", "official", "timm", "reference")
        assert r["attention"] in ("flatten", "softmax")
        assert r["img_per_s"] > 0 and r["ms_per_batch"] > 0


def test_smoke_models_json(tmp_path):
    path = tmp_path / "bench.json"
    out = run(["--smoke", "--breakdown", "--json", str(path)])
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(path.read_text())
    check_schema(data)
    for r in data["results"]:   # --breakdown: the parts of every eager model add up
        b = r["breakdown"]
        assert b["linear_ms"] > 0 and b["attention_core_ms"] > 0 and b["rest_ms"] >= 0
        assert abs(b["linear_ms"] + b["attention_core_ms"] + b["rest_ms"] - b["total_ms"]) < 1e-6
    assert data["meta"]["cpu_malloc"] in ("tuned", "default (FLATTEN_CPU_MALLOC=default)")
    assert "time per batch by part" in out.stdout
    got = {(r["model"], r["impl"]) for r in data["results"]}
    assert {("flatten_pvt_v2_b0", "ours"), ("pvt_v2_b0", "ours"), ("pvt_v2_b0", "timm")} <= got
    assert data["meta"]["device"] == "cpu" and data["meta"]["batch"] == 1
    assert all(r["peak_mem_mb"] > 0 for r in data["results"])
    # every printed figure carries its context
    rows = [line for line in out.stdout.splitlines() if " img/s" not in line and "[" in line and "ours" in line]
    assert rows and all("torch" in line and "batch 1" in line and "cpu" in line for line in rows)


def test_smoke_train_step(tmp_path):
    path = tmp_path / "train.json"
    out = run(["--smoke", "--train", "--models", "flatten_deit_t", "--impl", "ours", "--json", str(path)])
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(path.read_text())
    check_schema(data)
    assert data["meta"]["train"] is True


@pytest.mark.slow
def test_smoke_resolutions_and_op(tmp_path):
    png, path = tmp_path / "scaling.png", tmp_path / "scaling.json"
    out = run(["--smoke", "--resolutions", "224", "--no-quadratic", "--plot", str(png), "--json", str(path)])
    assert out.returncode == 0, out.stderr[-3000:]
    assert png.stat().st_size > 1000
    data = json.loads(path.read_text())
    check_schema(data)
    assert {r["model"] for r in data["results"]} == {"flatten_swin_t", "swin_t"}
    out = run(["--smoke", "--op", "--json", str(path)])
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(path.read_text())
    assert {r["impl"] for r in data["results"]} == {"ours", "reference", "official"}
    assert all(r["max_rel_diff_vs_official"] < 1e-4 for r in data["results"])


def test_wrong_official_path_is_one_line_error(tmp_path):
    out = run(["--smoke", "--impl", "ours", "official", "--official-path", str(tmp_path / "nowhere")])
    assert out.returncode == 2
    err = out.stderr.strip()
    assert "\n" not in err and "nowhere" in err and "flatten_swin.py" in err
    out = run(["--smoke", "--impl", "official"])
    assert out.returncode == 2 and "--official-path" in out.stderr


FAKE_OFFICIAL = textwrap.dedent('''
    """Stand-in for the official flatten_swin.py: prints, registers a clashing timm name."""
    import torch.nn as nn
    from timm.models import register_model
    from models.swin import FLattenSwin as _Ours

    print("Linear Attention (the official code prints)")

    class FLattenSwinTransformer(_Ours):
        def __init__(self, focusing_factor=3, kernel_size=5, **kw):
            super().__init__(la_kwargs=dict(focusing_factor=focusing_factor, kernel_size=kernel_size), **kw)
            self.register_buffer("extra_index", None)

    @register_model
    def flatten_swin_tiny_patch4_224(**kw):   # same name as ours: the benchmark must restore ours
        raise AssertionError("the official registration leaked")
''')


def test_official_impl_same_weights_and_registry_restored(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "flatten_swin.py").write_text(FAKE_OFFICIAL)
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "flatten_swin_t.yaml").write_text(textwrap.dedent("""
        MODEL:
          TYPE: flatten_swin
          SWIN:
            EMBED_DIM: 96
            DEPTHS: [2, 2, 6, 2]
            NUM_HEADS: [3, 6, 12, 24]
            WINDOW_SIZE: 56
          LA:
            ATTN_TYPE: LLSS
    """))
    code = textwrap.dedent(f"""
        import sys, torch, timm
        sys.argv = ["benchmark.py"]
        sys.path.insert(0, {os.path.join(ROOT, 'scripts')!r})
        import benchmark as b
        off = b.OfficialCode({str(tmp_path)!r})
        torch.manual_seed(0)
        ours = b.build_ours(b.config_files()["flatten_swin_t"]).eval()
        model = off.build("flatten_swin_t", "swin").eval()
        b.load_same_weights(model, ours)
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            assert torch.equal(model(x), ours(x))
        timm.create_model("flatten_swin_tiny_patch4_224")   # ours again, not the stand-in's
        print("official ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "official ok"      # the official code's prints are swallowed


def test_breakdown_splits_linear_attention_core_and_rest():
    """Toy model with known costs: 60 ms in an attention's own code, 40 ms elsewhere."""
    import time as _time

    import torch
    import torch.nn as nn

    from scripts import benchmark

    class ToyAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            _time.sleep(0.06)
            return self.proj(v)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = ToyAttention()
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = self.attn(x)
            _time.sleep(0.04)
            return self.head(x)

    model = Toy()
    assert [n for n, _ in benchmark._attention_modules(model)] == ["attn"]
    x = torch.randn(2, 8)
    b = benchmark.time_breakdown(model, lambda: model(x), torch.device("cpu"), reps=2)
    assert 60 <= b["attention_core_ms"] < 90
    assert 40 <= b["rest_ms"] < 70
    assert 0 < b["linear_ms"] < 15
    assert abs(b["linear_ms"] + b["attention_core_ms"] + b["rest_ms"] - b["total_ms"]) < 1e-6
    assert not model._forward_hooks and not model.attn.qkv._forward_pre_hooks   # hooks removed


def test_breakdown_finds_outermost_attention_of_every_family():
    import timm

    import models  # noqa: F401  (registers the FLatten models)
    from scripts import benchmark

    for name, expect in [("flatten_swin_tiny_patch4_224", 12), ("flatten_pvt_v2_b0", 8),
                         ("flatten_cswin_tiny_224", None), ("flatten_deit_tiny_patch16_224", 12)]:
        model = timm.create_model(name)
        found = benchmark._attention_modules(model)
        names = [n for n, _ in found]
        assert all(not a.startswith(b + ".") for a in names for b in names), names
        if expect is not None:
            assert len(found) == expect, (name, names)
        else:
            assert len(found) >= sum((1, 2, 21, 1)), (name, len(found))
