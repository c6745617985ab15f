"""Triton kernels for the feature map of focused linear attention (CUDA, forward and backward).

One kernel pass turns a (B, N, C) query or key tensor into its focused
features, already split into heads:

    phi(x) = f_p((relu(x + positional_encoding) + eps) / softplus(scale))     (B, h, N, d)

with ``f_p(y) = ||y|| * y**p / ||y**p||`` over the C channels of a token. The
PyTorch version of the same math takes about ten passes over the tensor
(add, relu, add, divide, two norms, max, divide, power, multiply, transpose);
here each program loads a block of rows once, keeps everything in float32
registers, and writes the features once, in the matmul dtype and the
head-split layout the following matmuls want. The backward kernel recomputes
the forward from the saved input (nothing N x C is kept besides the input) and
returns the gradients of the input, the temperature (as per-program partial
sums) and the positional encoding (summed over the batch in PyTorch).

The power is taken of ``y / max(y)`` in (0, 1], so no intermediate can overflow
for any p or activation size; the gradient is written in the same terms:

    dL/dy = p g w^(p-1) ||w||/||u|| + (S / m) (w / ||w||^2 - p u w^(p-1) / ||u||^2)

where w = y / m, m = max(y), u = w^p, g = dL/dphi and S = sum(g * phi).

Importing this module never fails: ``HAS_TRITON`` says whether triton is there.
The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, used by the tests).

Fail-safe. Before the first use in the ``auto`` mode of each kernel variant
(device, input and feature dtypes, channels, heads, power: :class:`VariantKey`),
:func:`usable` runs that variant once on small random tensors, forward and
backward, against the fused PyTorch path. On a mismatch, or on any error
(a compiler or driver that cannot build the kernel), it logs one warning that
says why and keeps that variant on the PyTorch path for the rest of the
process. The check can run inside a model's forward, gradient checkpointing
included: its own autograd graph is kept out of the checkpoint's bookkeeping.
``FLATTEN_ATTENTION_IMPL=triton`` still forces the kernel and
``torch`` keeps it off; neither runs the check.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

try:  # triton is optional: the PyTorch path is always available
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "focused_feature_map_triton", "usable", "self_check", "verdicts", "VariantKey",
           "AUTO_DEVICE_TYPES"]

_logger = logging.getLogger(__name__)

# Integer focusing powers up to this value use repeated multiplication (exact
# like torch.pow); others use exp2(p * log2(w)).
_MAX_INT_POWER = 16


def _int_power(p: float) -> int:
    return int(p) if float(p).is_integer() and 1 <= p <= _MAX_INT_POWER else 0


if HAS_TRITON:

    @triton.jit
    def _pow(w, p, P_INT: tl.constexpr):
        # w in [0, 1]; w == 0 only on masked lanes.
        if P_INT > 0:
            r = w
            for _ in tl.static_range(P_INT - 1):
                r = r * w
        else:
            r = tl.where(w > 0, tl.exp2(p * tl.log2(tl.maximum(w, 1e-38))), 0.0)
        return r

    @triton.jit
    def _pow_minus_one(w, p, P_INT: tl.constexpr):
        # w ** (p - 1), with w == 0 (masked lanes) giving 0.
        if P_INT > 0:
            r = tl.full(w.shape, 1.0, tl.float32)
            for _ in tl.static_range(P_INT - 1):
                r = r * w
            r = tl.where(w > 0, r, 0.0)
        else:
            r = tl.where(w > 0, tl.exp2((p - 1.0) * tl.log2(tl.maximum(w, 1e-38))), 0.0)
        return r

    @triton.jit
    def _load_rows(X, PE, T, rows, cols, R, N, C, stride_xb, stride_xn, EPS,
                   HAS_PE: tl.constexpr):
        """Rows of y = (relu(x + pe) + eps) / t (zero outside C), z = x + pe, t."""
        rmask = rows < R
        cmask = cols < C
        mask = rmask[:, None] & cmask[None, :]
        b = (rows // N).to(tl.int64)
        n = (rows % N).to(tl.int64)
        x_off = b[:, None] * stride_xb + n[:, None] * stride_xn + cols[None, :]
        z = tl.load(X + x_off, mask=mask, other=0.0).to(tl.float32)
        if HAS_PE:
            z += tl.load(PE + n[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        t = tl.load(T + cols, mask=cmask, other=1.0).to(tl.float32)
        y = (tl.maximum(z, 0.0) + EPS) / t[None, :]
        y = tl.where(mask, y, 0.0)
        return y, z, t, b, n, mask

    @triton.jit
    def _row_max(y):
        # max(y) > 0 on real rows (every channel is at least eps / t); rows past the end are 0.
        m = tl.max(y, axis=1)
        return tl.where(m > 0, m, 1.0)

    @triton.jit
    def _head_offsets(b, n, cols, N, D, HEADS):
        # element (b, n, c = head * D + i) of (B, N, C) -> (B, h, N, d) contiguous
        head = (cols // D).to(tl.int64)
        i = (cols % D).to(tl.int64)
        return ((b[:, None] * HEADS + head[None, :]) * N + n[:, None]) * D + i[None, :]

    @triton.jit
    def _feature_map_fwd_kernel(X, PE, T, OUT, R, N, C, stride_xb, stride_xn, HEADS, D, p, EPS,
                                HAS_PE: tl.constexpr, FOCUSED: tl.constexpr, P_INT: tl.constexpr,
                                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_C)
        y, z, t, b, n, mask = _load_rows(X, PE, T, rows, cols, R, N, C, stride_xb, stride_xn, EPS, HAS_PE)
        if FOCUSED:
            m = _row_max(y)
            w = y / m[:, None]                                      # (0, 1], max 1
            u = _pow(w, p, P_INT)
            nw = tl.sqrt(tl.sum(w * w, axis=1))
            nu = tl.sqrt(tl.maximum(tl.sum(u * u, axis=1), 1e-30))  # >= 1 on real rows
            out = u * (m * nw / nu)[:, None]
        else:
            out = y
        off = _head_offsets(b, n, cols, N, D, HEADS)
        tl.store(OUT + off, out.to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _feature_map_bwd_kernel(X, PE, T, GOUT, GX, PART_T, R, N, C, stride_xb, stride_xn, HEADS, D, p, EPS,
                                HAS_PE: tl.constexpr, FOCUSED: tl.constexpr, P_INT: tl.constexpr,
                                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_C)
        y, z, t, b, n, mask = _load_rows(X, PE, T, rows, cols, R, N, C, stride_xb, stride_xn, EPS, HAS_PE)
        g = tl.load(GOUT + _head_offsets(b, n, cols, N, D, HEADS), mask=mask, other=0.0).to(tl.float32)
        if FOCUSED:
            m = _row_max(y)
            w = y / m[:, None]
            u = _pow(w, p, P_INT)
            wp1 = _pow_minus_one(w, p, P_INT)
            nw2 = tl.maximum(tl.sum(w * w, axis=1), 1e-30)          # both >= 1 on real rows
            nu2 = tl.maximum(tl.sum(u * u, axis=1), 1e-30)
            ratio = tl.sqrt(nw2 / nu2)                              # ||w|| / ||u||
            s = tl.sum(g * u, axis=1) * ratio                       # S / m = sum(g * phi) / m
            gy = p * g * wp1 * ratio[:, None] + s[:, None] * (w / nw2[:, None] - p * u * wp1 / nu2[:, None])
        else:
            gy = g
        gy = tl.where(mask, gy, 0.0)
        gz = tl.where(z > 0, gy / t[None, :], 0.0)
        gx_off = rows.to(tl.int64)[:, None] * C + cols[None, :]
        tl.store(GX + gx_off, gz.to(GX.dtype.element_ty), mask=mask)
        # d y / d t = -y / t: partial sums of g_y * y per channel; the caller divides by -t.
        tl.store(PART_T + pid * C + cols, tl.sum(gy * y, axis=0), mask=cols < C)


def _launch_config(C: int):
    block_c = triton.next_power_of_2(C)
    block_r = max(1, min(64, 4096 // block_c))
    return block_r, block_c


class _FocusedFeatureMap(torch.autograd.Function):
    """phi(x) in the head-split layout; see :func:`focused_feature_map_triton`."""

    @staticmethod
    def forward(ctx, x, temperature, bias, p, focused, num_heads, eps, out_dtype):
        B, N, C = x.shape
        if x.stride(-1) != 1:
            x = x.contiguous()
        temperature = temperature.reshape(C).float().contiguous()
        if bias is not None:
            bias = bias.reshape(N, C).contiguous()
        d = C // num_heads
        out = torch.empty(B, num_heads, N, d, device=x.device, dtype=out_dtype)
        block_r, block_c = _launch_config(C)
        R = B * N
        grid = (triton.cdiv(R, block_r),)
        _feature_map_fwd_kernel[grid](
            x, bias if bias is not None else x, temperature, out, R, N, C, x.stride(0), x.stride(1),
            num_heads, d, float(p), eps, HAS_PE=bias is not None, FOCUSED=bool(focused),
            P_INT=_int_power(p), BLOCK_R=block_r, BLOCK_C=block_c)
        ctx.save_for_backward(x, temperature, bias)
        ctx.cfg = (p, bool(focused), num_heads, eps)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, temperature, bias = ctx.saved_tensors
        p, focused, num_heads, eps = ctx.cfg
        B, N, C = x.shape
        d = C // num_heads
        grad_out = grad_out.contiguous()
        block_r, block_c = _launch_config(C)
        R = B * N
        n_prog = triton.cdiv(R, block_r)
        # With a positional encoding to differentiate, dL/dx is written in float32 and rounded to x's dtype
        # afterwards: its batch sum is dL/dpe, which a half-precision buffer would round before summing.
        g_bias_needed = bias is not None and ctx.needs_input_grad[2]
        gx = torch.empty(B, N, C, device=x.device, dtype=torch.float32 if g_bias_needed else x.dtype)
        part_t = torch.empty(n_prog, C, device=x.device, dtype=torch.float32)
        _feature_map_bwd_kernel[(n_prog,)](
            x, bias if bias is not None else x, temperature, grad_out, gx, part_t, R, N, C,
            x.stride(0), x.stride(1), num_heads, d, float(p), eps, HAS_PE=bias is not None,
            FOCUSED=focused, P_INT=_int_power(p), BLOCK_R=block_r, BLOCK_C=block_c)
        g_temp = g_bias = None
        if ctx.needs_input_grad[1]:
            g_temp = -(part_t.sum(0) / temperature).view(1, 1, C)
        if g_bias_needed:
            g_bias = gx.sum(0).view(1, N, C).to(bias.dtype)
        return gx.to(x.dtype), g_temp, g_bias, None, None, None, None, None


def focused_feature_map_triton(x: torch.Tensor, temperature: torch.Tensor, bias: Optional[torch.Tensor],
                               p: float, focused: bool, num_heads: int, eps: float,
                               out_dtype: torch.dtype) -> torch.Tensor:
    """Focused features of q or k, split into heads, by one Triton kernel.

    Args:
        x: (B, N, C) queries or keys (any float dtype; the last dim must be dense,
            the other two may be strided, e.g. a slice of a fused qkv output).
        temperature: (1, 1, C) ``softplus(scale)`` (float32).
        bias: (1, N, C) positional encoding added before the kernel, or None.
        p: focusing power (> 0).
        focused: apply the focused function (False: ReLU features only).
        num_heads: h; the output is (B, h, N, C / h).
        eps: the kernel's epsilon.
        out_dtype: dtype of the features (the matmul dtype).
    Returns:
        (B, h, N, d) contiguous features, differentiable w.r.t. x, temperature and bias.
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed; use the PyTorch path")
    return _FocusedFeatureMap.apply(x, temperature, bias, p, focused, num_heads, eps, out_dtype)


