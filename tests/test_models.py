"""Behaviour every family shares: gradient checkpointing, weight-decay groups, any input size
(resampling as on checkpoint load, ``set_input_size``), the positional-encoding cache.

The contract timm asks of a model is in test_timm_contract.py; released layouts and
logits in test_released.py.
"""
import pytest
import timm
import torch
from timm.models import group_parameters
from timm.optim import param_groups_weight_decay

import models
from models.layers import family
from models.layers.attention import FocusedLinearAttention
from models.layers.weights import checkpoint_filter_fn
from randomize import randomize
from tiny import REPRESENTATIVES, tiny_kwargs

FLATTEN = [n for n in REPRESENTATIVES if "softmax" not in n]
BLOCK_CLASSES = ("FLattenSwinBlock", "PvtBlock", "CSWinBlock", "Block")


def tiny(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **{**tiny_kwargs(name), "drop_path_rate": 0.0, **kwargs})


def blocks_of(model):
    return [m for m in model.modules() if type(m).__name__ in BLOCK_CLASSES]


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_gradient_checkpointing_runs_and_matches(name, monkeypatch):
    """With gradients recorded, every block is checkpointed (run again in backward); same outputs and grads."""
    size = 48 if models.family_of(name) == "deit" else 64
    model = tiny(name, num_classes=5, img_size=size).train()
    x = torch.randn(2, 3, size, size)
    calls, ckpts = [], []
    # Count block forwards (module hooks do not fire in the backward's recomputation, forward does).
    for cls in {type(b) for b in blocks_of(model)}:
        def counting(self, *args, _forward=cls.forward):
            calls.append(self)
            return _forward(self, *args)
        monkeypatch.setattr(cls, "forward", counting)
    checkpoint = family.checkpoint
    monkeypatch.setattr(family, "checkpoint", lambda *a, **k: ckpts.append(1) or checkpoint(*a, **k))
    n_blocks = len(blocks_of(model))

    def run():
        model.zero_grad()
        calls.clear()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_ref, grads_ref = run()
    assert len(calls) == n_blocks and not ckpts
    model.set_grad_checkpointing(True)
    out_ck, grads_ck = run()
    assert len(ckpts) == n_blocks and len(calls) == 2 * n_blocks        # forward + recompute in backward
    torch.testing.assert_close(out_ck, out_ref, rtol=0, atol=0)
    for n, g in grads_ref.items():
        torch.testing.assert_close(grads_ck[n], g, rtol=1e-5, atol=1e-6, msg=n)
    # Without gradients there is nothing to save memory for: blocks run once.
    ckpts.clear()
    calls.clear()
    with torch.no_grad():
        model(x)
    assert not ckpts and len(calls) == n_blocks


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_weight_decay_and_parameter_groups(name):
    model = tiny(name)
    named = dict(model.named_parameters())
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    leaves = ("positional_encoding", "scale", "relative_position_bias_table")
    embeddings = [n for n in named if n.rsplit(".", 1)[-1] in leaves or n.startswith("pos_embed") or n == "cls_token"]
    assert all(id(named[n]) in no_decay for n in embeddings)
    if "softmax" not in name:
        assert any(n.endswith("positional_encoding") for n in embeddings)
    # group_matcher assigns every parameter to a group (layer-wise LR decay in timm).
    grouped = group_parameters(model, model.group_matcher())
    assert sorted(n for names in grouped.values() for n in names) == sorted(named)


@pytest.mark.parametrize("name", FLATTEN)
def test_any_size_resamples_like_checkpoint_load(name):
    """At another size, a dynamic model equals a model built for that size whose weights came through
    the checkpoint filter (positional encodings / position embeddings resampled bicubically), and
    ``set_input_size`` turns a fixed model into that same model."""
    kwargs = tiny_kwargs(name)
    family_name = models.family_of(name)
    size = (288, 352) if family_name in ("pvt", "pvt_v2", "deit") else (448, 448)
    built_kwargs = {}
    if family_name == "swin":      # global stages at 448 need the window to cover them; S window 7 tiles 28 / 14
        kwargs["softmax_window"] = 7
        built_kwargs["window_size"] = 112
    if family_name == "cswin":     # the stripe rule would pick 14 at 448: keep the 224 stripes
        kwargs["split_size"] = [1, 2, 7, 7]
    torch.manual_seed(0)
    dyn = randomize(timm.create_model(name, dynamic_img_size=True, num_classes=5, **kwargs), std=0.05).eval()
    built = timm.create_model(name, img_size=size, num_classes=5, **kwargs, **built_kwargs).eval()
    built.load_state_dict(checkpoint_filter_fn(dyn.state_dict(), built), strict=True)
    fixed = timm.create_model(name, num_classes=5, **kwargs).eval()
    fixed.load_state_dict(dyn.state_dict())
    fixed.set_input_size(size)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = built(x)
        torch.testing.assert_close(dyn(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fixed(x), ref, rtol=1e-5, atol=1e-5)
    assert fixed.img_size == size
    # set_input_size resampled the parameters exactly as the filter did for the built model.
    built_sd = built.state_dict()
    for k, v in fixed.state_dict().items():
        torch.testing.assert_close(v, built_sd[k], rtol=0, atol=0, msg=k)


def test_positional_encoding_cache():
    """Resampled encodings are cached per grid in eval / no-grad, refreshed after an in-place update,
    and never cached while autograd needs the graph."""
    model = tiny("flatten_pvt_v2_b0", dynamic_img_size=True).eval()
    attn = model.block1[0].attn
    assert isinstance(attn, FocusedLinearAttention)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        first = model(x)
        cached = attn.positional_encoding_at((24, 32))
        assert len(attn._pe_cache) == 1 and attn.positional_encoding_at((24, 32)) is cached
        assert attn.positional_encoding_at(attn.grid) is attn.positional_encoding       # built grid: the parameter
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)
        attn.positional_encoding.add_(0.5)                                                # optimizer-like step
        assert attn.positional_encoding_at((24, 32)) is not cached
        assert not torch.equal(model(x), first)
    model.train()
    out = model(x)
    out.sum().backward()
    assert attn.positional_encoding.grad is not None and attn.positional_encoding.grad.abs().sum() > 0
