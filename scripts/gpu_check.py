"""One command for the first GPU a session gets: every CUDA-only path checked, then the speed figures.

    .venv/bin/python -m scripts.gpu_check [--official-path ../FLatten-Transformer] [--out DIR] [--budget-s S]
    .venv/bin/python -m scripts.gpu_check --dry-run          # the same checks at tiny sizes on the CPU (CI)
    make gpu-check                                           # the first form, output in output/gpu_check/

Sections, in order (``--only`` / ``--skip`` choose):

* ``env``: GPU, driver, CUDA, torch, triton.
* ``triton``: the Triton feature-map kernel against the fused PyTorch path, forward
  and backward, in float32, bfloat16 and float16 (max error); what the kernel's
  self-check at first use decided (one verdict per kernel variant); and that
  first use inside a gradient-checkpointed block, forward and backward.
* ``amp``: one bfloat16 step and one float16 step with the loss scaler per family,
  through the training engine's step unit; loss and gradients finite.
* ``compile``: ``torch.compile(fullgraph=True)`` of FLatten-Swin-T against eager,
  at its built size and at a second size.
* ``inference``: FLatten-Swin-T at batch 256 in bfloat16, ours eager and compiled,
  against the official code eager (``--official-path``) and timm's Swin-T compiled.
* ``training``: one training step and its peak memory, ours against the official code.
* ``memory``: every Table 8 config (``configs/<name>.yaml``, built as ``main.py``
  builds it) at its released per-GPU batch: two training steps (forward, backward,
  AdamW; bfloat16 autocast; EMA where the config has one), the peak of
  ``torch.cuda.max_memory_allocated`` and whether it fits the GPU (an out-of-memory
  is a row that says it does not fit). Gradient checkpointing off, as released;
  then, time allowing, on for the two largest.
* ``op``: the attention op alone, forward and forward + backward, ours against
  the official op sequence (both from bfloat16 q, k, v under bfloat16 autocast);
  and the keys' feature map alone, the Triton kernel against the fused PyTorch
  path, in bfloat16 at FLatten-Swin-T's stage-1 and stage-2 shapes.
* ``scaling``: FLatten-Swin-T against Swin-T and global softmax at 224-768 px.
* ``distributed``: short real training runs (one epoch of 30 optimizer steps) of
  ``main.py --nproc-per-node <every visible GPU>`` on a generated photo ImageFolder,
  each a subprocess with a time limit: plain, ``--use-checkpoint`` and ``--compile``
  (a one-block-per-stage FLatten-Swin-T, so that inductor's compile fits the
  budget); img/s per GPU from the steps' times in the run's log, and the scaling
  from one GPU to all of them.

Every figure is printed with the equivalent ``scripts.benchmark`` (or ``main.py``)
command, the hardware and the batch, and written to ``DIR/gpu_check.json`` and, as the
markdown table ``docs/speed.md`` takes, ``DIR/gpu_check.md``. The exit status
is 1 when a correctness check fails (a kernel mismatch, a non-finite step, a
compiled model that differs, an error in one of our models, a training run that
fails or runs out of time), never because a speed target is missed or a config
does not fit the GPU; targets are printed beside the figures.

Time: ``memory`` and ``distributed`` stop at ceilings of their own
(``SECTION_BUDGET_S``; what is left is a ``skipped`` row that says so), every
subprocess has a time limit, and ``--budget-s S`` caps the whole command: a
section that would start after S seconds is skipped, and the long sections fit
into what is left. On one H200, ``--only env triton distributed memory op`` takes
about 5 minutes. The report is rewritten after every section, so a run stopped from
outside keeps what it measured.

``--dry-run`` runs on the CPU in about 90 seconds (2 idle cores): tiny sizes, float32 instead of the
GPU precisions where the CPU lacks them, every check that needs CUDA reported as
skipped with the reason, the ``distributed`` runs (plain and ``--use-checkpoint``) as
2 CPU processes on gloo with a tiny model, and the ``memory`` section building the
smallest config of each family as ``main.py`` does and taking two steps at 64 px.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it from the repository root as: python -m scripts.gpu_check ...")

import torch  # noqa: E402

from scripts.core import cli  # noqa: E402
from scripts.core.cli import ScriptError  # noqa: E402
from scripts.core.environment import base_meta, hardware  # noqa: E402
from scripts.core.processes import kill_tree  # noqa: E402

SECTIONS = ("env", "triton", "amp", "compile", "inference", "training", "memory", "op", "scaling", "distributed")
OK, FAIL, SKIPPED = "ok", "FAIL", "skipped"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Wall-clock ceilings (seconds) of the long sections, sized for one H200 (16 CPU cores): what does not fit is a
# skipped row. --budget-s lowers them to what the whole command has left.
SECTION_BUDGET_S = {"memory": 70.0, "distributed": 190.0}
# The dry run's: only against a hung rehearsal (on a busy 2-core machine it takes several times its usual 90 s).
DRY_RUN_BUDGET_S = {"memory": 600.0, "distributed": 600.0}


@dataclass
class Check:
    """One line of the report."""
    section: str
    name: str
    status: str                      # ok | FAIL | skipped
    value: str = ""                  # the measured figure, as printed
    target: str = ""                 # the issue's target, where there is one ("at least 2x")
    met: Optional[bool] = None       # whether the target is met (never affects the exit status)
    detail: str = ""
    command: str = ""
    batch: Optional[int] = None
    numbers: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    device: torch.device
    dry_run: bool
    official_path: Optional[str]
    out: str
    hardware: str
    checks: List[Check] = field(default_factory=list)
    last_command: str = ""
    budget_s: Optional[float] = None         # --budget-s: the whole command's time
    deadline: float = math.inf               # when --budget-s runs out (time.time())
    section_deadline: float = math.inf       # when the running section must stop starting new work

    def ceiling(self, section: str) -> float:
        """The section's own time ceiling in seconds (inf: none)."""
        return (DRY_RUN_BUDGET_S if self.dry_run else SECTION_BUDGET_S).get(section, math.inf)

    def time_left(self) -> float:
        """Seconds the running section may still use (its ceiling or what --budget-s leaves; inf: no limit)."""
        return self.section_deadline - time.time()

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        mark = {OK: "ok  ", FAIL: "FAIL", SKIPPED: "skip"}[check.status]
        where = f" [{self.hardware}; batch {check.batch}]" if check.batch else ""
        target = f" (target {check.target}: {'met' if check.met else 'missed'})" if check.target and check.met \
            is not None else ""
        print(f"{mark} {check.section:<9} {check.name:<46} {check.value}{target}{where}"
              + (f"  {check.detail}" if check.detail else ""), flush=True)
        if check.command and check.command != self.last_command:   # once per command
            print(f"     $ {check.command}", flush=True)
            self.last_command = check.command
        return check

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def skip_without_cuda(self, section: str, name: str, why: str = "needs CUDA") -> bool:
        if self.cuda:
            return False
        self.add(Check(section, name, SKIPPED, detail=why))
        return True


