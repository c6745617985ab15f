"""main.py end to end, always in subprocesses: one process and two (the launcher, loader workers), run
records that later commands leave alone, preemption by a process-group SIGTERM with a bit-exact resume,
exact evaluation, one-line user errors, the watchdog on a stuck loader.

A tiny FLatten-PVTv2 (4 stages of width <= 16) on a generated 3-class ImageFolder of 32x32 images keeps
each run to seconds; most of the time is Python start-up, so independent commands run side by side.
"""
from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runs import (BAD_NAME, TINY_YAML, VAL_PER_CLASS, Running, assert_same, check_ok, one_error_line,
                      read_json, read_jsonl, run, start, stop_group_at, tree, write_image_folder)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Data folder, config file, output root and the base arguments of every run."""
    base = tmp_path_factory.mktemp("main")
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
    """An uninterrupted 2-epoch run in one process."""
    r = check_ok(run(tiny["args"]))
    return dict(dir=out_dir(tiny, "default"), result=r)


# ----------------------------------------------------------------------------- a training run and its records
def test_train_one_process(tiny, reference):
    d = reference["dir"]
    for name in ("last.pth", "best.pth", "ckpt_epoch_0.pth", "ckpt_epoch_1.pth", "config.yaml", "run.json",
                 "log_rank0.txt", "eval.json"):
        assert os.path.isfile(os.path.join(d, name)), name
    assert os.listdir(os.path.join(d, "tensorboard"))
    log = read_jsonl(os.path.join(d, "log.jsonl"))
    assert [r["epoch"] for r in log] == [0, 1] and log[1]["train_loss"] < log[0]["train_loss"]
    assert [r["bad_files"] for r in log] == [1, 1]                    # the unreadable file, once per epoch
    assert read_json(os.path.join(d, "eval.json"))["images"] == sum(VAL_PER_CLASS)

    # the unreadable image was replaced and named, on the console and in the file
    bad = os.path.join(tiny["data"], "train", "class2", BAD_NAME)
    out = reference["result"].stdout
    assert "unreadable training image replaced (epoch 0 step" in out and bad in out
    assert bad in open(os.path.join(d, "log_rank0.txt")).read()
    assert "AUTO_AUGMENT" not in out and len(out.splitlines()) < 60         # a summary, not the config dump
    assert "AUTO_AUGMENT" in open(os.path.join(d, "log_rank0.txt")).read()  # the full config goes to the file

    # config.yaml is the config as given (works as --cfg); derived values are in run.json
    from config import load_config
    saved = load_config(os.path.join(d, "config.yaml"))
    assert saved.TRAIN.BASE_LR == 0.25 and saved.MODEL.NUM_CLASSES is None and saved.NAME == "tiny"
    assert saved.OUTPUT == tiny["out"] and saved.TAG == "default"
    derived = read_json(os.path.join(d, "run.json"))
    assert derived["num_classes"] == 3 and derived["world_size"] == 1 and derived["global_batch"] == 4
    assert derived["lr"] == pytest.approx(0.25 * 4 / 512) and derived["start"] == "fresh"

    from utils.checkpoint import safe_load
    ckpt = safe_load(os.path.join(d, "last.pth"))
    assert ckpt["epoch"] == 1 and "mid_epoch" not in ckpt and ckpt["num_classes"] == 3
    assert ckpt["model"]["head.weight"].shape[0] == 3                 # one output per class folder
    assert {"optimizer", "lr_scheduler", "scaler", "model_ema", "max_accuracy", "rng", "started_from"} <= set(ckpt)
    assert ckpt["config"] == open(os.path.join(d, "config.yaml")).read()

    with open("/proc/self/status") as f:
        umask = int(next(ln for ln in f if ln.startswith("Umask:")).split()[1], 8)
    for name in ("last.pth", "config.yaml", "run.json", "eval.json"):
        assert os.stat(os.path.join(d, name)).st_mode & 0o777 == 0o666 & ~umask, name


# Runs ``main.main(argv)`` for several command lines one after another in one child process (the
# import of torch and timm dominates a command), capturing each exit code, stdout and stderr.
_DRIVER = r"""
import contextlib, io, json, sys, traceback
import main
from utils.logging import close_log_handlers
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        try:
            code = main.main(argv)
        except BaseException:
            code, _ = -1, traceback.print_exc(file=err)
        close_log_handlers()
    out[name] = dict(code=code, err=err.getvalue(), out=std.getvalue())
