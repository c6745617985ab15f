"""scripts.gpu_check --dry-run: every section at tiny sizes on the CPU, what needs CUDA reported as skipped,
a missed speed target never an error, a failed correctness check always one; the distributed section's
training runs (parsed, timed out, failed) and the time budget."""
import json
import os
import subprocess
import sys
import time

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
                                                                    "training", "memory", "op", "scaling",
                                                                    "distributed"}
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
    # op: the Triton feature-map timing needs CUDA
    feature_map = [c for c in checks if c["section"] == "op" and "Triton" in c["name"]]
    assert len(feature_map) == 1 and feature_map[0]["status"] == "skipped" and "needs CUDA" in feature_map[0]["detail"]
    # memory: the peak needs CUDA; one config per family still builds through the config path and trains 2 steps
    memory = [c for c in checks if c["section"] == "memory"]
    assert any(c["status"] == "skipped" and "needs CUDA" in c["detail"] for c in memory)
    stepped = [c for c in memory if c["status"] == "ok"]
    assert {c["name"].split(" ")[0] for c in stepped} == {"flatten_deit_t", "flatten_pvt_t", "flatten_pvt_v2_b0",
                                                          "flatten_swin_t", "flatten_cswin_t"}
    assert [c["numbers"]["use_checkpoint"] for c in stepped].count(True) == 1
    assert all("peak GPU memory needs CUDA" in c["detail"] and c["batch"] == 1 and c["numbers"]["params_m"] > 1
               for c in stepped)
    # distributed: main.py --nproc-per-node 2 on gloo, plain and --use-checkpoint; img/s from the run's log
    dist = {c["name"]: c for c in checks if c["section"] == "distributed"}
    for name, flag in (("plain, 2 CPU processes", ""), ("--use-checkpoint, 2 CPU processes", "--use-checkpoint")):
        c = dist[name]
        assert c["status"] == "ok", c
        assert c["command"].startswith("python main.py --nproc-per-node 2 --cfg configs/flatten_swin_t.yaml")
        assert flag in c["command"] and c["batch"] == 2
        n = c["numbers"]
        assert n["world_size"] == 2 and n["steps"] == 2 and n["img_per_s"] == pytest.approx(2 / n["step_s"])
        assert f"{n['img_per_s']:.1f} img/s per CPU process" in c["value"]
    for name in ("--compile, 2 CPU processes", "scaling from 1 GPU to all"):
        assert dist[name]["status"] == "skipped" and dist[name]["detail"].startswith("dry run: ")
    assert (tmp_path / "distributed" / "runs" / "flatten_swin_t" / "checkpoint" / "last.pth").is_file()


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


# ----------------------------------------------------------------------------- the parts, in this process
def _context(tmp_path, **kw):
    from scripts.gpu_check import Context
    return Context(torch.device("cpu"), True, None, str(tmp_path), "test CPU", **kw)


def test_step_times_come_from_the_progress_lines_without_the_first_window():
    from scripts.gpu_check import parse_train_log, throughput_of
    line = ("[2026-12-04 17:27:09 flatten] INFO Train: [0/1][{done}/12]  eta 0:00:09  lr 2.939e-06  loss 1.7396 "
            "(1.7396)  grad_norm 7.0261  data {data}s  step {step}s  mem {mem}MB")
    text = "\n".join([line.format(done=4, data="0.500", step="9.000", mem=700),      # start-up: left out
                      "[2026-12-04 17:27:10 flatten] WARNING unreadable training image replaced",
                      line.format(done=8, data="0.010", step="0.100", mem=800),
                      line.format(done=12, data="0.030", step="0.300", mem=790)])
    windows = parse_train_log(text)
    assert [w["done"] for w in windows] == [4, 8, 12] and windows[1]["step_s"] == 0.1
    stats = throughput_of(windows, batch=64)
    assert stats["steps"] == 8 and stats["step_s"] == pytest.approx(0.2) and stats["data_s"] == pytest.approx(0.02)
    assert stats["img_per_s"] == pytest.approx(320.0) and stats["warmup_s"] == pytest.approx(36.0)
    assert stats["mem_mb"] == 800
    assert throughput_of(windows[:1], batch=64) is None       # no window after the start-up: no figure


CHILD_IN_ITS_OWN_SESSION = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_run_past_its_limit_is_killed_with_every_process_it_started(tmp_path):
    from scripts.gpu_check import run_with_limit
    log = tmp_path / "run.log"
    t0 = time.time()
    code, seconds = run_with_limit([sys.executable, "-c", CHILD_IN_ITS_OWN_SESSION], str(log), 5, dict(os.environ))
    assert code is None and 5 <= seconds < 30 and time.time() - t0 < 30
    child = int(log.read_text().split()[0])      # like the launcher's workers: a session of its own
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:     # killed but not yet reaped by init
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {child} still runs")


def test_a_failed_training_run_is_a_failed_check_with_its_error_line(tmp_path, monkeypatch):
    import scripts.gpu_check as gc
    ctx = _context(tmp_path)
    monkeypatch.setattr(gc, "DIST_CONFIG", "configs/no_such_config.yaml")
    monkeypatch.setattr(gc, "dist_variants", lambda ctx, gpus: [
        gc.DistVariant("plain", "plain", [], [], "tiny", 5, 120, 1, 0)])
    gc.check_distributed(ctx)
    failed = [c for c in ctx.checks if c.status == gc.FAIL]
    assert len(failed) == 1 and failed[0].name == "plain, 1 CPU process"
    assert failed[0].detail.startswith("exit code 2: error: config file not found: ")
    assert "configs/no_such_config.yaml (log: " in failed[0].detail
    assert failed[0].command.startswith("python main.py --nproc-per-node 1 --cfg configs/no_such_config.yaml")