# -- fail-safe ---------------------------------------------------------------------------------------
# Device types on which the 'auto' mode considers the kernel. Under Triton's interpreter (TRITON_INTERPRET=1)
# that includes the CPU: a CPU run then takes the GPU's code path (first-use check, kernel in eager mode,
# PyTorch ops under torch.compile), which is how the tests run the GPU path without a GPU.
AUTO_DEVICE_TYPES = ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET", "") == "1" else ("cuda",)
class VariantKey(NamedTuple):
    """One kernel variant: what the fail-safe checks separately."""
    device: str
    in_dtype: torch.dtype
    out_dtype: torch.dtype
    channels: int
    num_heads: int
    p: float
    focused: bool

    def describe(self) -> str:
        def name(dtype):
            return str(dtype).replace("torch.", "")
        return (f"{self.device}, {name(self.in_dtype)} input, {name(self.out_dtype)} features, "
                f"C={self.channels} h={self.num_heads} p={self.p:g}" + ("" if self.focused else " (not focused)"))


# variant -> (kernel usable, what the check found)
_VERDICTS: Dict[VariantKey, Tuple[bool, str]] = {}
# Shape of the check: 2 x 37 tokens (not a multiple of the row block), with a positional encoding.
_CHECK_BATCH, _CHECK_TOKENS = 2, 37

