"""Paper Tables 3-7: the ablation configs.

Every config of ``configs/ablations/`` is built and trained for one step (DeiT-T at
full width and resolution with 2 blocks; Swin-T at 224 with the config's
attention layout but a narrow, shallow body, so windows and global stages are
those of the config). The Table 3 attentions are checked against their direct
N x N formulas in test_attention.py; the tools that print and plot the tables
are tested beside their own modules (test_model_table.py, test_plot_fig7.py, ...).
"""
import glob
import os

import pytest
import torch

import config as config_lib
import models
from models.layers.attention import LINEAR_ATTENTIONS, LinearAttention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATION_DIR = os.path.join(ROOT, "configs", "ablations")
ABLATION_CONFIGS = sorted(os.path.splitext(os.path.basename(p))[0]
                          for p in glob.glob(os.path.join(ABLATION_DIR, "*.yaml")))
# Swin-T rows run at 224 with the config's windows / attention types but a narrow, shallow body;
# DeiT-T rows at full width and resolution (197 tokens, 3 heads of 64) with 2 of the 12 blocks.
SHRINK = {"swin": ["MODEL.EMBED_DIM", "32", "MODEL.NUM_HEADS", "[1,2,4,8]", "MODEL.DEPTHS", "[2,2,2,2]"],
          "deit": ["MODEL.DEPTHS", "[2]"]}


# The Table 3 attentions against their direct N x N formulas: tests/test_attention.py.


# --------------------------------------------------------------------------- ablation configs
def _kinds(model):
    return [m for m in model.modules() if isinstance(m, LinearAttention)]


def _expected_layout(cfg, model):
    """The config's own ablation setting is what the built model uses."""
    la = cfg.MODEL.LA
    attns = _kinds(model)
    assert attns, "no linear attention in the model"
    for m in attns:
        assert m.kind == la.KIND and type(m) is LINEAR_ATTENTIONS[la.KIND]
        if la.KIND == "focused":
            assert m.focused == la.FOCUSED and m.focusing_factor == la.FOCUSING_FACTOR
            assert (m.dwc is not None) == la.USE_DWC
            assert (m.positional_encoding is not None) == la.USE_PE
    if models.family_of(cfg.MODEL.NAME) == "swin":
        for i, stage in enumerate(model.layers):
            for blk in stage.blocks:
                assert isinstance(blk.attn, LinearAttention) == (la.ATTN_TYPE[i] == "L")
                if la.ATTN_TYPE[i] == "L":
                    res = 56 // 2 ** i
                    if cfg.MODEL.WINDOW_SIZE >= res:
                        assert blk.global_attn and blk.attn.grid == (res, res)
                    else:
                        assert blk.window_size == cfg.MODEL.WINDOW_SIZE


def test_every_ablation_config_is_a_table_row():
    from scripts.core.paper import ABLATIONS
    rows = {r.config for r in ABLATIONS}
    assert {f"ablations/{n}" for n in ABLATION_CONFIGS} <= rows
    for r in ABLATIONS:
        assert os.path.isfile(os.path.join(ROOT, "configs", r.config + ".yaml")), r.config
    assert len(ABLATION_CONFIGS) == 24


@pytest.mark.parametrize("name", ABLATION_CONFIGS)
def test_ablation_config_builds_and_trains(name):
    path = os.path.join(ABLATION_DIR, name + ".yaml")
    cfg = config_lib.load_config(path)
    cfg = config_lib.load_config(path, SHRINK.get(models.family_of(cfg.MODEL.NAME), []))
    torch.manual_seed(0)
    model = models.build_model(cfg)
    _expected_layout(cfg, model)
    model.train()
    x = torch.randn(1, 3, cfg.DATA.IMG_SIZE, cfg.DATA.IMG_SIZE)
    y = model(x)
    assert y.shape == (1, cfg.MODEL.NUM_CLASSES or 1000) and torch.isfinite(y).all()
    y.logsumexp(-1).sum().backward()
    for attn in _kinds(model)[:2]:
        grads = [p.grad for p in attn.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_table3_deit_param_counts():
    """Table 3(a): 5.7M for hydra / efficient / angular, 5.8M for enhanced (focused: 6.1M)."""
    from scripts.core.paper import matches
    from utils.flops import count_params
    for kind, printed in (("hydra", "5.7"), ("efficient", "5.7"), ("angular", "5.7"), ("enhanced", "5.8")):
        cfg = config_lib.load_config(os.path.join(ABLATION_DIR, f"t3_deit_t_{kind}.yaml"))
        params = count_params(models.build_model(cfg))
        assert matches(params, printed), (kind, params)
