"""The Triton kernel's fail-safe (models/layers/attention/triton_fla.py): checked once per device and dtype
before its first use in 'auto' mode; a mismatch or an error keeps the PyTorch path, with one warning.

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
    assert len(calls) == 1                                       # checked once per device and dtype
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Triton feature map disabled on cpu for float32 input: forward differs" in warnings[0]
    assert "FLATTEN_ATTENTION_IMPL=triton" in warnings[0]
    ok, why = triton_fla.verdicts()[("cpu", torch.float32)]
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
    ok, why = triton_fla.verdicts()[("cpu", torch.float32)]
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
    found = triton_fla.verdicts()
    assert found[("cpu", torch.float32)][0] and not found[("cpu", torch.bfloat16)][0]


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
    ok, why = triton_fla.verdicts()[("cpu", torch.float32)]
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
