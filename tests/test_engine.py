"""engine.py in the test process: the step unit, one epoch (bad files, stop signals), evaluation, throughput.
The command line end to end (subprocesses) is in tests/test_main.py."""
import logging
import signal

import pytest
import torch

from data.datasets import DataError
from engine import StepUnit, TrainingError, evaluate, throughput, train_one_epoch
from utils.preemption import StopRequest


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _batch(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_accumulation_equals_one_big_batch():
    x, y = _batch(8)
    a, b = _net(), _net()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    loss = torch.nn.CrossEntropyLoss()
    ra = StepUnit(a, loss, opt_a, device=torch.device("cpu"))([(x, y)])
    rb = StepUnit(b, loss, opt_b, device=torch.device("cpu"))([(x[:4], y[:4]), (x[4:], y[4:])])
    assert ra.loss == pytest.approx(rb.loss, rel=1e-6) and ra.grad_norm == pytest.approx(rb.grad_norm, rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
        assert pa.grad is None and pb.grad is None            # zeroed after the step


def test_clipping_and_ema():
    from timm.utils import ModelEmaV3
    x, y = _batch(8)
    model = _net()
    before = [p.detach().clone() for p in model.parameters()]
    ema = ModelEmaV3(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    r = StepUnit(model, torch.nn.CrossEntropyLoss(), opt, device=torch.device("cpu"), clip_grad=1e-3,
                 model_ema=ema)([(x, y)])
    assert r.grad_norm > 1e-3 and not r.skipped                # the norm before clipping
    step = float(torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(model.parameters(), before))))
    assert step == pytest.approx(1e-3, rel=1e-3)               # lr 1: the update is the clipped gradient
    for e, p, q in zip(ema.module.parameters(), model.parameters(), before):
        assert torch.allclose(e, 0.5 * q + 0.5 * p, atol=1e-7)


def test_non_finite_loss_stops_without_a_scaler():
    model = _net()
    x, y = _batch(4)
    x[0, 0] = float("nan")
    unit = StepUnit(model, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                    device=torch.device("cpu"))
    with pytest.raises(TrainingError, match="loss is nan at epoch 3 step 7"):
        unit([(x, y)], where="at epoch 3 step 7")


def test_scaler_skips_inf_gradients_and_keeps_its_state():
    model = _net()
    x, y = _batch(4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    unit = StepUnit(model, torch.nn.CrossEntropyLoss(), opt, device=torch.device("cpu"), scaler=scaler,
                    max_skipped=3)
    hook = model[0].weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    before = [p.detach().clone() for p in model.parameters()]
    r = unit([(x, y)])
    assert r.skipped and scaler.get_scale() == 512.0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))   # nothing applied
    unit([(x, y)])
    with pytest.raises(TrainingError, match="3 steps in a row had inf/NaN gradients"):
        unit([(x, y)])
    hook.remove()
    r = unit([(x, y)])
    assert not r.skipped and not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert scaler.state_dict()["scale"] == 128.0


class _Schedule:
    def __init__(self):
        self.updates = []

    def step_update(self, num_updates):
        self.updates.append(num_updates)


def _loader(n_batches, bad=None):
    """(images, targets, bad) triples as the training loader yields them."""
    out = []
    for i in range(n_batches):
        x, y = _batch(2, seed=i)
        out.append((x, y, list((bad or {}).get(i, ["", ""]))))
    return out


def _epoch(loader, **kw):
    model = _net()
    unit = StepUnit(model, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                    device=torch.device("cpu"))
    sched = _Schedule()
    args = dict(epoch=2, num_epochs=5, steps_per_epoch=len(loader), device=torch.device("cpu"), print_freq=1)
    args.update(kw)
    return train_one_epoch(unit, loader, sched, **args), sched


def test_epoch_counts_and_logs_replaced_images(caplog):
    bad = {1: ["/d/train/a/x.jpg: cannot identify image file", ""], 2: ["", "/d/train/b/y.png: truncated"]}
    with caplog.at_level(logging.WARNING):
        stats, sched = _epoch(_loader(4, bad), max_bad_files=2)
    assert stats["bad_files"] == 2 and stats["steps"] == 4 and stats["stopped"] == 0
    assert sched.updates == [9, 10, 11, 12]                  # epoch 2 of 4-step epochs
    warned = [r.getMessage() for r in caplog.records if "unreadable training image replaced" in r.getMessage()]
    assert len(warned) == 2 and "/d/train/a/x.jpg" in warned[0] and "epoch 2 step 1" in warned[0]
    with pytest.raises(DataError, match=r"^2 unreadable training images in epoch 2, more than "
                                        r"DATA.MAX_BAD_FILES=1 \(this process: /d/train/a/x.jpg"):
        _epoch(_loader(4, bad), max_bad_files=1)


def test_epoch_stops_at_a_step_boundary_on_a_signal():
    stop = StopRequest()
    stop.signum = int(signal.SIGTERM)           # as the handler would set it
    stats, sched = _epoch(_loader(5), stop=stop, start_step=1)
    assert stats["stopped"] == signal.SIGTERM and stats["steps"] == 1 and sched.updates == [12]


def test_evaluate_counts_every_image():
    model = torch.nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 2.0, 1.0]))          # always predicts 1, then 2, then 0
    batches = [(torch.randn(3, 6), torch.tensor([1, 2, 0])), (torch.randn(2, 6), torch.tensor([1, 1]))]
    stats = evaluate(model, batches, torch.device("cpu"))
    assert stats["images"] == 5
    assert stats["acc1"] == pytest.approx(60.0) and stats["acc5"] == pytest.approx(100.0)


def test_throughput_times_the_timed_iterations_only():
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append((tuple(x.shape), torch.is_inference_mode_enabled(), self.training))
            return x.flatten(1)[:, :4]

    stats = throughput(Counting(), batch_size=2, img_size=8, device=torch.device("cpu"), warmup=1, iters=3)
    assert calls == [((2, 3, 8, 8), True, False)] * 4          # 1 warm-up + 3 timed, inference mode, eval
    assert stats["dtype"] == "float32" and stats["batch_size"] == 2 and stats["iters"] == 3
    assert 0 < stats["images_per_s"] < float("inf")
