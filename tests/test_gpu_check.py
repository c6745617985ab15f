"""scripts.gpu_check --dry-run: every section at tiny sizes on the CPU, what needs CUDA reported as skipped,
a missed speed target never an error, a failed correctness check always one."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpu_check(args, code=None):
    script = code or "from scripts.gpu_check import main; from scripts.core import cli; raise SystemExit(cli.run(main))"
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def test_dry_run_goes_through_every_section(tmp_path):
    r = gpu_check(["--dry-run", "--out", str(tmp_path)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = report["checks"]
    assert report["dry_run"] and {c["section"] for c in checks} == {"env", "triton", "amp", "compile", "inference",
                                                                    "training", "op", "scaling"}
    assert not [c for c in checks if c["status"] == "FAIL"]
    skipped = {c["section"]: c["detail"] for c in checks if c["status"] == "skipped"}
    assert "needs CUDA" in skipped["triton"]                         # says why
    assert "no --official-path" in skipped["training"]
    amp = [c for c in checks if c["section"] == "amp"]
    assert len(amp) == 10 and all(c["status"] == "ok" for c in amp)   # bf16 and fp16 + scaler, five families
    op_errors = [c for c in checks if c["section"] == "op" and "max rel. error" in c["name"]]
    assert len(op_errors) == 2 and all(float(c["value"]) < 1e-4 for c in op_errors)
    # a speed figure carries its target and the command that measures it; missing it is not an error
    missed = [c for c in checks if c["met"] is False]
    assert missed and all(c["target"] and c["command"].startswith("python -m scripts.benchmark") for c in missed)
    assert "speed target(s) missed (not an error)" in r.stdout
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| section | check | result | target | status | batch |" in table and "(dry run on the CPU)" in table
    assert (tmp_path / "resolution_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BROKEN_OP = """
import torch
import scripts.core.official as official
exact = official.official_op_sequence
official.official_op_sequence = lambda *a: exact(*a) * 1.01      # the yardstick moves: ours must 'fail'
from scripts.gpu_check import main
from scripts.core import cli
raise SystemExit(cli.run(main))
"""


def test_a_failed_correctness_check_exits_non_zero(tmp_path):
    r = gpu_check(["--dry-run", "--only", "op", "--out", str(tmp_path)], code=BROKEN_OP)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    failed = [c for c in json.loads((tmp_path / "gpu_check.json").read_text())["checks"] if c["status"] == "FAIL"]
    assert len(failed) == 2 and all("max rel. error" in c["name"] for c in failed)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the command runs the real check")
def test_without_a_gpu_it_says_so_in_one_line():
    r = gpu_check([])
    assert r.returncode == 2
    assert r.stderr.strip() == "error: no CUDA device here: run on a GPU, or pass --dry-run for the CPU rehearsal"
