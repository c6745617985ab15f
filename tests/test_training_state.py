"""utils/training_state.py: the starting point (auto-resume > --resume > --pretrained, conflicts as one
line), model-config errors before anything is written, the position a checkpoint records."""
import os

import pytest
import torch

import config
from models import ModelConfigError
from utils.checkpoint import CheckpointError, save_checkpoint
from utils.training_state import StartError, TrainingState, build_model_checked, find_start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _training_ckpt(path, epoch=0, started_from=None, mid=None):
    state = dict(model={}, optimizer={}, lr_scheduler={}, epoch=epoch, started_from=started_from or {})
    if mid:
        state["mid_epoch"] = mid
    save_checkpoint(str(path), state)
    return str(path)


def test_precedence(tmp_path):
    run = tmp_path / "run"
    other = _training_ckpt(tmp_path / "other.pth", epoch=4)
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": {}}, weights)

    assert find_start(str(run)).kind == "fresh"
    start = find_start(str(run), pretrained=weights)
    assert (start.kind, start.path, start.ckpt) == ("pretrained", weights, None)
    assert start.started_from == {"resume": "", "pretrained": os.path.abspath(weights)}
    start = find_start(str(run), resume=other)
    assert start.kind == "resume" and start.ckpt["epoch"] == 4

    # the run's own checkpoint wins, also over the flags it was started with (a rerun of the same command)
    last = _training_ckpt(run / "last.pth", epoch=1, started_from={"resume": "", "pretrained": weights})
    start = find_start(str(run), pretrained=weights)
    assert (start.kind, start.path) == ("auto", last) and start.started_from["pretrained"] == weights
    assert find_start(str(run), resume=last).kind == "auto"          # --resume of the very file: no conflict


def test_conflicts_are_one_line_naming_both_and_the_way_out(tmp_path):
    run = tmp_path / "run"
    _training_ckpt(run / "last.pth", epoch=2)
    weights = str(tmp_path / "w.pth")
    torch.save({"model": {}}, weights)
    with pytest.raises(StartError) as e:
        find_start(str(run), pretrained=weights)
    msg = str(e.value)
    assert "\n" not in msg and str(run) in msg and weights in msg and "--pretrained" in msg
    assert "add --tag <new name> to start a fresh run" in msg and "epoch 2" in msg
    with pytest.raises(StartError, match="not started from --resume"):
        find_start(str(run), resume=_training_ckpt(tmp_path / "x.pth"))
    with pytest.raises(StartError, match="--resume .* and --pretrained .* both given"):
        find_start(str(tmp_path / "new"), resume=weights, pretrained=weights)
    with pytest.raises(StartError, match="TRAIN.AUTO_RESUME is False but .* already holds checkpoints"):
        find_start(str(run), auto=False)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        find_start(str(tmp_path / "new"), pretrained=str(tmp_path / "missing.pth"))


def test_finished_runs_are_recognised(tmp_path):
    run = tmp_path / "run"
    _training_ckpt(run / "last.pth", epoch=9)
    assert find_start(str(run)).finished(10) and not find_start(str(run)).finished(11)
    _training_ckpt(run / "last.pth", epoch=8, mid={"epoch": 9, "step": 3})
    assert not find_start(str(run)).finished(10)


SMALL_SWIN = ["MODEL.DEPTHS", "[1,1,1,1]", "MODEL.EMBED_DIM", 24, "MODEL.NUM_HEADS", "[1,1,1,1]"]


@pytest.mark.parametrize("opts,match", [
    (["DATA.IMG_SIZE", 225], r"^DATA.IMG_SIZE 225: img_size 225x225 is not a multiple of the total stride 32"),
    (["MODEL.LA.ATTN_TYPE", "LLS"], r"^MODEL.LA.ATTN_TYPE 'LLS': attn_type must have one letter L or S per stage"),
])
def test_model_config_errors_are_one_line(opts, match):
    cfg = config.load_config(os.path.join(ROOT, "configs", "flatten_swin_t.yaml"), SMALL_SWIN + opts)
    with pytest.raises(ModelConfigError, match=match) as e:
        build_model_checked(cfg, 10, torch.device("cpu"))
    assert "\n" not in str(e.value)


