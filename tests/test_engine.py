"""Training engine end to end on the CPU: main.py as a CLI (1 process and torchrun with 2),
exact resume after SIGTERM, exact distributed evaluation, safe checkpoint loading and
one-line user errors.

A tiny FLatten-PVTv2 (4 stages of width <= 16) on a generated 3-class ImageFolder of
32x32 images keeps each run to a few seconds; most of the time is the start-up of the
Python processes, so independent runs are started side by side.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")

TINY_YAML = """\
DATA:
  DATASET: imagenet
  IMG_SIZE: 32
  BATCH_SIZE: 4
  NUM_WORKERS: 0
  PIN_MEMORY: False
MODEL:
  NAME: flatten_pvt_v2_b0
  NUM_CLASSES: 3
  EMBED_DIMS: [8, 16, 16, 16]
  DEPTHS: [1, 1, 1, 1]
  NUM_HEADS: [1, 1, 1, 1]
  DROP_PATH_RATE: 0.1          # uses the global RNG: exact resume must restore it
  LABEL_SMOOTHING: 0.1
  LA:
    ATTN_TYPE: LLLL
TRAIN:
  EPOCHS: 2
  WARMUP_EPOCHS: 0
  BASE_LR: 0.25                # per 512 images
  WARMUP_LR: 0.0
  MIN_LR: 0.025
  EMA:
    ENABLE: True
    DECAY: 0.9
AUG:
  AUTO_AUGMENT: none
  COLOR_JITTER: 0.0
  REPROB: 0.0
  MIXUP: 0.0
  CUTMIX: 0.0
PRINT_FREQ: 2
"""
TRAIN_PER_CLASS = (8, 8, 8)     # 24 images: 6 steps of 4 (1 process), 3 per rank (2 processes)
VAL_PER_CLASS = (3, 2, 2)       # 7 images: not divisible by 2
STEPS_PER_EPOCH = 6


def write_image_folder(root, train=TRAIN_PER_CLASS, val=VAL_PER_CLASS, size=32, seed=0):
    """Noisy images whose class is their colour."""
    rng = np.random.default_rng(seed)
    colors = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
    for split, counts in (("train", train), ("val", val)):
        for c, n in enumerate(counts):
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                pixels = np.array(colors[c])[None, None] + rng.normal(0, 40, (size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.png"))
    return str(root)


def _env(**extra):
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    return env


def _cmd(args, nproc=1):
    if nproc == 1:
        return [sys.executable, MAIN] + list(args)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            MAIN] + list(args)


def start(args, nproc=1, **env):
    return subprocess.Popen(_cmd(args, nproc), cwd=ROOT, env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(args, nproc=1, **env):
    return finish(start(args, nproc, **env))


def check_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Data folder, config file, output root and the base arguments of every run."""
    base = tmp_path_factory.mktemp("engine")
    data = write_image_folder(base / "data")
    cfg = base / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = base / "out"
    args = ["--cfg", str(cfg), "--data-path", data, "--output", str(out), "--deterministic", "--seed", "0"]
    return dict(base=base, data=data, cfg=str(cfg), out=str(out), args=args)


def out_dir(tiny, tag):
    return os.path.join(tiny["out"], "tiny", tag)


