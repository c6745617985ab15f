"""Every registered FLatten model: forward/backward, heads, gradient checkpointing, timm surface."""
import pytest
import timm
from timm.optim import param_groups_weight_decay
import torch

import models  # noqa: F401  (registers the models)
from models.layers import InputSizeError

MODEL_NAMES = timm.list_models("flatten_*")
# Large variants run in the slow suite only; one model per family stays in the default run.
FAST = {"flatten_deit_tiny_patch16_224", "flatten_pvt_tiny", "flatten_pvt_v2_b0",
        "flatten_swin_tiny_patch4_224", "flatten_cswin_tiny_224"}


def _marks(name):
    return [] if name in FAST else [pytest.mark.slow]


def test_every_family_registered():
    for family in ("flatten_deit", "flatten_pvt_", "flatten_pvt_v2", "flatten_swin", "flatten_cswin"):
        assert any(n.startswith(family) for n in MODEL_NAMES), family
    assert len(MODEL_NAMES) >= 18


def _input(model, batch=2):
    size = model.pretrained_cfg["input_size"][1:]
    return torch.randn(batch, 3, *size)


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in MODEL_NAMES])
def test_forward_backward(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, drop_path_rate=0.0)
    x = _input(model)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"

    # gradient checkpointing: same output, eval mode for determinism
    model.eval()
    with torch.no_grad():
        ref = model(x)
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FAST))
def test_timm_surface(name):
    model = timm.create_model(name)
    assert model.get_classifier().out_features == 1000
    model.reset_classifier(3)
    assert model.num_classes == 3
    # position encodings are excluded from weight decay through timm's optimizer factory
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    pos = [n for n, p in model.named_parameters() if n.endswith("positional_encoding") or "pos_embed" in n]
    assert pos and all(id(dict(model.named_parameters())[n]) in no_decay for n in pos)
    x = _input(model, 1)
    feats = model.forward_features(x)
    logits = model.forward_head(feats)
    assert logits.shape == (1, 3)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.num_features)
    cfg = model.pretrained_cfg
    assert cfg["interpolation"] == "bicubic" and cfg["crop_mode"] == "squash"


@pytest.mark.parametrize("name", sorted(FAST))
def test_wrong_input_size_is_one_line_error(name):
    model = timm.create_model(name).eval()
    size = model.pretrained_cfg["input_size"][1]
    with pytest.raises(InputSizeError) as e:
        model(torch.randn(1, 3, size + 32, size + 32))
    msg = str(e.value)
    assert "\n" not in msg and str(size + 32) in msg and str(size) in msg


@pytest.mark.parametrize("name", sorted(FAST - {"flatten_deit_tiny_patch16_224"}))
def test_features_only_nchw(name):
    model = timm.create_model(name, features_only=True)
    x = torch.randn(1, 3, 224, 224)
    feats = model(x)
    assert len(feats) == 4
    for f, info in zip(feats, model.feature_info.get_dicts()):
        assert f.shape[1] == info["num_chs"]
        assert f.shape[-1] == 224 // info["reduction"]
