"""scripts.visualize_attention: the maps of Fig. 3 / 8 on a real photo, and their checks."""
import numpy as np
import pytest

from scripts.core import cli
from scripts.visualize_attention import main


def test_maps_on_a_photo(tmp_path, photo, tiny_deit_args, capsys):
    out, npz = tmp_path / "att.png", tmp_path / "att.npz"
    assert main(tiny_deit_args[:2] + ["--image", photo, "--block", "1", "--query", "2,3", "--out", str(out),
                                      "--npz", str(npz)] + tiny_deit_args[2:]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = np.load(npz)
    assert set(maps.files) == {"softmax_(same_q,_k)", "linear", "focused", "focused_plus_dwc"}
    for name in maps.files:
        assert maps[name].shape == (6, 6) and (maps[name] >= 0).all()
    # softmax and the normalised linear attentions: a query's weights over all keys sum to 1 and there is
    # no class token in the map, so the grid keys carry a share in (0, 1]
    for name in ("softmax_(same_q,_k)", "linear", "focused"):
        assert 0.5 < maps[name].sum() <= 1.0 + 1e-5
    # the focusing function sharpens: the focused map's largest weight exceeds vanilla linear attention's
    assert maps["focused"].max() > maps["linear"].max()
    # the DWC term adds a 5x5 neighbourhood around the query (row 2, col 3)
    local = maps["focused_plus_dwc"][0:5, 1:6].sum() / maps["focused_plus_dwc"].sum()
    assert local > maps["focused"][0:5, 1:6].sum() / maps["focused"].sum()


def test_random_weights_are_marked(tmp_path, photo, tiny_deit_args, monkeypatch):
    import scripts.visualize_attention as vis
    seen = {}
    original = vis.draw

    def spy(*args):
        seen["notes"] = args[6]
        return original(*args)
    monkeypatch.setattr(vis, "draw", spy)
    assert main(tiny_deit_args[:2] + ["--image", photo, "--out", str(tmp_path / "a.png")] + tiny_deit_args[2:]) == 0
    assert seen["notes"][0].startswith("RANDOM WEIGHTS") and "same q, k" not in seen["notes"][0]
    assert any("separately trained softmax model" in n for n in seen["notes"])


def test_query_outside_the_grid_is_one_line_error(tmp_path, tiny_deit_args, capsys):
    assert cli.run(main, tiny_deit_args[:2] + ["--query", "9,9", "--out", str(tmp_path / "a.png")]
                   + tiny_deit_args[2:]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --query 9,9 is outside the 6x6 token grid of this attention"
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("cfg", ["configs/baselines/deit_t.yaml"])
def test_model_without_focused_attention_is_one_line_error(cfg, capsys):
    assert cli.run(main, ["--cfg", cfg, "--opts", "MODEL.DEPTHS", "[1]"]) == 2
    assert "has no focused linear attention" in capsys.readouterr().err
