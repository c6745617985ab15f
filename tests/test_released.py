"""The released models: the table, the parameter layout of all 17 released configurations, the
official logits, and loading released files through timm (pretrained tags, file overlay, download).

Independent sources: the official manifest and reference logits (tests/fixtures, made with the
official code), paper Table 8 and the official README (copied into models/released.py).
"""
import logging
import os
import pickle
import re
import shutil

import pytest
import timm
import torch
from yacs.config import CfgNode

import models  # noqa: F401  (registers the models)
from fill import fixed_input
from manifest import load_manifest, reference_logits, released_state_dict
from models.layers import weights
from models.layers.weights import CheckpointError, checkpoint_filter_fn, ignored_keys
from models.released import TABLE8, by_config, by_timm_name, released

ROWS_BY_RELEASE = {r.release_name: r for r in TABLE8 if r.release_name}


def test_table_covers_table8_and_the_release():
    assert len(TABLE8) == 36 and len({r.config for r in TABLE8}) == 36
    assert sum(r.is_flatten for r in TABLE8) == 18
    # The official README lists seven checkpoints, each a TsinghuaCloud link ending in ?dl=1.
    assert [r.config for r in released()] == ["flatten_pvt_t", "flatten_pvt_v2_b0", "flatten_swin_t", "flatten_swin_s",
                                              "flatten_swin_b", "flatten_swin_b_384", "flatten_cswin_t"]
    assert all(re.fullmatch(r"https://cloud\.tsinghua\.edu\.cn/f/[0-9a-f]{20}/\?dl=1", r.url) for r in released())
    # Official evaluation logs (README) for the four T/B0 files; top-1 only for the others.
    assert {r.config: (r.acc1, r.acc5) for r in released()} == {
        "flatten_pvt_t": (77.758, 93.910), "flatten_pvt_v2_b0": (71.098, 90.596),
        "flatten_swin_t": (82.106, 95.900), "flatten_cswin_t": (83.130, 96.376),
        "flatten_swin_s": (83.5, None), "flatten_swin_b": (83.8, None), "flatten_swin_b_384": (85.0, None)}
    # Every row is reachable by config name, timm name and alias.
    for r in TABLE8:
        assert by_config(r.config) is r and by_timm_name(r.timm_name) is r
        assert r.timm_name in timm.list_models("flatten_*")
        if r.alias:
            assert by_timm_name(r.alias) is r and r.alias in timm.list_models("flatten_*")
    # The release names its configs after ours except PVT-L (flatten_pvt_b); the manifest uses them.
    assert sorted(ROWS_BY_RELEASE) == sorted(load_manifest())
    assert by_config("flatten_pvt_l").release_name == "flatten_pvt_b"


def test_list_pretrained_shows_the_seven_tags():
    expected = sorted(f"{r.timm_name}.in1k" for r in released())
    assert sorted(timm.list_pretrained("flatten_*")) == expected
    for r in released():
        cfg = timm.models.get_pretrained_cfg(f"{r.timm_name}.in1k")
        assert cfg.url == (r.url, f"{r.config}.pth")      # the README link, a file name for the cache
        assert cfg.custom_load and cfg.fixed_input_size and cfg.num_classes == 1000
        assert cfg.input_size == (3, r.resolution, r.resolution)


# -- all 17 released configurations ------------------------------------------------------------------
@pytest.mark.parametrize("release_name", sorted(load_manifest()))
def test_released_layout(release_name, caplog):
    """Names, shapes and order of the parameters are the release's (optimizer states transfer too);
    a released state dict loads strictly after dropping only the documented ignored keys."""
    entry = load_manifest()[release_name]
    row = ROWS_BY_RELEASE[release_name]
    with torch.device("meta"):
        model = timm.create_model(row.timm_name)
    patterns = ignored_keys(model)
    ignored = [k for k in {**entry["param_keys"], **entry["buffer_keys"]} if any(re.search(p, k) for p in patterns)]
    expected = [(n, list(s)) for n, s in entry["param_keys"].items() if n not in ignored]
    assert [(n, list(p.shape)) for n, p in model.named_parameters()] == expected
    assert sum(p.numel() for p in model.parameters()) == entry["params"] - sum(
        torch.Size(entry["param_keys"][k]).numel() for k in ignored if k in entry["param_keys"])
    # Only buffers (rebuilt from the size) and PVT v1's never-applied final norm are ignored.
    assert set(ignored) == set(entry["buffer_keys"]) | ({"norm.weight", "norm.bias"} if release_name in (
        "flatten_pvt_t", "flatten_pvt_s", "flatten_pvt_m", "flatten_pvt_b") else set())
    with caplog.at_level(logging.INFO, logger="models.layers.weights"):
        sd = checkpoint_filter_fn({"model": released_state_dict(release_name, fill=False)}, model)
    model.load_state_dict(sd, strict=True, assign=True)
    if ignored:
        assert f"ignored {len(ignored)} keys" in caplog.text
    # Table 8 prints the parameter count to one digit: the released model is within that digit.
    printed = row.params
    tol = 10.0 ** -(len(printed.split(".")[1]) if "." in printed else 0)
    assert abs(entry["params"] / 1e6 - float(printed)) <= tol + 1e-9, (entry["params"], printed)


@pytest.mark.parametrize("release_name", ["flatten_swin_t", "flatten_pvt_t", "flatten_pvt_v2_b0", "flatten_cswin_t"])
def test_reference_logits(release_name):
    """Weights filled by name + the official code's buffers -> the official logits (1e-4) at the built size."""
    ref = reference_logits(release_name)
    model = timm.create_model(ROWS_BY_RELEASE[release_name].timm_name).eval()
    sd = released_state_dict(release_name)
    sd.update(ref["buffers"])
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    # The buffers the release stores are rebuilt identically (Swin's masks and index tables).
    for key, value in ref["buffers"].items():
        module, leaf = key.rsplit(".", 1)
        assert torch.equal(model.get_submodule(module).get_buffer(leaf).to(value.dtype), value), key
    with torch.no_grad():
        logits = model(fixed_input(2, 224))
    torch.testing.assert_close(logits, ref["logits"], atol=1e-4, rtol=0)


