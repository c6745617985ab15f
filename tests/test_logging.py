"""utils/logging.py: console + per-rank files (records kept until the folder exists), JSON lines, TensorBoard."""
import json
import logging
import os

import numpy as np
import torch

from utils.logging import (JsonLogger, TensorboardWriter, attach_log_file, close_log_handlers, create_logger,
                           detail_logger)


def _flush():
    for h in logging.getLogger().handlers:
        h.flush()


def test_records_wait_for_the_folder_and_details_stay_off_the_console(tmp_path, capsys):
    try:
        logger = create_logger(rank=0)
        create_logger(rank=0)                      # a second call must not duplicate lines
        logger.info("before the folder %d", 1)
        detail_logger().debug("full config: X")
        assert not os.listdir(tmp_path)            # nothing written yet
        path = attach_log_file(str(tmp_path / "run"), rank=0)
        logger.info("after")
        _flush()
        text = open(path).read()
        assert text.count("before the folder 1") == 1 and "full config: X" in text and "after" in text
        out = capsys.readouterr().out
        assert out.count("before the folder 1") == 1 and "full config" not in out
    finally:
        close_log_handlers()


def test_other_ranks_log_to_their_file_only(tmp_path, capsys):
    try:
        logger = create_logger(str(tmp_path), rank=1)
        logger.info("rank one")
        _flush()
        assert "rank one" in open(tmp_path / "log_rank1.txt").read()
        assert "rank one" not in capsys.readouterr().out
    finally:
        close_log_handlers()


def test_json_lines_and_tensorboard(tmp_path):
    out = str(tmp_path)
    JsonLogger(out, rank=0).log({"epoch": 0, "loss": torch.tensor(1.5), "acc1": np.float64(50.0),
                                 "bad": float("nan")})
    JsonLogger(out, rank=1).log({"epoch": 0})
    lines = open(os.path.join(out, "log.jsonl")).read().splitlines()
    assert [json.loads(ln) for ln in lines] == [{"epoch": 0, "loss": 1.5, "acc1": 50.0, "bad": "nan"}]

    tb = TensorboardWriter(os.path.join(out, "tb"), rank=0)
    tb.add_scalars({"loss": 1.0, "note": "x"}, step=0, prefix="train/")
    tb.close()
    assert tb.writer is None and os.listdir(os.path.join(out, "tb"))
    assert not TensorboardWriter(os.path.join(out, "tb1"), rank=1).enabled