@pytest.fixture(scope="module")
def reference(tiny):
    """An uninterrupted 2-epoch run (1 process, deterministic): the reference of the other tests."""
    check_ok(run(tiny["args"] + ["--tag", "ref"]))
    return out_dir(tiny, "ref")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def assert_same(a, b, where=""):
    """Bit-identical nested state (tensors with torch.equal)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), f"differs at {where}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"keys differ at {where}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"differs at {where}: {a!r} != {b!r}"


# ----------------------------------------------------------------------------- 1. training runs
def test_train_one_process(reference):
    for name in ("last.pth", "best.pth", "ckpt_epoch_0.pth", "ckpt_epoch_1.pth", "config.yaml", "log_rank0.txt"):
        assert os.path.isfile(os.path.join(reference, name)), name
    assert os.listdir(os.path.join(reference, "tensorboard"))
    log = read_jsonl(os.path.join(reference, "log.jsonl"))
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    ev = read_json(os.path.join(reference, "eval.json"))
    assert ev["images"] == sum(VAL_PER_CLASS)
    assert {"acc1", "acc5", "loss", "images", "checkpoint"} <= set(ev)

    from utils.checkpoint import safe_load
    ckpt = safe_load(os.path.join(reference, "last.pth"))
    assert ckpt["epoch"] == 1 and "mid_epoch" not in ckpt
    assert {"model", "optimizer", "lr_scheduler", "scaler", "model_ema", "max_accuracy", "rng", "config"} <= set(ckpt)
    assert isinstance(ckpt["config"], str) and "flatten_pvt_v2_b0" in ckpt["config"]


@pytest.fixture(scope="module")
def ddp_run(tiny):
    """The same 2-epoch run with 2 processes (torchrun, gloo)."""
    check_ok(run(tiny["args"] + ["--tag", "ddp"], nproc=2))
    return out_dir(tiny, "ddp")


def test_train_two_processes_ddp(ddp_run):
    d = ddp_run
    log = read_jsonl(os.path.join(d, "log.jsonl"))
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    assert os.path.isfile(os.path.join(d, "log_rank1.txt"))
    assert read_json(os.path.join(d, "eval.json"))["images"] == sum(VAL_PER_CLASS)
    from utils.checkpoint import safe_load
    ckpt = safe_load(os.path.join(d, "last.pth"))
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert ckpt["steps_per_epoch"] == STEPS_PER_EPOCH // 2


# ----------------------------------------------------------------------------- 2. SIGTERM + resume
def test_sigterm_resume_is_bit_exact(tiny, reference):
    """Stopped by SIGTERM after epoch 1 (epoch index 0) or inside epoch 2, then resumed with the same
    command: weights, optimizer, scheduler, EMA and RNG states equal the uninterrupted run's."""
    from utils.checkpoint import safe_load

    cases = {"stop_epoch_end": STEPS_PER_EPOCH, "stop_mid_epoch": STEPS_PER_EPOCH + 2}
    procs = {tag: start(tiny["args"] + ["--tag", tag], FLATTEN_TEST_SIGTERM_AT_STEP=str(step))
             for tag, step in cases.items()}
    for tag, proc in procs.items():
        r = check_ok(finish(proc))
        assert "SIGTERM" in r.stdout
        ckpt = safe_load(os.path.join(out_dir(tiny, tag), "last.pth"))
        if tag == "stop_epoch_end":
            assert ckpt["epoch"] == 0 and "mid_epoch" not in ckpt
            assert not os.path.exists(os.path.join(out_dir(tiny, tag), "ckpt_epoch_1.pth"))
        else:
            assert ckpt["epoch"] == 0 and ckpt["mid_epoch"] == {"epoch": 1, "step": 2}
    procs = {tag: start(tiny["args"] + ["--tag", tag]) for tag in cases}
    ref = safe_load(os.path.join(reference, "last.pth"))
    for tag, proc in procs.items():
        r = check_ok(finish(proc))
        assert "resumed from" in r.stdout
        got = safe_load(os.path.join(out_dir(tiny, tag), "last.pth"))
        for key in ("model", "optimizer", "lr_scheduler", "model_ema", "rng", "epoch", "max_accuracy"):
            assert_same(ref[key], got[key], f"{tag}:{key}")


# ----------------------------------------------------------------------------- 3-4. evaluation
def _released_checkpoint(src, dst, cfg_file):
    """The official (Swin-style) format: a yacs CfgNode and a numpy scalar inside the pickle."""
    from config import load_config
    from utils.checkpoint import safe_load
    ckpt = safe_load(src)
    torch.save({"model": ckpt["model"], "optimizer": ckpt["optimizer"], "lr_scheduler": ckpt["lr_scheduler"],
                "max_accuracy": np.float64(ckpt["max_accuracy"]), "epoch": 1, "config": load_config(cfg_file)}, dst)


