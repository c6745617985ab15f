"""The attention operation alone, between the qkv and output projections.

At the shapes of FLatten-Swin-T's focused stages (224 px), forward and
forward + backward: this project's fused path, its step-by-step reference
path, and the official op sequence (:func:`scripts.core.official.official_op_sequence`),
on the same module and the same random q, k, v.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from models.layers.attention import FocusedLinearAttention
from scripts.core.cli import ScriptError
from scripts.core.environment import tag
from scripts.core.memory import peak_memory_mb
from scripts.core.official import official_op_sequence
from scripts.core.timing import Candidate, Prepared, autocast_ctx, result, time_round_robin

from .common import make_meta, plan_of

# FLatten-Swin-T's focused stages at 224: (label, tokens per side, channels, heads)
OP_SHAPES = [("swin_t_stage1", 56, 96, 3), ("swin_t_stage2", 28, 192, 6)]


def attention_module(side: int, dim: int, heads: int, device: torch.device) -> FocusedLinearAttention:
    """A focused attention of FLatten-Swin-T's shapes with non-trivial extras, as after training."""
    torch.manual_seed(0)
    attn = FocusedLinearAttention(dim, heads, (side, side)).to(device)
    with torch.no_grad():
        attn.scale.normal_(0, 0.5)
        attn.positional_encoding.normal_(0, 0.1)
    return attn


def run(args, device: torch.device) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    meta = make_meta(args, device, "op")
    meta["img_size"] = 224
    results = []
    for label, side, dim, heads in OP_SHAPES:
        n = side * side
        attn = attention_module(side, dim, heads, device)
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
                            return fn(q, k, v)   # returned: a compiled step cannot drop it as dead code
                    with autocast_ctx(device, args.amp):
                        out = fn(q, k, v)
                    out.backward(grad.to(out.dtype))
                    src.grad = None
                    attn.zero_grad(set_to_none=True)
                run_step = torch.compile(step) if args.compile and name == "ours" else step
                if run_step is not step and mode == "fwd":
                    got, tol = run_step().float(), 1e-4 if args.amp == "none" else 3e-2
                    if (got - outs[name]).abs().max() > tol * outs[name].abs().max():
                        raise ScriptError(f"{label}: the compiled op differs from eager")
                c = Candidate(label, name, "swin", "flatten", lambda: attn, 224,
                              extra={"op": mode, "tokens": n, "channels": dim, "heads": heads,
                                     "max_rel_diff_vs_official": err})
                prepared.append(Prepared(c, model=attn, x=qkv, step=run_step, eager_step=step))
            time_round_robin(prepared, plan_of(args), device)
            rows = [result(p, args.batch) for p in prepared]
            if device.type == "cuda":   # on the CPU the op's intermediates are not worth a tracker pass
                for p, r in zip(prepared, rows):
                    if "error" not in r:
                        r["peak_mem_mb"] = peak_memory_mb(attn, p.eager_step, qkv, device)
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
