"""Reproduction tools (issue 4): Table 3 attentions, ablation configs, Fig. 7 plot, attention maps and rank.

The Table 3 attentions are checked against direct N x N formulas; every
config of ``configs/ablations/`` is built and trained for one step (DeiT-T at
full width and resolution with 2 blocks; Swin-T at 224 with the config's
attention layout but a narrow, shallow body, so windows and global stages are
those of the config); the
scripts run on tiny models and their outputs are checked.
"""
import glob
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import config as config_lib
import models
from models.layers.focused_linear_attention import FocusedLinearAttention, make_la_kwargs
from models.layers.linear_attentions import OTHER_KINDS, linear_attention_weights
from randomize import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATION_DIR = os.path.join(ROOT, "configs", "ablations")
ABLATION_CONFIGS = sorted(os.path.splitext(os.path.basename(p))[0]
                          for p in glob.glob(os.path.join(ABLATION_DIR, "*.yaml")))
# Swin-T rows run at 224 with the config's windows / attention types but a narrow, shallow body;
# DeiT-T rows at full width and resolution (197 tokens, 3 heads of 64) with 2 of the 12 blocks.
SHRINK = {"flatten_swin": ["MODEL.EMBED_DIM", "32", "MODEL.NUM_HEADS", "[1,2,4,8]", "MODEL.DEPTHS", "[2,2,2,2]"],
          "flatten_deit": ["MODEL.DEPTHS", "[2]"]}
# A tiny FLatten-DeiT: 6 x 6 patch grid (N = 36 > d = 16), 2 blocks.
TINY_DEIT = ["configs/flatten_deit_t.yaml", "--opts", "DATA.IMG_SIZE", "96", "MODEL.EMBED_DIM", "48",
             "MODEL.NUM_HEADS", "[3]", "MODEL.DEPTHS", "[2]"]


# --------------------------------------------------------------------------- direct N x N references
def heads(x, h):
    return x.reshape(x.shape[0], x.shape[1], h, -1).transpose(1, 2)      # (B, h, N, d)


def merge(x):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def reference(kind, attn, q, k, v, hw, prefix):
    """Each Table 3 attention written out with its explicit N x M weight matrix."""
    h = attn.num_heads
    if kind == "hydra":                     # one head per channel, cosine similarity, no normalisation
        qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
        a = qn[:, :, None, :] * kn[:, None, :, :]                          # (B, N, M, C): A_c[i, j]
        return (a * v[:, None, :, :]).sum(2)
    qh, kh, vh = heads(q, h), heads(k, h), heads(v, h)
    if kind == "efficient":
        a = torch.softmax(qh, -1) @ torch.softmax(kh, -2).transpose(-2, -1)
    elif kind == "angular":
        cos = F.normalize(qh, dim=-1) @ F.normalize(kh, dim=-1).transpose(-2, -1)
        sim = 0.5 + cos / math.pi                                          # 1 - angle / pi, first order
        a = sim / sim.sum(-1, keepdim=True)
    elif kind == "enhanced":
        s = F.relu(qh) @ F.relu(kh).transpose(-2, -1)
        a = s / (s.sum(-1, keepdim=True) + kh.shape[2] * 1e-6)             # eps 1e-6 on the mean
    out = merge(a @ vh)
    if kind == "enhanced":
        b, n, c = q.shape
        grid = v[:, prefix:].transpose(1, 2).reshape(b, c, *hw)
        conv = F.conv2d(grid, attn.dwc.weight, attn.dwc.bias, padding=attn.dwc.padding, groups=c)
        out[:, prefix:] = out[:, prefix:] + conv.reshape(b, c, -1).transpose(1, 2)
    return out


