"""What every benchmark mode shares: the run's meta block and its timing plan."""
from __future__ import annotations

from typing import Any, Dict

import torch

from scripts.core.environment import base_meta
from scripts.core.timing import Plan


def plan_of(args) -> Plan:
    return Plan(warmup=args.warmup, rounds=args.rounds, iters=args.iters)


def make_meta(args, device: torch.device, mode: str) -> Dict[str, Any]:
    """Hardware, versions and the settings of this run (printed beside figures, saved in the JSON)."""
    from utils.cpu_memory import keep_freed_memory
    return base_meta(
        device, mode,
        batch=args.batch,
        dtype="float32" if args.amp == "none" else f"autocast {args.amp}",
        img_size=args.img_size,
        compile=bool(args.compile),
        inductor_freezing=bool(args.freezing),
        channels_last=bool(args.channels_last),
        train=bool(args.train),
        warmup=args.warmup, rounds=args.rounds, iters=args.iters,
        timing="round-robin over candidates; per round the mean of `iters` steps; "
               "ms_per_batch = median over rounds (ms_min = fastest round)",
        peak_mem=("torch.cuda.max_memory_allocated over one step" if device.type == "cuda" else
                  "parameters + inputs + optimizer state + peak of the tensors alive in one eager step "
                  "(fused kernels are charged only for the tensors they return)"),
        cpu_malloc=keep_freed_memory() if device.type == "cpu" else None,
    )
