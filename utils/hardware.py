"""The hardware gate at start: can this PyTorch build drive the GPU, which autocast dtype, TF32.

* :func:`check_gpu`: a GPU whose compute capability is outside the build's
  architecture list (``torch.cuda.get_arch_list()``; e.g. a V100, sm_70, with a
  CUDA 13 wheel) fails its first kernel with "no kernel image is available". It
  is refused at start in one line that names the GPU and what to install.
* :func:`choose_amp_dtype`: bfloat16 only where the GPU computes it natively
  (compute capability 8.0 and newer: A100, H100, L4, RTX 30xx and later);
  elsewhere (V100, T4, RTX 20xx) float16 with a loss scaler. PyTorch's
  ``is_bf16_supported()`` also counts emulation, which is several times slower
  and leaves the scaler off.
* :func:`set_tf32`: TensorFloat-32 for float32 matmuls and convolutions on
  GPUs that have it (``TF32`` in the config, on by default as in timm's
  ``train.py``): float32 work runs on the tensor cores with a 10-bit mantissa.
  It changes float32 results at the 1e-3 relative level, not bfloat16/float16
  autocast work (most of a mixed-precision step), and is as deterministic as
  float32.

Capabilities are passed in as numbers, so every rule here is testable without
the GPU it is about.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

import torch

__all__ = ["HardwareError", "build_supports", "check_gpu", "choose_amp_dtype", "set_tf32", "tf32_state",
           "NATIVE_BF16"]

# Compute capability from which bfloat16 is native (Ampere).
NATIVE_BF16 = (8, 0)


class HardwareError(ValueError):
    """A GPU this installation cannot use as configured (a user error: one line)."""


def _arch(entry: str) -> Optional[Tuple[str, int, int, str]]:
    """'sm_90a' -> ('sm', 9, 0, 'a'); 'compute_80' -> ('compute', 8, 0, ''); None for anything else."""
    m = re.fullmatch(r"(sm|compute)_(\d+)([a-z]?)", entry.strip())
    if not m:
        return None
    number = int(m.group(2))
    return m.group(1), number // 10, number % 10, m.group(3)


def build_supports(capability: Tuple[int, int], arch_list: Sequence[str]) -> bool:
    """Whether a build with ``arch_list`` has code a GPU of ``capability`` runs.

    Machine code (``sm_XY``) runs on GPUs of the same major version and an equal
    or higher minor one; architecture-specific code (``sm_90a``) only on exactly
    that GPU; PTX (``compute_XY``) is compiled by the driver for any GPU of
    capability XY or newer.
    """
    major, minor = capability
    for entry in arch_list:
        arch = _arch(entry)
        if arch is None:
            continue
        kind, a_major, a_minor, suffix = arch
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
        if kind == "sm" and a_major == major and (a_minor == minor if suffix else a_minor <= minor):
            return True
    return False


def check_gpu(device: torch.device, capability: Optional[Tuple[int, int]] = None, name: Optional[str] = None,
              arch_list: Optional[Sequence[str]] = None) -> None:
    """Refuse a GPU that this PyTorch build has no kernels for, in one line (:class:`HardwareError`).

    The optional arguments stand in for the device's own values (tests).
    """
    if device.type != "cuda":
        return
    capability = tuple(capability or torch.cuda.get_device_capability(device))
    name = name or torch.cuda.get_device_name(device)
    arch_list = list(torch.cuda.get_arch_list() if arch_list is None else arch_list)
    if not arch_list or build_supports(capability, arch_list):
        return
    sm = f"sm_{capability[0]}{capability[1]}"
    raise HardwareError(
        f"GPU {device.index or 0} ({name}, compute capability {capability[0]}.{capability[1]}) cannot run this "
        f"PyTorch build: torch {torch.__version__} has kernels for {' '.join(arch_list)}, not {sm}; install a "
        f"PyTorch build whose torch.cuda.get_arch_list() includes {sm} (builds for an older CUDA cover older GPUs, "
        f"e.g. --index-url https://download.pytorch.org/whl/cu126), or train on a supported GPU")


def choose_amp_dtype(requested: str, device: torch.device, capability: Optional[Tuple[int, int]] = None,
                     name: Optional[str] = None) -> Tuple[torch.dtype, str]:
    """The autocast dtype for ``requested`` ('bfloat16' | 'float16') on ``device``, and a line saying why.

    float16 always trains with a loss scaler (the caller builds it for float16).
    """
    if requested == "float16":
        return torch.float16, "float16 with a loss scaler (AMP_DTYPE float16)"
    if device.type != "cuda":
        return torch.bfloat16, "bfloat16"
    capability = tuple(capability or torch.cuda.get_device_capability(device))
    name = name or torch.cuda.get_device_name(device)
    cc = f"compute capability {capability[0]}.{capability[1]}"
    if capability >= NATIVE_BF16:
        return torch.bfloat16, f"bfloat16 (native on {name}, {cc})"
    return torch.float16, (f"float16 with a loss scaler: {name} ({cc}) has no native bfloat16 (needs 8.0 or "
                           f"newer; AMP_DTYPE float16 chooses this and silences the note)")


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 matmuls (cuBLAS) and convolutions (cuDNN) on or off (process-wide)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):            # the API of torch >= 2.9; the legacy flags must not be mixed in
        value = "tf32" if enabled else "ieee"
        matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
    else:  # pragma: no cover - older torch
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_state() -> str:
    """'on' or 'off' for the run summary (matmuls; convolutions follow the same setting)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return "on" if matmul.fp32_precision == "tf32" else "off"
    return "on" if matmul.allow_tf32 else "off"  # pragma: no cover - older torch