def test_a_run_stopped_by_the_section_budget_is_skipped_and_one_past_its_own_limit_failed(tmp_path, monkeypatch):
    import scripts.gpu_check as gc
    ctx = _context(tmp_path)
    ctx.section_deadline = time.time() + 60

    def out_of_time(cmd, log_path, limit_s, env):
        with open(log_path, "w") as f:
            f.write("[...] INFO Train: [0/1][1/3] ...\nlast words\n")
        return None, limit_s
    monkeypatch.setattr(gc, "run_with_limit", out_of_time)
    monkeypatch.setattr(gc, "dist_variants", lambda ctx, gpus: [
        gc.DistVariant("plain", "plain", [], [], "tiny", 5, 120, 2, 0),             # cut to the ~60 s left
        gc.DistVariant("checkpoint", "--use-checkpoint", ["--use-checkpoint"], [], "tiny", 5, 10, 2, 0)])
    gc.check_distributed(ctx)
    plain, checkpoint = ctx.checks[:2]
    assert plain.status == "skipped" and plain.detail.startswith("did not finish in the ")
    assert "s the section had left" in plain.detail and "last line: last words" in plain.detail
    assert checkpoint.status == "FAIL" and checkpoint.detail.startswith("timed out after 10 s: last words")


def test_the_memory_section_measures_the_heaviest_configs_first():
    from scripts.gpu_check import heaviest_first, released_configs
    configs = released_configs()
    assert len(configs) == 18
    order = heaviest_first(configs)
    assert sorted(order) == sorted(configs)
    assert set(order[:2]) == {"flatten_swin_b_384", "flatten_cswin_b_384"}     # 32 x 46 GFLOPs a batch
    assert order[-1] == "flatten_pvt_v2_b0"                                    # 128 x 0.6


def test_sections_past_the_time_budget_are_skipped_rows_that_say_why(tmp_path):
    import scripts.gpu_check as gc
    ctx = _context(tmp_path, budget_s=5.0)
    ctx.deadline = time.time() - 1
    ended = []
    gc.run_sections(ctx, ["env", "memory"], after=lambda: ended.append(len(ctx.checks)))
    assert [(c.section, c.status) for c in ctx.checks] == [("env", "skipped"), ("memory", "skipped")]
    assert ended == [1, 2]                              # the report is rewritten after each, skipped or not
    assert all(c.detail == "time budget spent (--budget-s 5)" for c in ctx.checks)
    ctx = _context(tmp_path)
    gc.run_sections(ctx, ["env"], after=lambda: gc.write_report(ctx, "now", 1.0))
    assert json.loads((tmp_path / "gpu_check.json").read_text())["checks"][0]["section"] == "env"
    # inside a section: what does not fit the time left is skipped, nothing is started
    ctx = _context(tmp_path / "dist", budget_s=100.0)
    ctx.section_deadline = time.time() + 10             # a training run needs at least 30 s
    gc.check_distributed(ctx)
    runs = [c for c in ctx.checks if c.name in ("plain, 2 CPU processes", "--use-checkpoint, 2 CPU processes")]
    assert len(runs) == 2 and all(c.status == "skipped" and "time budget of the section spent" in c.detail
                                  for c in runs)
    assert not (tmp_path / "dist" / "distributed").exists()
    ctx = _context(tmp_path)
    ctx.section_deadline = time.time() - 1
    gc.check_memory(ctx)
    left = [c for c in ctx.checks if c.name == "5 config(s) not measured"]
    assert len(left) == 1 and "flatten_cswin_t" in left[0].detail
    assert not [c for c in ctx.checks if c.status == "ok"]


FEATURE_MAP_ON_THE_CPU = """
import torch
import scripts.gpu_check as gc
from scripts.core import cli

class Cuda(gc.Context):            # the GPU path of the section, its kernel in Triton's interpreter
    cuda = property(lambda self: True)

ctx = Cuda(torch.device("cpu"), False, None, "out", "CPU, Triton interpreter")
gc.FEATURE_MAP_ARGV = ["--feature-map", "--batch", "1", "--amp", "bf16", "--warmup", "1", "--rounds", "1",
                       "--iters", "1", "--device", "cpu"]
gc.check_feature_map(ctx)
import json, sys
json.dump([c.__dict__ for c in ctx.checks], sys.stdout)
"""


@pytest.mark.slow
def test_the_feature_map_timing_in_tritons_interpreter(tmp_path):
    """The GPU-only part of the op section (Triton kernel vs PyTorch feature map, bf16) on the CPU."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", FEATURE_MAP_ON_THE_CPU], cwd=ROOT, capture_output=True, text=True,
                       timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    checks = json.loads(r.stdout.strip().splitlines()[-1])
    assert [c["status"] for c in checks] == ["ok"] * 6
    errors = [c for c in checks if "max rel. error" in c["name"]]
    assert len(errors) == 2 and all(float(c["value"]) < 0.0625 for c in errors)
    timed = [c for c in checks if "Triton vs PyTorch" in c["name"] and "error" not in c["name"]]
    assert len(timed) == 4 and all(c["target"] == "at least 1x" and c["numbers"]["triton_ms"] > 0 for c in timed)
    assert all(c["command"].startswith("python -m scripts.benchmark --feature-map") for c in checks)
