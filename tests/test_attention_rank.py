"""scripts.attention_rank: Fig. 5, the rank of the attention matrix with and without DWC."""
import json

from scripts.attention_rank import main
from scripts.core import cli


def test_dwc_raises_rank_and_plot(tmp_path, photo, tiny_deit_args, capsys):
    out, png = tmp_path / "rank.json", tmp_path / "fig5.png"
    assert main(tiny_deit_args[:2] + ["--image", photo, "--json", str(out), "--channels", "3", "--plot", str(png),
                                      "--plot-block", "1", "--head", "2"] + tiny_deit_args[2:]) == 0
    res = json.loads(out.read_text())
    assert len(res["blocks"]) == 2
    for b in res["blocks"]:
        assert b["tokens"] == 36 and b["head_dim"] == 16
        assert max(b["rank_linear"]) <= 16                              # rank(A) <= d (Fig. 5 b)
        dwc = [r for per_head in b["rank_dwc"] for r in per_head]
        assert min(dwc) > max(b["rank_linear"])                          # DWC restores rank (Fig. 5 c)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "rank A" in text and f"wrote {png}" in text


def test_fig5_matrices_have_the_printed_ranks(tmp_path, tiny_deit_args):
    """The plotted matrices are the ones ranked: softmax full rank, A at most d, A + DWC above A."""
    import torch

    from scripts.attention_rank import fig5_matrices
    from scripts.core.attention import build_focused, capture_attend, load_image

    class Args:
        cfg, resume, image = tiny_deit_args[1], None, None
        opts = tiny_deit_args[3:]
    cfg, model, mods = build_focused(Args)
    x, _ = load_image(None, cfg)
    with capture_attend([mods[0][1]]) as rec, torch.no_grad():
        model(x)
    mats = dict(fig5_matrices(mods[0][1], rec[0], head=0))
    ranks = {k.split(" ")[0]: int(torch.linalg.matrix_rank(m)) for k, m in mats.items()}
    assert ranks["(a)"] == 36 and ranks["(b)"] <= 16 < ranks["(c)"]
    assert all(m.shape == (36, 36) for m in mats.values())


def test_bad_plot_block_is_one_line_error(tmp_path, tiny_deit_args, capsys):
    assert cli.run(main, tiny_deit_args[:2] + ["--blocks", "0", "--plot", str(tmp_path / "f.png"), "--plot-block",
                                               "1"] + tiny_deit_args[2:]) == 2
    assert "--plot-block 1 is not among the blocks analysed" in capsys.readouterr().err