# ----------------------------------------------------------------------------- env
def check_env(ctx: Context) -> None:
    meta = base_meta(ctx.device, "gpu_check")
    driver = ""
    if ctx.cuda:
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = "unknown (no nvidia-smi)"
        props = torch.cuda.get_device_properties(ctx.device)
        meta.update(gpu_memory_gb=round(props.total_memory / 2 ** 30, 1), capability=f"{props.major}.{props.minor}",
                    bf16=torch.cuda.is_bf16_supported())
    meta["driver"] = driver or None
    value = (f"{meta['hardware']}; driver {driver or '-'}; CUDA {meta.get('cuda') or '-'}; torch {meta['torch']}; "
             f"triton {meta.get('triton') or '-'}")
    ctx.add(Check("env", "environment", OK, value=value, numbers=meta))


# ----------------------------------------------------------------------------- triton
# (input dtype, feature dtype) pairs the fused path uses: fp32; bf16 autocast (bf16 matmuls); fp16 autocast
# (features and matmuls stay in fp32, whose range the k^T v sums need).
TRITON_CASES = ((torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32))


def check_triton(ctx: Context) -> None:
    from models.layers.attention import triton_fla
    from models.layers.attention.focused import torch_feature_map
    if not triton_fla.HAS_TRITON:
        ctx.add(Check("triton", "kernel", SKIPPED, detail="triton is not installed"))
        return
    if ctx.skip_without_cuda("triton", "kernel vs PyTorch path, fwd/bwd", "needs CUDA (the test suite checks the "
                             "kernel on the CPU under TRITON_INTERPRET=1)"):
        return
    # FLatten-Swin-T stage 1 (96 channels, 3 heads) and stage 2 (192, 6); p = 3 and a non-integer power
    for channels, heads, p in ((96, 3, 3.0), (192, 6, 3.0), (96, 3, 2.5)):
        for in_dtype, out_dtype in TRITON_CASES:
            t0 = time.perf_counter()
            ok, why = triton_fla.self_check(ctx.device, in_dtype, out_dtype, channels, heads, p, True,
                                            torch_feature_map)
            name = (f"C={channels} h={heads} p={p:g}: {str(in_dtype)[6:]} in, {str(out_dtype)[6:]} features")
            ctx.add(Check("triton", name, OK if ok else FAIL, value=why, detail=f"{time.perf_counter() - t0:.2f} s"))
    # what the auto mode decides at first use, in a real model forward
    import timm

    import models  # noqa: F401
    from models.layers.attention import attention_impl
    triton_fla.forget_verdicts()
    model = timm.create_model("flatten_swin_tiny_patch4_224").to(ctx.device).eval()
    x = torch.randn(2, 3, 224, 224, device=ctx.device)
    for dtype in (torch.float32, torch.bfloat16):
        with attention_impl("auto"), torch.no_grad(), torch.autocast("cuda", dtype=dtype,
                                                                      enabled=dtype != torch.float32):
            model(x)
    for key, (ok, why) in triton_fla.verdicts().items():
        variant = key.describe() if hasattr(key, "describe") else str(key)
        ctx.add(Check("triton", f"auto mode's first-use check: {variant}", OK if ok else FAIL,
                      value="kernel used" if ok else "PyTorch path", detail=why))
    # The first use inside a block under gradient checkpointing, forward and backward: the check's own
    # saved tensors once broke the checkpoint's recomputation (CheckpointError at the first backward).
    triton_fla.forget_verdicts()
    model.train().set_grad_checkpointing(True)
    name = "first use under gradient checkpointing, bf16 fwd+bwd"
    try:
        with attention_impl("auto"), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).float().logsumexp(-1).mean()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = bool(grads) and all(torch.isfinite(g).all() for g in grads)
        used = sum(ok for ok, _ in triton_fla.verdicts().values())
        ctx.add(Check("triton", name, OK if finite else FAIL, batch=x.shape[0],
                      value=f"loss {loss.item():.3f}, gradients {'finite' if finite else 'NOT finite'}",
                      detail=f"kernel used for {used} of {len(triton_fla.verdicts())} variant(s)"))
    except Exception as e:
        ctx.add(Check("triton", name, FAIL, batch=x.shape[0], detail=f"{type(e).__name__}: {cli.one_line(e)[:300]}"))


# ----------------------------------------------------------------------------- amp
AMP_MODELS = ("flatten_deit_tiny_patch16_224", "flatten_pvt_tiny", "flatten_pvt_v2_b0", "flatten_swin_tiny_patch4_224",
              "flatten_cswin_tiny_224")
TINY = {"deit": dict(embed_dim=48, depth=2, num_heads=3),
        "pvt": dict(embed_dims=(16, 16, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
        "pvt_v2": dict(embed_dims=(16, 16, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
        "swin": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)),
        "cswin": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4))}


def check_amp(ctx: Context) -> None:
    """One bfloat16 step and one float16 step with the loss scaler per family, through the engine's step unit."""
    import timm

    import models
    from engine import StepUnit
    batch = 2 if ctx.dry_run else 16
    for name in AMP_MODELS:
        family = models.family_of(name)
        size = (48 if family == "deit" else 64) if ctx.dry_run else 224
        kwargs = TINY[family] if ctx.dry_run else {}
        for dtype in (torch.bfloat16, torch.float16):
            label = f"{name} {str(dtype)[6:]}" + (" + loss scaler" if dtype == torch.float16 else "")
            torch.manual_seed(0)
            try:
                model = timm.create_model(name, img_size=size, **kwargs).to(ctx.device).train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                scaler = torch.amp.GradScaler(ctx.device.type) if dtype == torch.float16 else None
                unit = StepUnit(model, torch.nn.CrossEntropyLoss(), opt, device=ctx.device, amp_dtype=dtype,
                                scaler=scaler, clip_grad=5.0)
                x = torch.randn(batch, 3, size, size, device=ctx.device)
                y = torch.randint(0, 1000, (batch,), device=ctx.device)
                results = [unit([(x, y)]) for _ in range(3)]   # a float16 scale may start too high: skips first
                applied = [r for r in results if not r.skipped]
            except Exception as e:
                ctx.add(Check("amp", label, FAIL, detail=f"{type(e).__name__}: {cli.one_line(e)[:300]}", batch=batch))
                continue
            finite = bool(applied) and all(torch.isfinite(torch.tensor([r.loss, r.grad_norm])).all() for r in applied)
            finite = finite and all(torch.isfinite(p).all() for p in model.parameters())
            detail = (f"{len(results) - len(applied)} of 3 steps skipped by the scaler" if scaler is not None else "")
            ctx.add(Check("amp", label, OK if finite else FAIL, batch=batch, detail=detail,
                          value=(f"loss {applied[-1].loss:.3f}, grad norm {applied[-1].grad_norm:.3f}" if applied
                                 else "every step skipped")))


