"""scripts.eval_released: finds released files under the release's names, runs main.py --eval,
and compares with the published numbers."""
import json
import os

import numpy as np
import pytest
import torch

import config as config_lib
import models
from scripts.eval_released import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_and_skips(tmp_path, capsys):
    (tmp_path / "flatten_swin_t.pth").write_bytes(b"")
    (tmp_path / "flatten_pvt_b.pth").write_bytes(b"")                    # release name of PVT-L
    assert main(["--ckpt-dir", str(tmp_path), "--dry-run", "--nproc", "2"]) == 0
    out = capsys.readouterr().out
    assert "--cfg configs/flatten_swin_t.yaml --eval --resume" in out
    assert "configs/flatten_pvt_l.yaml" in out and "main.py --nproc-per-node 2" in out
    assert "skipped (no checkpoint file):" in out and "flatten_cswin_t" in out


def test_runs_main_on_photos(tmp_path, capsys):
    """A real main.py --eval on a 4-image ImageFolder; the table compares with the published numbers."""
    from PIL import Image
    from skimage import data
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    for c, pair in (("n01", photos[:2]), ("n02", photos[2:])):
        d = tmp_path / "data" / "val" / c
        d.mkdir(parents=True)
        for i, img in enumerate(pair):
            Image.fromarray(img).save(d / f"{i}.JPEG")
    opts = ["DATA.IMG_SIZE", "64"]
    cfg = config_lib.load_config(os.path.join(ROOT, "configs", "flatten_pvt_v2_b0.yaml"), opts)
    torch.manual_seed(0)
    torch.save({"model": models.build_model(cfg).state_dict()}, tmp_path / "b0.pth")
    rc = main(["--ckpt", f"flatten_pvt_v2_b0={tmp_path / 'b0.pth'}", "--data-path", str(tmp_path / "data"),
               "--output", str(tmp_path / "out"), "--json", str(tmp_path / "r.json"), "--opts"] + opts)
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["images"] == 4, rows
    assert rows[0]["published_acc1"] == pytest.approx(71.098) and rows[0]["published_acc5"] == pytest.approx(90.596)
    assert rc == 1 and rows[0]["status"].startswith("DIFF")              # random weights: far from 71.1
    assert np.isfinite(rows[0]["acc1"]) and "flatten_pvt_v2_b0" in capsys.readouterr().out
