"""utils/checkpoint.py: safe loading, the atomic write (umask permissions), retention, disk usage."""
import os
import stat
import subprocess
import sys

import pytest
import torch

from utils.checkpoint import (CheckpointError, atomic_write, auto_resume, disk_usage, load_model_state, prune_numbered,
                              publish, safe_load, save_checkpoint)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
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


def test_files_follow_the_umask(tmp_path):
    """mkstemp makes 0600 files; checkpoints and records get 0666 minus the umask, like open() would.
    Run in a child process: the umask is per process."""
    code = ("import os, sys, torch\n"
            "from utils.checkpoint import save_checkpoint, atomic_write, publish\n"
            "for umask in (0o022, 0o002, 0o077):\n"
            "    os.umask(umask)\n"
            "    d = os.path.join(sys.argv[1], oct(umask))\n"
            "    os.makedirs(d)\n"
            "    save_checkpoint(d + '/a.pth', {'x': torch.ones(1)})\n"
            "    atomic_write(d + '/b.json', lambda f: f.write('{}'), binary=False)\n"
            "    publish(d + '/a.pth', d + '/best.pth')\n"
            "    open(d + '/plain.txt', 'w').close()\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, check=True)
    for umask in (0o022, 0o002, 0o077):
        d = tmp_path / oct(umask)
        modes = {n: stat.S_IMODE(os.stat(d / n).st_mode) for n in ("a.pth", "b.json", "best.pth", "plain.txt")}
        assert modes["plain.txt"] == 0o666 & ~umask
        assert set(modes.values()) == {0o666 & ~umask}, (oct(umask), modes)


def test_auto_resume_skips_damaged_files(tmp_path):
    state = dict(model={"w": torch.ones(1)}, optimizer={}, lr_scheduler={}, epoch=3)
    save_checkpoint(str(tmp_path / "ckpt_epoch_3.pth"), state)
    save_checkpoint(str(tmp_path / "best.pth"), dict(state, epoch=2))
    (tmp_path / "last.pth").write_bytes(b"PK\x03\x04 truncated")
    os.utime(tmp_path / "ckpt_epoch_3.pth", (1, 1))
    path, ckpt = auto_resume(str(tmp_path))
    assert path == str(tmp_path / "ckpt_epoch_3.pth") and ckpt["epoch"] == 3
    assert auto_resume(str(tmp_path / "none")) == (None, None)


def test_retention_keeps_the_newest_numbered(tmp_path):
    last = str(tmp_path / "last.pth")
    for epoch in range(6):
        save_checkpoint(last, {"epoch": epoch, "blob": torch.zeros(1000)})
        publish(last, str(tmp_path / f"ckpt_epoch_{epoch}.pth"))
        if epoch == 1:
            publish(last, str(tmp_path / "best.pth"))
        removed = prune_numbered(str(tmp_path), keep=2)
        assert [os.path.basename(p) for p in removed] == ([f"ckpt_epoch_{epoch - 2}.pth"] if epoch >= 2 else [])
    names = sorted(os.listdir(tmp_path))
    assert names == ["best.pth", "ckpt_epoch_4.pth", "ckpt_epoch_5.pth", "last.pth"]
    assert safe_load(str(tmp_path / "best.pth"))["epoch"] == 1                  # kept though epoch 1 was pruned
    one = os.path.getsize(last)
    assert disk_usage(str(tmp_path)) == 3 * one                                  # last == ckpt_epoch_5: one file
    assert prune_numbered(str(tmp_path), keep=0) and not any(n.startswith("ckpt_") for n in os.listdir(tmp_path))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    for legacy in (False, True):
        path = tmp_path / f"evil_{legacy}.pth"
        torch.save({"model": {}, "x": _Evil(marker)}, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError, match=r"refuses to unpickle posix\.system: not a plain checkpoint"):
            safe_load(str(path))
        assert not marker.exists()


def test_classifier_mismatch_suggests_num_classes(tmp_path):
    model = torch.nn.Sequential()
    model.add_module("head", torch.nn.Linear(4, 3))
    other = {"head.weight": torch.zeros(1000, 4), "head.bias": torch.zeros(1000)}
    with pytest.raises(CheckpointError, match=r"its classifier has 1000 classes, this model 3: pass --num-classes 1000"):
        load_model_state(model, {"model": other}, "released.pth")