@pytest.mark.parametrize("kind", OTHER_KINDS)
@pytest.mark.parametrize("hw,num_heads,dim,prefix", [((4, 5), 2, 16, 0), ((3, 3), 3, 24, 1), ((6, 6), 1, 8, 0)])
def test_kind_matches_direct_formula(kind, hw, num_heads, dim, prefix):
    torch.manual_seed(0)
    n = prefix + hw[0] * hw[1]
    attn = randomize(FocusedLinearAttention(dim, num_heads, n, **make_la_kwargs(kind=kind, kernel_size=3)))
    q, k, v = torch.randn(3, 2, n, dim).unbind(0)
    out = attn.attend(q, k, v, hw, num_prefix_tokens=prefix)
    assert out.shape == (2, n, dim)
    torch.testing.assert_close(out, reference(kind, attn, q, k, v, hw, prefix), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_kind_weights_and_key_reduction(kind):
    """linear_attention_weights is the N x M matrix of attend; fewer keys than queries work."""
    torch.manual_seed(1)
    dim, nh = 12, 3
    attn = FocusedLinearAttention(dim, nh, 5, kind=kind)
    q, k, v = torch.randn(1, 20, dim), torch.randn(1, 5, dim), torch.randn(1, 5, dim)
    out = attn.attend(q, k, v, (4, 5))                                     # N = 20 queries, M = 5 keys
    assert out.shape == (1, 20, dim) and torch.isfinite(out).all()
    if kind != "enhanced":                                                 # no conv term: weights @ v is all
        w = linear_attention_weights(attn, q, k)                           # (B, h', N, M)
        if kind == "hydra":                                                # h' = C: channel c uses v[:, :, c]
            expect = (w * v.transpose(1, 2)[:, :, None, :]).sum(-1).transpose(1, 2)
        else:
            expect = merge(w @ heads(v, nh))
        torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-5)


def test_kinds_have_the_table3_parameters():
    """No scale / positional encoding; only 'enhanced' has a conv, over all C channels."""
    for kind in OTHER_KINDS:
        attn = FocusedLinearAttention(48, 3, 49, kind=kind)
        names = {n: p.shape for n, p in attn.named_parameters()}
        if kind == "enhanced":
            assert names == {"dwc.weight": (48, 1, 5, 5), "dwc.bias": (48,)}
        else:
            assert names == {}
        assert attn.kind == kind
    with pytest.raises(ValueError):
        make_la_kwargs(kind="performer")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_kinds_autocast_finite(kind, dtype):
    torch.manual_seed(2)
    attn = FocusedLinearAttention(32, 2, 64, kind=kind)
    q, k, v = [(torch.randn(2, 64, 32) * 300).requires_grad_() for _ in range(3)]   # activations in the hundreds
    with torch.autocast("cpu", dtype=dtype):
        y = attn.attend(q.to(dtype), k.to(dtype), v.to(dtype), (8, 8))
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().square().mean().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


# --------------------------------------------------------------------------- ablation configs
def _kinds(model):
    return [m for m in model.modules() if isinstance(m, FocusedLinearAttention)]


def _expected_layout(cfg, model):
    """The config's own ablation setting is what the built model uses."""
    la = cfg.MODEL.LA
    attns = _kinds(model)
    assert attns, "no linear attention in the model"
    for m in attns:
        assert m.kind == la.KIND
        if la.KIND == "focused":
            assert m.focused == la.FOCUSED and m.focusing_factor == la.FOCUSING_FACTOR
            assert (m.dwc is not None) == la.USE_DWC
            assert (m.positional_encoding is not None) == la.USE_PE
    if cfg.MODEL.TYPE == "flatten_swin":
        for i, stage in enumerate(model.layers):
            for blk in stage.blocks:
                assert isinstance(blk.attn, FocusedLinearAttention) == (la.ATTN_TYPE[i] == "L")
                if la.ATTN_TYPE[i] == "L":
                    res = 56 // 2 ** i
                    assert blk.window_size == min(cfg.MODEL.WINDOW_SIZE, res)


def test_every_ablation_config_is_a_table_row():
    from scripts.model_table import ABLATIONS
    rows = {r.config for r in ABLATIONS}
    assert {f"ablations/{n}" for n in ABLATION_CONFIGS} <= rows
    for r in ABLATIONS:
        assert os.path.isfile(os.path.join(ROOT, "configs", r.config + ".yaml")), r.config
    assert len(ABLATION_CONFIGS) == 24


