"""Every YAML under configs/ loads and builds its model; Table 8 configs carry the release recipe."""
import glob
import os

import pytest
import timm
import torch

import config
import models
from models.released import by_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")
ALL = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
             if not os.path.basename(p).startswith("_"))          # '_' files are partial bases
IDS = [os.path.relpath(p, CONFIG_DIR) for p in ALL]

TABLE8_FLATTEN = ["flatten_deit_t", "flatten_pvt_t", "flatten_pvt_s", "flatten_pvt_m", "flatten_pvt_l"] + \
    [f"flatten_pvt_v2_b{i}" for i in range(5)] + \
    ["flatten_swin_t", "flatten_swin_s", "flatten_swin_b", "flatten_swin_b_384",
     "flatten_cswin_t", "flatten_cswin_s", "flatten_cswin_b", "flatten_cswin_b_384"]
BASELINES = ["deit_t", "pvt_t", "pvt_s", "pvt_m", "pvt_l"] + [f"pvt_v2_b{i}" for i in range(5)] + \
    ["swin_t", "swin_s", "swin_b", "swin_b_384", "cswin_t", "cswin_s", "cswin_b", "cswin_b_384"]
# Built on the CPU and run on one image; the others are built on the meta device only.
SMALL = {"flatten_deit_t.yaml", "flatten_pvt_v2_b0.yaml", "baselines/deit_t.yaml", "baselines/pvt_v2_b0.yaml"}


def test_table8_configs_exist():
    for name in TABLE8_FLATTEN:
        assert os.path.isfile(os.path.join(CONFIG_DIR, name + ".yaml")), name
    for name in BASELINES:
        assert os.path.isfile(os.path.join(CONFIG_DIR, "baselines", name + ".yaml")), name


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_config_loads_and_builds(path):
    cfg = config.load_config(path)
    assert cfg.MODEL.NAME
    rel = os.path.relpath(path, CONFIG_DIR)
    if rel in SMALL:
        model = models.build_model(cfg).eval()
        size = cfg.DATA.IMG_SIZE
        with torch.no_grad():
            out = model(torch.randn(1, 3, size, size))
        assert cfg.MODEL.NUM_CLASSES is None          # automatic: training and evaluation count the class folders
        assert out.shape == (1, 1000)                 # built without data: the registered default
    else:
        with torch.device("meta"):
            model = models.build_model(cfg)
    if rel.startswith("baselines"):
        assert set(cfg.MODEL.LA.ATTN_TYPE) == {"S"}
        assert not any(n.endswith("positional_encoding") for n, _ in model.named_parameters())
    name = os.path.splitext(os.path.basename(rel))[0]
    if not rel.startswith(("ablations", "demo")):
        # The Table 8 config and the registered name of its row build the same model.
        with torch.device("meta"):
            registered = timm.create_model(by_config(name).timm_name)
        assert [(n, p.shape) for n, p in model.named_parameters()] == \
            [(n, p.shape) for n, p in registered.named_parameters()]
        assert registered.attn_type == model.attn_type


def _cfg(name):
    return config.load_config(os.path.join(CONFIG_DIR, name + ".yaml"))


