"""``python -m scripts.benchmark``: options and mode dispatch (see the package docstring).

Usage (from the repository root)::

    .venv/bin/python -m scripts.benchmark --models flatten_swin_t swin_t --batch 16
    .venv/bin/python -m scripts.benchmark --models flatten_swin_t --impl ours official \\
        --official-path ../FLatten-Transformer --batch 16 --json bench.json
    .venv/bin/python -m scripts.benchmark --models 'flatten_*' swin_t pvt_v2_b2 --batch 256 --amp bf16 --compile
    .venv/bin/python -m scripts.benchmark --models flatten_swin_t --impl ours official --official-path PATH \\
        --batch 16 --compile --eager-too --freezing          # CPU: compiled (weights frozen) and eager
    .venv/bin/python -m scripts.benchmark --models flatten_swin_t --train --batch 64
    .venv/bin/python -m scripts.benchmark --resolutions 224,384,512,768 --batch 1 --plot scaling.png
    .venv/bin/python -m scripts.benchmark --op --batch 16
    .venv/bin/python -m scripts.benchmark --feature-map --batch 64 --amp bf16          # GPU: Triton vs PyTorch
    .venv/bin/python -m scripts.benchmark --smoke --json /tmp/bench.json     # seconds, for tests
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import List, Optional

if __name__ == "__main__" and not __package__:
    raise SystemExit("run it from the repository root as: python -m scripts.benchmark ...")

from scripts.core import cli  # noqa: E402
from scripts.core.environment import resolve_device  # noqa: E402

from . import attention_op, breakdown, model_speed, scaling  # noqa: E402
from .report import write_json  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    import scripts.benchmark as package
    p = argparse.ArgumentParser(prog="python -m scripts.benchmark", description=package.__doc__.split("\n\n")[0],
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
    p.add_argument("--feature-map", action="store_true",
                   help="time the keys' feature map alone: the Triton kernel vs the fused PyTorch path (CUDA)")
    p.add_argument("--breakdown", action="store_true",
                   help="also split each eager model's inference time into linear layers, attention core and rest")
    p.add_argument("--attention-impl", choices=["auto", "torch", "triton", "reference"], default=None,
                   help="implementation of our focused attention (default: the process default, 'auto')")
    p.add_argument("--smoke", action="store_true", help="tiny run for tests: batch 1, 1 warm-up, 2 rounds of 1")
    p.add_argument("--json", metavar="PATH", help="write {meta, results} here")
    args = p.parse_args(argv)
    for name, full, tiny in (("batch", 64, 1), ("warmup", 3, 1), ("rounds", 5, 2), ("iters", 5, 1)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.smoke else full)
    if args.resolutions and not args.plot:
        args.plot = "scaling.png"
    if args.breakdown and (args.train or args.op or args.resolutions or args.feature_map):
        p.error("--breakdown splits inference steps of the models mode; drop --train / --op / --resolutions / "
                "--feature-map")
    if args.feature_map and (args.op or args.resolutions or args.train or args.compile):
        p.error("--feature-map is a mode of its own (eager); drop --op / --resolutions / --train / --compile")
    if "official" in args.impl and not args.official_path:
        p.error("--impl official needs --official-path PATH (a checkout of the official FLatten-Transformer)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        from utils.cpu_memory import keep_freed_memory
        keep_freed_memory()  # glibc keeps freed blocks: no page faults per step, for every model alike
    if args.freezing:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True
    from models.layers.attention import attention_impl
    with attention_impl(args.attention_impl) if args.attention_impl else contextlib.nullcontext():
        if args.feature_map:
            meta, results = attention_op.run_feature_map(args, device)
        elif args.op:
            meta, results = attention_op.run(args, device)
        elif args.resolutions:
            meta, results = scaling.run(args, device)
        else:
            meta, results, prepared = model_speed.run(args, device)
            if args.breakdown:
                breakdown.run(prepared, results, args.iters, device, meta)
    write_json(args.json, meta, results)
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