@pytest.mark.parametrize("name", ABLATION_CONFIGS)
def test_ablation_config_builds_and_trains(name):
    path = os.path.join(ABLATION_DIR, name + ".yaml")
    cfg = config_lib.load_config(path)
    cfg = config_lib.load_config(path, SHRINK.get(cfg.MODEL.TYPE, []))
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
    from scripts.model_table import matches
    from utils.flops import count_params
    for kind, printed in (("hydra", "5.7"), ("efficient", "5.7"), ("angular", "5.7"), ("enhanced", "5.8")):
        cfg = config_lib.load_config(os.path.join(ABLATION_DIR, f"t3_deit_t_{kind}.yaml"))
        params = count_params(models.build_model(cfg))
        assert matches(params, printed), (kind, params)


def test_model_table_ablations_prints_paper_rows(capsys):
    from scripts.model_table import main
    assert main(["--ablations", "--only", "t3_deit_t_enhanced"]) == 0
    out = capsys.readouterr().out
    assert "Table 3(a)" in out and "Enhanced Linear Attn" in out and "72.9" in out and "5.8" in out


# --------------------------------------------------------------------------- Fig. 7 plot
def test_plot_fig7_writes_png(tmp_path, capsys):
    from scripts.plot_fig7 import best_speedup, main
    results = []
    for model, fam, att, ms in [("swin_t", "swin", "softmax", 130), ("swin_s", "swin", "softmax", 250),
                                ("swin_b", "swin", "softmax", 400), ("flatten_swin_t", "swin", "flatten", 120),
                                ("flatten_swin_s", "swin", "flatten", 200), ("pvt_s", "pvt", "softmax", 100),
                                ("pvt_l", "pvt", "softmax", 250), ("flatten_pvt_s", "pvt", "flatten", 120)]:
        results.append(dict(model=model, impl="ours", family=fam, attention=att, ms_per_batch=ms * 2,
                            img_per_s=2000.0 / ms))
    results.append(dict(model="swin_t", impl="timm", family="swin", attention="softmax", ms_per_batch=250,
                        img_per_s=8.0))
    results.append(dict(model="unknown_net", impl="ours", family="x", attention="softmax", ms_per_batch=1,
                        img_per_s=1.0))
    data = dict(meta=dict(hardware="test cpu", device="cpu", batch=2, dtype="float32", img_size=224),
                results=results)
    src = tmp_path / "bench.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "fig" / "fig7.png"
    assert main([str(src), str(src), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "FLatten-Swin (ours)" in text and "skipped unknown_net" in text
    # FLatten-Swin-S (83.5 at 200 ms) vs Swin-B (83.5 at 400 ms): 2.0x, as in the paper's CPU panel
    s = best_speedup([(120, 82.1), (200, 83.5)], [(130, 81.3), (250, 83.0), (400, 83.5)])
    assert s[0] == pytest.approx(2.0)


# --------------------------------------------------------------------------- attention maps and rank
@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory):
    from PIL import Image
    path = tmp_path_factory.mktemp("img") / "img.png"
    y, x = np.mgrid[0:70, 0:90]
    Image.fromarray(np.stack([x * 2, y * 3, (x + y)], -1).astype("uint8")).save(path)
    return str(path)


def test_visualize_attention_writes_png(tmp_path, tiny_image, capsys):
    from scripts.visualize_attention import main
    out, npz = tmp_path / "att.png", tmp_path / "att.npz"
    assert main(["--cfg"] + TINY_DEIT[:1] + ["--image", tiny_image, "--block", "1", "--query", "2,3",
                 "--out", str(out), "--npz", str(npz)] + TINY_DEIT[1:]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = np.load(npz)
    assert set(maps.files) == {"softmax", "linear", "focused", "focused_plus_dwc"}
    for name in maps.files:
        assert maps[name].shape == (6, 6) and (maps[name] >= 0).all()
    # softmax and the normalised linear attentions: weights of the grid keys sum to at most 1
    for name in ("softmax", "linear", "focused"):
        assert 0.5 < maps[name].sum() <= 1.0 + 1e-5
    with pytest.raises(SystemExit):
        main(["--cfg"] + TINY_DEIT[:1] + ["--query", "9,9", "--out", str(out)] + TINY_DEIT[1:])


def test_attention_rank_dwc_raises_rank(tmp_path, capsys):
    from scripts.attention_rank import main
    out = tmp_path / "rank.json"
    assert main(["--cfg"] + TINY_DEIT[:1] + ["--json", str(out), "--channels", "3"] + TINY_DEIT[1:]) == 0
    res = json.loads(out.read_text())
    assert len(res["blocks"]) == 2
    for b in res["blocks"]:
        assert b["tokens"] == 36 and b["head_dim"] == 16
        assert max(b["rank_linear"]) <= 16                              # rank(A) <= d (Fig. 5 b)
        dwc = [r for per_head in b["rank_dwc"] for r in per_head]
        assert min(dwc) > max(b["rank_linear"])                          # DWC restores rank (Fig. 5 c)
    assert "rank A" in capsys.readouterr().out


# --------------------------------------------------------------------------- released-weight evaluation
def test_eval_released_dry_run_and_skips(tmp_path, capsys):
    from scripts.eval_released import main
    (tmp_path / "flatten_swin_t.pth").write_bytes(b"")
    (tmp_path / "flatten_pvt_b.pth").write_bytes(b"")                    # release name of PVT-L
    assert main(["--ckpt-dir", str(tmp_path), "--dry-run", "--nproc", "2"]) == 0
    out = capsys.readouterr().out
    assert "--cfg configs/flatten_swin_t.yaml --eval --resume" in out
    assert "configs/flatten_pvt_l.yaml" in out and "torch.distributed.run" in out
    assert "skipped (no checkpoint file):" in out and "flatten_cswin_t" in out


def test_eval_released_runs_main(tmp_path, capsys):
    """A real main.py --eval on a 4-image ImageFolder; the table compares with the published numbers."""
    from PIL import Image
    from scripts.eval_released import main
    for c in ("n01", "n02"):
        d = tmp_path / "data" / "val" / c
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 50, 3), 60 * i + 20, dtype=np.uint8)).save(d / f"{i}.JPEG")
    opts = ["DATA.IMG_SIZE", "64"]
    cfg = config_lib.load_config(os.path.join(ROOT, "configs", "flatten_pvt_v2_b0.yaml"), opts)
    torch.manual_seed(0)
    torch.save({"model": models.build_model(cfg).state_dict()}, tmp_path / "b0.pth")
    rc = main(["--ckpt", f"flatten_pvt_v2_b0={tmp_path / 'b0.pth'}", "--data-path", str(tmp_path / "data"),
               "--output", str(tmp_path / "out"), "--num-workers", "0", "--json", str(tmp_path / "r.json"),
               "--opts"] + opts)
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["images"] == 4, rows
    assert rows[0]["published_acc1"] == pytest.approx(71.098) and rows[0]["published_acc5"] == pytest.approx(90.596)
    assert rc == 1 and rows[0]["status"].startswith("DIFF")              # random weights: far from 71.1
    assert "flatten_pvt_v2_b0" in capsys.readouterr().out


def test_plot_fig7_from_benchmark_smoke(tmp_path):
    """Issue 4: benchmark.py's smoke JSON is valid input for plot_fig7.py."""
    bench = pytest.importorskip("scripts.benchmark")
    from scripts.plot_fig7 import main
    src = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--impl", "ours", "--json", str(src)]) in (0, None)
    data = json.loads(src.read_text())
    assert data["results"] and all("ms_per_batch" in r or r.get("error") for r in data["results"])
    out = tmp_path / "fig7.png"
    assert main([str(src), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
