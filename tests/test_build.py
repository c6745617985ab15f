"""models.build_model: config -> constructor arguments, one-line errors that name the config key,
constructor bugs left as bugs, and the package's import hygiene."""
import os
import subprocess
import sys

import pytest
import timm
import torch

import config as config_lib
import models
from models import ModelConfigError, build_model, family_of, model_kwargs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(path=None, *opts):
    return config_lib.load_config(os.path.join(ROOT, "configs", path) if path else None, list(opts))


def test_model_kwargs_maps_the_config():
    c = cfg("flatten_cswin_b_384.yaml")
    kw = model_kwargs(c)
    assert kw["img_size"] == 384 and kw["attn_type"] == "LLSS" and kw["drop_path_rate"] == 0.7
    assert kw["la_split_size"] == [96, 48, 24, 12]
    assert kw["la_kwargs"] == dict(focusing_factor=3.0, kernel_size=5, use_dwc=True, focused=True, kind="focused",
                                   use_pe=True)
    assert "window_size" not in kw and "la_sr_ratios" not in kw            # not CSWin keys, left unset
    kw = model_kwargs(cfg("flatten_pvt_t.yaml", "MODEL.LA.PVT_LA_SR_RATIOS", "[2, 2, 1, 1]"))
    assert kw["la_sr_ratios"] == [2, 2, 1, 1] and "la_split_size" not in kw
    kw = model_kwargs(cfg("baselines/cswin_t.yaml"))
    assert kw["depths"] == [1, 2, 21, 1] and kw["attn_type"] == "SSSS"


def test_family_of_names_and_aliases():
    assert family_of("flatten_swin_t") == family_of("flatten_softmax_swin_b_384") == "swin"
    assert family_of("flatten_pvt_v2_b0.in1k") == "pvt_v2" and family_of("flatten_pvt_large") == "pvt"
    assert family_of("flatten_cswin_tiny_224") == "cswin" and family_of("flatten_deit_t") == "deit"
    with pytest.raises(ModelConfigError):
        family_of("resnet18")                                           # a timm model, not ours


def test_build_with_overrides():
    c = cfg("flatten_pvt_v2_b0.yaml", "DATA.IMG_SIZE", "64", "MODEL.DEPTHS", "[1, 1, 1, 1]")
    model = build_model(c, num_classes=3, dynamic_img_size=True)
    assert isinstance(model, models.pvt_v2.FLattenPVTv2) and model.num_classes == 3
    assert next(model.parameters()).device.type == "cpu"
    assert model(torch.randn(1, 3, 96, 64)).shape == (1, 3)


@pytest.mark.parametrize("opts,key", [
    (("MODEL.NAME", "flatten_swin_x"), "MODEL.NAME 'flatten_swin_x'"),
    (("DATA.IMG_SIZE", "100"), "DATA.IMG_SIZE 100"),                    # Swin: not a multiple of 32
    (("MODEL.LA.ATTN_TYPE", "LLS"), "MODEL.LA.ATTN_TYPE 'LLS'"),
    (("MODEL.LA.KIND", "performer"), "MODEL.LA.KIND 'performer'"),
    (("MODEL.LA.KERNEL_SIZE", "4"), "MODEL.LA.KERNEL_SIZE 4"),
    (("MODEL.LA.FOCUSING_FACTOR", "0.0"), "MODEL.LA.FOCUSING_FACTOR 0.0"),
    (("MODEL.NUM_HEADS", "[3, 6, 12]"), "MODEL.NUM_HEADS [3, 6, 12]"),
    (("MODEL.NUM_HEADS", "[5, 6, 12, 24]"), "MODEL.NUM_HEADS [5, 6, 12, 24]"),  # 96 channels, 5 heads
    (("MODEL.SPLIT_SIZE", "[1, 2, 7, 7]"), "MODEL.SPLIT_SIZE [1, 2, 7, 7]"),   # a CSWin key on Swin
    (("MODEL.LA.PVT_LA_SR_RATIOS", "[2, 1, 1, 1]"), "MODEL.LA.PVT_LA_SR_RATIOS [2, 1, 1, 1]"),
    (("MODEL.LA.CSWIN_LA_SPLIT_SIZE", "[7, 7, 7, 7]"), "MODEL.LA.CSWIN_LA_SPLIT_SIZE [7, 7, 7, 7]"),
])
def test_config_errors_name_the_key(opts, key):
    c = cfg("flatten_swin_t.yaml", *opts)
    with torch.device("meta"), pytest.raises(ModelConfigError) as err:
        build_model(c)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(key), msg


def test_other_family_errors_name_the_key():
    with torch.device("meta"), pytest.raises(ModelConfigError, match=r"^MODEL\.LA\.PVT_LA_SR_RATIOS \[1, 1, 0, 1\]"):
        build_model(cfg("flatten_pvt_t.yaml", "MODEL.LA.PVT_LA_SR_RATIOS", "[1, 1, 0, 1]"))
    with torch.device("meta"), pytest.raises(ModelConfigError, match=r"^MODEL\.LA\.ATTN_TYPE 'LL'"):
        build_model(cfg("flatten_deit_t.yaml", "MODEL.LA.ATTN_TYPE", "LL"))
    with torch.device("meta"), pytest.raises(ModelConfigError, match=r"^build_model\(global_pool=\.\.\.\) 'max'"):
        build_model(cfg("flatten_cswin_t.yaml"), global_pool="max")


def test_constructor_bugs_are_not_config_errors(monkeypatch):
    """Anything but a ModelConfigError from the constructor propagates as it is (with its traceback)."""
    def broken(self, *args, **kwargs):
        raise TypeError("a bug in the constructor")

    monkeypatch.setattr(models.swin.FLattenSwin, "__init__", broken)
    with pytest.raises(TypeError, match="a bug in the constructor"):
        build_model(cfg("flatten_swin_t.yaml"))

    def value_bug(self, *args, **kwargs):
        raise ValueError("also a bug")

    monkeypatch.setattr(models.swin.FLattenSwin, "__init__", value_bug)
    with pytest.raises(ValueError, match="also a bug") as err:
        build_model(cfg("flatten_swin_t.yaml"))
    assert not isinstance(err.value, ModelConfigError)


def test_models_import_hygiene():
    """``models`` does not import the top-level config module, and the attention modules import in any order."""
    code = ("import sys; import models.layers.attention.table3; import models; "
            "assert 'config' not in sys.modules, 'models imported config'; "
            "import timm; assert len(timm.list_models('flatten_*')) == 49; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_registry_names():
    names = timm.list_models("flatten_*")
    canonical = timm.list_models("flatten_*", name_matches_cfg=True)
    assert len(names) == 49 and len(canonical) == 36                   # 18 FLatten + 18 baselines, 13 aliases
    assert sorted(set(names) - set(canonical)) == sorted(
        ["flatten_deit_t", "flatten_pvt_t", "flatten_pvt_s", "flatten_pvt_m", "flatten_pvt_l", "flatten_swin_t",
         "flatten_swin_s", "flatten_swin_b", "flatten_swin_b_384", "flatten_cswin_t", "flatten_cswin_s",
         "flatten_cswin_b", "flatten_cswin_b_384"])
    with torch.device("meta"):
        a = timm.create_model("flatten_cswin_b_384")
        b = timm.create_model("flatten_cswin_base_384")
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]
    assert a.pretrained_cfg == b.pretrained_cfg
