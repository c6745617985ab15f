"""The GPU's training path, run on the CPU: main.py with 2 processes (gloo) and the Triton feature map on,
through Triton's interpreter (``TRITON_INTERPRET=1``: the 'auto' mode then treats the CPU as it treats a
GPU: the first-use check inside the first forward, the kernel in eager mode, PyTorch ops under
torch.compile), crossed with the training flags a user passes on a GPU:

* ``--use-checkpoint`` (gradient checkpointing: large configs need it),
* ``--accumulation-steps 2``,
* autocast bfloat16, and float16 with the loss scaler (``AMP_CPU``),
* ``--compile``.

Each row trains a few optimizer steps twice, with the kernel and with the PyTorch path
(``FLATTEN_ATTENTION_IMPL=torch``), from the same initial weights (``--pretrained``) and seed, with SGD
(its update is the summed gradients, so a gradient error shows in proportion; Adam's normalised first
steps would hide one), and compares what each weight tensor moved in the two runs. Every family appears
in the default rows; the wider cross product, --compile included (inductor on a CPU takes minutes), is in
the slow suite.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

from cli_runs import MAIN, TINY_YAML, Running, one_error_line, write_image_folder
from models.layers.attention import triton_fla

pytestmark = pytest.mark.skipif(not triton_fla.HAS_TRITON, reason="triton is not installed")

# A tiny model of each family at a size its layout takes (widths <= 48, one or two blocks per stage).
# The other families drop TINY_YAML's PVT widths.
_NO_PVT_WIDTHS = ["MODEL.EMBED_DIMS", "[]"]
FAMILY_OPTS = {
    "pvt_v2": ["MODEL.NAME", "flatten_pvt_v2_b0", "DATA.IMG_SIZE", "32"],      # TINY_YAML's own model
    "pvt": ["MODEL.NAME", "flatten_pvt_tiny", "DATA.IMG_SIZE", "64", "MODEL.EMBED_DIMS", "[16,16,32,32]",
            "MODEL.DEPTHS", "[1,1,1,1]", "MODEL.NUM_HEADS", "[1,1,2,2]", "MODEL.LA.ATTN_TYPE", "LLLS"],
    "swin": _NO_PVT_WIDTHS + ["MODEL.NAME", "flatten_swin_tiny_patch4_224", "DATA.IMG_SIZE", "64",
                              "MODEL.EMBED_DIM", "16", "MODEL.DEPTHS", "[1,2,2,1]", "MODEL.NUM_HEADS", "[1,2,2,4]",
                              "MODEL.LA.ATTN_TYPE", "LLSS"],
    "cswin": _NO_PVT_WIDTHS + ["MODEL.NAME", "flatten_cswin_tiny_224", "DATA.IMG_SIZE", "64",
                               "MODEL.EMBED_DIM", "16", "MODEL.DEPTHS", "[1,1,2,1]", "MODEL.NUM_HEADS", "[2,2,4,4]",
                               "MODEL.LA.ATTN_TYPE", "LLSS"],
    "deit": _NO_PVT_WIDTHS + ["MODEL.NAME", "flatten_deit_tiny_patch16_224", "DATA.IMG_SIZE", "48",
                              "MODEL.EMBED_DIM", "48", "MODEL.DEPTHS", "[2]", "MODEL.NUM_HEADS", "[3]",
                              "MODEL.LA.ATTN_TYPE", "L"],
}
FLAGS = {
    "ckpt": (["--use-checkpoint"], []),
    "accum": (["--accumulation-steps", "2"], []),
    "bf16": ([], ["AMP_CPU", "True", "AMP_DTYPE", "bfloat16"]),
    "fp16": ([], ["AMP_CPU", "True", "AMP_DTYPE", "float16"]),
    "compile": (["--compile"], []),
}
# The default suite: every family once, every eager flag at least twice (a few seconds of interpreter each).
CHEAP_ROWS = [
    ("swin", ("ckpt", "bf16")),
    ("cswin", ("ckpt", "accum", "fp16")),
    ("pvt", ("accum", "bf16")),
    ("pvt_v2", ("ckpt", "fp16")),
    ("deit", ("ckpt", "accum")),
]
# Largest difference of any weight tensor between the two runs, relative to how far the tensor moved. Measured
# between the two PyTorch implementations (FLATTEN_ATTENTION_IMPL=torch vs reference) on these rows: float32
# 3e-4 (float32 rounding), float16 autocast (features in float32) up to 3e-3, bfloat16 autocast 0.07-0.40 (every
# layer rounds to 8 bits, and a few steps at this LR carry it on; the largest on positional encodings that start
# at zero and move little). The tolerances leave room above those: a bfloat16 row catches a kernel that breaks
# training (a wrong sign, a factor, NaN), the float32 and float16 rows one that is off by a few percent.
TOLERANCE = {None: 2e-3, "bf16": 0.75, "fp16": 2e-2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu_path")
    data = write_image_folder(base / "data", train=(8, 8, 8))   # + the unreadable file: 3 steps of 4 per process
    cfg = base / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    return dict(base=base, data=data, cfg=str(cfg))


COMMON_OPTS = ["TRAIN.EPOCHS", "1", "TRAIN.OPTIMIZER.NAME", "sgd", "TRAIN.WEIGHT_DECAY", "0.0",
               "TRAIN.CLIP_GRAD", "0.0", "TRAIN.BASE_LR", "2.0", "TRAIN.MIN_LR", "2.0", "MODEL.DROP_PATH_RATE", "0.0"]


def _initial_weights(folder, family):
    """The starting weights of a family's rows, built through main.py's config path (one file per family)."""
    import config
    import models
    path = folder["base"] / f"init-{family}.pth"
    if not path.exists():
        cfg = config.finalize(config.load_config(folder["cfg"], FAMILY_OPTS[family] + COMMON_OPTS), 2)
        torch.manual_seed(0)
        torch.save(models.build_model(cfg, num_classes=3).state_dict(), path)
    return path


def _row_args(folder, family, flags, tag):
    cli, opts = ["--pretrained", str(_initial_weights(folder, family))], list(COMMON_OPTS)
    for flag in flags:
        cli += FLAGS[flag][0]
        opts += FLAGS[flag][1]
    return (["--nproc-per-node", "2", "--cfg", folder["cfg"], "--data-path", folder["data"], "--output",
             str(folder["base"] / "out"), "--tag", tag, "--seed", "0", "--deterministic"] + cli
            + ["--opts"] + FAMILY_OPTS[family] + opts)


def _start(args, kernel):
    env = dict(TRITON_INTERPRET="1") if kernel else dict(FLATTEN_ATTENTION_IMPL="torch")
    return Running([sys.executable, MAIN] + args, **env)


def _weights(folder, tag):
    from utils.checkpoint import safe_load
    ckpt = safe_load(str(folder["base"] / "out" / "tiny" / tag / "last.pth"))
    return ckpt["model"], ckpt["model_ema"]


def _largest_difference(a, b, init):
    """max over tensors of max|a - b| / max|b - init|: the difference of two runs relative to the update."""
    worst, where = 0.0, ""
    for name, x in a.items():
        y = b[name]
        if not torch.is_floating_point(x) or name not in init:
            assert torch.equal(x, y), name
            continue
        moved = (y.double() - init[name].double()).abs().max()
        if moved == 0:                 # no gradient reaches it (DeiT's last dwc: only the class token is read)
            assert torch.equal(x, y), f"{name} moved in one run only"
            continue
        rel = ((x.double() - y.double()).abs().max() / moved).item()
        if rel > worst:
            worst, where = rel, name
    return worst, where


def run_row(folder, family, flags):
    tag = f"{family}-{'-'.join(flags)}"
    kernel = _start(_row_args(folder, family, flags, tag + "-kernel"), kernel=True)
    torch_path = _start(_row_args(folder, family, flags, tag + "-torch"), kernel=False)
    timeout = 2400 if "compile" in flags else 600
    results = kernel.finish(timeout), torch_path.finish(timeout)
    for r in results:
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    log = results[0].stdout + results[0].stderr
    # the kernel passed its first-use check and served the attention ...
    assert "Triton feature map checked for cpu" in log and "Triton feature map disabled" not in log, log[-3000:]
    # ... and the PyTorch path never ran it
    assert "Triton feature map" not in results[1].stdout + results[1].stderr
    precision = next((f for f in flags if f in ("bf16", "fp16")), None)
    init = torch.load(_initial_weights(folder, family))
    for i, what in enumerate(("model", "model_ema")):
        a, b = _weights(folder, tag + "-kernel")[i], _weights(folder, tag + "-torch")[i]
        worst, where = _largest_difference(a, b, init)
        assert worst <= TOLERANCE[precision], f"{what}.{where} differs by {worst:.2e} of its update (row {tag})"


@pytest.mark.parametrize("family, flags", CHEAP_ROWS, ids=[f"{f}-{'-'.join(fl)}" for f, fl in CHEAP_ROWS])
def test_gpu_path_row(folder, family, flags):
    run_row(folder, family, flags)


# The slow suite: every flag alone for every family (--compile included), the eager flags three at a time for
# every family, and --compile with each other flag for Swin.
SLOW_ROWS = [row for row in
             [(family, (flag,)) for family in FAMILY_OPTS for flag in FLAGS]
             + [(family, ("ckpt", "accum", amp)) for family in FAMILY_OPTS for amp in ("bf16", "fp16")]
             + [("swin", ("compile", flag)) for flag in ("ckpt", "accum", "bf16", "fp16")]
             if row not in CHEAP_ROWS]


@pytest.mark.slow
@pytest.mark.parametrize("family, flags", SLOW_ROWS, ids=[f"{f}-{'-'.join(fl)}" for f, fl in SLOW_ROWS])
def test_gpu_path_row_slow(folder, family, flags):
    run_row(folder, family, flags)


def test_a_forced_kernel_the_device_cannot_run_is_one_line_at_start(folder):
    """FLATTEN_ATTENTION_IMPL=triton on the CPU without the interpreter would crash at the first step: it
    ends at start, in one line, before anything is written."""
    args = _row_args(folder, "pvt_v2", (), "forced")
    r = Running([sys.executable, MAIN] + args, FLATTEN_ATTENTION_IMPL="triton").finish(300)
    assert one_error_line(r) == ("error: FLATTEN_ATTENTION_IMPL=triton runs the Triton kernel, which needs a CUDA "
                                 "device (cpu here) or Triton's interpreter (TRITON_INTERPRET=1)")
    assert not os.path.exists(folder["base"] / "out" / "tiny" / "forced")