def test_release_recipe():
    for name, dp in [("flatten_swin_t", 0.2), ("flatten_swin_s", 0.3), ("flatten_swin_b", 0.5),
                     ("flatten_cswin_t", 0.2), ("flatten_cswin_s", 0.4), ("flatten_cswin_b", 0.5)]:
        assert _cfg(name).MODEL.DROP_PATH_RATE == dp, name
    for name, decay in [("flatten_cswin_t", 0.99984), ("flatten_cswin_s", 0.99984),
                        ("flatten_cswin_b", 0.99982), ("flatten_cswin_b_384", 0.99982)]:
        c = _cfg(name)
        assert c.TRAIN.EMA.ENABLE and c.TRAIN.EMA.DECAY == decay, name
    for name in TABLE8_FLATTEN:
        c = _cfg(name)
        assert c.TRAIN.OPTIMIZER.NAME == "adamw" and c.AUG.MIXUP == 0.8 and c.AUG.CUTMIX == 1.0
        assert c.MODEL.LABEL_SMOOTHING == 0.1 and c.AUG.REPROB == 0.25
        if name.endswith("_384"):
            assert c.DATA.IMG_SIZE == 384 and not c.TEST.CROP and c.MODEL.PRETRAINED == ""
            assert c.TRAIN.EPOCHS == 30 and c.TRAIN.BASE_LR <= 2e-5
        else:
            assert c.DATA.IMG_SIZE == 224 and c.TEST.CROP
            assert c.TRAIN.EPOCHS - c.TRAIN.COOLDOWN_EPOCHS == 300 and c.TRAIN.BASE_LR == 5e-4
            assert not c.TRAIN.EMA.ENABLE or "cswin" in name
    assert _cfg("flatten_pvt_t").TRAIN.WARMUP_EPOCHS == 5 and _cfg("flatten_swin_t").TRAIN.WARMUP_EPOCHS == 20


def test_new_keys_are_validated():
    for opts, match in ((["MODEL.NUM_CLASSES", "-1"], "MODEL.NUM_CLASSES must be"),
                        (["MODEL.NUM_CLASSES", "'ten'"], "MODEL.NUM_CLASSES must be"),
                        (["TRAIN.WEIGHT_DECAY_GROUPS", "none"], "TRAIN.WEIGHT_DECAY_GROUPS must be one of"),
                        (["DATA.WORKER_START_METHOD", "vfork"], "DATA.WORKER_START_METHOD must be one of"),
                        (["SAVE_KEEP", "-1"], "SAVE_KEEP must be >= 0"),
                        (["WATCHDOG_TIMEOUT", "-5"], "WATCHDOG_TIMEOUT must be >= 0"),
                        (["TAG", "a/b"], "TAG must be a plain folder name")):
        with pytest.raises(config.ConfigError, match=match):
            config.load_config(None, opts)
    assert config.load_config(None, ["MODEL.NUM_CLASSES", "10"]).MODEL.NUM_CLASSES == 10


def test_saved_config_round_trips_and_derived_values_stay_out():
    import argparse
    args = argparse.Namespace(cfg=os.path.join(CONFIG_DIR, "flatten_pvt_t.yaml"), opts=None, batch_size=64,
                              data_path="/data", epochs=None, eval=False, throughput=False)
    cfg = config.get_config(args)
    assert cfg.NAME == "flatten_pvt_t" and cfg.TRAIN.BASE_LR == 5e-4
    again = config.load_config(None)
    again.defrost()
    again.merge_from_other_cfg(config.CN(__import__("yaml").safe_load(cfg.dump())))
    assert again.dump() == cfg.dump()                 # config.yaml loads back to the same config
    eff = config.finalize(cfg, world_size=8)
    assert eff.TRAIN.BASE_LR == pytest.approx(5e-4 * 64 * 8 / 512) and cfg.TRAIN.BASE_LR == 5e-4
    derived = config.derived_values(cfg, 8)
    assert derived["global_batch"] == 512 and derived["lr"] == pytest.approx(eff.TRAIN.BASE_LR)


def test_baseline_architectures():
    expected_depths = {"cswin_t": [1, 2, 21, 1], "cswin_s": [2, 4, 32, 2], "cswin_b": [2, 4, 32, 2]}
    for name, depths in expected_depths.items():
        assert list(config.load_config(os.path.join(CONFIG_DIR, "baselines", name + ".yaml")).MODEL.DEPTHS) == depths
    for name in ["pvt_t", "pvt_l", "pvt_v2_b0", "pvt_v2_b4"]:
        c = config.load_config(os.path.join(CONFIG_DIR, "baselines", name + ".yaml"))
        assert list(c.MODEL.SR_RATIOS) == [8, 4, 2, 1]