FeatureMap = Callable[..., torch.Tensor]


def check_tolerance(out_dtype: torch.dtype) -> float:
    """Largest accepted ``max |kernel - PyTorch| / max |PyTorch|``, forward and backward.

    Both paths round their output to ``out_dtype`` at the same point, so they may
    differ by a few units of its roundoff; float32 by accumulation order only.
    """
    if out_dtype == torch.float32:
        return 1e-4
    return 8 * torch.finfo(out_dtype).eps


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def self_check(device: torch.device, in_dtype: torch.dtype, out_dtype: torch.dtype, channels: int,
               num_heads: int, p: float, focused: bool, reference: FeatureMap) -> Tuple[bool, str]:
    """Run the kernel once on random tensors and compare it with ``reference`` (the PyTorch feature map).

    Args:
        device, in_dtype: where and in which dtype the inputs come.
        out_dtype: the features' dtype (the matmul dtype).
        channels, num_heads, p, focused: the attention's own settings, so the kernel
            variant compiled here is the one the model then uses.
        reference: ``reference(x, temperature, bias, p, focused, num_heads, eps, out_dtype)``
            with the signature and output of :func:`focused_feature_map_triton`.
    Returns:
        (ok, one line on what was compared or what failed).
    """
    from .focused import EPS
    g = torch.Generator(device="cpu").manual_seed(0)
    B, N, C = _CHECK_BATCH, _CHECK_TOKENS, channels

    def rand(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(device)

    try:
        # The check may run inside a model's forward, e.g. in a block under non-reentrant gradient checkpointing,
        # whose saved-tensor hooks would count the check's own saved tensors as the block's (and find them
        # missing when the block is recomputed without the check). Hooks of its own keep them apart.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False), \
                torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
            x0 = rand(B, N, C, std=2.0).to(in_dtype)
            t0 = torch.nn.functional.softplus(rand(1, 1, C, std=0.5))
            b0 = rand(1, N, C, std=0.5)
            grad = rand(B, num_heads, N, C // num_heads)
            outs, grads = [], []
            for fn in (focused_feature_map_triton, reference):
                x, t, b = (z.detach().clone().requires_grad_() for z in (x0, t0, b0))
                out = fn(x, t, b, p, focused, num_heads, EPS, out_dtype)
                (out.float() * grad).sum().backward()
                outs.append(out)
                grads.append((x.grad, t.grad, b.grad))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    except Exception as e:  # the kernel could not be built or run here
        return False, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    tol = check_tolerance(out_dtype)
    errors = {"forward": _rel(outs[0], outs[1])}
    errors.update({f"d{name}": _rel(a, b) for name, a, b in zip(("x", "temperature", "pe"), grads[0], grads[1])})
    summary = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    failing = [k for k, v in errors.items() if not v <= tol]     # in order: forward first, then the gradients
    if failing:
        first = failing[0]
        return False, f"{first} differs from the PyTorch path by {errors[first]:.1e} (> {tol:.0e}; {summary})"
    return True, f"max relative errors {summary} (tolerance {tol:.0e})"


def usable(x: torch.Tensor, out_dtype: torch.dtype, num_heads: int, p: float, focused: bool,
           reference: FeatureMap) -> bool:
    """Whether the ``auto`` mode may run the kernel on ``x`` (checked once per variant, see above).

    A variant is what selects a compiled kernel: the device, the input and feature
    dtypes, the channels, the heads, the power and the focusing switch.
    """
    key = VariantKey(str(x.device), x.dtype, out_dtype, int(x.shape[-1]), int(num_heads), float(p), bool(focused))
    verdict = _VERDICTS.get(key)
    if verdict is None:
        start = time.perf_counter()
        verdict = self_check(x.device, x.dtype, out_dtype, key.channels, key.num_heads, key.p, key.focused, reference)
        _VERDICTS[key] = verdict
        ok, why = verdict
        if ok:
            _logger.info("Triton feature map checked for %s in %.2f s: %s", key.describe(),
                         time.perf_counter() - start, why)
        else:
            _logger.warning("Triton feature map disabled for %s: %s; focused attention uses the PyTorch path "
                            "there (FLATTEN_ATTENTION_IMPL=triton forces the kernel)", key.describe(), why)
    return verdict[0]


def verdicts() -> Dict["VariantKey", Tuple[bool, str]]:
    """What the checks of this process found, by variant."""
    return dict(_VERDICTS)


def forget_verdicts() -> None:
    """Check again at the next use (tests)."""
    _VERDICTS.clear()
