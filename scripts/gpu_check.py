"""One command for the first GPU a session gets: every CUDA-only path checked, then the speed figures.

    .venv/bin/python -m scripts.gpu_check [--official-path ../FLatten-Transformer] [--out DIR]
    .venv/bin/python -m scripts.gpu_check --dry-run          # the same checks at tiny sizes on the CPU (CI)
    make gpu-check                                           # the first form, output in output/gpu_check/

Sections, in order (``--only`` / ``--skip`` choose):

* ``env``: GPU, driver, CUDA, torch, triton.
* ``triton``: the Triton feature-map kernel against the fused PyTorch path, forward
  and backward, in float32, bfloat16 and float16 (max error), and what the
  kernel's self-check at first use decided.
* ``amp``: one bfloat16 step and one float16 step with the loss scaler per family,
  through the training engine's step unit; loss and gradients finite.
* ``compile``: ``torch.compile(fullgraph=True)`` of FLatten-Swin-T against eager,
  at its built size and at a second size.
* ``inference``: FLatten-Swin-T at batch 256 in bfloat16, ours eager and compiled,
  against the official code eager (``--official-path``) and timm's Swin-T compiled.
* ``training``: one training step and its peak memory, ours against the official code.
* ``op``: the attention op alone, forward and forward + backward.
* ``scaling``: FLatten-Swin-T against Swin-T and global softmax at 224-768 px.

Every figure is printed with the equivalent ``scripts.benchmark`` command, the
hardware and the batch, and written to ``DIR/gpu_check.json`` and, as the
markdown table ``docs/speed.md`` takes, ``DIR/gpu_check.md``. The exit status
is 1 when a correctness check fails (a kernel mismatch, a non-finite step, a
compiled model that differs, an error in one of our models), never because a
speed target is missed; targets are printed beside the figures.

``--dry-run`` runs on the CPU in seconds: tiny sizes, float32 instead of the GPU
precisions where the CPU lacks them, and every check that needs CUDA reported as
skipped with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it from the repository root as: python -m scripts.gpu_check ...")

import torch  # noqa: E402

from scripts.core import cli  # noqa: E402
from scripts.core.cli import ScriptError  # noqa: E402
from scripts.core.environment import base_meta, hardware  # noqa: E402

SECTIONS = ("env", "triton", "amp", "compile", "inference", "training", "op", "scaling")
OK, FAIL, SKIPPED = "ok", "FAIL", "skipped"


@dataclass
class Check:
    """One line of the report."""
    section: str
    name: str
    status: str                      # ok | FAIL | skipped
    value: str = ""                  # the measured figure, as printed
    target: str = ""                 # the target, where there is one ("at least 2x")
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
    for (device, dtype), (ok, why) in triton_fla.verdicts().items():
        ctx.add(Check("triton", f"auto mode's first-use check on {device}, {str(dtype)[6:]} input",
                      OK if ok else FAIL, value="kernel used" if ok else "PyTorch path", detail=why))


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
    tol = 1e-4 if ctx.dry_run else 3e-2        # bf16 autocast rounds the projections' outputs
    for label in sorted({r["model"] for r in results}):
        rows = [r for r in results if r["model"] == label]
        err = rows[0]["max_rel_diff_vs_official"]
        ctx.add(Check("op", f"{label}: ours vs official op, max rel. error", OK if err <= tol else FAIL,
                      value=f"{err:.1e}", detail=f"tolerance {tol:g}", command=command, batch=meta["batch"]))
        for mode, target in (("fwd", 3.0), ("fwd+bwd", 2.0)):
            ours = next((r for r in rows if r["op"] == mode and r["impl"] == "ours"), None)
            official = next((r for r in rows if r["op"] == mode and r["impl"] == "official"), None)
            ratio_check(ctx, "op", f"{label} {mode}, ours vs official", ours, official, target, command,
                        meta["batch"], "official op not timed")


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


def run_sections(ctx: Context, names: List[str]) -> None:
    for name in names:
        t0 = time.time()
        try:
            SECTION_FUNCS[name](ctx)
        except ScriptError:
            raise
        except Exception as e:  # a crash in a section is a failed check, and the other sections still run
            ctx.add(Check(name, "section", FAIL, detail=f"{type(e).__name__}: {cli.one_line(e)[:300]}"))
        print(f"     ({name}: {time.time() - t0:.0f} s)", flush=True)


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
    args = parser.parse_args(argv)
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
    ctx = Context(device, args.dry_run, args.official_path, out, hardware(device))
    names = [s for s in (args.only or SECTIONS) if s not in args.skip]
    print(f"gpu_check: {ctx.hardware}; sections {', '.join(names)}" + ("; dry run" if args.dry_run else ""))
    t0 = time.time()
    run_sections(ctx, names)
    seconds = time.time() - t0
    table = markdown(ctx, started, seconds)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(dict(started=started, seconds=seconds, dry_run=args.dry_run, hardware=ctx.hardware,
                       checks=[asdict(c) for c in ctx.checks]), f, indent=1, default=str)
    failed = [c for c in ctx.checks if c.status == FAIL]
    missed = [c for c in ctx.checks if c.met is False]
    print(f"\n{len(ctx.checks)} checks: {sum(c.status == OK for c in ctx.checks)} ok, {len(failed)} failed, "
          f"{sum(c.status == SKIPPED for c in ctx.checks)} skipped; {len(missed)} speed target(s) missed "
          f"(not an error); {seconds:.0f} s; wrote {out}/gpu_check.md and gpu_check.json")
    return 1 if failed else 0


SECTION_FUNCS.update(env=check_env, triton=check_triton, amp=check_amp, compile=check_compile, inference=check_inference,
                     training=check_training, op=check_op, scaling=check_scaling)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
