"""Where an eager model's inference time goes: linear layers, attention core, the rest.

Forward hooks time every ``nn.Linear`` and every outermost attention module
(a module whose class name contains 'Attention': ours, timm's or the official
code's). The attention core is the attention modules' time minus the linear
layers inside them (qkv, proj): the part an attention implementation decides.
Everything else (norms, MLP activations, convs, residuals, window partitions,
head) is the rest. On CUDA every hook synchronises.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn as nn

from scripts.core.environment import tag
from scripts.core.timing import Prepared, sync


def attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The outermost attention modules of ``model``."""
    found: List[Tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if "Attention" in type(m).__name__ and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, m))
    return found


def time_breakdown(model: nn.Module, step: Callable[[], Any], device: torch.device, reps: int) -> Dict[str, float]:
    """Milliseconds per step of ``step`` (a forward of ``model``) split into linear / attention core / rest."""
    attn = attention_modules(model)
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


def run(prepared: List[Prepared], results: List[Dict[str, Any]], reps: int, device: torch.device,
        meta: Dict[str, Any]) -> None:
    """Print (and add to ``results``) where each eager model of the models mode spends its time."""
    print(f"\ntime per batch by part (eager forward, mean of {reps} step(s) with hooks; {tag(meta)}):")
    print(f"{'model':<22} {'impl':<9} {'total ms':>9} {'linear':>15} {'attention core':>15} {'rest':>15}")
    rows = {}
    for p, r in zip(prepared, results):
        c = p.candidate
        if p.error is not None or c.compiled:
            continue
        b = time_breakdown(p.model, p.eager_step, device, reps)
        r["breakdown"] = b
        rows[(c.model, c.impl)] = b

        def part(k: str) -> str:
            return f"{b[k]:8.1f} ({100 * b[k] / b['total_ms']:3.0f}%)"
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
