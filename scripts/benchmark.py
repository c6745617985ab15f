"""Throughput and memory of FLatten models against their softmax counterparts (paper Fig. 7).

Three modes, all in one process, timing the candidates round-robin (every
round runs each candidate once, in a rotated order), after warm-up, and
reporting the median over rounds (the minimum too: on a shared machine it is
the figure least disturbed by other processes). Every printed figure carries
the hardware, torch / timm versions, batch, precision, device and image size.

* Models (default): each selected config of ``configs/*.yaml`` (FLatten) and
  ``configs/baselines/*.yaml`` (softmax counterparts) built by this project
  (``impl=ours``); where timm has the softmax model (DeiT-T, PVTv2-B0..B4,
  Swin-T/S/B) timm's implementation too (``impl=timm``); with
  ``--impl official --official-path PATH`` the official FLatten code from the
  user's checkout of https://github.com/LeapLabTHU/FLatten-Transformer
  (``PATH/models/flatten_*.py``, imported, never copied), loaded with the same
  weights as ours (parameter names are identical).
* ``--resolutions 224,384,512,768``: FLatten-Swin-T (global focused attention in
  stages 1-2, linear in the tokens) against Swin-T (7x7 windows) and against
  softmax attention over FLatten-Swin-T's global windows (quadratic), img/s and
  peak memory per resolution, as a table and a PNG plot.
* ``--op``: the attention operation alone (between the qkv and output
  projections), forward and forward+backward, at the shapes of FLatten-Swin-T's
  focused stages: this project's fused path, its step-by-step reference path,
  and the official op sequence (written out below as a reference function).

Memory (``peak_mem_mb``): on CUDA ``torch.cuda.max_memory_allocated`` over one
step; on the CPU parameters + inputs (+ optimizer state) + the peak of the
tensors alive during one eager step, tracked op by op.

Usage (from the repository root)::

    .venv/bin/python scripts/benchmark.py --models flatten_swin_t swin_t --batch 16
    .venv/bin/python scripts/benchmark.py --models flatten_swin_t --impl ours official \\
        --official-path ../FLatten-Transformer --batch 16 --json bench.json
    .venv/bin/python scripts/benchmark.py --models 'flatten_*' swin_t pvt_v2_b2 --batch 256 --amp bf16 --compile
    .venv/bin/python scripts/benchmark.py --models flatten_swin_t --impl ours official --official-path PATH \
        --batch 16 --compile --eager-too --freezing          # CPU: compiled (weights frozen) and eager
    .venv/bin/python scripts/benchmark.py --models flatten_swin_t --train --batch 64
    .venv/bin/python scripts/benchmark.py --resolutions 224,384,512,768 --batch 1 --plot scaling.png
    .venv/bin/python scripts/benchmark.py --op --batch 16
    .venv/bin/python scripts/benchmark.py --smoke --json /tmp/bench.json     # seconds, for tests

``scripts/plot_fig7.py`` draws the accuracy-runtime curves from ``--json`` files.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import glob
import importlib.util
import io
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import timm  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import models  # noqa: E402,F401  (registers the FLatten models)
from config import load_config  # noqa: E402
from models.layers.attention import FocusedLinearAttention, attention_impl  # noqa: E402
from utils.cpu_memory import keep_freed_memory  # noqa: E402

_logger = logging.getLogger("benchmark")
CONFIG_DIR = os.path.join(ROOT, "configs")

# Softmax baselines that timm implements: config name -> timm model name.
TIMM_MODELS = {
    "deit_t": "deit_tiny_patch16_224",
    **{f"pvt_v2_b{i}": f"pvt_v2_b{i}" for i in range(5)},
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "swin_b_384": "swin_base_patch4_window12_384",
}
# Official code file per family (PATH/models/<file>.py); DeiT has no released code.
OFFICIAL_FILES = {"swin": "flatten_swin", "pvt": "flatten_pvt", "pvt_v2": "flatten_pvt_v2", "cswin": "flatten_cswin"}
# Our config name -> the official repository's cfgs/<name>.yaml where they differ.
OFFICIAL_CFG_NAMES = {"flatten_pvt_l": "flatten_pvt_b"}
SMOKE_MODELS = ["flatten_pvt_v2_b0", "pvt_v2_b0"]


class BenchmarkError(RuntimeError):
    """A user error (bad path, unknown model); reported as one line."""


# ============================================================================ environment
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def make_meta(args, device: torch.device, mode: str) -> Dict[str, Any]:
    return {
        "mode": mode,
        "hardware": hardware(device),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": device.type,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "batch": args.batch,
        "dtype": "float32" if args.amp == "none" else f"autocast {args.amp}",
        "img_size": args.img_size,
        "compile": bool(args.compile),
        "inductor_freezing": bool(args.freezing),
        "channels_last": bool(args.channels_last),
        "train": bool(args.train),
        "warmup": args.warmup,
        "rounds": args.rounds,
        "iters": args.iters,
        "timing": "round-robin over candidates; per round the mean of `iters` steps; "
                  "ms_per_batch = median over rounds (ms_min = fastest round)",
        "peak_mem": ("torch.cuda.max_memory_allocated over one step" if device.type == "cuda" else
                     "parameters + inputs + optimizer state + peak of tensors alive in one eager step"),
        "cpu_malloc": keep_freed_memory() if device.type == "cpu" else None,
        "load_avg_start": _loadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def tag(meta: Dict[str, Any], img_size: Optional[int] = None, compiled: Optional[bool] = None) -> str:
    """Context printed beside every figure."""
    img = img_size or meta.get("img_size")
    img = f"{img}px" if img else "each config's img size"
    compiled = meta.get("compile") if compiled is None else compiled
    mode = ("compiled" + (" +freezing" if meta.get("inductor_freezing") else "")) if compiled else "eager"
    return (f"[{meta['hardware']}; torch {meta['torch']}; timm {meta['timm']}; batch {meta['batch']}; "
            f"{meta['dtype']}; {meta['device']}; {img}; {mode}"
            f"{'; channels-last' if meta.get('channels_last') else ''}{'; train step' if meta.get('train') else ''}"
            f"{'; malloc ' + meta['cpu_malloc'].split(' ')[0] if meta.get('cpu_malloc') else ''}]")


def with_compile(cands: List[Candidate], args) -> List[Candidate]:
    """Compiled copies of the candidates (and the eager ones too with --eager-too)."""
    if not args.compile:
        return cands
    out = []
    for c in cands:
        if args.eager_too:
            out.append(c)
        out.append(dataclasses.replace(c, compiled=True))
    return out


# ============================================================================ candidates
@dataclass
class Candidate:
    model: str                       # config name (flatten_swin_t, swin_t), or an op / scaling label
    impl: str                        # ours | official | timm | reference
    family: str
    attention: str                   # flatten | softmax
    build: Callable[[], nn.Module]
    img_size: int
    extra: Dict[str, Any] = field(default_factory=dict)
    compiled: bool = False


def config_files() -> Dict[str, str]:
    """{config name: path} of configs/*.yaml (FLatten) and configs/baselines/*.yaml."""
    out = {}
    for path in sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")) +
                       glob.glob(os.path.join(CONFIG_DIR, "baselines", "*.yaml"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if not name.startswith("_"):
            out[name] = path
    return out


def select_configs(patterns: Optional[Sequence[str]]) -> List[str]:
    known = config_files()
    if not patterns:
        return list(known)
    chosen: List[str] = []
    for pat in patterns:
        pat = os.path.splitext(os.path.basename(pat))[0]
        hits = [n for n in known if fnmatch.fnmatch(n, pat)]
        if not hits:
            raise BenchmarkError(f"no config matches {pat!r}; known: {', '.join(known)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def family_of(cfg) -> str:
    return models.family_of(cfg.MODEL.NAME)


def build_ours(path: str, **overrides) -> nn.Module:
    from models import build_model
    return build_model(load_config(path), **overrides)


# ---------------------------------------------------------------------------- official code
class OfficialCode:
    """The official implementation, imported from the user's checkout (never copied here).

    Its files register models with timm under names this project also uses;
    our registrations are restored right after the import (public timm API).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(os.path.join(self.path, "models", "flatten_swin.py")):
            raise BenchmarkError(f"--official-path {path}: no official FLatten checkout there "
                                 f"(expected {os.path.join(self.path, 'models', 'flatten_swin.py')})")
        self._modules: Dict[str, Any] = {}

    def module(self, family: str):
        if family not in OFFICIAL_FILES:
            raise BenchmarkError(f"the official code has no {family} models")
        if family in self._modules:
            return self._modules[family]
        fname = OFFICIAL_FILES[family]
        name = f"flatten_official.{fname}"
        spec = importlib.util.spec_from_file_location(name, os.path.join(self.path, "models", f"{fname}.py"))
        mod = importlib.util.module_from_spec(spec)
        ours = {n: timm.models.model_entrypoint(n) for n in timm.list_models("flatten_*")}
        sys.modules[name] = mod  # timm's register_model looks the module up there
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                spec.loader.exec_module(mod)
        except ImportError as e:
            del sys.modules[name]
            hint = " (pip install einops)" if "einops" in str(e) else ""
            raise BenchmarkError(f"cannot import the official {fname}.py from {self.path}: {e}{hint}") from None
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for n, fn in ours.items():
                    if timm.models.model_entrypoint(n) is not fn:
                        timm.models.register_model(fn)
        self._modules[family] = mod
        return mod

    def read_cfg(self, name: str) -> dict:
        import yaml
        cfg_name = OFFICIAL_CFG_NAMES.get(name, name)
        path = os.path.join(self.path, "cfgs", f"{cfg_name}.yaml")
        if not os.path.isfile(path):
            raise BenchmarkError(f"the official checkout has no cfgs/{cfg_name}.yaml")
        with open(path) as f:
            return yaml.safe_load(f) or {}

    def build(self, name: str, family: str, img_size: Optional[int] = None) -> nn.Module:
        """The official model of config ``name``, built as the official build.py does."""
        mod = self.module(family)
        cfg = self.read_cfg(name)
        m, data = cfg.get("MODEL", {}), cfg.get("DATA", {})
        la = m.get("LA", {})
        common = dict(focusing_factor=la.get("FOCUSING_FACTOR", 3), kernel_size=la.get("KERNEL_SIZE", 5),
                      attn_type=la.get("ATTN_TYPE", "LLLL"), drop_path_rate=0.0)
        img = img_size or data.get("IMG_SIZE", 224)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if family == "swin":
                sw = m.get("SWIN", {})
                model = mod.FLattenSwinTransformer(
                    img_size=img, embed_dim=sw.get("EMBED_DIM", 96), depths=sw.get("DEPTHS", [2, 2, 6, 2]),
                    num_heads=sw.get("NUM_HEADS", [3, 6, 12, 24]), window_size=sw.get("WINDOW_SIZE", 7), **common)
            elif family in ("pvt", "pvt_v2"):
                model = getattr(mod, m["TYPE"])(la_sr_ratios=str(la.get("PVT_LA_SR_RATIOS", 1111)), **common)
            else:  # cswin
                model = getattr(mod, m["TYPE"])(img_size=img, la_split_size=la.get("CSWIN_LA_SPLIT_SIZE", "56-28-14-7"),
                                                **common)
        return model


def load_same_weights(official: nn.Module, ours: nn.Module) -> None:
    """Copy our parameters (and persistent buffers) into the official model; names are identical."""
    missing, unexpected = official.load_state_dict(ours.state_dict(), strict=False)
    own_buffers = {n for n, _ in official.named_buffers()}
    missing = [k for k in missing if k not in own_buffers]  # index tables / masks the official code builds
    if missing or unexpected:
        raise BenchmarkError(f"weights do not transfer to the official model: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}")


def model_candidates(args, official: Optional[OfficialCode]) -> List[Candidate]:
    files = config_files()
    out: List[Candidate] = []
    for name in select_configs(args.models):
        cfg = load_config(files[name])
        fam = family_of(cfg)
        attention = "flatten" if name.startswith("flatten_") else "softmax"
        img = args.img_size or cfg.DATA.IMG_SIZE
        over = {"img_size": args.img_size} if args.img_size else {}
        if "ours" in args.impl:
            out.append(Candidate(name, "ours", fam, attention, lambda p=files[name], o=over: build_ours(p, **o), img))
        if "official" in args.impl and attention == "flatten" and fam in OFFICIAL_FILES:
            def build_official(p=files[name], n=name, f=fam, o=over):
                ours = build_ours(p, **o)
                model = official.build(n, f, o.get("img_size"))
                load_same_weights(model, ours)
                return model
            out.append(Candidate(name, "official", fam, attention, build_official, img))
        if "timm" in args.impl and name in TIMM_MODELS:
            out.append(Candidate(name, "timm", fam, attention,
                                 lambda t=TIMM_MODELS[name], o=over: timm.create_model(t, **o), img,
                                 extra={"timm_name": TIMM_MODELS[name]}))
    return out


# ============================================================================ steps, timing, memory
def autocast_ctx(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def make_step(model: nn.Module, x: torch.Tensor, train: bool, amp: str, device: torch.device,
              compile_model: bool, fullgraph: bool) -> Tuple[Callable[[], None], Optional[torch.optim.Optimizer]]:
    """One inference batch, or one training step (forward, loss, backward, AdamW step)."""
    model.train(train)
    run = torch.compile(model, fullgraph=fullgraph) if compile_model else model
    if not train:
        def step():
            with torch.no_grad(), autocast_ctx(device, amp):
                run(x)
        return step, None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    target = torch.randint(0, 1000, (x.shape[0],), device=device)

    def step():
        with autocast_ctx(device, amp):
            loss = F.cross_entropy(run(x).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, opt


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _LiveTensors(TorchDispatchMode):
    """Peak bytes of the storages of tensors created while active (counted once per storage)."""

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        super().__init__()
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}   # counted separately (weights, ...)
        self.live: Dict[int, List[int]] = {}     # storage ptr -> [bytes, tensors alive]
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if not key or not nbytes or key in self.exclude:
                    continue
                if key in self.live:
                    self.live[key][1] += 1
                else:
                    self.live[key] = [nbytes, 1]
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
                weakref.finalize(t, self._release, key)
        return out


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def peak_memory_mb(model: nn.Module, step: Callable[[], None], x: torch.Tensor, device: torch.device,
                   opt: Optional[torch.optim.Optimizer]) -> Optional[float]:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    base = list(model.parameters()) + list(model.buffers()) + [x]
    if opt is not None:
        base += [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    tracker = _LiveTensors(exclude=base)
    with tracker:
        step()
    return (tensor_bytes(base) + tracker.peak) / 2 ** 20


def _build_steps(cands: List[Candidate], args, device: torch.device, batch: int):
    """Build every candidate (so all run in this process) and its step function."""
    prepared = []
    for c in cands:
        try:
            torch.manual_seed(0)
            model = c.build().to(device)
            x = torch.randn(batch, 3, c.img_size, c.img_size, device=device)
            fullgraph = c.impl == "ours"
            if args.channels_last:
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            step, opt = make_step(model, x, args.train, args.amp, device, c.compiled, fullgraph)
            eager_step, eager_opt = step, opt
            if c.compiled and device.type == "cpu":   # memory is tracked on the eager model
                eager_step, eager_opt = make_step(model, x, args.train, args.amp, device, False, False)
            prepared.append(dict(c=c, model=model, x=x, step=step, eager_step=eager_step, opt=opt,
                                 eager_opt=eager_opt, error=None))
        except Exception as e:  # report and go on with the others
            _logger.warning("%s (%s): %s", c.model, c.impl, e)
            prepared.append(dict(c=c, error=f"{type(e).__name__}: {e}".splitlines()[0][:300]))
    return prepared


def time_round_robin(prepared: List[dict], args, device: torch.device, batch: int,
                     memory: bool = True) -> List[Dict[str, Any]]:
    live = [p for p in prepared if p["error"] is None]
    for p in live:  # warm-up (and compilation)
        try:
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                p["step"]()
            sync(device)
            p["warmup_s"] = time.perf_counter() - t0
            p["times"] = []
        except Exception as e:
            p["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    live = [p for p in live if p["error"] is None]
    for r in range(args.rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for p in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                p["step"]()
            sync(device)
            p["times"].append((time.perf_counter() - t0) / args.iters)
    results = []
    for p in prepared:
        c = p["c"]
        res: Dict[str, Any] = {"model": c.model, "impl": c.impl, "family": c.family, "attention": c.attention,
                               "img_size": c.img_size, "batch": batch, "compiled": c.compiled, **c.extra}
        if p["error"] is not None:
            res["error"] = p["error"]
            results.append(res)
            continue
        med, best = statistics.median(p["times"]), min(p["times"])
        res.update(img_per_s=batch / med, ms_per_batch=1e3 * med, ms_min=1e3 * best,
                   img_per_s_best=batch / best, rounds_ms=[round(1e3 * t, 2) for t in p["times"]],
                   params_m=sum(q.numel() for q in p["model"].parameters()) / 1e6,
                   params_mb=sum(q.numel() * q.element_size() for q in p["model"].parameters()) / 2 ** 20,
                   warmup_s=round(p.get("warmup_s", 0.0), 2))
        if memory:
            try:
                res["peak_mem_mb"] = peak_memory_mb(p["model"], p["eager_step"], p["x"], device,
                                                    p.get("eager_opt"))
            except Exception as e:  # memory is a bonus; never lose the timing for it
                _logger.warning("memory of %s (%s): %s", c.model, c.impl, e)
                res["peak_mem_mb"] = None
        results.append(res)
    return results


# ============================================================================ where the time goes
def _attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The outermost attention modules (class name containing 'Attention'), ours, timm's or official."""
    found: List[Tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if "Attention" in type(m).__name__ and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, m))
    return found


def time_breakdown(model: nn.Module, step: Callable[[], None], device: torch.device,
                   reps: int) -> Dict[str, float]:
    """Milliseconds per eager inference step split into linear layers, attention core and the rest.

    Forward hooks time every ``nn.Linear`` and every outermost attention module;
    the attention core is the attention modules' time minus the linear layers
    inside them (qkv, proj): the part an attention implementation decides.
    Everything else (norms, MLP activations, convs, residuals, window
    partitions, head) is the rest. On CUDA every hook synchronises.
    """
    attn = _attention_modules(model)
    attn_names = [n for n, _ in attn]
    acc = {"linear": 0.0, "linear_in_attention": 0.0, "attention": 0.0}
    starts: Dict[int, float] = {}
    handles = []

    def pre(m, _inp):
        sync(device)
        starts[id(m)] = time.perf_counter()

    def post_for(kind: str):
        def post(m, _inp, _out):
            sync(device)
            acc[kind] += time.perf_counter() - starts.pop(id(m))
        return post

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            inside = any(name.startswith(a + ".") for a in attn_names)
            handles += [m.register_forward_pre_hook(pre),
                        m.register_forward_hook(post_for("linear_in_attention" if inside else "linear"))]
    for _, m in attn:
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post_for("attention"))]
    try:
        step()  # warm (hooks in place)
        for k in acc:
            acc[k] = 0.0
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        sync(device)
        total = (time.perf_counter() - t0) / reps
    finally:
        for h in handles:
            h.remove()
    linear = (acc["linear"] + acc["linear_in_attention"]) / reps
    core = (acc["attention"] - acc["linear_in_attention"]) / reps
    return {"total_ms": 1e3 * total, "linear_ms": 1e3 * linear, "attention_core_ms": 1e3 * core,
            "rest_ms": 1e3 * (total - linear - core)}


def run_breakdown(prepared: List[dict], results: List[Dict[str, Any]], args, device: torch.device,
                  meta: Dict[str, Any]) -> None:
    """``--breakdown``: print (and add to the results) where each eager model spends its time."""
    print(f"\ntime per batch by part (eager forward, mean of {args.iters} step(s) with hooks; {tag(meta)}):")
    print(f"{'model':<22} {'impl':<9} {'total ms':>9} {'linear':>15} {'attention core':>15} {'rest':>15}")
    rows = {}
    for p, r in zip(prepared, results):
        c = p["c"]
        if p["error"] is not None or c.compiled:
            continue
        b = time_breakdown(p["model"], p["eager_step"], device, args.iters)
        r["breakdown"] = b
        rows[(c.model, c.impl)] = b
        part = lambda k: f"{b[k]:8.1f} ({100 * b[k] / b['total_ms']:3.0f}%)"  # noqa: E731
        print(f"{c.model:<22} {c.impl:<9} {b['total_ms']:9.1f} {part('linear_ms'):>15} "
              f"{part('attention_core_ms'):>15} {part('rest_ms'):>15}")
    for (model, impl), o in rows.items():
        ours = rows.get((model, "ours"))
        if impl != "official" or ours is None:
            continue
        bound = o["total_ms"] / max(o["total_ms"] - o["attention_core_ms"], 1e-9)
        print(f"  {model}: attention core ours vs official {o['attention_core_ms'] / ours['attention_core_ms']:.2f}x; "
              f"whole model {o['total_ms'] / ours['total_ms']:.2f}x; the most any attention could give with the "
              f"rest as the official's (core at zero cost): {bound:.2f}x")


# ============================================================================ reports
def fmt_mem(v: Optional[float]) -> str:
    return f"{v:9.0f}" if isinstance(v, (int, float)) else f"{'-':>9}"


def print_results(results: List[Dict[str, Any]], meta: Dict[str, Any]) -> None:
    print(f"{'model':<22} {'impl':<9} {'mode':<9} {'attention':<9} {'img/s':>9} {'ms/batch':>10} {'(min)':>9} "
          f"{'peak MB':>9}  context")
    for r in results:
        mode = "compiled" if r.get("compiled") else "eager"
        if r.get("error"):
            print(f"{r['model']:<22} {r['impl']:<9} {mode:<9} {r['attention']:<9} ERROR {r['error']}")
            continue
        print(f"{r['model']:<22} {r['impl']:<9} {mode:<9} {r['attention']:<9} {r['img_per_s']:9.2f} "
              f"{r['ms_per_batch']:10.1f} {r['ms_min']:9.1f} {fmt_mem(r.get('peak_mem_mb'))}  "
              f"{tag(meta, r.get('img_size'), r.get('compiled'))}")
    speedups = summarize(results)
    if speedups:
        print("\nspeed-ups (img/s ratio of medians; of best rounds in brackets):")
        for line in speedups:
            print("  " + line)


def summarize(results: List[Dict[str, Any]]) -> List[str]:
    """Our FLatten models against the official ones, our softmax baselines and timm's, every mode pair."""
    ok = [r for r in results if not r.get("error") and r.get("img_per_s")]
    mode = lambda r: "compiled" if r.get("compiled") else "eager"  # noqa: E731
    lines = []
    for r in ok:
        if r["impl"] != "ours" or not r["model"].startswith("flatten_"):
            continue
        base = r["model"].removeprefix("flatten_")
        for o in ok:
            if o is r:
                continue
            if o["model"] == r["model"] and o["impl"] == "official":
                label = f"official {o['model']}"
            elif o["model"] == base and o["impl"] in ("ours", "timm"):
                label = f"{'our' if o['impl'] == 'ours' else 'timm'} softmax {base}"
            elif o["model"] == r["model"] and o["impl"] == "ours":
                label = f"ours {o['model']}"
            else:
                continue
            lines.append(f"ours {r['model']} ({mode(r)}) vs {label} ({mode(o)}): "
                         f"{r['img_per_s'] / o['img_per_s']:.2f}x ({r['img_per_s_best'] / o['img_per_s_best']:.2f}x)")
    return lines


def write_json(path: Optional[str], meta: Dict[str, Any], results: List[Dict[str, Any]]) -> None:
    if not path:
        return
    meta = dict(meta, load_avg_end=_loadavg())
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(f"wrote {path}")


# ============================================================================ resolution scaling
class GlobalSoftmaxAttention(nn.Module):
    """Softmax attention over the same (global) windows as a focused stage: the quadratic counterpart.

    Reuses the focused block's ``qkv`` and ``proj``; exists only in this benchmark.
    """

    def __init__(self, focused: nn.Module):
        super().__init__()
        self.num_heads = focused.num_heads
        self.qkv, self.proj = focused.qkv, focused.proj

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


def tiling_window(grids: Sequence[int], preferred: int) -> int:
    """``preferred`` if it tiles every grid (a grid not larger than the window is global), else the
    smallest of 7, 8, 12, 16, ... that does."""
    def tiles(w):
        return all(g <= w or g % w == 0 for g in grids)
    for w in [preferred, 7, 8, 12, 16, 24, 32]:
        if tiles(w):
            return w
    raise BenchmarkError(f"no softmax window tiles the stage grids {list(grids)}")


def scaling_candidates(res: int, args) -> List[Candidate]:
    grids = [res // 4 // 2 ** i for i in range(4)]
    rule = 7 if res // 4 <= 56 else 12                      # the released S window for window_size = res / 4
    s_win = tiling_window(grids[2:], rule)                  # FLatten-Swin-T: S stages 3-4
    s_win_all = tiling_window(grids, 7 if res <= 224 else rule)  # Swin-T: all four stages softmax

    def flatten_swin():
        return timm.create_model("flatten_swin_tiny_patch4_224", img_size=res, window_size=res // 4,
                                 softmax_window=s_win)

    def swin_ours():
        return timm.create_model("flatten_swin_tiny_patch4_224", img_size=res, attn_type="SSSS",
                                 window_size=s_win_all, softmax_window=s_win_all)

    def swin_global():
        model = flatten_swin()
        for stage in model.layers:
            for blk in stage.blocks:
                if blk.attn_type == "L":
                    blk.attn = GlobalSoftmaxAttention(blk.attn)
        return model

    cands = [Candidate("flatten_swin_t", "ours", "swin", "flatten", flatten_swin, res,
                       extra={"windows": f"global L stages 1-2, S window {s_win}"}),
             Candidate("swin_t", "ours", "swin", "softmax", swin_ours, res,
                       extra={"windows": f"S window {s_win_all}"})]
    if "timm" in args.impl:
        cands.append(Candidate("swin_t", "timm", "swin", "softmax",
                               lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=res), res,
                               extra={"windows": "7 (padded)", "timm_name": "swin_tiny_patch4_window7_224"}))
    if not args.no_quadratic:
        cands.append(Candidate("swin_t_global_softmax", "ours", "swin", "softmax", swin_global, res,
                               extra={"windows": f"global softmax in stages 1-2, S window {s_win}"}))
    return cands


def run_scaling(args, device: torch.device) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    resolutions = [int(r) for r in args.resolutions.split(",") if r.strip()]
    meta = make_meta(args, device, "resolutions")
    meta["img_size"] = resolutions
    results: List[Dict[str, Any]] = []
    for res in resolutions:
        prepared = _build_steps(with_compile(scaling_candidates(res, args), args), args, device, args.batch)
        rows = time_round_robin(prepared, args, device, args.batch)
        for r in rows:
            r["tokens_stage1"] = (res // 4) ** 2
        results += rows
        print_results(rows, meta)
        print()
    meta["scaling_stat"] = args.stat
    print_scaling_table(results, args.stat)
    if args.plot:
        plot_scaling(results, meta, args.plot, args.stat)
    return meta, results


def _series(results: List[Dict[str, Any]]) -> Dict[Tuple[str, str], List[Dict[str, Any]]]:
    series: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in results:
        if not r.get("error"):
            series.setdefault((r["model"], r["impl"]), []).append(r)
    return series


def step_ms(r: Dict[str, Any], stat: str = "median") -> float:
    """ms per batch of a result: median over rounds, or the fastest round (``best``)."""
    return r["ms_min"] if stat == "best" else r["ms_per_batch"]


def growth_exponent(rows: List[Dict[str, Any]], stat: str = "median") -> Optional[float]:
    """Slope of log(time per image) against log(tokens): ~1 linear, ~2 quadratic."""
    pts = [(math.log(r["tokens_stage1"]), math.log(step_ms(r, stat) / r["batch"])) for r in rows]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def print_scaling_table(results: List[Dict[str, Any]], stat: str = "median") -> None:
    series = _series(results)
    res_list = sorted({r["img_size"] for r in results})
    print(f"resolution scaling: img/s ({'fastest round' if stat == 'best' else 'median over rounds'}) (peak MB)")
    print(f"{'model':<34}" + "".join(f"{r:>20}" for r in res_list) + f"{'time ~ N^k':>12}")
    for (name, impl), rows in series.items():
        by_res = {r["img_size"]: r for r in rows}
        cells = "".join(
            f"{1e3 * by_res[r]['batch'] / step_ms(by_res[r], stat):>10.3f} "
            f"({fmt_mem(by_res[r].get('peak_mem_mb')).strip():>7})" if r in by_res
            else f"{'-':>20}" for r in res_list)
        k = growth_exponent(rows, stat)
        print(f"{name + ' (' + impl + ')':<34}{cells}{(f'{k:.2f}' if k is not None else '-'):>12}")


def plot_scaling(results: List[Dict[str, Any]], meta: Dict[str, Any], path: str, stat: str = "median") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (name, impl), rows in sorted(_series(results).items()):
        rows = sorted(rows, key=lambda r: r["img_size"])
        xs = [r["img_size"] for r in rows]
        style = "-" if name.startswith("flatten_") else ("--" if impl == "timm" else ":")
        k = growth_exponent(rows, stat)
        label = f"{name} ({impl})" + (f", time ~ N^{k:.2f}" if k is not None else "")
        ax1.plot(xs, [1e3 * r["batch"] / step_ms(r, stat) for r in rows], style, marker="o", label=label)
        mem = [(r["img_size"], r["peak_mem_mb"] - r.get("params_mb", 0.0)) for r in rows if r.get("peak_mem_mb")]
        if mem:
            ax2.plot([m[0] for m in mem], [m[1] for m in mem], style, marker="o", label=f"{name} ({impl})")
    speed = "images / s" + (" (fastest round)" if stat == "best" else " (median round)")
    for ax, ylabel in ((ax1, speed), (ax2, "peak memory above the weights (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sorted({r["img_size"] for r in results}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("input resolution (px); tokens in stage 1 = (res/4)^2")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"FLatten-Swin-T vs Swin-T: {meta['hardware']}, batch {meta['batch']}, {meta['dtype']}, "
                 f"torch {meta['torch']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ============================================================================ attention op alone
def official_op_sequence(attn: FocusedLinearAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         hw: Tuple[int, int]) -> torch.Tensor:
    """The official op sequence between ``qkv`` and ``proj`` (FLatten release), op for op.

    Written out here as the yardstick for ``--op``: every step is its own
    elementwise pass over (B, N, C), the power is taken of the raw features,
    heads are split with permutes, and the mean, the normaliser and the conv
    branch are separate kernels.
    """
    B, N, C = q.shape
    h = attn.num_heads
    p = attn.focusing_factor
    k = k + attn.positional_encoding
    q = F.relu(q) + 1e-6
    k = F.relu(k) + 1e-6
    temperature = F.softplus(attn.scale)
    q = q / temperature
    k = k / temperature
    q_norm = q.norm(dim=-1, keepdim=True)
    k_norm = k.norm(dim=-1, keepdim=True)
    q = q ** p
    k = k ** p
    q = (q / q.norm(dim=-1, keepdim=True)) * q_norm
    k = (k / k.norm(dim=-1, keepdim=True)) * k_norm
    q, k, v = (t.reshape(B, N, h, -1).permute(0, 2, 1, 3) for t in (q, k, v))   # (B, h, N, d)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k.transpose(-2, -1) * (N ** -0.5)) @ (v * (N ** -0.5))
    x = q @ kv * z
    x = x.transpose(1, 2).reshape(B, N, C)
    grid = v.reshape(B * h, hw[0], hw[1], -1).permute(0, 3, 1, 2)               # (B*h, d, H, W)
    return x + attn.dwc(grid).reshape(B, C, N).permute(0, 2, 1)


# FLatten-Swin-T's focused stages at 224: (label, tokens per side, channels, heads)
OP_SHAPES = [("swin_t_stage1", 56, 96, 3), ("swin_t_stage2", 28, 192, 6)]


def run_op(args, device: torch.device) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    meta = make_meta(args, device, "op")
    meta["img_size"] = 224
    results = []
    for label, side, dim, heads in OP_SHAPES:
        n = side * side
        torch.manual_seed(0)
        attn = FocusedLinearAttention(dim, heads, (side, side)).to(device)
        with torch.no_grad():  # non-trivial extras, as after training
            attn.scale.normal_(0, 0.5)
            attn.positional_encoding.normal_(0, 0.1)
        qkv = torch.randn(args.batch, n, 3 * dim, device=device)
        impls = {
            "ours": lambda q, k, v: attn.attend_fused(q, k, v, (side, side)),
            "reference": lambda q, k, v: attn.attend_reference(q, k, v, (side, side)),
            "official": lambda q, k, v: official_op_sequence(attn, q, k, v, (side, side)),
        }
        with torch.no_grad(), autocast_ctx(device, args.amp):
            outs = {name: fn(*qkv.unflatten(-1, (3, dim)).unbind(-2)).float() for name, fn in impls.items()}
        err = ((outs["ours"] - outs["official"]).abs().max() / outs["official"].abs().max()).item()
        for mode in ("fwd", "fwd+bwd"):
            prepared = []
            for name, fn in impls.items():
                src = qkv.detach().requires_grad_(mode == "fwd+bwd")
                grad = torch.randn(args.batch, n, dim, device=device)

                def step(fn=fn, src=src, grad=grad, mode=mode):
                    q, k, v = src.unflatten(-1, (3, dim)).unbind(-2)
                    if mode == "fwd":
                        with torch.no_grad(), autocast_ctx(device, args.amp):
                            # returned, so that a compiled step cannot drop the computation as dead code
                            return fn(q, k, v)
                    else:
                        with autocast_ctx(device, args.amp):
                            out = fn(q, k, v)
                        out.backward(grad.to(out.dtype))
                        src.grad = None
                        attn.zero_grad(set_to_none=True)
                run = torch.compile(step) if args.compile and name == "ours" else step
                if run is not step and mode == "fwd":
                    got, tol = run().float(), 1e-4 if args.amp == "none" else 3e-2
                    if (got - outs[name]).abs().max() > tol * outs[name].abs().max():
                        raise BenchmarkError(f"{label}: the compiled op differs from eager")
                c = Candidate(label, name, "swin", "flatten", lambda: attn, 224,
                              extra={"op": mode, "tokens": n, "channels": dim, "heads": heads,
                                     "max_rel_diff_vs_official": err})
                prepared.append(dict(c=c, model=attn, x=qkv, step=run, eager_step=step, opt=None, error=None))
            rows = time_round_robin(prepared, args, device, args.batch, memory=device.type == "cuda")
            results += rows
            base = {r["impl"]: r for r in rows if not r.get("error")}
            for r in rows:
                if r.get("error"):
                    print(f"{label} {mode} {r['impl']}: ERROR {r['error']}")
                    continue
                vs = (f"  {base['official']['ms_per_batch'] / r['ms_per_batch']:.2f}x vs official"
                      if "official" in base else "")
                print(f"{label:<14} {mode:<8} {r['impl']:<10} {r['ms_per_batch']:9.2f} ms (min {r['ms_min']:8.2f})"
                      f"{vs}  N={n} C={dim} h={heads}  {tag(meta)}")
        print(f"{label}: max |ours - official| / max |official| = {err:.2e}")
    return meta, results


# ============================================================================ main
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="config names or globs (flatten_swin_t, swin_t, 'flatten_pvt_v2_*'); default: all")
    p.add_argument("--impl", nargs="+", default=["ours", "timm"], choices=["ours", "timm", "official"],
                   help="implementations to time (default: ours timm); official needs --official-path")
    p.add_argument("--official-path", metavar="PATH", help="checkout of the official FLatten-Transformer repo")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 64; --smoke 1)")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: each config's)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast precision")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (ours with fullgraph=True)")
    p.add_argument("--eager-too", action="store_true", help="with --compile: also time every model eager")
    p.add_argument("--freezing", action="store_true",
                   help="with --compile, inference: inductor freezing (weights folded as constants; CPU speed-up)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for model and input")
    p.add_argument("--train", action="store_true", help="time a training step (forward, backward, AdamW)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per candidate (default 3)")
    p.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 5)")
    p.add_argument("--iters", type=int, default=None, help="steps per candidate per round (default 5)")
    p.add_argument("--resolutions", metavar="R1,R2,...", help="resolution-scaling mode, e.g. 224,384,512,768")
    p.add_argument("--no-quadratic", action="store_true",
                   help="scaling mode: skip softmax over the global windows (slow at high resolution)")
    p.add_argument("--plot", metavar="PNG", help="scaling mode: write the plot here (default scaling.png)")
    p.add_argument("--stat", choices=["median", "best"], default="median",
                   help="scaling mode: table and plot from the median round or the fastest (shared machines)")
    p.add_argument("--op", action="store_true", help="time the attention op alone (ours vs the official op sequence)")
    p.add_argument("--breakdown", action="store_true",
                   help="also split each eager model's inference time into linear layers, attention core and rest")
    p.add_argument("--attention-impl", choices=["auto", "torch", "triton", "reference"], default=None,
                   help="implementation of our focused attention (default: the process default, 'auto')")
    p.add_argument("--smoke", action="store_true", help="tiny run for tests: batch 1, 1 warm-up, 2 rounds of 1")
    p.add_argument("--json", metavar="PATH", help="write {meta, results} here")
    args = p.parse_args(argv)
    smoke = args.smoke
    for name, full, tiny in (("batch", 64, 1), ("warmup", 3, 1), ("rounds", 5, 2), ("iters", 5, 1)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if smoke else full)
    if smoke and not args.models and not args.resolutions and not args.op:
        args.models = list(SMOKE_MODELS)
    if args.resolutions and not args.plot:
        args.plot = "scaling.png"
    if args.breakdown and (args.train or args.op or args.resolutions):
        p.error("--breakdown splits inference steps of the models mode; drop --train / --op / --resolutions")
    if "official" in args.impl and not args.official_path:
        p.error("--impl official needs --official-path PATH (a checkout of the official FLatten-Transformer)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # glibc keeps freed blocks: no page faults per step, for every model alike
    if args.freezing:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True
    try:
        with attention_impl(args.attention_impl) if args.attention_impl else contextlib.nullcontext():
            if args.op:
                meta, results = run_op(args, device)
            elif args.resolutions:
                meta, results = run_scaling(args, device)
            else:
                official = OfficialCode(args.official_path) if "official" in args.impl else None
                meta = make_meta(args, device, "models")
                print(f"benchmark: {tag(meta)}")
                prepared = _build_steps(with_compile(model_candidates(args, official), args), args, device,
                                        args.batch)
                results = time_round_robin(prepared, args, device, args.batch)
                print_results(results, meta)
                if args.breakdown:
                    run_breakdown(prepared, results, args, device, meta)
    except BenchmarkError as e:
        print(f"benchmark.py: {e}", file=sys.stderr)
        return 2
    write_json(args.json, meta, results)
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
