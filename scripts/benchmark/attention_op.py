"""The attention operation alone, between the qkv and output projections; the feature map alone.

``--op``: at the shapes of FLatten-Swin-T's focused stages (224 px), forward and
forward + backward: this project's fused path, its step-by-step reference
path, and the official op sequence (:func:`scripts.core.official.official_op_sequence`),
on the same module and the same random q, k, v. With ``--amp`` every candidate
gets q, k, v in the autocast dtype, as the qkv projection returns them under
autocast, and runs under the same autocast: like for like.

``--feature-map``: the focused feature map of the keys alone (positional
encoding, ReLU, temperature, focusing, split into heads in the matmul dtype),
the Triton kernel (:func:`models.layers.attention.triton_fla.focused_feature_map_triton`)
against the fused PyTorch path (:func:`models.layers.attention.focused.torch_feature_map`),
forward and forward + backward, at the same shapes. Needs CUDA (or Triton's
interpreter, ``TRITON_INTERPRET=1``, on the CPU).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

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


def amp_dtype(amp: str) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp`` ('none', 'bf16', 'fp16'), None for none."""
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def run(args, device: torch.device) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    meta = make_meta(args, device, "op")
    meta["img_size"] = 224
    results = []
    half = amp_dtype(args.amp)
    for label, side, dim, heads in OP_SHAPES:
        n = side * side
        attn = attention_module(side, dim, heads, device)
        # under autocast the qkv projection returns half-precision q, k, v: every candidate starts from those
        qkv = torch.randn(args.batch, n, 3 * dim, device=device).to(half or torch.float32)
        impls = {
            "ours": lambda q, k, v: attn.attend_fused(q, k, v, (side, side)),
            "reference": lambda q, k, v: attn.attend_reference(q, k, v, (side, side)),
            "official": lambda q, k, v: official_op_sequence(attn, q, k, v, (side, side)),
        }
        with torch.no_grad(), autocast_ctx(device, args.amp):
            outs = {name: fn(*qkv.unflatten(-1, (3, dim)).unbind(-2)).float() for name, fn in impls.items()}
        meta["input_dtype"] = str(qkv.dtype).replace("torch.", "")
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
                                     "input_dtype": str(qkv.dtype).replace("torch.", ""),
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


# ----------------------------------------------------------------------------- the feature map alone
def run_feature_map(args, device: torch.device) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The keys' feature map, Triton kernel against fused PyTorch, at FLatten-Swin-T's focused stages.

    The keys are the heavier of the two calls (they add the positional
    encoding); the temperature ``softplus(scale)`` is computed inside each
    timed step, as :func:`~models.layers.attention.focused.attend_fused` does.
    Results carry ``max_rel_diff_vs_torch`` (forward output, both impls).
    """
    from models.layers.attention import triton_fla
    from models.layers.attention.base import EPS
    from models.layers.attention.focused import _matmul_dtype, torch_feature_map
    if not triton_fla.HAS_TRITON:
        raise ScriptError("--feature-map times the Triton kernel, and triton is not installed")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ScriptError("--feature-map needs a CUDA device (Triton kernels run on the CPU only under "
                          "TRITON_INTERPRET=1, far too slowly to time)")
    meta = make_meta(args, device, "feature_map")
    meta["img_size"] = 224
    half = amp_dtype(args.amp)
    fns = {"triton": triton_fla.focused_feature_map_triton, "torch": torch_feature_map}
    results = []
    for label, side, dim, heads in OP_SHAPES:
        n = side * side
        attn = attention_module(side, dim, heads, device)
        k = torch.randn(args.batch, n, dim, device=device).to(half or torch.float32)   # as the qkv linear returns it
        out_dtype = _matmul_dtype(k, k)
        p = attn.focusing_factor
        meta.update(input_dtype=str(k.dtype).replace("torch.", ""), feature_dtype=str(out_dtype).replace("torch.", ""))

        def features(fn, x):
            temperature = F.softplus(attn.scale.float())
            return fn(x, temperature, attn.positional_encoding, p, True, heads, EPS, out_dtype)

        with torch.no_grad(), autocast_ctx(device, args.amp):
            outs = {name: features(fn, k).float() for name, fn in fns.items()}
        err = ((outs["triton"] - outs["torch"]).abs().max() / outs["torch"].abs().max()).item()
        for mode in ("fwd", "fwd+bwd"):
            prepared = []
            for name, fn in fns.items():
                src = k.detach().requires_grad_(mode == "fwd+bwd")
                grad = torch.randn(args.batch, heads, n, dim // heads, device=device).to(out_dtype)

                def step(fn=fn, src=src, grad=grad, mode=mode):
                    if mode == "fwd":
                        with torch.no_grad(), autocast_ctx(device, args.amp):
                            return features(fn, src)
                    with autocast_ctx(device, args.amp):
                        out = features(fn, src)
                    out.backward(grad)
                    src.grad = None
                    attn.zero_grad(set_to_none=True)
                c = Candidate(f"{label}_features", name, "swin", "flatten", lambda: attn, 224,
                              extra={"op": mode, "tokens": n, "channels": dim, "heads": heads,
                                     "input_dtype": meta["input_dtype"], "feature_dtype": meta["feature_dtype"],
                                     "max_rel_diff_vs_torch": err})
                prepared.append(Prepared(c, model=attn, x=k, step=step, eager_step=step))
            time_round_robin(prepared, plan_of(args), device)
            rows = [result(p_, args.batch) for p_ in prepared]
            results += rows
            base = {r["impl"]: r for r in rows if not r.get("error")}
            for r in rows:
                if r.get("error"):
                    print(f"{label} features {mode} {r['impl']}: ERROR {r['error']}")
                    continue
                vs = (f"  {base['torch']['ms_per_batch'] / r['ms_per_batch']:.2f}x vs torch" if "torch" in base
                      else "")
                print(f"{label + ' phi(k)':<20} {mode:<8} {r['impl']:<7} {r['ms_per_batch']:9.3f} ms "
                      f"(min {r['ms_min']:8.3f}){vs}  N={n} C={dim} h={heads} {meta['input_dtype']} in, "
                      f"{meta['feature_dtype']} out  {tag(meta)}")
        print(f"{label} features: max |triton - torch| / max |torch| = {err:.2e}")
    return meta, results