# -- loading released files through timm -------------------------------------------------------------
def released_file(path, release_name, model_name):
    """A file shaped like a released checkpoint: Swin-style dict with a pickled yacs CfgNode and optimizer state."""
    sd = released_state_dict(release_name)
    opt_state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-3}]}
    config = CfgNode({"MODEL": CfgNode({"NAME": model_name, "DROP_PATH_RATE": 0.1}), "DATA": CfgNode({"IMG_SIZE": 224})})
    torch.save({"model": sd, "optimizer": opt_state, "lr_scheduler": {}, "max_accuracy": 71.1, "epoch": 299,
                "config": config}, path)
    return sd


@pytest.fixture()
def load_spy(monkeypatch):
    """Records every torch.load and every safe_load call made while loading weights."""
    calls = {"torch.load": [], "safe_load": []}
    torch_load, safe_load = torch.load, weights.safe_load

    def spy_torch_load(*args, **kwargs):
        calls["torch.load"].append(kwargs.get("weights_only"))
        return torch_load(*args, **kwargs)

    def spy_safe_load(path, *args, **kwargs):
        calls["safe_load"].append(os.fspath(path))
        return safe_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_torch_load)
    monkeypatch.setattr(weights, "safe_load", spy_safe_load)
    return calls


@pytest.mark.parametrize("name,release_name", [("flatten_pvt_v2_b0", "flatten_pvt_v2_b0"), ("flatten_pvt_t", "flatten_pvt_t")])
def test_pretrained_file_overlay_loads_released_file(tmp_path, load_spy, caplog, name, release_name):
    path = tmp_path / "released.pth"
    sd = released_file(path, release_name, name)
    with pytest.raises(Exception):                   # what timm's own loader would do with it
        torch.load(path, weights_only=True)
    load_spy["torch.load"].clear()
    with caplog.at_level(logging.INFO, logger="models.layers.weights"):
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert load_spy["safe_load"] == [str(path)] and load_spy["torch.load"] == [True]
    for k, v in model.state_dict().items():          # every tensor comes from the file
        assert torch.equal(v, sd[k]), k
    if release_name == "flatten_pvt_t":              # the unused final norm is dropped, and said so
        assert "ignored norm.bias, norm.weight" in caplog.text
    # Another number of classes: the head is dropped (reported), everything else still strict.
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=7)
    assert model.head.out_features == 7 and torch.equal(model.patch_embed1.proj.weight, sd["patch_embed1.proj.weight"])
    feats = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), features_only=True)
    assert torch.equal(feats.model.patch_embed1.proj.weight, sd["patch_embed1.proj.weight"])


def test_pretrained_load_is_strict(tmp_path):
    path = tmp_path / "wrong.pth"
    sd = released_state_dict("flatten_pvt_v2_b0")
    del sd["block1.0.attn.scale"]
    sd["block9.0.extra"] = torch.zeros(1)
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as err:
        timm.create_model("flatten_pvt_v2_b0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    msg = str(err.value)
    assert "\n" not in msg and "1 missing (block1.0.attn.scale)" in msg and "1 unexpected (block9.0.extra)" in msg


class _Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pretrained_refuses_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "extra": _Payload(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        timm.create_model("flatten_pvt_v2_b0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


def test_pretrained_tag_downloads_the_release_link(tmp_path, monkeypatch, load_spy):
    """``pretrained=True`` fetches the README link into ``<config>.pth`` (the link has no file name);
    nothing is downloaded here: the download function is replaced."""
    src = tmp_path / "src.pth"
    sd = released_file(src, "flatten_pvt_v2_b0", "flatten_pvt_v2_b0")
    fetched = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        fetched.append((url, dst))
        shutil.copyfile(src, dst)

    monkeypatch.setattr(timm.models._hub, "download_url_to_file", fake_download)
    cache = tmp_path / "cache"
    for name in ("flatten_pvt_v2_b0", "flatten_pvt_v2_b0.in1k"):
        model = timm.create_model(name, pretrained=True, cache_dir=str(cache))
        assert torch.equal(model.head.weight, sd["head.weight"])
    url = by_config("flatten_pvt_v2_b0").url
    assert fetched == [(url, str(cache / "flatten_pvt_v2_b0.pth"))]          # once, then from the cache
    assert load_spy["safe_load"] == [str(cache / "flatten_pvt_v2_b0.pth")] * 2
    # A link given by the user that has no file name in its path is named after the model.
    other = tmp_path / "other_cache"
    timm.create_model("flatten_pvt_v2_b0", pretrained=True, cache_dir=str(other),
                      pretrained_cfg_overlay=dict(url="https://example.org/f/abc/?dl=1"))
    assert fetched[-1] == ("https://example.org/f/abc/?dl=1", str(other / "flatten_pvt_v2_b0.pth"))


def test_alias_pretrained_resolves_to_the_tag():
    for r in released():
        if r.alias:
            cfg = timm.models.get_pretrained_cfg(r.timm_name)
            assert cfg.tag == "in1k" and cfg.url[0] == r.url
    with torch.device("meta"):
        model = timm.create_model("flatten_swin_t")
    assert model.pretrained_cfg["architecture"] == "flatten_swin_tiny_patch4_224"
    assert model.pretrained_cfg["tag"] == "in1k"
