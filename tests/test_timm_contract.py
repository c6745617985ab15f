"""timm's generic model contract, in this project's words, for every registered model.

What timm's own test suite asks of a model (``tests/test_models.py`` of timm),
checked here at a small size: default-cfg fields; forward and backward at two
non-square sizes with ``dynamic_img_size``; the shapes and layouts of
``forward_features``, ``forward_head``, ``forward_intermediates`` and
``features_only``; feature extraction by torch.fx (torchvision's extractor and
timm's FX wrapper); ``repr``.

Registered sizes of one family (T/S/M/L, B0-B4) share their classes and differ
only in widths and depths, so the behavioural checks run on one FLatten model
and its softmax baseline per family (``REPRESENTATIVES``), narrowed with
constructor overrides (``TINY_KWARGS``); the cheap checks (cfg, repr, the
first conv and classifier names) run on every registered name.
"""
import math

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import FeatureInfo
from torchvision.models.feature_extraction import create_feature_extractor

import models
from models.layers import InputSizeError
from models.released import by_timm_name
from tiny import REPRESENTATIVES, tiny_kwargs

CANONICAL = timm.list_models("flatten_*", name_matches_cfg=True)
# torchvision notes that a training-mode trace has more nodes (timm's DropPath) than an eval one: expected.
FX_TRAIN_EVAL_NOTE = "ignore:NOTE. The nodes obtained by tracing the model in eval mode"


def two_sizes(model):
    """Two non-square input sizes the model accepts with dynamic_img_size."""
    m = model.size_multiple
    return [(2 * m, 3 * m), (5 * m, 2 * m)] if m >= 32 else [(3 * m, 5 * m), (6 * m, 4 * m)]


def tiny(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **{**tiny_kwargs(name), **kwargs})