def test_eval_exact_across_processes_and_released_format(tiny, ddp_run):
    """The 2-process run's final evaluation (ranks get 4 and 3 of the 7 images) equals a 1-process
    ``--eval`` of its last checkpoint, and of that checkpoint re-saved in the released format."""
    ckpt = os.path.join(ddp_run, "last.pth")
    released = str(tiny["base"] / "released.pth")
    _released_checkpoint(ckpt, released, tiny["cfg"])
    one = start(tiny["args"] + ["--eval", "--resume", ckpt, "--tag", "eval1"])
    rel = start(tiny["args"] + ["--eval", "--resume", released, "--tag", "eval_released"])
    r1 = check_ok(finish(one))
    check_ok(finish(rel))
    assert "Acc@1" in r1.stdout and "Acc@5" in r1.stdout and "loss" in r1.stdout
    e2 = read_json(os.path.join(ddp_run, "eval.json"))
    e1, er = (read_json(os.path.join(out_dir(tiny, t), "eval.json")) for t in ("eval1", "eval_released"))
    for e in (e1, e2, er):
        assert e["images"] == sum(VAL_PER_CLASS)
    assert e1["checkpoint"] == os.path.abspath(ckpt) and er["checkpoint"] == os.path.abspath(released)
    assert (e2["acc1"], e2["acc5"]) == (e1["acc1"], e1["acc5"])
    assert abs(e2["loss"] - e1["loss"]) < 1e-6
    assert (er["acc1"], er["acc5"], er["loss"]) == (e1["acc1"], e1["acc5"], e1["loss"])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    from utils.checkpoint import CheckpointError, safe_load
    marker = tmp_path / "pwned"
    for legacy in (False, True):
        path = tmp_path / f"evil_{legacy}.pth"
        torch.save({"model": {}, "x": _Evil(marker)}, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError, match=r"refuses to unpickle posix\.system: not a plain checkpoint"):
            safe_load(str(path))
        assert not marker.exists()


def test_malicious_checkpoint_cli(tiny, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Evil(marker)}, evil)
    r = run(tiny["args"] + ["--eval", "--resume", str(evil), "--tag", "evil"])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {evil}: refuses to unpickle posix.system: not a plain checkpoint"]
    assert not marker.exists()


# ----------------------------------------------------------------------------- 5. user errors
def _bad_layout(base):
    root = base / "bad_layout"
    write_image_folder(root, train=(2, 2, 2), val=(1, 1, 1))
    Image.new("RGB", (32, 32)).save(root / "train" / "loose.png")
    return str(root), str(root / "train")


def _unreadable(base):
    root = base / "unreadable"
    write_image_folder(root, train=(2, 2, 2), val=(1, 1, 1))
    bad = root / "val" / "class1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return str(root), str(bad)


def _drop_log_handlers():
    """Remove the handlers ``create_logger`` installed (they hold pytest's capture streams)."""
    import logging
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_flatten_handler", False):
            root.removeHandler(h)
            h.close()


ERROR_CASES = ["missing_config", "invalid_yaml", "unknown_key", "missing_data_path", "bad_split_layout",
               "unreadable_image", "not_a_checkpoint", "checkpoint_of_other_model", "odd_batch_with_mixup"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_user_error_is_one_line(case, tiny, reference, tmp_path, capsys):
    """Each bad input: exit code 2, one `error:` line naming the culprit, no traceback.

    Run in-process through ``main.main`` (the process start-up dominates a CLI run);
    ``test_malicious_checkpoint_cli`` checks the same through the real CLI.
    """
    import main as cli

    ckpt = os.path.join(reference, "last.pth")
    # in-process: leave out --deterministic, a process-wide switch
    args = [a for a in tiny["args"] if a != "--deterministic"] + ["--tag", f"err_{case}"]
    if case == "missing_config":
        args[1] = culprit = str(tmp_path / "nothere.yaml")
    elif case == "invalid_yaml":
        bad = tmp_path / "bad.yaml"
        bad.write_text("DATA:\n  BATCH_SIZE: [4\n")
        args[1] = culprit = str(bad)
    elif case == "unknown_key":
        args += ["--opts", "TRAIN.NO_SUCH_KEY", "1"]
        culprit = "TRAIN.NO_SUCH_KEY"
    elif case == "missing_data_path":
        args[3] = culprit = str(tmp_path / "no_data")
    elif case == "bad_split_layout":
        args[3], culprit = _bad_layout(tmp_path)
    elif case == "unreadable_image":
        args[3], culprit = _unreadable(tmp_path)
        args += ["--eval", "--resume", ckpt]
    elif case == "not_a_checkpoint":
        text = tmp_path / "notes.pth"
        text.write_text("these are not weights\n")
        args += ["--eval", "--resume", str(text)]
        culprit = str(text)
    elif case == "checkpoint_of_other_model":
        args += ["--eval", "--resume", ckpt, "--opts", "MODEL.DEPTHS", "[1,1,1,2]", "MODEL.EMBED_DIMS", "[8,16,16,24]"]
        culprit = ckpt
    elif case == "odd_batch_with_mixup":
        args += ["--batch-size", "3", "--opts", "AUG.MIXUP", "0.8"]
        culprit = "DATA.BATCH_SIZE=3"
    capsys.readouterr()
    try:
        code = cli.main(args)
    finally:
        _drop_log_handlers()
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    errors = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), captured.err
    assert culprit in errors[0], errors[0]
    if case == "checkpoint_of_other_model":
        assert "missing (block4.1." in errors[0] and "of another shape" in errors[0]
        assert "... and" in errors[0]  # long lists are cut after ten keys


