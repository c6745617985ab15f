"""Timing: candidates built in one process and timed round-robin after warm-up.

Every round runs each candidate ``iters`` times, in an order rotated by one per
round, so a slow spell of a shared machine hits every candidate alike. A
candidate reports the median over rounds (``ms_per_batch``) and the fastest
round (``ms_min``). A candidate that fails to build, to warm up or to run is
reported with its error; the others go on.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

_logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One thing to time."""
    model: str                       # config name (flatten_swin_t, swin_t), or an op / scaling label
    impl: str                        # ours | official | timm | reference
    family: str
    attention: str                   # flatten | softmax
    build: Callable[[], nn.Module]
    img_size: int
    extra: Dict[str, Any] = field(default_factory=dict)
    compiled: bool = False


@dataclass
class Plan:
    """How long to time: ``warmup`` untimed steps, then ``rounds`` rounds of ``iters`` steps each."""
    warmup: int = 3
    rounds: int = 5
    iters: int = 5


@dataclass
class Prepared:
    """A candidate ready to run: its model, input and step (or the error that stopped it)."""
    candidate: Candidate
    model: Optional[nn.Module] = None
    x: Optional[torch.Tensor] = None
    step: Optional[Callable[[], Any]] = None
    eager_step: Optional[Callable[[], Any]] = None     # for memory tracking and the time breakdown
    opt: Optional[torch.optim.Optimizer] = None
    eager_opt: Optional[torch.optim.Optimizer] = None
    error: Optional[str] = None
    times: List[float] = field(default_factory=list)
    warmup_s: float = 0.0


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_ctx(device: torch.device, amp: str):
    """``amp``: 'none', 'bf16' or 'fp16'."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def make_step(model: nn.Module, x: torch.Tensor, train: bool, amp: str, device: torch.device,
              compile_model: bool = False, fullgraph: bool = False
              ) -> Tuple[Callable[[], Any], Optional[torch.optim.Optimizer]]:
    """One inference batch, or one training step (forward, loss, backward, AdamW step).

    The inference step returns the output, so a compiled step cannot drop the
    computation as dead code.
    """
    model.train(train)
    run = torch.compile(model, fullgraph=fullgraph) if compile_model else model
    if not train:
        def infer():
            with torch.no_grad(), autocast_ctx(device, amp):
                return run(x)
        return infer, None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    target = torch.randint(0, 1000, (x.shape[0],), device=device)

    def train_step():
        with autocast_ctx(device, amp):
            loss = F.cross_entropy(run(x).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()
    return train_step, opt


def prepare(candidates: List[Candidate], device: torch.device, batch: int, train: bool, amp: str,
            channels_last: bool = False) -> List[Prepared]:
    """Build every candidate (all in this process) with its input and step function."""
    out = []
    for c in candidates:
        p = Prepared(c)
        try:
            torch.manual_seed(0)
            model = c.build().to(device)
            x = torch.randn(batch, 3, c.img_size, c.img_size, device=device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            p.model, p.x = model, x
            p.step, p.opt = make_step(model, x, train, amp, device, c.compiled, fullgraph=c.impl == "ours")
            p.eager_step, p.eager_opt = p.step, p.opt
            if c.compiled:                       # memory and the breakdown are taken on the eager model
                p.eager_step, p.eager_opt = make_step(model, x, train, amp, device)
        except Exception as e:  # report and go on with the others
            _logger.warning("%s (%s): %s", c.model, c.impl, e)
            p.error = error_text(e)
        out.append(p)
    return out


def time_round_robin(prepared: List[Prepared], plan: Plan, device: torch.device) -> None:
    """Warm every live candidate up, then time them round-robin; fills ``times`` (seconds per step)."""
    live = [p for p in prepared if p.error is None]
    for p in live:  # warm-up (and compilation)
        try:
            t0 = time.perf_counter()
            for _ in range(plan.warmup):
                p.step()
            sync(device)
            p.warmup_s = time.perf_counter() - t0
        except Exception as e:
            p.error = error_text(e)
    live = [p for p in live if p.error is None]
    for r in range(plan.rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for p in order:
            try:
                sync(device)
                t0 = time.perf_counter()
                for _ in range(plan.iters):
                    p.step()
                sync(device)
            except Exception as e:
                p.error = error_text(e)
                live.remove(p)
                continue
            p.times.append((time.perf_counter() - t0) / plan.iters)


def result(p: Prepared, batch: int) -> Dict[str, Any]:
    """The JSON record of a timed candidate: identity, timing, size, or its error."""
    c = p.candidate
    res: Dict[str, Any] = {"model": c.model, "impl": c.impl, "family": c.family, "attention": c.attention,
                           "img_size": c.img_size, "batch": batch, "compiled": c.compiled, **c.extra}
    if p.error is not None or not p.times:
        res["error"] = p.error or "not timed"
        return res
    med, best = statistics.median(p.times), min(p.times)
    res.update(img_per_s=batch / med, ms_per_batch=1e3 * med, ms_min=1e3 * best,
               img_per_s_best=batch / best, rounds_ms=[round(1e3 * t, 2) for t in p.times],
               params_m=sum(q.numel() for q in p.model.parameters()) / 1e6,
               params_mb=sum(q.numel() * q.element_size() for q in p.model.parameters()) / 2 ** 20,
               warmup_s=round(p.warmup_s, 2))
    return res


def step_ms(r: Dict[str, Any], stat: str = "median") -> float:
    """ms per batch of a result: the median round, or the fastest (``stat='best'``)."""
    return r["ms_min"] if stat == "best" else r["ms_per_batch"]
