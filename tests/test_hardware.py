"""utils/hardware.py: the GPU gate at start (a build without kernels for the GPU is one line), autocast dtype
by native support, TF32 on by default; with simulated capabilities (no GPU needed)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import config
from utils import hardware as hw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the architecture list of torch 2.11.0+cu130 as read on an H200; torch 2.14.1+cu130 has the same family
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.mark.parametrize("capability, arch_list, ok", [
    ((7, 0), CU130, False),                     # V100: older than every kernel of a CUDA 13 build
    ((6, 1), CU130, False),                     # P100 / GTX 10xx
    ((7, 5), CU130, True),                      # T4
    ((8, 0), CU130, True),                      # A100
    ((8, 9), CU130, True),                      # L4 / RTX 40xx: sm_86 code runs on 8.9
    ((9, 0), CU130, True),                      # H100 / H200
    ((10, 3), CU130, True),                     # a later Blackwell minor version runs sm_100 code
    ((11, 0), CU130, False),                    # a major version with no code and no PTX
    ((7, 0), ["sm_70", "sm_80"], True),
    ((8, 6), ["sm_80", "compute_80"], True),
    ((11, 0), ["sm_90", "compute_90"], True),   # PTX is compiled by the driver for newer GPUs
    ((7, 5), ["sm_80", "compute_80"], False),   # ... never for older ones
    ((9, 0), ["sm_90a"], True),                 # architecture-specific code: exactly that GPU
    ((9, 1), ["sm_90a"], False),
])
def test_build_supports(capability, arch_list, ok):
    assert hw.build_supports(capability, arch_list) is ok


def test_a_gpu_the_build_cannot_drive_is_one_line():
    with pytest.raises(hw.HardwareError) as e:
        hw.check_gpu(torch.device("cuda", 0), capability=(7, 0), name="Tesla V100-SXM2-32GB", arch_list=CU130)
    assert str(e.value) == (
        f"GPU 0 (Tesla V100-SXM2-32GB, compute capability 7.0) cannot run this PyTorch build: torch "
        f"{torch.__version__} has kernels for sm_75 sm_80 sm_86 sm_90 sm_100 sm_120, not sm_70; install a PyTorch "
        f"build whose torch.cuda.get_arch_list() includes sm_70 (builds for an older CUDA cover older GPUs, e.g. "
        f"--index-url https://download.pytorch.org/whl/cu126), or train on a supported GPU")
    hw.check_gpu(torch.device("cuda", 0), capability=(9, 0), name="NVIDIA H200", arch_list=CU130)   # passes
    hw.check_gpu(torch.device("cpu"))                                                                # nothing to check


@pytest.mark.parametrize("capability, name, want", [
    ((7, 5), "Tesla T4", torch.float16),        # is_bf16_supported() says True there (emulation)
    ((7, 0), "Tesla V100-SXM2-32GB", torch.float16),
    ((8, 0), "NVIDIA A100-SXM4-80GB", torch.bfloat16),
    ((9, 0), "NVIDIA H200", torch.bfloat16),
])
def test_bfloat16_only_where_it_is_native(capability, name, want):
    dtype, note = hw.choose_amp_dtype("bfloat16", torch.device("cuda", 0), capability=capability, name=name)
    assert dtype == want
    cc = f"compute capability {capability[0]}.{capability[1]}"
    if want == torch.float16:
        assert note == (f"float16 with a loss scaler: {name} ({cc}) has no native bfloat16 (needs 8.0 or newer; "
                        f"AMP_DTYPE float16 chooses this and silences the note)")
    else:
        assert note == f"bfloat16 (native on {name}, {cc})"
    assert hw.choose_amp_dtype("float16", torch.device("cuda", 0), capability=capability, name=name)[0] == \
        torch.float16


def test_tf32_switch_and_default():
    assert config.load_config(os.path.join(ROOT, "configs", "flatten_swin_t.yaml")).TF32 is True
    try:
        hw.set_tf32(True)
        assert hw.tf32_state() == "on" and torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        hw.set_tf32(False)
        assert hw.tf32_state() == "off" and torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision = "none"
        torch.backends.cudnn.conv.fp32_precision = "tf32"


# A GPU that the build cannot drive, as main.py sees it: torch.cuda answers for a V100 (nothing runs on it).
FAKE_V100 = textwrap.dedent("""
    import runpy, sys, torch
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.get_device_capability = lambda device=None: (7, 0)
    torch.cuda.get_device_name = lambda device=None: "Tesla V100-SXM2-32GB"
    torch.cuda.get_arch_list = lambda: {arch!r}
    def no_kernel(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
    torch.cuda.set_device = no_kernel
    sys.argv = ["main.py"] + sys.argv[1:]
    runpy.run_path("main.py", run_name="__main__")
""").format(arch=CU130)


def test_main_refuses_the_gpu_before_its_first_kernel(tmp_path):
    """main.py on a (simulated) V100 with a CUDA 13 build: exit 2, the one line, nothing written."""
    cmd = [sys.executable, "-c", FAKE_V100, "--cfg", "configs/flatten_swin_t.yaml", "--data-path", str(tmp_path),
           "--output", str(tmp_path / "out")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "error: GPU 0 (Tesla V100-SXM2-32GB, compute capability 7.0) cannot run this PyTorch build")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value, want", [("True", "tf32"), ("False", "ieee")])
def test_main_applies_the_tf32_key(tmp_path, value, want):
    """main.py sets TF32 from the config before any work (here a CPU --throughput run of a tiny model)."""
    import main
    try:
        torch.backends.cuda.matmul.fp32_precision = "none"
        code = main.main(["--cfg", "configs/flatten_deit_t.yaml", "--throughput", "--batch-size", "1", "--output",
                          str(tmp_path), "--opts", "TF32", value, "DATA.IMG_SIZE", "32", "MODEL.EMBED_DIM", "48",
                          "MODEL.NUM_HEADS", "[3]", "MODEL.DEPTHS", "[1]"])
        assert code == 0
        assert torch.backends.cuda.matmul.fp32_precision == want
    finally:
        torch.backends.cuda.matmul.fp32_precision = "none"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