def test_sizes_off_the_window_grid_build_and_run():
    """160 px: Swin's stage grids (40, 20, 10, 5) pad to their windows instead of failing."""
    cfg = config.load_config(os.path.join(ROOT, "configs", "flatten_swin_t.yaml"), SMALL_SWIN + ["DATA.IMG_SIZE", 160])
    model = build_model_checked(cfg, 10, torch.device("cpu")).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 160, 160)).shape == (1, 10)


def test_a_constructor_bug_is_not_a_user_error(monkeypatch):
    import timm
    cfg = config.load_config(os.path.join(ROOT, "configs", "flatten_swin_t.yaml"), SMALL_SWIN)

    def buggy(*args, **kwargs):
        raise ValueError("an index went wrong inside the constructor")
    monkeypatch.setattr(timm, "create_model", buggy)
    with pytest.raises(ValueError, match="an index went wrong") as e:
        build_model_checked(cfg, 10, torch.device("cpu"))
    assert not isinstance(e.value, ModelConfigError)


def test_checkpoint_records_its_position(tmp_path):
    cfg = config.load_config(os.path.join(ROOT, "configs", "demo", "demo.yaml"),
                             ["MODEL.EMBED_DIMS", "[8,8,8,8]", "MODEL.NUM_HEADS", "[1,1,1,1]"])
    state = TrainingState.build(config.finalize(cfg, 1), num_classes=4, steps_per_epoch=5, device=torch.device("cpu"),
                                amp_dtype=None, rank=0, world_size=1, config_yaml=cfg.dump())
    state.prepare()
    state.epoch, state.step = 3, 2
    mid = state.state_dict(mid_epoch=True)
    assert mid["epoch"] == 2 and mid["mid_epoch"] == {"epoch": 3, "step": 2} and mid["num_classes"] == 4
    state.epoch, state.step = 4, 0                    # after finishing epoch 3
    end = state.state_dict(mid_epoch=False)
    assert end["epoch"] == 3 and "mid_epoch" not in end and end["config"] == cfg.dump()
    assert state.model.head.out_features == 4 and len(end["rng"]) == 1


# ----------------------------------------------------------------------------- one starting point per job
def _can_isolate_a_node():
    """Root may give a process its own mount and host-name namespaces (a second 'node' on this machine)."""
    import subprocess
    try:
        return subprocess.run(["unshare", "-m", "-u", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not _can_isolate_a_node(), reason="needs unshare -m -u (root) to simulate a second node")
def test_a_node_that_cannot_see_the_checkpoint_ends_the_job_in_one_line(tmp_path):
    """Two 'nodes' (the launcher with --nnodes 2, one process each). Node 1 runs in a mount namespace whose
    output folder is an empty tmpfs and whose host name is node1: it cannot see the checkpoint that node 0
    resumes from. Rank 0 chooses, rank 1 cannot read the choice: both end with the one line that names
    the node, the rank and the path (before: rank 1 started fresh while rank 0 resumed)."""
    import sys

    from cli_runs import MAIN, TINY_YAML, Running, check_ok, one_error_line, run, tree, write_image_folder
    data = write_image_folder(tmp_path / "data")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = tmp_path / "out"
    args = ["--cfg", str(cfg), "--data-path", data, "--output", str(out), "--opts", "TRAIN.EPOCHS", "3"]
    check_ok(run(args + ["TRAIN.EPOCHS", "1"]))             # node 0's folder holds a run's checkpoint (epoch 0)
    last = out / "tiny" / "default" / "last.pth"
    assert last.is_file()
    before = tree(last.parent)
    port = _free_port()
    multi = ["--nproc-per-node", "1", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    node0 = Running([sys.executable, MAIN] + multi + ["--node-rank", "0"] + args)
    inner = " ".join([sys.executable, MAIN] + multi + ["--node-rank", "1"] + args)
    node1 = Running(["unshare", "-m", "-u", "sh", "-c", f"hostname node1 && mount -t tmpfs none {out} && exec {inner}"])
    r0, r1 = node0.finish(300), node1.finish(300)
    for r in (r0, r1):
        line = one_error_line(r)
        assert line == (f"error: rank 1 on node node1 cannot read {last}, the starting point rank 0 chose (auto): "
                        f"checkpoint not found: {last}; every node needs the run folder and any --resume/--pretrained "
                        f"file at the same path (a shared file system, or a copy)"), line
    assert tree(last.parent) == before                       # nothing of the run was touched