# -- every registered name (cheap) ---------------------------------------------------------------------
@pytest.mark.parametrize("name", CANONICAL)
def test_default_cfg_and_repr(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    row = by_timm_name(name)
    size = row.resolution
    assert cfg["input_size"] == (3, size, size) and cfg["fixed_input_size"] is True
    assert cfg["interpolation"] == "bicubic" and cfg["crop_mode"] == "squash"
    assert cfg["crop_pct"] == (0.875 if size == 224 else 1.0)                 # docs/model.md, section 3
    assert cfg["num_classes"] == 1000 and cfg["classifier"] == "head" and cfg["custom_load"] is True
    assert cfg["pool_size"] == (None if models.family_of(name) == "deit" else (size // 32, size // 32))
    assert ("url" in cfg) == bool(row.url)
    with torch.device("meta"):
        model = timm.create_model(name)
    sd = model.state_dict()
    assert cfg["first_conv"] + ".weight" in sd and cfg["classifier"] + ".weight" in sd
    assert model.num_features == model.head_hidden_size > 0 and model.num_classes == 1000
    text = repr(model)
    assert text.startswith(type(model).__name__ + "(")
    assert ("FocusedLinearAttention(" in text) == row.is_flatten            # baselines: softmax only
    assert model.group_matcher()["stem"] and model.group_matcher(coarse=True)["blocks"]


def test_repr_of_every_linear_attention_kind():
    """print(model) works for the Table 3 attentions too (each is its own class)."""
    for kind, cls in [("hydra", "HydraAttention"), ("efficient", "EfficientAttention"),
                      ("angular", "AngularAttention"), ("enhanced", "EnhancedLinearAttention"),
                      ("focused", "FocusedLinearAttention")]:
        for name in ("flatten_deit_tiny_patch16_224", "flatten_swin_tiny_patch4_224", "flatten_pvt_v2_b0",
                     "flatten_cswin_tiny_224"):
            model = tiny(name, la_kwargs=dict(kind=kind))
            text = repr(model)
            assert f"{cls}(" in text and f"kind={kind}" in text, (name, kind)


# -- one FLatten model and its softmax baseline per family, narrow -------------------------------------------
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_forward_backward_two_sizes(name):
    model = tiny(name, dynamic_img_size=True, num_classes=7)
    for h, w in two_sizes(model):
        model.zero_grad()
        out = model(torch.randn(2, 3, h, w))
        assert out.shape == (2, 7) and torch.isfinite(out).all()
        out.mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_features_head_and_pooling(name):
    """forward_features at the cfg size: layout (output_fmt), pool_size, num_features; the head's variants."""
    model = tiny(name).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg["input_size"])
    fmt = model.output_fmt
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape[get_channel_dim(fmt)] == model.num_features
    if cfg["pool_size"] is None:                                            # DeiT: tokens, class token first
        assert fmt == "NLC" and feats.shape[1] == 1 + (224 // 16) ** 2
    else:
        assert tuple(feats.shape[d] for d in get_spatial_dim(fmt)) == cfg["pool_size"]
    assert pre.shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == pre.shape
    model.reset_classifier(0, "")
    unpooled = tiny(name, num_classes=0, global_pool="").eval()
    for m in (model, unpooled):
        with torch.no_grad():
            out = m(x)
        assert out.shape == feats.shape
    # With a head but no pooling, the head runs at every position (channels where output_fmt puts them).
    per_pos = tiny(name, num_classes=5, global_pool="").eval()
    with torch.no_grad():
        out = per_pos(x)
    assert out.shape[get_channel_dim(fmt)] == 5


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_forward_intermediates_and_pruning(name):
    model = tiny(name, dynamic_img_size=True).eval()
    info = FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
    h, w = two_sizes(model)[0]
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
    assert len(maps) == len(info.channels())
    for m, c, r in zip(maps, info.channels(), info.reduction()):
        assert m.shape == (1, c, math.ceil(h / r), math.ceil(w / r))
    last = len(maps) - 1
    with torch.no_grad():
        only = model.forward_intermediates(x, indices=[0, last], intermediates_only=True)
        torch.testing.assert_close(only[-1], maps[-1])
        early = model.forward_intermediates(x, indices=1, stop_early=True)[1]
    torch.testing.assert_close(early[0], maps[-1])
    # Pruning keeps what the first two intermediates need; they stay the same.
    kept = model.prune_intermediate_layers(indices=[0, 1])
    assert kept == [0, 1] and model.num_classes == 0
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for a, b in zip(pruned, maps[:2]):
        torch.testing.assert_close(a, b)


@pytest.mark.filterwarnings(FX_TRAIN_EVAL_NOTE)
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_features_only(name):
    """features_only (forward_intermediates) and its FX variant give the same maps at a non-square size."""
    getter = tiny(name, features_only=True, dynamic_img_size=True).eval()
    fx = tiny(name, features_only=True, feature_cls="fx", dynamic_img_size=True).eval()   # same seed, same weights
    h, w = two_sizes(getter.model)[1]
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        maps, fx_maps = getter(x), fx(x)
    assert [m.shape[1] for m in maps] == getter.feature_info.channels()
    for m, r in zip(maps, getter.feature_info.reduction()):
        assert m.shape[2:] == (math.ceil(h / r), math.ceil(w / r))
    fx_fmt = getattr(fx, "output_fmt", "NCHW")
    for m, f in zip(maps, fx_maps):
        if fx_fmt == "NHWC":                                                  # Swin's stage outputs
            f = f.permute(0, 3, 1, 2)
        elif fx_fmt == "NLC":                                                 # DeiT's block outputs (class token first)
            f = f[:, 1:].transpose(1, 2).reshape(m.shape)
        torch.testing.assert_close(f, m)


@pytest.mark.filterwarnings(FX_TRAIN_EVAL_NOTE)
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_fx_feature_extraction(name):
    """torchvision's extractor (no timm settings needed) traces the model once; the graph runs at other
    sizes and in training mode, with every parameter receiving a gradient."""
    model = tiny(name, dynamic_img_size=True, num_classes=5).eval()
    nodes = {info["module"]: f"f{i}" for i, info in enumerate(model.feature_info)}
    nodes["head"] = "logits"
    extractor = create_feature_extractor(model, return_nodes=nodes)
    for h, w in two_sizes(model):
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            out = extractor(x)
            maps = model.forward_intermediates(x, intermediates_only=True)
            torch.testing.assert_close(out["logits"], model(x))
        for i, m in enumerate(maps):
            f = out[f"f{i}"]
            if model.output_fmt == "NHWC":                                  # Swin's stage outputs
                f = f.permute(0, 3, 1, 2)
            elif model.output_fmt == "NLC":                                 # DeiT's block outputs
                f = f[:, 1:].transpose(1, 2).reshape(m.shape)
            torch.testing.assert_close(f, m)
    # timm's own FX wrapper, in training mode: backward reaches every parameter.
    train = timm.models._features_fx.create_feature_extractor(tiny(name, dynamic_img_size=True, num_classes=5).train(),
                                                              return_nodes={"head": "logits"})
    out = train(torch.randn(2, 3, *two_sizes(model)[0]))["logits"]
    out.mean().backward()
    assert all(p.grad is not None for p in train.parameters())


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_fixed_size_is_declared_and_enforced(name):
    model = tiny(name).eval()
    assert model.pretrained_cfg["fixed_input_size"] and not model.dynamic_img_size
    size = model.pretrained_cfg["input_size"][1]
    with pytest.raises(InputSizeError) as err:
        model(torch.randn(1, 3, size + 32, size))
    msg = str(err.value)
    assert "\n" not in msg and f"{size + 32}x{size}" in msg and "dynamic_img_size" in msg
    dyn = tiny(name, dynamic_img_size=True)
    with pytest.raises(InputSizeError, match=f"multiples of {dyn.size_multiple}"):
        dyn(torch.randn(1, 3, dyn.size_multiple * 3 + 8, dyn.size_multiple * 3))


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_pretrained_overlay_loads_a_release_style_file(name, tmp_path):
    """A file shaped like the release (model, pickled yacs config, optimizer state) loads through
    ``pretrained_cfg_overlay=dict(file=...)``, every tensor from the file."""
    from yacs.config import CfgNode
    src = tiny(name)
    torch.nn.init.normal_(src.get_classifier().weight)
    path = tmp_path / "release.pth"
    torch.save({"model": src.state_dict(), "config": CfgNode({"MODEL": CfgNode({"NAME": name})}),
                "optimizer": {"state": {}, "param_groups": []}, "epoch": 299}, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **tiny_kwargs(name))
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize("name", ["flatten_swin_t", "flatten_pvt_t", "flatten_cswin_t", "flatten_deit_t"])
def test_aliases_build_the_same_model(name):
    row = by_timm_name(name)
    a, b = tiny(name), tiny(row.timm_name)
    assert type(a) is type(b) and a.pretrained_cfg["architecture"] == row.timm_name
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("name", CANONICAL)
def test_every_registered_model_full_width(name):
    """Every registered architecture at its own width and depth: forward / backward at a small non-square
    size (dynamic), every parameter trained, features at the built size."""
    torch.manual_seed(0)
    model = timm.create_model(name, dynamic_img_size=True, num_classes=3)
    h, w = two_sizes(model)[0]
    out = model(torch.randn(1, 3, h, w))
    out.mean().backward()
    assert out.shape == (1, 3) and all(p.grad is not None for p in model.parameters())
    model.eval()
    size = model.pretrained_cfg["input_size"][1]
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, size, size), intermediates_only=True)
    assert [m.shape[1] for m in maps] == [i["num_chs"] for i in model.feature_info][-len(maps):]
