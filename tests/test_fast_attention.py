"""The fused focused-attention path against the reference path (same numerics, fewer passes).

* fp32: outputs and every gradient within 1e-4 relative of :meth:`attend_reference`;
* autocast fp16 / bf16: finite with large activations, close to fp32;
* the Triton kernel (forward and backward) under Triton's CPU interpreter, in a subprocess,
  and on CUDA when there is a GPU;
* every family traces with ``torch.compile(fullgraph=True)`` (no graph breaks), at the built size
  and, built with ``dynamic_img_size``, at a second size; one small model compiles with inductor
  and matches eager (slow).

Tests that depend on the implementation choice set it explicitly, so ``FLATTEN_ATTENTION_IMPL``
in the environment changes nothing here.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import torch.nn.functional as F

import models  # noqa: F401  (registers the models)
from models.layers.attention import triton_fla
from models.layers.attention.focused import (EPS, FocusedLinearAttention, attention_impl, focused_features,
                                             get_attention_impl, set_attention_impl)
from randomize import randomize
from tiny import REPRESENTATIVES, tiny_kwargs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def run_both(attn, q, k, v, hw, prefix=0, impl="torch"):
    """Outputs and gradients (inputs and parameters) of the fused and the reference path."""
    results = []
    for path in (impl, "reference"):
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        attn.zero_grad(set_to_none=True)
        with attention_impl(path):
            out = attn.attend(*inputs, hw, num_prefix_tokens=prefix)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        (out * g).sum().backward()
        grads = {f"d{n}": t.grad for n, t in zip("qkv", inputs)}
        # the attention's own parameters (projections of the layout are not used by attend)
        grads.update({n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None})
        results.append((out.detach(), grads))
    return results


# (hw, heads, p, focused, use_dwc, prefix tokens, key tokens (None = N), batch);
# use_dwc None: neither DWC nor positional encoding (paper Table 4's first rows)
CASES = [
    ((7, 7), 2, 3, True, True, 0, None, 2),       # FLatten-Swin-like window
    ((4, 6), 3, 2.5, True, True, 0, None, 3),     # non-square grid, non-integer p
    ((5, 5), 1, 3, False, True, 0, None, 2),      # vanilla ReLU linear attention + DWC
    ((6, 6), 4, 8, True, True, 0, None, 1),       # large p
    ((4, 4), 2, 3, True, True, 1, None, 2),       # DeiT-like class token
    ((4, 4), 2, 3, True, True, 0, 4, 2),          # PVT key reduction: 4 keys, 16 queries
    ((6, 4), 2, 3, True, False, 0, None, 6),      # no DWC, a batch of windows
    ((4, 4), 2, 3, False, None, 0, None, 2),      # bare ReLU linear attention
]


@pytest.mark.parametrize("hw,heads,p,focused,use_dwc,prefix,m,batch", CASES)
def test_fused_matches_reference_fp32(hw, heads, p, focused, use_dwc, prefix, m, batch):
    torch.manual_seed(0)
    dim = 8 * heads
    n = prefix + hw[0] * hw[1]
    m = m or n
    layout = {} if m == n else dict(qkv="q_kv", sr_ratio=2)                # fewer keys: PVT's key reduction
    attn = randomize(FocusedLinearAttention(dim, heads, hw, num_prefix_tokens=prefix, focusing_factor=p,
                                            focused=focused, use_dwc=bool(use_dwc), use_pe=use_dwc is not None,
                                            **layout))
    assert (attn.positional_encoding is None) == (use_dwc is None)
    q = torch.randn(batch, n, dim) * 2
    k, v = torch.randn(2, batch, m, dim).unbind(0)
    (out, grads), (ref, ref_grads) = run_both(attn, q, k, v, hw, prefix)
    assert out.shape == ref.shape == (batch, n, dim)
    assert rel_err(out, ref) < 1e-4
    assert set(grads) == set(ref_grads) and {"scale", "dq", "dk", "dv"} <= set(grads)
    for name, g in ref_grads.items():
        assert rel_err(grads[name], g) < 1e-4, name


def test_fused_strided_qkv_and_large_values_fp32():
    """q, k, v as slices of one qkv output (the families' layout), activations up to 1e4."""
    torch.manual_seed(1)
    attn = randomize(FocusedLinearAttention(24, 3, (5, 5)))
    qkv = torch.randn(2, 25, 72) * 1e3
    q, k, v = qkv.unflatten(-1, (3, 24)).unbind(-2)
    (out, grads), (ref, ref_grads) = run_both(attn, q, k, v, (5, 5))
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-4
    for name, g in ref_grads.items():
        assert torch.isfinite(grads[name]).all() and rel_err(grads[name], g) < 1e-4, name


def test_focused_features_is_the_kernel():
    """u * s equals the reference kernel f_p((relu(x + pe) + eps) / softplus(scale))."""
    torch.manual_seed(2)
    attn = randomize(FocusedLinearAttention(16, 2, (3, 3), focusing_factor=3))
    q, k = torch.randn(2, 3, 9, 16).unbind(0)
    ref_q, ref_k = attn.kernel(q, k)
    t = F.softplus(attn.scale)
    u, s = focused_features(q, t, None, 3)
    assert rel_err(u * s, ref_q) < 1e-5 and float(u.detach().max()) <= 1.0 + 1e-6
    u, s = focused_features(k, t, attn.positional_encoding, 3)
    assert rel_err(u * s, ref_k) < 1e-5
    y, none = focused_features(q, t, None, 3, focused=False)
    assert none is None and torch.allclose(y, (F.relu(q) + EPS) / t)


@pytest.mark.parametrize("impl", ["torch", "reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_large_activations_finite(impl, dtype):
    """(x / max)**p keeps fp16 / bf16 finite where x**p of activations in the hundreds would overflow."""
    torch.manual_seed(3)
    attn = randomize(FocusedLinearAttention(32, 2, (8, 8)), std=0.3)
    x = (torch.randn(2, 64, 96) * 300).requires_grad_()
    with attention_impl(impl), torch.autocast("cpu", dtype=dtype):
        q, k, v = x.to(dtype).unflatten(-1, (3, 32)).unbind(-2)
        y = attn.attend(q, k, v, (8, 8))
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_autocast_close_to_float64(dtype):
    """The fused path under autocast against the reference path in float64.

    Bounds in units of the format's unit roundoff u (bf16 2**-9, fp16 2**-11): bf16 rounds the inputs,
    the features and the matmul operands (float32 accumulation) and the output: allow 8 u (measured
    2-4 u); fp16 rounds only inputs and output, the matmuls stay in float32: allow 4 u.
    """
    torch.manual_seed(4)
    attn = randomize(FocusedLinearAttention(32, 2, (6, 6)), seed=4)
    q, k, v = torch.randn(3, 2, 36, 32).unbind(0)
    with attention_impl("reference"):
        ref = attn.double().attend(q.double(), k.double(), v.double(), (6, 6))
    attn.float()
    with attention_impl("torch"), torch.autocast("cpu", dtype=dtype):
        out = attn.attend(q.to(dtype), k.to(dtype), v.to(dtype), (6, 6))
    assert out.dtype == dtype
    u = 2 ** -9 if dtype == torch.bfloat16 else 2 ** -11
    assert rel_err(out, ref) < (8 if dtype == torch.bfloat16 else 4) * u


def test_impl_switch_and_validation(monkeypatch):
    from models.layers.attention import focused
    attn = randomize(FocusedLinearAttention(8, 2, (2, 2)))
    q, k, v = torch.randn(3, 1, 4, 8).unbind(0)
    calls = []
    monkeypatch.setattr(focused, "attend_reference", lambda *a, **kw: calls.append("reference") or torch.zeros(1, 4, 8))
    monkeypatch.setattr(focused, "attend_fused", lambda *a, **kw: calls.append("fused") or torch.zeros(1, 4, 8))
    with attention_impl("auto"):
        before = get_attention_impl()
        with attention_impl("reference"):
            assert get_attention_impl() == "reference"
            attn.attend(q, k, v, (2, 2))
        assert get_attention_impl() == before == "auto" and calls == ["reference"]
        attn.attend(q, k, v, (2, 2))                             # 'auto' on the CPU: the fused path
        assert calls == ["reference", "fused"]
    with pytest.raises(ValueError):
        set_attention_impl("fastest")
    if not triton_fla.HAS_TRITON:
        with pytest.raises(RuntimeError):
            set_attention_impl("triton")


def test_env_var_forces_reference_path():
    code = "from models.layers.attention import focused as f; print(f.get_attention_impl())"
    env = dict(os.environ, FLATTEN_ATTENTION_IMPL="reference")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reference"


def test_auto_uses_pytorch_path_on_cpu(monkeypatch):
    """On the CPU 'auto' never calls the Triton kernel."""
    monkeypatch.setattr(triton_fla, "focused_feature_map_triton",
                        lambda *a, **kw: (_ for _ in ()).throw(AssertionError("triton path on CPU")))
    attn = FocusedLinearAttention(8, 2, (2, 2))
    q, k, v = torch.randn(3, 1, 4, 8).unbind(0)
    with attention_impl("auto"):
        out = attn.attend(q, k, v, (2, 2))
    with attention_impl("reference"):
        torch.testing.assert_close(out, attn.attend(q, k, v, (2, 2)), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- Triton (interpreter)
TRITON_SCRIPT = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from models.layers.attention import triton_fla
    from models.layers.attention.focused import EPS, FocusedLinearAttention, attention_impl, focused_features

    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

    torch.manual_seed(0)
    for B, N, C, h, p, focused, pe, dt in [(2, 10, 12, 3, 3, True, True, torch.float32),
                                           (2, 7, 20, 2, 2.5, True, False, torch.float32),
                                           (1, 9, 8, 1, 3, False, True, torch.float32),
                                           (2, 5, 24, 4, 8, True, True, torch.float32),
                                           (2, 6, 16, 2, 3, True, True, torch.bfloat16)]:
        src = torch.randn(B, N, 3 * C) * 2
        x = src[..., C:2 * C].clone().requires_grad_()           # also checks strided input below
        x2 = x.detach().clone().requires_grad_()
        scale = (torch.randn(1, 1, C) * 0.5).requires_grad_()
        scale2 = scale.detach().clone().requires_grad_()
        bias = (torch.randn(1, N, C) * 0.5).requires_grad_() if pe else None
        bias2 = bias.detach().clone().requires_grad_() if pe else None
        out = triton_fla.focused_feature_map_triton(x, F.softplus(scale), bias, p, focused, h, EPS, dt)
        u, s = focused_features(x2, F.softplus(scale2), bias2, p, focused)
        ref = (u if s is None else u * s).view(B, N, h, C // h).transpose(1, 2)
        assert out.shape == (B, h, N, C // h) and out.dtype == dt and out.is_contiguous()
        tol = 1e-5 if dt == torch.float32 else 1e-2
        assert rel(out, ref) < tol, ("fwd", rel(out, ref))
        g = torch.randn(ref.shape)
        (out.float() * g).sum().backward()
        (ref * g).sum().backward()
        assert rel(x.grad, x2.grad) < 10 * tol, ("dx", rel(x.grad, x2.grad))
        assert rel(scale.grad, scale2.grad) < 10 * tol, ("dscale", rel(scale.grad, scale2.grad))
        if pe:
            assert rel(bias.grad, bias2.grad) < 10 * tol, ("dpe", rel(bias.grad, bias2.grad))
        strided = triton_fla.focused_feature_map_triton(src[..., C:2 * C], F.softplus(scale), bias, p, focused,
                                                        h, EPS, dt)
        assert torch.equal(strided, out.detach())

    # whole attention with the Triton feature map vs the reference path, forward and backward
    attn = FocusedLinearAttention(32, 2, (4, 4))
    with torch.no_grad():
        for prm in attn.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
    q, k, v = torch.randn(3, 2, 16, 32).unbind(0)
    res = []
    for impl in ("triton", "reference"):
        inp = [t.clone().requires_grad_() for t in (q, k, v)]
        attn.zero_grad()
        with attention_impl(impl):
            o = attn.attend(*inp, (4, 4))
        o.square().sum().backward()
        res.append((o.detach(), [t.grad for t in inp] + [prm.grad.clone() for prm in attn.parameters()]))
    assert rel(res[0][0], res[1][0]) < 1e-4
    for a, b in zip(res[0][1], res[1][1]):
        assert rel(a, b) < 1e-4
    print("triton ok")
""")


@pytest.mark.skipif(not triton_fla.HAS_TRITON, reason="triton not installed")
def test_triton_feature_map_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "triton ok" in out.stdout


# --------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available() or not triton_fla.HAS_TRITON, reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_auto_path_matches_float64_reference(dtype):
    """On CUDA 'auto' runs the Triton feature map; outputs and gradients against the float64 reference on the CPU.

    float32: within 1e-4 relative (as the fused path on the CPU). bfloat16 (autocast): 8 units of bf16
    roundoff (2**-9), as on the CPU (test_fused_autocast_close_to_float64).
    """
    torch.manual_seed(5)
    attn = randomize(FocusedLinearAttention(64, 4, (14, 14)), std=0.3)
    q, k, v = torch.randn(3, 2, 196, 64).unbind(0)
    calls = []
    real = triton_fla.focused_feature_map_triton

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    with attention_impl("reference"):
        ins = [t.double().requires_grad_() for t in (q, k, v)]
        ref = attn.double().attend(*ins, (14, 14))
        ref.square().sum().backward()
    ref_grads = [t.grad for t in ins]
    cuda_attn = attn.float().cuda()
    ins = [t.cuda().requires_grad_() for t in (q, k, v)]
    import unittest.mock
    triton_fla.forget_verdicts()
    with attention_impl("auto"), unittest.mock.patch.object(triton_fla, "focused_feature_map_triton", spy), \
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = cuda_attn.attend(*(t.to(dtype) for t in ins), (14, 14))
    (ok, why), = [v for k, v in triton_fla.verdicts().items() if k.in_dtype == dtype]
    assert ok, why                                                      # the fail-safe check passed ...
    assert calls == [1, 1, 1] and out.dtype == dtype                    # ... (one call), then q and k
    tol = 1e-4 if dtype == torch.float32 else 8 * 2 ** -9
    assert rel_err(out.cpu(), ref) < tol
    out.float().square().sum().backward()
    for g, r in zip(ins, ref_grads):
        assert rel_err(g.grad.cpu(), r) < (10 * tol if dtype == torch.bfloat16 else 1e-3)


# --------------------------------------------------------------------------- torch.compile
def compile_kwargs(name):
    """A shallow, narrow model of the family (PVT with key reduction in stage 1)."""
    kwargs = tiny_kwargs(name)
    if "depths" in kwargs:
        kwargs["depths"] = (1, 1, 1, 1)
    if models.family_of(name) == "pvt":
        kwargs["la_sr_ratios"] = [2, 1, 1, 1]
    return kwargs


def check_compiled(model, sizes, **compile_kwargs):
    import torch._dynamo
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True, **compile_kwargs)
    for size in sizes:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if "softmax" in n else [])
                                  for n in REPRESENTATIVES])
def test_models_compile_fullgraph(name):
    """Dynamo captures each model as one graph (fullgraph=True): at the built size, and -- built with
    dynamic_img_size -- at two other sizes (one static graph per size here, to keep the suite short;
    the symbolic-shape variant is the slow test below)."""
    size = 48 if models.family_of(name) == "deit" else 64
    fixed = timm.create_model(name, num_classes=5, img_size=size, **compile_kwargs(name)).eval()
    check_compiled(fixed, [(size, size)])
    dyn = timm.create_model(name, num_classes=5, dynamic_img_size=True, **compile_kwargs(name)).eval()
    check_compiled(dyn, [(size, 2 * size), (2 * size, size)], dynamic=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_models_compile_symbolic_sizes(name):
    """torch.compile's default: the second size recompiles with symbolic shapes; a third reuses it."""
    size = 48 if models.family_of(name) == "deit" else 64
    dyn = timm.create_model(name, num_classes=5, dynamic_img_size=True, **compile_kwargs(name)).eval()
    check_compiled(dyn, [(size, 2 * size), (2 * size, size), (3 * size, 2 * size)])


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    """A small FLatten-Swin compiled by inductor (C++ codegen on the CPU): same outputs and gradients."""
    import torch._dynamo
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model("flatten_swin_tiny_patch4_224", num_classes=5, img_size=64, window_size=8,
                              **compile_kwargs("flatten_swin_tiny_patch4_224"))
    model.eval()
    randomize(model, std=0.05)
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    ref = model(x)
    assert rel_err(out, ref) < 1e-4
    out.square().sum().backward()
    g_compiled = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref.square().sum().backward()
    for n, p in model.named_parameters():
        assert rel_err(g_compiled[n], p.grad) < 1e-3, n
