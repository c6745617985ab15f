"""Paper Table 8: every FLatten model's params and FLOPs match to the printed precision.

FLOPs are fvcore multiply-adds (utils/flops.py). The largest models take a
while to trace on a small CPU and run in the slow suite (`pytest -m slow`).
"""
import pytest

from scripts.model_table import TABLE8, matches, measure, tolerance

FLATTEN = [n for n in TABLE8 if n.startswith("flatten_")]
SLOW = {"flatten_swin_b", "flatten_swin_b_384", "flatten_cswin_s", "flatten_cswin_b", "flatten_cswin_b_384",
        "flatten_pvt_m", "flatten_pvt_l", "flatten_pvt_v2_b3", "flatten_pvt_v2_b4"}


def test_tolerance_is_one_printed_digit():
    assert tolerance("6.1") == pytest.approx(0.1) and tolerance("29") == 1
    assert matches(6.15, "6.1") and matches(29.4, "29") and not matches(6.25, "6.1")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in FLATTEN])
def test_flatten_model_matches_table8(name):
    row = measure(name)
    assert not row["error"], row["error"]
    paper = TABLE8[name]
    assert row["params_ok"], f"{name}: {row['params_m']:.3f}M params, paper {paper.params}M"
    assert row["flops_ok"], f"{name}: {row['gflops']:.3f} GFLOPs, paper {paper.flops}G"
