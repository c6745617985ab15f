"""The Triton kernel's fail-safe (models/layers/attention/triton_fla.py): each kernel variant (device, dtypes,
channels, heads, power) is checked once before its first use in 'auto' mode; a mismatch or an error keeps the
PyTorch path, with one warning; the check runs safely inside gradient-checkpointed blocks.

The kernel itself is checked against the PyTorch path in test_fast_attention.py (Triton's interpreter
on the CPU). Here the CPU stands in for CUDA: the tests add it to the device types 'auto' considers.
"""
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from models.layers.attention import FocusedLinearAttention, attention_impl, triton_fla
from models.layers.attention.focused import torch_feature_map

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cpu_as_gpu(monkeypatch):
    """'auto' considers the kernel on the CPU; the verdicts start empty and are forgotten afterwards."""
    monkeypatch.setattr(triton_fla, "AUTO_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(triton_fla, "HAS_TRITON", True)
    triton_fla.forget_verdicts()
    yield
    triton_fla.forget_verdicts()


def verdict(device="cpu", dtype=torch.float32):
    """The one verdict of the checks for this device and input dtype (the tests use one variant each)."""
    found = [v for k, v in triton_fla.verdicts().items() if k.device == device and k.in_dtype == dtype]
    assert len(found) == 1, triton_fla.verdicts()
    return found[0]


def kernel_spy(monkeypatch, behaviour):
    """Replace the kernel by ``behaviour(*args)``; returns the list of calls."""
    calls = []

    def fake(*args, **kwargs):
        calls.append(args[0].shape)
        return behaviour(*args, **kwargs)
    monkeypatch.setattr(triton_fla, "focused_feature_map_triton", fake)
    return calls


def attend(dtype=torch.float32):
    torch.manual_seed(0)
    attn = FocusedLinearAttention(16, 2, (3, 3))
    with torch.no_grad():
        attn.scale.normal_(0, 0.5)
    q, k, v = (torch.randn(2, 9, 16).to(dtype) for _ in range(3))     # as the projections give them
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = attn.attend(q, k, v, (3, 3))
    with attention_impl("torch"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        ref = attn.attend(q, k, v, (3, 3))
    return out, ref


def wrong_by_one_percent(*args, **kwargs):
    return torch_feature_map(*args, **kwargs) * 1.01


def test_mismatch_keeps_the_pytorch_path_with_one_warning(cpu_as_gpu, monkeypatch, caplog):
    calls = kernel_spy(monkeypatch, wrong_by_one_percent)
    with attention_impl("auto"), caplog.at_level(logging.WARNING, logger=triton_fla.__name__):
        out, ref = attend()
        assert len(calls) == 1                                   # the check ran the kernel once ...
        torch.testing.assert_close(out, ref, rtol=0, atol=0)     # ... and the attention used PyTorch
        attend()
    assert len(calls) == 1                                       # checked once per variant
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert ("Triton feature map disabled for cpu, float32 input, float32 features, C=16 h=2 p=3: forward differs"
            in warnings[0])
    assert "FLATTEN_ATTENTION_IMPL=triton" in warnings[0]
    ok, why = verdict()
    assert not ok and why.startswith("forward differs from the PyTorch path by 1.0e-02")


def test_a_wrong_gradient_alone_is_caught(cpu_as_gpu, monkeypatch):
    class WrongBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 1.5 * g

    kernel_spy(monkeypatch, lambda *a, **kw: WrongBackward.apply(torch_feature_map(*a, **kw)))
    with attention_impl("auto"):
        attend()
    ok, why = verdict()
    assert not ok and why.startswith("dx differs") and "forward 0.0e+00" in why


def test_a_kernel_that_cannot_be_built_keeps_the_pytorch_path(cpu_as_gpu, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("CompilationError: at 12:4: unsupported\n  operation")
    calls = kernel_spy(monkeypatch, broken)
    with attention_impl("auto"), caplog.at_level(logging.WARNING, logger=triton_fla.__name__):
        out, ref = attend()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert len(calls) == 1
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "RuntimeError: CompilationError: at 12:4: unsupported operation" in message


def test_each_dtype_is_checked_on_its_own(cpu_as_gpu, monkeypatch):
    """A kernel wrong only with bfloat16 features: float32 keeps the kernel, bfloat16 input falls back."""
    def wrong_in_bf16(*args, **kwargs):
        out = torch_feature_map(*args, **kwargs)
        return out * 1.1 if out.dtype == torch.bfloat16 else out
    calls = kernel_spy(monkeypatch, wrong_in_bf16)
    with attention_impl("auto"):
        attend(torch.float32)
        n_fp32 = len(calls)
        attend(torch.bfloat16)
    assert n_fp32 == 1 + 2                      # the check, then queries and keys through the kernel
    assert len(calls) == n_fp32 + 1             # bf16: the check only
    assert verdict("cpu", torch.float32)[0] and not verdict("cpu", torch.bfloat16)[0]


def test_forced_choices_skip_the_check(cpu_as_gpu, monkeypatch):
    calls = kernel_spy(monkeypatch, wrong_by_one_percent)
    with attention_impl("triton"):
        out, ref = attend()
    assert len(calls) == 2 and not torch.allclose(out, ref)   # forced: the (wrong) kernel is used as is
    with attention_impl("torch"):
        attend()
    assert len(calls) == 2 and triton_fla.verdicts() == {}


CHECK_SCRIPT = textwrap.dedent("""
    import time, torch
    from models.layers.attention import FocusedLinearAttention, attention_impl, triton_fla
    from models.layers.attention.focused import torch_feature_map
    triton_fla.AUTO_DEVICE_TYPES = ("cuda", "cpu")
    calls = []
    real = triton_fla.focused_feature_map_triton
    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    triton_fla.focused_feature_map_triton = spy
    torch.manual_seed(0)
    attn = FocusedLinearAttention(24, 3, (4, 5))
    q, k, v = torch.randn(3, 2, 20, 24).unbind(0)
    with attention_impl("auto"):
        out = attn.attend(q, k, v, (4, 5))
    with attention_impl("reference"):
        ref = attn.attend(q, k, v, (4, 5))
    (ok, why), = triton_fla.verdicts().values()
    assert ok, why
    assert len(calls) == 3, calls                 # the check, then queries and keys
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-4
    print("check ok:", why)
""")


@pytest.mark.skipif(not triton_fla.HAS_TRITON, reason="triton not installed")
def test_the_real_kernel_passes_its_check_and_is_used():
    """Triton's interpreter on the CPU: the real kernel passes the check and then serves the attention."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("FLATTEN_ATTENTION_IMPL", None)
    out = subprocess.run([sys.executable, "-c", CHECK_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.startswith("check ok: max relative errors forward")


def test_each_variant_is_checked_on_its_own(cpu_as_gpu, monkeypatch):
    """A kernel wrong only at 32 channels: the 16-channel attention keeps the kernel, the 32-channel one
    falls back (a check keyed by device and dtype alone let the 32-channel variant run unchecked)."""
    def wrong_at_32(*args, **kwargs):
        out = torch_feature_map(*args, **kwargs)
        return out * 1.1 if args[0].shape[-1] == 32 else out
    calls = kernel_spy(monkeypatch, wrong_at_32)
    torch.manual_seed(0)
    with attention_impl("auto"):
        for dim in (16, 32, 16, 32):
            attn = FocusedLinearAttention(dim, 2, (3, 3))
            q, k, v = torch.randn(3, 2, 9, dim).unbind(0)
            out = attn.attend(q, k, v, (3, 3))
            with attention_impl("torch"):
                ref = attn.attend(q, k, v, (3, 3))
            if dim == 32:
                torch.testing.assert_close(out, ref, rtol=0, atol=0)
    by_channels = {k.channels: ok for k, (ok, _) in triton_fla.verdicts().items()}
    assert by_channels == {16: True, 32: False}
    assert len(calls) == (1 + 2 + 2) + 1      # C=16: check, q, k (twice); C=32: the check only


INTERPRETER_CHECKS = textwrap.dedent("""
    import torch
    from models.layers.attention import triton_fla
    from models.layers.attention.focused import torch_feature_map
    for in_dtype, out_dtype in ((torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                (torch.float16, torch.float32)):
        for channels, heads in ((96, 3), (24, 2)):
            ok, why = triton_fla.self_check(torch.device("cpu"), in_dtype, out_dtype, channels, heads, 3.0, True,
                                            torch_feature_map)
            print(str(in_dtype)[6:], channels, ok, why)
""")


@pytest.mark.skipif(not triton_fla.HAS_TRITON, reason="triton not installed")
def test_the_real_kernel_passes_its_check_in_every_autocast_dtype():
    """Triton's interpreter: the kernel passes the auto mode's own check for float32, bfloat16 autocast and
    float16 autocast input (float32 features). The first GPU run failed the float16 case on the positional
    encoding's gradient (2.6e-4 > 1e-4): dL/dx was rounded to float16 before its batch sum."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", INTERPRETER_CHECKS], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 6 and all(" True max relative errors" in line for line in lines), out.stdout


CHECKPOINT_SCRIPT = textwrap.dedent("""
    import torch, timm
    import models
    from models.layers.attention import attention_impl, triton_fla
    triton_fla.AUTO_DEVICE_TYPES = ("cuda", "cpu")
    grads = {}
    for impl in ("auto", "torch"):
        torch.manual_seed(0)
        model = timm.create_model("flatten_swin_tiny_patch4_224", img_size=64, embed_dim=16, depths=(1, 1, 1, 1),
                                  num_heads=(1, 2, 2, 4), window_size=16, drop_path_rate=0.0)
        model.set_grad_checkpointing(True)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with attention_impl(impl):
            model(x).square().sum().backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters()}
    assert len(triton_fla.verdicts()) == 2 and all(ok for ok, _ in triton_fla.verdicts().values())
    worst = max(((grads["auto"][n] - g).abs().max() / g.abs().max().clamp_min(1e-30)).item()
                for n, g in grads["torch"].items())
    assert worst < 1e-4, worst
    print("checkpointed ok", worst)
""")


@pytest.mark.skipif(not triton_fla.HAS_TRITON, reason="triton not installed")
def test_first_use_check_inside_gradient_checkpointing():
    """The auto mode's first-use check runs inside the first checkpointed block; recomputation then saves
    the same tensors (it used to stop every rank at the first backward with 'CheckpointError: 65 vs 61'),
    and the gradients equal the PyTorch path's."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("FLATTEN_ATTENTION_IMPL", None)
    out = subprocess.run([sys.executable, "-c", CHECKPOINT_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("checkpointed ok")
