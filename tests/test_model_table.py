"""scripts.model_table: every FLatten model's params and FLOPs match paper Table 8 to the printed
precision, and the ablation rows of Tables 3-7 are printed beside their configs.

FLOPs are fvcore multiply-adds (utils/flops.py). The largest models take a
while to trace on a small CPU and run in the slow suite (`pytest -m slow`).
"""
import os

import pytest

from scripts.core import paper
from scripts.model_table import main, measure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLATTEN = [n for n in paper.table8() if n.startswith("flatten_")]
SLOW = {"flatten_swin_b", "flatten_swin_b_384", "flatten_cswin_s", "flatten_cswin_b", "flatten_cswin_b_384",
        "flatten_pvt_m", "flatten_pvt_l", "flatten_pvt_v2_b3", "flatten_pvt_v2_b4"}


def test_tolerance_is_one_printed_digit():
    assert paper.tolerance("6.1") == pytest.approx(0.1) and paper.tolerance("29") == 1
    assert paper.matches(6.15, "6.1") and paper.matches(29.4, "29") and not paper.matches(6.25, "6.1")


def test_table8_has_every_row_of_the_paper():
    """18 FLatten rows and their 18 softmax baselines, each with a config in the repository."""
    rows = paper.table8()
    assert len(FLATTEN) == 18 and len(rows) == 36
    for name in rows:
        sub = "" if name.startswith("flatten_") else "baselines"
        assert os.path.isfile(os.path.join(ROOT, "configs", sub, name + ".yaml")), name


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in FLATTEN])
def test_flatten_model_matches_table8(name):
    row = measure(name)
    assert not row["error"], row["error"]
    printed = paper.table8()[name]
    assert row["params_ok"], f"{name}: {row['params_m']:.3f}M params, paper {printed.params}M"
    assert row["flops_ok"], f"{name}: {row['gflops']:.3f} GFLOPs, paper {printed.flops}G"


def test_ablations_print_paper_rows(capsys):
    assert main(["--ablations", "--only", "t3_deit_t_enhanced"]) == 0
    out = capsys.readouterr().out
    assert "Table 3(a)" in out and "Enhanced Linear Attn" in out and "72.9" in out and "5.8" in out


def test_unknown_only_is_one_line_error(capsys):
    from scripts.core import cli
    assert cli.run(main, ["--only", "no_such_model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --only no_such_model") and "\n" not in err