# ----------------------------------------------------------------------------- compile
def check_compile(ctx: Context) -> None:
    """torch.compile(fullgraph=True) against eager at the built size and, with dynamic_img_size, a second size."""
    import timm

    import models  # noqa: F401
    import torch._dynamo
    if ctx.dry_run:   # a narrow, shallow model and dynamo alone: inductor on a CPU takes minutes
        name, size, other, backend, amp = "flatten_swin_tiny_patch4_224", 64, (64, 128), "eager", None
        kwargs = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=16)
        tol = 1e-5
    else:
        name, size, other, backend, amp = "flatten_swin_tiny_patch4_224", 224, (256, 320), "inductor", torch.bfloat16
        kwargs = {}
        tol = 3e-2                       # bf16 autocast; inductor may fuse in another order
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=size, dynamic_img_size=True, **kwargs).to(ctx.device).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for shape in ((size, size), other):
        x = torch.randn(4 if ctx.cuda else 1, 3, *shape, device=ctx.device)
        t0 = time.perf_counter()
        try:
            with torch.no_grad(), torch.autocast(ctx.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                got = compiled(x).float()
                want = model(x).float()
        except Exception as e:
            ctx.add(Check("compile", f"{name} at {shape[0]}x{shape[1]} ({backend})", FAIL,
                          detail=f"{type(e).__name__}: {cli.one_line(e)[:300]}"))
            continue
        err = ((got - want).abs().max() / want.abs().max()).item()
        ctx.add(Check("compile", f"{name} at {shape[0]}x{shape[1]} ({backend}, fullgraph)", OK if err <= tol else FAIL,
                      value=f"max rel. difference from eager {err:.1e}",
                      detail=f"tolerance {tol:g}; first call {time.perf_counter() - t0:.1f} s"))


# ----------------------------------------------------------------------------- speed sections
def benchmark_run(argv: List[str]):
    """Run one ``scripts.benchmark`` mode in this process; returns (command, meta, results, prepared)."""
    from scripts.benchmark import __main__ as bench
    from scripts.benchmark import attention_op, model_speed, scaling
    args = bench.parse_args(argv)
    device = torch.device(args.device) if args.device != "auto" else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    command = "python -m scripts.benchmark " + " ".join(shlex.quote(a) for a in argv)
    if args.feature_map:
        meta, results = attention_op.run_feature_map(args, device)
        return command, meta, results
    if args.op:
        meta, results = attention_op.run(args, device)
        return command, meta, results
    if args.resolutions:
        meta, results = scaling.run(args, device)
        return command, meta, results
    meta, results, _ = model_speed.run(args, device)
    return command, meta, results


def _find(results, model, impl, compiled=None) -> Optional[dict]:
    for r in results:
        if r["model"] == model and r["impl"] == impl and (compiled is None or bool(r.get("compiled")) == compiled):
            return r
    return None


def _ours_failed(ctx: Context, section: str, results: List[dict], command: str) -> bool:
    bad = [r for r in results if r.get("error") and r["impl"] in ("ours", "reference")]
    for r in bad:
        ctx.add(Check(section, f"{r['model']} ({r['impl']}{', compiled' if r.get('compiled') else ''})", FAIL,
                      detail=r["error"], command=command))
    return bool(bad)


def ratio_check(ctx: Context, section: str, name: str, fast: Optional[dict], slow: Optional[dict], target: float,
                command: str, batch: int, why_missing: str) -> None:
    if fast is None or slow is None or fast.get("error") or slow.get("error"):
        missing = slow if fast is not None and not fast.get("error") else fast
        detail = (missing or {}).get("error") or why_missing
        ctx.add(Check(section, name, SKIPPED, detail=detail, target=f"at least {target:g}x", command=command,
                      batch=batch))
        return
    ratio = fast["img_per_s"] / slow["img_per_s"]
    ctx.add(Check(section, name, OK, value=f"{ratio:.2f}x ({fast['img_per_s']:.1f} vs {slow['img_per_s']:.1f} img/s)",
                  target=f"at least {target:g}x", met=ratio >= target, command=command, batch=batch,
                  numbers=dict(ratio=ratio, fast=fast["img_per_s"], slow=slow["img_per_s"])))


def official_args(ctx: Context) -> List[str]:
    return ["--official-path", ctx.official_path] if ctx.official_path else []


def check_inference(ctx: Context) -> None:
    impls = ["ours", "timm"] + (["official"] if ctx.official_path else [])
    if ctx.dry_run:
        argv = ["--models", "flatten_swin_t", "swin_t", "--impl", *impls, *official_args(ctx), "--batch", "1",
                "--warmup", "1", "--rounds", "1", "--iters", "1", "--device", str(ctx.device)]
    else:
        argv = ["--models", "flatten_swin_t", "swin_t", "--impl", *impls, *official_args(ctx), "--batch", "256",
                "--amp", "bf16", "--compile", "--eager-too", "--warmup", "3", "--rounds", "5", "--iters", "3"]
    command, meta, results = benchmark_run(argv)
    batch = meta["batch"]
    if _ours_failed(ctx, "inference", results, command):
        return
    ours_c = _find(results, "flatten_swin_t", "ours", True)
    ours_e = _find(results, "flatten_swin_t", "ours", False)
    official_e = _find(results, "flatten_swin_t", "official", False)
    timm_c = _find(results, "swin_t", "timm", True)
    no_official = "no --official-path" if not ctx.official_path else "official model not timed"
    if ctx.dry_run:
        ctx.add(Check("inference", "compiled models", SKIPPED, detail="dry run: compiling Swin-T on a CPU takes "
                      "minutes; the GPU run times ours and timm's compiled"))
        ratio_check(ctx, "inference", "ours eager vs official eager", ours_e, official_e, 1.0, command, batch,
                    no_official)
        return
    ratio_check(ctx, "inference", "ours compiled vs official eager", ours_c, official_e, 2.0, command, batch,
                no_official)
    ratio_check(ctx, "inference", "ours eager vs official eager", ours_e, official_e, 1.0, command, batch,
                no_official)
    ratio_check(ctx, "inference", "ours compiled vs timm swin_t compiled", ours_c, timm_c, 1.0, command, batch,
                "timm's Swin-T not timed")


def check_training(ctx: Context) -> None:
    impls = ["ours"] + (["official"] if ctx.official_path else [])
    if ctx.dry_run:
        argv = ["--models", "flatten_swin_t", "--impl", *impls, *official_args(ctx), "--train", "--batch", "2",
                "--warmup", "1", "--rounds", "1", "--iters", "1", "--device", str(ctx.device)]
    else:
        argv = ["--models", "flatten_swin_t", "--impl", *impls, *official_args(ctx), "--train", "--batch", "128",
                "--amp", "bf16", "--warmup", "3", "--rounds", "5", "--iters", "3"]
    command, meta, results = benchmark_run(argv)
    if _ours_failed(ctx, "training", results, command):
        return
    ours, official = _find(results, "flatten_swin_t", "ours"), _find(results, "flatten_swin_t", "official")
    ratio_check(ctx, "training", "training step, ours vs official", ours, official, 1.8, command, meta["batch"],
                "no --official-path" if not ctx.official_path else "official model not timed")
    for r in (ours, official):
        if r is not None and not r.get("error") and r.get("peak_mem_mb") is not None:
            ctx.add(Check("training", f"peak memory ({r['impl']})", OK, value=f"{r['peak_mem_mb']:.0f} MB",
                          command=command, batch=meta["batch"], numbers=dict(peak_mem_mb=r["peak_mem_mb"])))


def check_op(ctx: Context) -> None:
    argv = (["--op", "--batch", "2", "--warmup", "1", "--rounds", "1", "--iters", "1", "--device", str(ctx.device)]
            if ctx.dry_run else ["--op", "--batch", "64", "--amp", "bf16", "--warmup", "3", "--rounds", "5",
                                 "--iters", "5"])
    command, meta, results = benchmark_run(argv)
    if _ours_failed(ctx, "op", results, command):
        return
    tol = 1e-4 if ctx.dry_run else 3e-2        # both sides bf16: q, k, v and the matmuls round differently
    for label in sorted({r["model"] for r in results}):
        rows = [r for r in results if r["model"] == label]
        err = rows[0]["max_rel_diff_vs_official"]
        ctx.add(Check("op", f"{label}: ours vs official op, max rel. error", OK if err <= tol else FAIL,
                      value=f"{err:.1e}", detail=f"tolerance {tol:g}; {meta['dtype']}, "
                      f"{rows[0].get('input_dtype', 'float32')} q, k, v on both sides", command=command,
                      batch=meta["batch"]))
        for mode, target in (("fwd", 3.0), ("fwd+bwd", 2.0)):
            ours = next((r for r in rows if r["op"] == mode and r["impl"] == "ours"), None)
            official = next((r for r in rows if r["op"] == mode and r["impl"] == "official"), None)
            ratio_check(ctx, "op", f"{label} {mode}, ours vs official", ours, official, target, command,
                        meta["batch"], "official op not timed")
    check_feature_map(ctx)


# FLatten-Swin-T's stage-1 and stage-2 keys at batch 64 in bfloat16
FEATURE_MAP_ARGV = ["--feature-map", "--batch", "64", "--amp", "bf16", "--warmup", "3", "--rounds", "5", "--iters",
                    "10"]


def check_feature_map(ctx: Context) -> None:
    """The Triton feature-map kernel timed against the fused PyTorch feature map, in bfloat16 (part of ``op``)."""
    from models.layers.attention import triton_fla
    name = "feature map fwd and fwd+bwd, Triton vs PyTorch"
    if not triton_fla.HAS_TRITON:
        ctx.add(Check("op", name, SKIPPED, detail="triton is not installed"))
        return
    if ctx.skip_without_cuda("op", name, "needs CUDA (the kernel runs on the CPU only under TRITON_INTERPRET=1, "
                             "far too slowly to time)"):
        return
    command, meta, results = benchmark_run(FEATURE_MAP_ARGV)
    bad = [r for r in results if r.get("error")]
    for r in bad:
        ctx.add(Check("op", f"{r['model']} {r['op']} ({r['impl']})", FAIL, detail=r["error"], command=command,
                      batch=meta["batch"]))
    if bad:
        return
    tol = triton_fla.check_tolerance(torch.bfloat16)
    for label in sorted({r["model"] for r in results}):
        rows = [r for r in results if r["model"] == label]
        err = rows[0]["max_rel_diff_vs_torch"]
        shape = f"N={rows[0]['tokens']} C={rows[0]['channels']} h={rows[0]['heads']}"
        ctx.add(Check("op", f"{label}: Triton vs PyTorch, max rel. error", OK if err <= tol else FAIL,
                      value=f"{err:.1e}", detail=f"tolerance {tol:g}; {shape}; {meta['input_dtype']} keys, "
                      f"{meta['feature_dtype']} features", command=command, batch=meta["batch"]))
        for mode in ("fwd", "fwd+bwd"):
            kernel = next(r for r in rows if r["op"] == mode and r["impl"] == "triton")
            torch_path = next(r for r in rows if r["op"] == mode and r["impl"] == "torch")
            ratio = torch_path["ms_per_batch"] / kernel["ms_per_batch"]
            ctx.add(Check("op", f"{label} {mode}, Triton vs PyTorch", OK, target="at least 1x", met=ratio >= 1.0,
                          value=f"{ratio:.2f}x ({kernel['ms_per_batch']:.3f} vs {torch_path['ms_per_batch']:.3f} ms)",
                          detail=f"{shape}; median of {len(kernel['rounds_ms'])} rounds", command=command,
                          batch=meta["batch"], numbers=dict(ratio=ratio, triton_ms=kernel["ms_per_batch"],
                                                            torch_ms=torch_path["ms_per_batch"])))


# ----------------------------------------------------------------------------- memory
MEMORY_STEPS = 2             # the second step runs with the optimizer's state allocated, as training does
# The dry run: the smallest config of each family (loss with and without Mixup, EMA), at 64 px, batch 1 (all 18
# configs take 40 s on 2 CPU cores; the test suite builds every config).
MEMORY_DRY_SIZE = 64
MEMORY_DRY_CONFIGS = ("flatten_deit_t", "flatten_pvt_t", "flatten_pvt_v2_b0", "flatten_swin_t", "flatten_cswin_t")


def released_configs() -> List[str]:
    """The FLatten rows of paper Table 8 (models/released.py), as config names."""
    from models.released import TABLE8
    return [row.config for row in TABLE8 if row.is_flatten]


def heaviest_first(configs: List[str]) -> List[str]:
    """``configs`` by the work of one released batch, released per-GPU batch x Table 8 GFLOPs, largest first."""
    from config import load_config
    from models.released import by_config

    def work(config: str) -> float:
        batch = load_config(os.path.join(ROOT, "configs", f"{config}.yaml")).DATA.BATCH_SIZE
        return batch * float(by_config(config).flops)
    return sorted(configs, key=work, reverse=True)


def _criterion_and_targets(cfg, batch: int, num_classes: int, device: torch.device):
    """The config's loss with targets of its form: soft targets where Mixup/CutMix are on (as main.py)."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    mixing = cfg.AUG.MIXUP > 0 or cfg.AUG.CUTMIX > 0 or cfg.AUG.CUTMIX_MINMAX is not None
    if mixing:
        return SoftTargetCrossEntropy(), torch.randn(batch, num_classes, device=device).softmax(-1)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    if cfg.MODEL.LABEL_SMOOTHING > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.MODEL.LABEL_SMOOTHING), labels
    return torch.nn.CrossEntropyLoss(), labels


def training_memory(config: str, device: torch.device, amp_dtype: Optional[torch.dtype], batch: Optional[int] = None,
                    img_size: Optional[int] = None, use_checkpoint: bool = False) -> Dict[str, Any]:
    """``MEMORY_STEPS`` training steps of ``configs/<config>.yaml`` built as ``main.py`` builds it.

    ``config.load_config`` + :class:`utils.training_state.TrainingState` (``models.build_model``,
    the config's optimizer, loss scaler and EMA), steps through :class:`engine.StepUnit`.
    ``batch`` / ``img_size`` None: the config's. Returns dict(batch, img_size, params_m,
    ema, loss, seconds) plus, on CUDA, ``peak_mb`` / ``reserved_mb`` (``max_memory_allocated``
    / ``max_memory_reserved`` over build and steps, less what was allocated before), or
    ``oom`` (the first line of the out-of-memory error).
    """
    from config import finalize, load_config
    from engine import StepUnit
    from utils.training_state import TrainingState
    opts = ["TRAIN.USE_CHECKPOINT", bool(use_checkpoint)]
    if img_size is not None:
        opts += ["DATA.IMG_SIZE", int(img_size)]
    cfg = finalize(load_config(os.path.join(ROOT, "configs", f"{config}.yaml"), opts), 1)
    batch = int(batch or cfg.DATA.BATCH_SIZE)
    size = int(cfg.DATA.IMG_SIZE)
    num_classes = int(cfg.MODEL.NUM_CLASSES or 1000)
    out: Dict[str, Any] = dict(batch=batch, img_size=size, ema=bool(cfg.TRAIN.EMA.ENABLE),
                               use_checkpoint=bool(use_checkpoint))
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    criterion, targets = _criterion_and_targets(cfg, batch, num_classes, device)
    try:
        torch.manual_seed(0)
        state = TrainingState.build(cfg, num_classes=num_classes, steps_per_epoch=100, device=device,
                                    amp_dtype=amp_dtype, rank=0, world_size=1, config_yaml="")
        state.prepare(compile_model=False, seed=0)
        out["params_m"] = sum(p.numel() for p in state.model.parameters()) / 1e6
        unit = StepUnit(state.train_model, criterion, state.optimizer, device=device, amp_dtype=amp_dtype,
                        scaler=state.scaler, clip_grad=cfg.TRAIN.CLIP_GRAD, model_ema=state.model_ema,
                        ema_source=state.model)
        x = torch.randn(batch, 3, size, size, device=device)
        for _ in range(MEMORY_STEPS):
            result = unit([(x, targets)], where=f"({config}, memory check)")
        out["loss"] = result.loss
        out["finite"] = math.isfinite(result.loss) and math.isfinite(result.grad_norm)
        if cuda:
            torch.cuda.synchronize(device)
    except torch.OutOfMemoryError as e:
        out["oom"] = str(e).strip().splitlines()[0][:200]
    finally:
        state = unit = x = targets = None
    out["seconds"] = time.perf_counter() - t0
    if cuda:
        out["peak_mb"] = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
        out["reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2 ** 20
        gc.collect()
        torch.cuda.empty_cache()
    return out


def check_memory(ctx: Context) -> None:
    """Peak GPU memory of one training step of every Table 8 config at its released per-GPU batch."""
    configs = released_configs()
    command = "python -m scripts.gpu_check --only memory" + (" --dry-run" if ctx.dry_run else "")
    if ctx.dry_run:
        ctx.add(Check("memory", "peak GPU memory at the released batches", SKIPPED,
                      detail="needs CUDA (torch.cuda.max_memory_allocated); the dry run builds the smallest config "
                             f"of each family and takes {MEMORY_STEPS} training steps at {MEMORY_DRY_SIZE} px, "
                             f"batch 1"))
        left_out = [c for c in configs if c not in MEMORY_DRY_CONFIGS]
        ctx.add(Check("memory", f"{len(left_out)} other configs", SKIPPED,
                      detail=f"dry run: one config per family on the CPU; the GPU run steps all {len(configs)}: "
                             f"{', '.join(left_out)} too"))
        configs = [c for c in configs if c in MEMORY_DRY_CONFIGS]
        total_mb = None
        amp = None
    else:
        total_mb = torch.cuda.get_device_properties(ctx.device).total_memory / 2 ** 20
        amp = torch.bfloat16
        configs = heaviest_first(configs)      # what the time budget leaves out are the light ones
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True        # as main.py trains: its trial workspaces count in the peak
    try:
        _memory_configs(ctx, configs, amp, total_mb, command)
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _memory_configs(ctx: Context, configs: List[str], amp: Optional[torch.dtype], total_mb: Optional[float],
                    command: str) -> None:
    figures: Dict[str, Dict[str, Any]] = {}
    for i, config in enumerate(configs):
        if ctx.time_left() <= 0:
            ctx.add(Check("memory", f"{len(configs) - i} config(s) not measured", SKIPPED, command=command,
                          detail=f"time budget of the section spent ({_budget_note(ctx, 'memory')}): "
                                 f"{', '.join(configs[i:])}"))
            break
        try:
            r = (training_memory(config, ctx.device, amp, batch=1, img_size=MEMORY_DRY_SIZE) if ctx.dry_run
                 else training_memory(config, ctx.device, amp))
        except Exception as e:   # not an out-of-memory: a bug in building or stepping the config
            ctx.add(Check("memory", config, FAIL, detail=f"{type(e).__name__}: {cli.one_line(e)[:300]}",
                          command=command))
            continue
        figures[config] = r
        _memory_row(ctx, config, r, total_mb, command)
    # gradient checkpointing on, for the two largest (or those that did not fit), time allowing
    if ctx.dry_run:
        largest = ["flatten_swin_t"] if "flatten_swin_t" in figures else []
    else:
        largest = sorted(figures, key=lambda c: (bool(figures[c].get("oom")), figures[c].get("peak_mb", 0)),
                         reverse=True)[:2]
    for config in largest:
        if ctx.time_left() <= 0:
            ctx.add(Check("memory", f"{config} with --use-checkpoint", SKIPPED, command=command,
                          detail=f"time budget of the section spent ({_budget_note(ctx, 'memory')})"))
            continue
        try:
            r = (training_memory(config, ctx.device, amp, batch=1, img_size=MEMORY_DRY_SIZE, use_checkpoint=True)
                 if ctx.dry_run else training_memory(config, ctx.device, amp, use_checkpoint=True))
        except Exception as e:
            ctx.add(Check("memory", f"{config} with --use-checkpoint", FAIL, command=command,
                          detail=f"{type(e).__name__}: {cli.one_line(e)[:300]}"))
            continue
        _memory_row(ctx, config, r, total_mb, command, without=figures[config])


def _budget_note(ctx: Context, section: str) -> str:
    note = f"ceiling {ctx.ceiling(section):g} s"
    return note + (f", --budget-s {ctx.budget_s:g}" if ctx.budget_s is not None else "")


def _memory_row(ctx: Context, config: str, r: Dict[str, Any], total_mb: Optional[float], command: str,
                without: Optional[Dict[str, Any]] = None) -> None:
    name = (f"{config} with --use-checkpoint" if r["use_checkpoint"] else config) + \
        f" ({r['img_size']} px)"
    how = (f"gradient checkpointing {'on' if r['use_checkpoint'] else 'off (as released)'}; "
           f"EMA {'on' if r['ema'] else 'off'}; {MEMORY_STEPS} steps in {r['seconds']:.1f} s")
    numbers = {k: r.get(k) for k in ("peak_mb", "reserved_mb", "params_m", "img_size", "use_checkpoint", "oom")}
    if total_mb is None:         # the dry run: no GPU to measure
        ok = bool(r.get("finite"))
        ctx.add(Check("memory", name, OK if ok else FAIL, batch=r["batch"], command=command, numbers=numbers,
                      value=f"{MEMORY_STEPS} steps ok, loss {r['loss']:.3f}" if ok else "non-finite loss or "
                      "gradient norm", detail=f"{r['params_m']:.1f}M parameters; peak GPU memory needs CUDA; {how}"))
        return
    numbers["gpu_mb"] = total_mb
    if r.get("oom"):
        ctx.add(Check("memory", name, OK, value=f"does not fit: out of memory ({r['peak_mb']:.0f} MB allocated "
                      f"when it ran out)", target=f"fits in {total_mb / 1024:.0f} GB", met=False, batch=r["batch"],
                      command=command, detail=f"{how}; {r['oom']}", numbers=numbers))
        return
    ok = bool(r.get("finite"))
    value = f"{r['peak_mb']:.0f} MB peak ({100 * r['peak_mb'] / total_mb:.0f}% of {total_mb / 1024:.0f} GB)"
    if without is not None and without.get("peak_mb") and not without.get("oom"):
        value += f", {r['peak_mb'] / without['peak_mb']:.2f}x of it without"
    ctx.add(Check("memory", name, OK if ok else FAIL, value=value, target=f"fits in {total_mb / 1024:.0f} GB",
                  met=True, batch=r["batch"], command=command, numbers=numbers,
                  detail=f"{how}; reserved {r['reserved_mb']:.0f} MB" + ("" if ok else "; non-finite loss")))


# ----------------------------------------------------------------------------- distributed
DIST_CONFIG = "configs/flatten_swin_t.yaml"
DIST_STEPS = 30              # optimizer steps of each run (one epoch)
DIST_PRINT_FREQ = 5          # a progress line every 5 steps; the first window (start-up, compilation) is left out
DIST_BATCH = 64              # per GPU
# The CPU rehearsal: the same config shrunk (16 channels, one block per stage, 64 px), 3 steps of 2 per process.
DIST_DRY_OPTS = ["DATA.IMG_SIZE", "64", "MODEL.EMBED_DIM", "16", "MODEL.DEPTHS", "[1, 1, 1, 1]",
                 "MODEL.NUM_HEADS", "[1, 2, 2, 4]", "DATA.PIN_MEMORY", "False"]
DIST_DRY_BATCH, DIST_DRY_PROCS, DIST_DRY_STEPS = 2, 2, 3
# inductor compiles the training and evaluation graphs at the first step of each (over 100 s for the full
# FLatten-Swin-T on an H200): the --compile run trains FLatten-Swin-T with one block per stage
DIST_COMPILE_OPTS = ["MODEL.DEPTHS", "[1, 1, 1, 1]"]

TRAIN_LINE = re.compile(r"Train: \[(\d+)/(\d+)\]\[(\d+)/(\d+)\].*?\bdata ([\d.]+)s\s+step ([\d.]+)s\s+mem (\d+)MB")


@dataclass
class DistVariant:
    tag: str
    label: str                   # as printed: "plain", "--use-checkpoint", "--compile"
    flags: List[str]
    opts: List[str]
    model: str                   # what trains, in words
    need_s: float                # about what the run takes (start-up included): not started with less time left
    limit_s: float               # the run's time limit (or the section's time left, if less)
    nproc: int
    workers: int


def parse_train_log(text: str) -> List[Dict[str, float]]:
    """The progress lines of a ``main.py`` training log (engine.train_one_epoch): one dict per window.

    Each: epoch, done (steps done in the epoch at the line), steps_per_epoch,
    data_s and step_s (mean seconds per step over the window: waiting for the
    loader, and the whole step including that wait), mem_mb.
    """
    out = []
    for m in TRAIN_LINE.finditer(text):
        epoch, _, done, steps, data_s, step_s, mem = m.groups()
        out.append(dict(epoch=int(epoch), done=int(done), steps_per_epoch=int(steps), data_s=float(data_s),
                        step_s=float(step_s), mem_mb=float(mem)))
    return out


def throughput_of(windows: List[Dict[str, float]], batch: int) -> Optional[Dict[str, float]]:
    """img/s per process from the progress windows, the first window (start-up, compilation) left out.

    Returns dict(img_per_s, step_s, data_s, steps, warmup_s, mem_mb), or None without a second window.
    """
    if len(windows) < 2:
        return None
    timed, prev = [], windows[0]["done"]
    for w in windows[1:]:
        n = w["done"] - prev if w["done"] > prev else w["done"]     # a new epoch starts counting again
        prev = w["done"]
        timed.append((n, w))
    steps = sum(n for n, _ in timed)
    if steps <= 0:
        return None
    step_s = sum(n * w["step_s"] for n, w in timed) / steps
    data_s = sum(n * w["data_s"] for n, w in timed) / steps
    if step_s <= 0:
        return None
    return dict(img_per_s=batch / step_s, step_s=step_s, data_s=data_s, steps=steps,
                warmup_s=windows[0]["step_s"] * windows[0]["done"], mem_mb=max(w["mem_mb"] for w in windows))


def run_with_limit(cmd: List[str], log_path: str, limit_s: float, env: Dict[str, str]):
    """Run ``cmd`` (output to ``log_path``) for at most ``limit_s`` seconds; returns (exit code or None, seconds)."""
    t0 = time.time()
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = p.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            kill_tree(p.pid)
            p.wait()
            code = None
    return code, time.time() - t0


def last_error_line(text: str) -> str:
    """The launcher's ``error: ...`` line, else the last line of the output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


def dist_data(ctx: Context, images: int, tag: str) -> str:
    """An ImageFolder of ``images`` decodable training photos (6 classes) for the distributed runs.

    A few photos per class are written once (data/photos.py); the training files are hard links to them
    (copies where links fail), as many as asked for; the two undecodable files of the photo set stay out.
    """
    from data.photos import CORRUPT_FILES, PHOTOS, write_photo_dataset
    base = write_photo_dataset(os.path.join(ctx.out, "distributed", "photos"),
                               train_per_class=2 if ctx.dry_run else 8, val_per_class=1 if ctx.dry_run else 2)
    root = os.path.join(ctx.out, "distributed", f"data_{tag}")
    per_class = -(-images // len(PHOTOS))
    for split, want in (("train", per_class), ("val", None)):
        for cls in PHOTOS:
            src = os.path.join(base, split, cls)
            files = sorted(f for f in os.listdir(src) if f not in CORRUPT_FILES)
            dst = os.path.join(root, split, cls)
            os.makedirs(dst, exist_ok=True)
            names = [(f"{i // len(files):03d}_{files[i % len(files)]}", files[i % len(files)])
                     for i in range(want if want is not None else len(files))]
            for name, f in names:
                target = os.path.join(dst, name)
                if not os.path.exists(target):
                    try:
                        os.link(os.path.join(src, f), target)
                    except OSError:
                        shutil.copyfile(os.path.join(src, f), target)
    return root


def _dist_env(ctx: Context) -> Dict[str, str]:
    env = dict(os.environ)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RUN_ID", "FLATTEN_LAUNCH_RECORDS"):
        env.pop(k, None)
    env["PYTHONUNBUFFERED"] = "1"
    if ctx.dry_run:              # the CPU rehearsal runs on the CPU even where GPUs are visible
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def dist_variants(ctx: Context, gpus: int) -> List[DistVariant]:
    if ctx.dry_run:
        # images loaded in the training processes (NUM_WORKERS 0): a worker's start costs seconds on 2 cores
        tiny = "FLatten-Swin-T shrunk (16 channels, one block per stage), 64 px"
        return [DistVariant("plain", "plain", [], [], tiny, 20, 120, DIST_DRY_PROCS, 0),
                DistVariant("checkpoint", "--use-checkpoint", ["--use-checkpoint"], [], tiny, 20, 120,
                            DIST_DRY_PROCS, 0)]
    # On one H200 with 16 cores the plain run took 49 s: 28 s to the start of training (imports, the launcher,
    # data, model), 17 s for the first 5 steps (loader workers, the kernel's first-use checks, cuDNN), 2 s for
    # the other 25, 2 s to evaluate and save. The needs below are mostly start-up.
    workers = max(2, min(10, (os.cpu_count() or 8) // gpus - 2))
    full = "FLatten-Swin-T, 224 px"
    out = [DistVariant("plain", "plain", [], [], full, 45, 120, gpus, workers),
           DistVariant("checkpoint", "--use-checkpoint", ["--use-checkpoint"], [], full, 45, 120, gpus, workers),
           DistVariant("compile", "--compile", ["--compile"], DIST_COMPILE_OPTS,
                       "FLatten-Swin-T with one block per stage (MODEL.DEPTHS [1, 1, 1, 1]), 224 px", 70, 180, gpus,
                       workers)]
    if gpus > 1:
        out.append(DistVariant("plain_1gpu", "plain", [], [], full, 45, 120, 1,
                               max(2, min(10, (os.cpu_count() or 8) - 2))))
    return out


def check_distributed(ctx: Context) -> None:
    """Short real training runs through main.py's own launcher, on every visible GPU (2 CPU processes dry)."""
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    batch = DIST_DRY_BATCH if ctx.dry_run else DIST_BATCH
    steps = DIST_DRY_STEPS if ctx.dry_run else DIST_STEPS
    freq = 1 if ctx.dry_run else DIST_PRINT_FREQ
    unit, units = ("GPU", "GPUs") if ctx.cuda else ("CPU process", "CPU processes")
    runs = os.path.join(ctx.out, "distributed", "runs")
    env = _dist_env(ctx)
    if ctx.cuda:
        torch.cuda.empty_cache()          # the runs share the GPU with this process's cache
    measured: Dict[Tuple[str, int], Dict[str, float]] = {}
    for v in dist_variants(ctx, gpus):
        name = f"{v.label}, {v.nproc} {unit if v.nproc == 1 else units}"
        if ctx.time_left() < v.need_s:
            ctx.add(Check("distributed", name, SKIPPED, batch=batch,
                          detail=f"time budget of the section spent ({_budget_note(ctx, 'distributed')}): "
                                 f"{max(0, ctx.time_left()):.0f} s left, the run takes about {v.need_s:g} s"))
            continue
        data = dist_data(ctx, steps * batch * v.nproc, f"{v.nproc}x{batch}")
        folder = os.path.join(runs, os.path.splitext(os.path.basename(DIST_CONFIG))[0], v.tag)
        if os.path.isdir(folder):          # ours, from an earlier check into the same --out: start afresh
            shutil.rmtree(folder)
        left = ctx.time_left()
        args = ["main.py", "--nproc-per-node", str(v.nproc), "--cfg", DIST_CONFIG, "--data-path", data,
                "--batch-size", str(batch), "--num-workers", str(v.workers), "--epochs", "1", "--output", runs,
                "--tag", v.tag, *v.flags, "--opts", "TRAIN.WARMUP_EPOCHS", "0", "PRINT_FREQ", str(freq),
                *(DIST_DRY_OPTS if ctx.dry_run else []), *v.opts]
        command = "python " + " ".join(shlex.quote(a) for a in args)
        limit = min(v.limit_s, left)
        log_path = os.path.join(ctx.out, "distributed", f"{v.tag}.log")
        code, seconds = run_with_limit([sys.executable, *args], log_path, limit, env)
        with open(log_path, errors="replace") as f:
            output = f.read()
        if code is None and limit < v.limit_s:     # stopped by the section's budget, not by its own limit
            ctx.add(Check("distributed", name, SKIPPED, batch=batch, command=command,
                          detail=f"did not finish in the {limit:.0f} s the section had left "
                                 f"({_budget_note(ctx, 'distributed')}; its own limit {v.limit_s:g} s); "
                                 f"last line: {last_error_line(output)} (log: {log_path})"))
            continue
        if code != 0:
            why = f"exit code {code}" if code is not None else f"timed out after {limit:.0f} s"
            ctx.add(Check("distributed", name, FAIL, batch=batch, command=command,
                          detail=f"{why}: {last_error_line(output)} (log: {log_path})"))
            continue
        rank0 = os.path.join(folder, "log_rank0.txt")
        text = open(rank0, errors="replace").read() if os.path.isfile(rank0) else output
        stats = throughput_of(parse_train_log(text), batch)
        if stats is None:
            ctx.add(Check("distributed", name, FAIL, batch=batch, command=command,
                          detail=f"no step times in the log (expected progress lines every {freq} step(s)); "
                                 f"{last_error_line(output)}"))
            continue
        measured[(v.tag, v.nproc)] = stats
        data_share = stats["data_s"] / stats["step_s"]
        note = (f"; input-bound: {100 * data_share:.0f}% of each step waits for the {v.workers} loader worker(s) "
                f"per process, so this measures the input pipeline" if ctx.cuda and data_share > 0.2 else "")
        ctx.add(Check("distributed", name, OK, batch=batch, command=command,
                      value=(f"{stats['img_per_s']:.1f} img/s per {unit} ({stats['img_per_s'] * v.nproc:.1f} in all);"
                             f" step {1e3 * stats['step_s']:.0f} ms, of it data {1e3 * stats['data_s']:.0f} ms"),
                      detail=(f"{v.model}; {v.workers} loader worker(s) per process; {stats['steps']} timed steps "
                              f"({'the first step' if freq == 1 else f'the first {freq} steps'}, start-up"
                              f"{' and compilation' if '--compile' in v.flags else ''}, took "
                              f"{stats['warmup_s']:.1f} s, left out); run {seconds:.0f} s; peak "
                              f"{'GPU' if ctx.cuda else 'RSS'} {stats['mem_mb']:.0f} MB{note}"),
                      numbers=dict(stats, world_size=v.nproc, run_s=seconds, workers=v.workers, model=v.model)))
    if ctx.dry_run:
        ctx.add(Check("distributed", f"--compile, {DIST_DRY_PROCS} CPU processes", SKIPPED, batch=batch,
                      detail="dry run: inductor compiles for minutes on a CPU; the GPU run trains with --compile"))
    scaling_row(ctx, gpus, measured, batch)


def scaling_row(ctx: Context, gpus: int, measured: Dict[Tuple[str, int], Dict[str, float]], batch: int) -> None:
    name = "scaling from 1 GPU to all"
    if ctx.dry_run:
        ctx.add(Check("distributed", name, SKIPPED, batch=batch,
                      detail="dry run: the CPU processes share the machine's cores; scaling is measured on GPUs"))
        return
    if gpus < 2:
        ctx.add(Check("distributed", name, SKIPPED, batch=batch,
                      detail=f"not measurable: {gpus} GPU visible (the plain run above is the 1-GPU figure)"))
        return
    many, one = measured.get(("plain", gpus)), measured.get(("plain_1gpu", 1))
    if many is None or one is None:
        ctx.add(Check("distributed", name, SKIPPED, batch=batch, detail="a plain run failed or was not run"))
        return
    efficiency = many["img_per_s"] / one["img_per_s"]
    ctx.add(Check("distributed", f"scaling from 1 GPU to {gpus}", OK, batch=batch,
                  value=(f"{efficiency:.2f}x per GPU: {many['img_per_s'] * gpus:.0f} img/s on {gpus} GPUs vs "
                         f"{one['img_per_s']:.0f} on 1 ({efficiency * gpus:.2f}x)"),
                  numbers=dict(per_gpu_efficiency=efficiency, speedup=efficiency * gpus, gpus=gpus)))


def check_scaling(ctx: Context) -> None:
    png = os.path.join(ctx.out, "resolution_scaling.png")
    argv = (["--resolutions", "224,256", "--no-quadratic", "--batch", "1", "--warmup", "1", "--rounds", "1",
             "--iters", "1", "--device", str(ctx.device), "--plot", png] if ctx.dry_run else
            ["--resolutions", "224,384,512,768", "--batch", "16", "--amp", "bf16", "--warmup", "2", "--rounds", "5",
             "--iters", "3", "--plot", png])
    command, meta, results = benchmark_run(argv)
    if _ours_failed(ctx, "scaling", results, command):
        return
    for r in results:
        if r.get("error"):
            ctx.add(Check("scaling", f"{r['model']} ({r['impl']}) at {r['img_size']} px", SKIPPED,
                          detail=r["error"], command=command, batch=meta["batch"]))
            continue
        ctx.add(Check("scaling", f"{r['model']} ({r['impl']}) at {r['img_size']} px", OK,
                      value=f"{r['img_per_s']:.1f} img/s, {r.get('peak_mem_mb') or 0:.0f} MB", command=command,
                      batch=meta["batch"], numbers=dict(img_per_s=r["img_per_s"], peak_mem_mb=r.get("peak_mem_mb"))))


# ----------------------------------------------------------------------------- report
def markdown(ctx: Context, started: str, seconds: float) -> str:
    lines = [f"GPU check of {started}: {ctx.hardware}; {seconds:.0f} s"
             + (" (dry run on the CPU)" if ctx.dry_run else ""), "",
             "| section | check | result | target | status | batch |", "| --- | --- | --- | --- | --- | ---: |"]
    for c in ctx.checks:
        target = c.target + ("" if c.met is None else (" (met)" if c.met else " (missed)")) if c.target else ""
        result = c.value or c.detail
        lines.append(f"| {c.section} | {c.name} | {result} | {target} | {c.status} | {c.batch or ''} |")
    commands = list(dict.fromkeys(c.command for c in ctx.checks if c.command))
    if commands:
        lines += ["", "Commands:", "", "```bash"] + commands + ["```"]
    return "\n".join(lines) + "\n"


SECTION_FUNCS: Dict[str, Callable[[Context], None]] = {}


def write_report(ctx: Context, started: str, seconds: float) -> None:
    """``gpu_check.md`` and ``gpu_check.json`` in ``ctx.out``: after every section, so that a run stopped from
    outside (a job's time limit) keeps what it measured."""
    with open(os.path.join(ctx.out, "gpu_check.md"), "w") as f:
        f.write(markdown(ctx, started, seconds))
    with open(os.path.join(ctx.out, "gpu_check.json"), "w") as f:
        json.dump(dict(started=started, seconds=seconds, dry_run=ctx.dry_run, hardware=ctx.hardware,
                       budget_s=ctx.budget_s, checks=[asdict(c) for c in ctx.checks]), f, indent=1, default=str)


def run_sections(ctx: Context, names: List[str], after: Optional[Callable[[], None]] = None) -> None:
    """Run the sections ``names`` in that order; ``after`` is called once each has ended."""
    for name in names:
        t0 = time.time()
        if t0 >= ctx.deadline:
            ctx.add(Check(name, "section", SKIPPED, detail=f"time budget spent (--budget-s {ctx.budget_s:g})"))
        else:
            ctx.section_deadline = min(ctx.deadline, t0 + ctx.ceiling(name))
            try:
                SECTION_FUNCS[name](ctx)
            except ScriptError:
                raise
            except Exception as e:  # a crash in a section is a failed check, and the other sections still run
                ctx.add(Check(name, "section", FAIL, detail=f"{type(e).__name__}: {cli.one_line(e)[:300]}"))
            print(f"     ({name}: {time.time() - t0:.0f} s)", flush=True)
        if after is not None:
            after()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.gpu_check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--official-path", metavar="PATH", help="checkout of the official FLatten-Transformer")
    parser.add_argument("--out", metavar="DIR", help="where the JSON, markdown and plot go "
                                                     "(default output/gpu_check/<time>)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU; CUDA-only checks skipped")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION", help="run only these sections")
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], metavar="SECTION",
                        help="leave these sections out")
    parser.add_argument("--budget-s", type=float, metavar="S",
                        help="time for the whole command: sections that would start later are skipped, and the "
                             "memory and distributed sections fit into what is left (default: their own ceilings)")
    args = parser.parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if args.official_path and not os.path.isfile(os.path.join(args.official_path, "models", "flatten_swin.py")):
        raise ScriptError(f"--official-path {args.official_path}: no official FLatten checkout there "
                          f"(expected models/flatten_swin.py)")
    if not args.dry_run and not torch.cuda.is_available():
        raise ScriptError("no CUDA device here: run on a GPU, or pass --dry-run for the CPU rehearsal")
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", torch.cuda.current_device())
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = args.out or os.path.join("output", "gpu_check", time.strftime("%Y%m%d-%H%M%S")
                                   + ("-dry-run" if args.dry_run else ""))
    os.makedirs(out, exist_ok=True)
    if device.type == "cpu":
        from utils.cpu_memory import keep_freed_memory
        keep_freed_memory()
    ctx = Context(device, args.dry_run, args.official_path, out, hardware(device), budget_s=args.budget_s)
    names = [s for s in (args.only or SECTIONS) if s not in args.skip]
    print(f"gpu_check: {ctx.hardware}; sections {', '.join(names)}" + ("; dry run" if args.dry_run else "")
          + (f"; budget {args.budget_s:g} s" if args.budget_s else ""))
    t0 = time.time()
    if args.budget_s is not None:
        ctx.deadline = t0 + args.budget_s
    run_sections(ctx, names, after=lambda: write_report(ctx, started, time.time() - t0))
    seconds = time.time() - t0
    write_report(ctx, started, seconds)
    failed = [c for c in ctx.checks if c.status == FAIL]
    missed = [c for c in ctx.checks if c.met is False]
    print(f"\n{len(ctx.checks)} checks: {sum(c.status == OK for c in ctx.checks)} ok, {len(failed)} failed, "
          f"{sum(c.status == SKIPPED for c in ctx.checks)} skipped; {len(missed)} speed target(s) missed "
          f"(not an error); {seconds:.0f} s; wrote {out}/gpu_check.md and gpu_check.json")
    return 1 if failed else 0


SECTION_FUNCS.update(env=check_env, triton=check_triton, amp=check_amp, compile=check_compile, inference=check_inference,
                     training=check_training, memory=check_memory, op=check_op, scaling=check_scaling,
                     distributed=check_distributed)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
