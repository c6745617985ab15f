"""Mixed precision on the CPU: the CUDA AMP code paths that torch can run without a GPU.

* float16 autocast with the loss scaler (``torch.amp.GradScaler('cpu')``): a real overflow is skipped and
  lowers the scale; the scaler's state is saved in checkpoints, and a run stopped by SIGTERM and resumed
  ends bit-identical to an uninterrupted one (main.py with ``AMP_CPU True AMP_DTYPE float16``).
* bfloat16 and float16 autocast, forward and backward, for every family: loss and gradients finite, and
  the gradients those of float32 up to the precision's rounding.

What needs a GPU (Triton on CUDA, NCCL, pinned memory, CUDA RNG states, inductor's CUDA code) is listed
in the README and measured by ``python -m scripts.gpu_check``.
"""
import os

import pytest
import timm
import torch
import torch.nn.functional as F

import models
from cli_runs import TINY_YAML, assert_same, check_ok, run, stop_group_at, write_image_folder
from engine import StepUnit
from tiny import REPRESENTATIVES, tiny_kwargs

FP16 = ["--opts", "AMP_CPU", "True", "AMP_DTYPE", "float16"]


# ----------------------------------------------------------------------------- the step unit
def _model():
    torch.manual_seed(0)
    return timm.create_model("flatten_pvt_v2_b0", num_classes=3, img_size=32, **tiny_kwargs("flatten_pvt_v2_b0"))


def test_a_real_float16_overflow_is_skipped_and_lowers_the_scale():
    """Under CPU float16 autocast a loss scale of 2**40 overflows the half-precision gradients: the
    scaler finds inf/NaN, the update is skipped, the scale halved; at a sane scale steps apply."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    unit = StepUnit(model, torch.nn.CrossEntropyLoss(), opt, device=torch.device("cpu"), amp_dtype=torch.float16,
                    scaler=scaler, max_skipped=5)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = unit([(x, y)])
    assert r.skipped and not torch.isfinite(torch.tensor(r.grad_norm)) and torch.isfinite(torch.tensor(r.loss))
    assert scaler.get_scale() == 2.0 ** 39
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())      # nothing applied
    assert not opt.state                                                              # AdamW never stepped
    scaler.update(2.0 ** 10)
    r = unit([(x, y)])
    assert not r.skipped and r.grad_norm > 0 and scaler.get_scale() == 2.0 ** 10
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert scaler.state_dict()["_growth_tracker"] == 1


# ----------------------------------------------------------------------------- every family
def _grads(model, x, y, dtype, scale=1.0):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        out = model(x)
        loss = F.cross_entropy(out.float(), y)
    (loss * scale).backward()
    return loss.detach(), out.dtype, torch.cat([p.grad.flatten() / scale for p in model.parameters()])


@pytest.mark.parametrize("name", REPRESENTATIVES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_backward_every_family(name, dtype):
    size = 48 if models.family_of(name) == "deit" else 64
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, img_size=size, **tiny_kwargs(name)).train()
    x, y = torch.randn(2, 3, size, size), torch.tensor([1, 4])
    torch.manual_seed(1)           # the same drop-path draws in both passes
    loss32, _, g32 = _grads(model, x, y, torch.float32)
    torch.manual_seed(1)
    loss, out_dtype, g = _grads(model, x, y, dtype, scale=1024.0 if dtype == torch.float16 else 1.0)
    assert out_dtype == dtype                                   # autocast really ran the head in half precision
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    # the same loss and gradient direction as float32, up to half-precision rounding in every layer
    assert abs(loss.item() - loss32.item()) < 0.05 * abs(loss32.item())
    assert F.cosine_similarity(g.double(), g32.double(), dim=0) > 0.98


# ----------------------------------------------------------------------------- main.py end to end
@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("amp")
    data = write_image_folder(base / "data", broken=False)
    cfg = base / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    args = ["--cfg", str(cfg), "--data-path", data, "--output", str(base / "out"), "--deterministic", "--seed", "0",
            "--num-workers", "1"]
    return dict(args=args, out=str(base / "out" / "tiny"))


def test_float16_scaler_state_is_saved_and_resumed_bit_exactly(fp16_run):
    """SIGTERM in the middle of epoch 1 of a float16 run: the mid-epoch checkpoint holds the scaler's
    state; the rerun resumes it and ends where the uninterrupted run ends, to the bit."""
    from utils.checkpoint import safe_load
    ref = check_ok(run(fp16_run["args"] + ["--tag", "straight"] + FP16))
    assert "autocast float16" in ref.stdout
    r = stop_group_at(fp16_run["args"] + ["--tag", "stopped"] + FP16, r"Train: \[1/2\]\[3/\d+\]")
    assert r.returncode == 143 and "Traceback" not in r.stdout + r.stderr
    mid = safe_load(os.path.join(fp16_run["out"], "stopped", "last.pth"))
    assert mid["mid_epoch"]["epoch"] == 1 and set(mid["scaler"]) >= {"scale", "growth_factor", "_growth_tracker"}
    assert mid["scaler"]["scale"] in [2.0 ** k for k in range(17)]    # halved on overflows from 2**16 at most
    again = check_ok(run(fp16_run["args"] + ["--tag", "stopped"] + FP16))
    assert "resumed from" in again.stdout
    a = safe_load(os.path.join(fp16_run["out"], "straight", "last.pth"))
    b = safe_load(os.path.join(fp16_run["out"], "stopped", "last.pth"))
    for key in ("model", "optimizer", "lr_scheduler", "scaler", "model_ema", "rng", "epoch"):
        assert_same(a[key], b[key], key)
    # the scaler took part: 24 steps at most grow the scale once from 65536 (growth interval 2000) or
    # lower it on overflows, and its growth tracker counts the finite steps since the last change
    assert a["scaler"]["_growth_tracker"] > 0
