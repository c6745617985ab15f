"""utils/optim.py: the weight-decay groups. By default the released ones (the official FLatten code's rule),
checked against that rule written out per family; ``exempt_position`` is the documented deviation."""
import os

import pytest
import torch

import config
import models
from utils.optim import build_optimizer, is_decay_exempt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The official code: no decay when ``param.ndim == 1 or name.endswith('.bias') or name in no_weight_decay()
# or any(keyword in name for keyword in no_weight_decay_keywords())``, with each released family's lists.
OFFICIAL_LISTS = {
    "flatten_swin": ({"absolute_pos_embed"}, {"relative_position_bias_table"}),
    "flatten_pvt_v2": ({"pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4", "cls_token"}, set()),
    "flatten_pvt": ({"cls_token"}, set()),
    "flatten_cswin": ({"pos_embed", "cls_token"}, set()),
    "flatten_deit": ({"pos_embed", "cls_token", "dist_token"}, set()),   # DeiT's own list (no FLatten release)
}


def official_exempt(family, model):
    names, keywords = OFFICIAL_LISTS[family]
    return {n for n, p in model.named_parameters()
            if p.ndim == 1 or n.endswith(".bias") or n in names or any(k in n for k in keywords)}


def meta_model(cfg_name):
    cfg = config.load_config(os.path.join(ROOT, "configs", cfg_name + ".yaml"))
    with torch.device("meta"):
        return models.build_model(cfg)


def exempt(model, groups):
    return {n for n, p in model.named_parameters() if is_decay_exempt(n, p, groups)}


@pytest.mark.parametrize("cfg_name,family,extra", [
    ("flatten_swin_t", "flatten_swin", 8),          # scale + positional_encoding of the 4 focused blocks
    ("flatten_pvt_t", "flatten_pvt", 20),           # the same for 8 blocks, plus pos_embed1..4
    ("flatten_pvt_v2_b0", "flatten_pvt_v2", 16),
    ("flatten_cswin_t", "flatten_cswin", 12),
    ("flatten_deit_t", "flatten_deit", 24),
    ("baselines/swin_t", "flatten_swin", 0),        # softmax stages: relative tables, exempt in both
])
def test_released_groups_match_the_official_rule(cfg_name, family, extra):
    model = meta_model(cfg_name)
    released = exempt(model, "released")
    assert released == official_exempt(family, model)
    deviation = exempt(model, "exempt_position")
    assert released <= deviation and len(deviation - released) == extra, sorted(deviation - released)[:6]
    leaves = {n.rsplit(".", 1)[-1] for n in deviation - released}
    assert leaves <= {"scale", "positional_encoding", "pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4"}


def test_build_optimizer_groups():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.scale = torch.nn.Parameter(torch.zeros(1, 1, 4))
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, 2, 4))
            self.frozen = torch.nn.Parameter(torch.zeros(3, 3), requires_grad=False)

    net = Net()
    for groups, decayed in (("released", {net.fc.weight, net.scale}), ("exempt_position", {net.fc.weight})):
        opt = build_optimizer(net, "adamw", lr=1e-3, weight_decay=0.05, groups=groups)
        decay, no_decay = opt.param_groups       # the official order: decayed first
        assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
        assert {id(p) for p in decay["params"]} == {id(p) for p in decayed}
        assert id(net.frozen) not in {id(p) for g in opt.param_groups for p in g["params"]}
    with pytest.raises(ValueError, match="TRAIN.WEIGHT_DECAY_GROUPS"):
        build_optimizer(net, groups="none")