# ----------------------------------------------------------------------------- units
def test_throughput_reports_images_per_second():
    from engine import throughput
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    stats = throughput(model, batch_size=2, img_size=8, device=torch.device("cpu"), warmup=1, iters=2)
    assert stats["images_per_s"] > 0 and stats["dtype"] == "float32" and stats["batch_size"] == 2


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    from utils.checkpoint import safe_load, save_checkpoint
    path = str(tmp_path / "last.pth")
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "epoch": 0})

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "epoch": 1})
    monkeypatch.undo()
    assert torch.equal(safe_load(path)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["last.pth"]


def test_auto_resume_skips_damaged_files(tmp_path):
    from utils.checkpoint import auto_resume, save_checkpoint
    state = dict(model={"w": torch.ones(1)}, optimizer={}, lr_scheduler={}, epoch=3)
    save_checkpoint(str(tmp_path / "ckpt_epoch_3.pth"), state)
    save_checkpoint(str(tmp_path / "best.pth"), dict(state, epoch=2))
    (tmp_path / "last.pth").write_bytes(b"PK\x03\x04 truncated")
    os.utime(tmp_path / "ckpt_epoch_3.pth", (1, 1))
    path, ckpt = auto_resume(str(tmp_path))
    assert path == str(tmp_path / "ckpt_epoch_3.pth") and ckpt["epoch"] == 3
    assert auto_resume(str(tmp_path / "none")) == (None, None)


def test_optimizer_no_weight_decay_groups():
    from utils.optim import build_optimizer

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.scale = torch.nn.Parameter(torch.zeros(1, 1, 4))
            self.pos = torch.nn.Parameter(torch.zeros(1, 2, 4))

        def no_weight_decay(self):
            return {"scale"}

    net = Net()
    opt = build_optimizer(net, "adamw", lr=1e-3, weight_decay=0.05)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net.fc.weight), id(net.pos)}
    assert {id(p) for p in no_decay["params"]} == {id(net.fc.bias), id(net.norm.weight), id(net.norm.bias),
                                                  id(net.scale)}


def test_schedule_warmup_cosine_cooldown():
    from utils.schedule import build_scheduler
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, steps_per_epoch=10, epochs=6, warmup_epochs=1, cooldown_epochs=2,
                            min_lr=0.01, warmup_lr=0.001)
    lrs = []
    for step in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step_update(num_updates=step + 1)
    assert lrs[0] == pytest.approx(0.001)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))             # linear warm-up
    assert max(lrs) == lrs[9] and lrs[9] > 0.85
    assert all(a >= b for a, b in zip(lrs[9:40], lrs[10:40]))         # cosine (over warm-up too, as released)
    assert all(lr == pytest.approx(0.01) for lr in lrs[40:])          # cool-down at MIN_LR


def test_skip_batches_resumes_inside_an_epoch(tiny):
    from config import load_config
    from data import build_loader
    from engine import skip_batches
    cfg = load_config(tiny["cfg"], ["DATA.DATA_PATH", tiny["data"]])
    _, _, loader, _, _ = build_loader(cfg)
    loader.sampler.set_epoch(1)
    full = [y.tolist() for _, y in loader]
    images = [x for x, _ in loader]
    rest = list(skip_batches(loader, 2))
    assert [y.tolist() for _, y in rest] == full[2:]
    assert all(torch.equal(a, x) for a, (x, _) in zip(images[2:], rest))   # same augmentation