print("RESULTS" + json.dumps(out))
"""


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_layout(base):
    root = base / "bad_layout"
    write_image_folder(root, train=(2, 2, 2), val=(1, 1, 1), broken=False)
    Image.new("RGB", (32, 32)).save(root / "train" / "loose.png")
    return str(root), str(root / "train")


def _unreadable_val(base):
    root = base / "unreadable"
    write_image_folder(root, train=(2, 2, 2), val=(1, 1, 1), broken=False)
    bad = root / "val" / "class1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return str(root), str(bad)


def test_later_commands_leave_the_run_alone_and_errors_are_one_line(tiny, reference, tmp_path):
    """Against a finished run: ``--eval`` and ``--throughput`` (real command lines) and, in one child
    process, a rerun with the saved config.yaml, a short run, and every kind of bad input.

    * the run folder keeps every byte (sha256 of every file) and gets no new file;
    * ``--eval`` / ``--throughput`` write to folders of their own;
    * the rerun after the end is a no-op; the short run warns about its schedule in the config's terms;
    * each bad input: exit code 2, one ``error:`` line naming the culprit, no traceback, and nothing
      written anywhere, except by the two commands that fail while running (in their own folders).
    """
    d = reference["dir"]
    before = tree(tiny["out"])
    ckpt = os.path.join(d, "last.pth")
    a = tiny["args"]
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("DATA:\n  BATCH_SIZE: [4\n")
    notes = tmp_path / "notes.pth"
    notes.write_text("not a checkpoint\n")
    layout, layout_culprit = _bad_layout(tmp_path)
    unreadable, unreadable_culprit = _unreadable_val(tmp_path)
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": {}}, weights)
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Evil(tmp_path / "pwned")}, evil)
    swin = ["--cfg", os.path.join(ROOT, "configs", "flatten_swin_t.yaml")] + a[2:] + [
        "--batch-size", "4", "--opts", "MODEL.DEPTHS", "[1,1,1,1]"]
    ok = {  # name: argv of a command that must succeed
        "rerun_saved_config": ["--cfg", os.path.join(d, "config.yaml"), "--deterministic"],
        "short_run": a + ["--tag", "short", "--epochs", "1", "--opts", "TRAIN.WARMUP_EPOCHS", "2"],
    }
    errors = {  # name: (argv, culprit in the message)
        "missing_config": ([a[0], str(tmp_path / "nothere.yaml")] + a[2:], str(tmp_path / "nothere.yaml")),
        "invalid_yaml": ([a[0], str(bad_yaml)] + a[2:], str(bad_yaml)),
        "unknown_key": (a + ["--opts", "TRAIN.NO_SUCH_KEY", "1"], "TRAIN.NO_SUCH_KEY"),
        "missing_data_path": (a[:3] + [str(tmp_path / "nowhere")] + a[4:], str(tmp_path / "nowhere")),
        "bad_split_layout": (a[:3] + [layout] + a[4:], layout_culprit),
        "unreadable_val_image": (a[:3] + [unreadable] + a[4:] + ["--eval", "--resume", ckpt], unreadable_culprit),
        "not_a_checkpoint": (a + ["--eval", "--resume", str(notes)], str(notes)),
        "malicious_checkpoint": (a + ["--eval", "--resume", str(evil)],
                                 f"{evil}: refuses to unpickle posix.system: not a plain checkpoint"),
        "checkpoint_of_other_model": (a + ["--eval", "--resume", ckpt, "--opts", "MODEL.DEPTHS", "[1,1,1,2]",
                                           "MODEL.EMBED_DIMS", "[8,16,16,24]"], ckpt),
        "eval_without_weights": (a + ["--eval"], "--eval needs weights"),
        "odd_batch_with_mixup": (a + ["--tag", "x", "--batch-size", "3", "--opts", "AUG.MIXUP", "0.8"],
                                 "DATA.BATCH_SIZE=3"),
        "too_few_classes": (a + ["--tag", "x", "--num-classes", "2"], "MODEL.NUM_CLASSES is 2"),
        "size_the_family_cannot_take": (swin + ["DATA.IMG_SIZE", "225"], "DATA.IMG_SIZE 225"),
        "attention_string_of_wrong_length": (a + ["--tag", "x", "--opts", "MODEL.LA.ATTN_TYPE", "LLS"],
                                             "MODEL.LA.ATTN_TYPE 'LLS'"),
        "pretrained_conflicts_with_run": (a + ["--pretrained", weights], "add --tag <new name> to start a fresh"),
        "resume_and_pretrained": (a + ["--tag", "x", "--resume", ckpt, "--pretrained", weights], "both given"),
        "reserved_tag": (a + ["--tag", "eval"], "TAG 'eval' is reserved"),
        "bad_file_budget": (a + ["--tag", "budget", "--opts", "DATA.MAX_BAD_FILES", "0"], BAD_NAME),
    }
    argvs = dict(ok, **{k: v[0] for k, v in errors.items()})
    procs = {"eval": start(a + ["--eval", "--resume", ckpt]),
             "throughput": start(a + ["--throughput", "--batch-size", "2"]),
             "driver": Running([sys.executable, "-c", _DRIVER, json.dumps(argvs)])}
    results = {k: p.finish() for k, p in procs.items()}
    for r in results.values():
        check_ok(r)
    got = json.loads(results["driver"].stdout.split("RESULTS", 1)[1])

    for name in ok:
        assert got[name]["code"] == 0, (name, got[name]["err"])
    assert "nothing to do" in got["rerun_saved_config"]["out"]
    short = got["short_run"]["out"] + got["short_run"]["err"]
    assert "TRAIN.EPOCHS=1 leaves no cosine phase after TRAIN.WARMUP_EPOCHS=2 and TRAIN.COOLDOWN_EPOCHS=0" in short
    assert "Cosine annealing" not in short
    for name, (_, culprit) in errors.items():
        err = got[name]["err"]
        assert got[name]["code"] == 2, (name, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (name, err)
        assert culprit in lines[0], (name, lines[0])
    assert "missing (block4.1." in got["checkpoint_of_other_model"]["err"]
    assert not (tmp_path / "pwned").exists()                           # nothing in the file ran
    assert "DATA.MAX_BAD_FILES=0" in got["bad_file_budget"]["err"]

    after = tree(tiny["out"])
    prefix = os.path.join("tiny", "default") + os.sep
    assert {k: v for k, v in after.items() if k.startswith(prefix)} == \
        {k: v for k, v in before.items() if k.startswith(prefix)}
    new = sorted(set(after) - set(before))
    folders = {os.path.dirname(p) for p in new if p.endswith("log_rank0.txt")}
    records = sorted(f for f in folders if f.startswith(("tiny/eval/", "tiny/throughput/")))
    # --eval, --throughput, the evaluation that met the unreadable image, the short run, the budget run
    assert all(re.match(r"tiny/(eval|throughput)/default/\d{8}-\d{6}(-\d+)?$", f) for f in records), folders
    assert len(records) == 3 and {"tiny/short", "tiny/budget"} <= folders and len(folders) == 5, folders
    assert all(os.path.dirname(p) in folders or p.startswith(("tiny/short/", "tiny/budget/")) for p in new), new
    evals = [read_json(os.path.join(tiny["out"], f, "eval.json")) for f in records
             if os.path.exists(os.path.join(tiny["out"], f, "eval.json"))]
    assert len(evals) == 1 and evals[0]["images"] == sum(VAL_PER_CLASS) and evals[0]["checkpoint"] == ckpt
    for f in records:
        assert {"config.yaml", "run.json"} <= set(os.listdir(os.path.join(tiny["out"], f)))
    assert any(p.endswith("throughput.json") for p in new)
    assert "Acc@1" in results["eval"].stdout


# ----------------------------------------------------------------------------- two processes, workers, preemption
WORKERS = ["--num-workers", "1"]


@pytest.fixture(scope="module")
def two_process_runs(tiny, tmp_path_factory):
    """Three launcher runs of 2 processes with a loader worker each, side by side: the uninterrupted
    2-epoch reference, a user error, and a loader stuck on a file that never finishes reading (a FIFO
    nobody writes: a hung network file system) with a 3 s watchdog."""
    stuck = write_image_folder(tmp_path_factory.mktemp("stuck") / "data", train=(2, 2, 2), val=(1, 1, 1),
                               broken=False)
    os.mkfifo(os.path.join(stuck, "train", "class0", "stuck.png"))
    procs = {
        "ddp": start(tiny["args"] + ["--tag", "ddp"] + WORKERS, nproc=2),
        "user_error": start(tiny["args"] + ["--tag", "x", "--num-classes", "2"] + WORKERS, nproc=2),
        "stuck": start(tiny["args"][:3] + [stuck] + tiny["args"][4:] + ["--tag", "stuck", "--batch-size", "1"]
                       + WORKERS + ["--opts", "WATCHDOG_TIMEOUT", "3"], nproc=2),
    }
    results = {k: p.finish() for k, p in procs.items()}
    check_ok(results["ddp"])
    return dict(results, ddp_dir=out_dir(tiny, "ddp"))


@pytest.fixture(scope="module")
def ddp_reference(two_process_runs):
    return two_process_runs["ddp_dir"]


def test_user_error_under_the_launcher_is_one_line(tiny, two_process_runs):
    """Both processes hit the same error; the launcher prints it once, last, with exit code 2."""
    r = two_process_runs["user_error"]
    line = one_error_line(r)
    assert "has 3 class folders but MODEL.NUM_CLASSES is 2" in line
    assert "ChildFailedError" not in r.stderr and not os.path.exists(out_dir(tiny, "x"))


def test_stuck_loader_becomes_one_error_line(two_process_runs):
    """The process whose loader hangs reports it after 3 s without progress; the other one, stuck in the
    gradient all-reduce meanwhile, is stopped too. One line, the root cause, exit code 3."""
    line = one_error_line(two_process_runs["stuck"], code=3)
    assert re.match(r"error: no progress for 3 s while waiting for batch \d+ of epoch 0 from the training data "
                    r"loader \(WATCHDOG_TIMEOUT=3\)", line), line


def test_process_group_sigterm_with_workers_then_bit_exact_resume(tiny, ddp_reference):
    """SIGTERM to the whole process group (launcher, both processes, their workers and fork servers) in
    the middle of epoch 1: one mid-epoch checkpoint, exit 143, no traceback. Rerunning the command
    continues to the same bits as the uninterrupted run: weights, optimizer, schedule, EMA, RNG states."""
    from utils.checkpoint import safe_load
    args = tiny["args"] + ["--tag", "preempted"] + WORKERS
    r = stop_group_at(args, r"Train: \[1/2\]\[1/6\]", nproc=2)
    out, err = r.stdout, r.stderr
    assert r.returncode == 143, err[-3000:]
    assert "Traceback" not in out + err and "error:" not in err
    assert re.search(r"stopped by SIGTERM at epoch 1 step [1-6]: saved .*/preempted/last.pth", out.splitlines()[-1])
    d = out_dir(tiny, "preempted")
    ckpt = safe_load(os.path.join(d, "last.pth"))
    assert ckpt["epoch"] == 0 and ckpt["mid_epoch"]["epoch"] == 1 and 1 <= ckpt["mid_epoch"]["step"] <= 6
    assert out.count("saved " + os.path.join(d, "last.pth") + " (") == 2   # epoch 0, then the mid-epoch save
    assert not os.path.exists(os.path.join(d, "ckpt_epoch_1.pth"))

    r = check_ok(run(args, nproc=2))
    assert f"resumed from {os.path.join(d, 'last.pth')} at epoch 1 step {ckpt['mid_epoch']['step']}" in r.stdout
    ref = safe_load(os.path.join(ddp_reference, "last.pth"))
    got = safe_load(os.path.join(d, "last.pth"))
    for key in ("model", "optimizer", "lr_scheduler", "scaler", "model_ema", "rng", "epoch", "max_accuracy",
                "max_accuracy_ema"):
        assert_same(ref[key], got[key], key)


def _released_checkpoint(src, dst, cfg_file):
    """The official (Swin-style) format: a yacs CfgNode and a numpy scalar inside the pickle."""
    from config import load_config
    from utils.checkpoint import safe_load
    ckpt = safe_load(src)
    torch.save({"model": ckpt["model"], "optimizer": ckpt["optimizer"], "lr_scheduler": ckpt["lr_scheduler"],
                "max_accuracy": np.float64(ckpt["max_accuracy"]), "epoch": 1, "config": load_config(cfg_file)}, dst)


def test_eval_exact_across_processes_and_released_format(tiny, ddp_reference):
    """The 2-process run's final evaluation (ranks get 4 and 3 of the 7 images) equals a 1-process
    ``--eval`` of its last checkpoint, and of that checkpoint re-saved in the released format."""
    ckpt = os.path.join(ddp_reference, "last.pth")
    released = str(tiny["base"] / "released.pth")
    _released_checkpoint(ckpt, released, tiny["cfg"])
    argvs = {"one": tiny["args"] + ["--eval", "--resume", ckpt, "--tag", "one"],
             "released": tiny["args"] + ["--eval", "--resume", released, "--tag", "released"]}
    r = check_ok(Running([sys.executable, "-c", _DRIVER, json.dumps(argvs)]).finish())
    got = json.loads(r.stdout.split("RESULTS", 1)[1])
    assert got["one"]["code"] == got["released"]["code"] == 0, got
    e2 = read_json(os.path.join(ddp_reference, "eval.json"))

    def record(tag):
        root = os.path.join(tiny["out"], "tiny", "eval", tag)
        (stamp,) = os.listdir(root)
        return read_json(os.path.join(root, stamp, "eval.json"))

    e1, er = record("one"), record("released")
    for e in (e1, e2, er):
        assert e["images"] == sum(VAL_PER_CLASS)
    assert e1["checkpoint"] == ckpt and er["checkpoint"] == released
    assert (e2["acc1"], e2["acc5"]) == (e1["acc1"], e1["acc5"]) and abs(e2["loss"] - e1["loss"]) < 1e-6
    assert (er["acc1"], er["acc5"], er["loss"]) == (e1["acc1"], e1["acc5"], e1["loss"])
