"""FLatten-DeiT specifics: class token and the DWC branch, features, the softmax baseline, kwargs."""
import pytest
import timm
import torch
import torch.nn.functional as F

import models  # noqa: F401  (registers the models)
from models.layers import ModelConfigError, checkpoint_filter_fn, create_linear_attention
from models.layers.attention import FocusedLinearAttention
from randomize import randomize

NAME = "flatten_deit_tiny_patch16_224"


def test_dwc_skips_class_token():
    """Patch tokens get dwc(v) on the 14x14 grid (per head, one shared filter bank); the class token none."""
    torch.manual_seed(0)
    attn = randomize(create_linear_attention("focused", 48, 3, (14, 14), num_prefix_tokens=1, qkv="qkv"),
                     std=0.1).eval()
    assert isinstance(attn, FocusedLinearAttention)
    assert attn.positional_encoding.shape == (1, 197, 48)                    # covers the class token too
    x = torch.randn(2, 197, 48)
    with torch.no_grad():
        q, k, v = attn.project(x, (14, 14))
        pre = attn.attend(q, k, v, (14, 14), num_prefix_tokens=1)           # before proj
        reference = attn.attend_reference(q, k, v, (14, 14), 1)              # the step-by-step path
        vh = v[:, 1:].reshape(2, 196, 3, 16).permute(0, 2, 3, 1).reshape(6, 16, 14, 14)
        conv = F.conv2d(vh, attn.dwc.weight, attn.dwc.bias, padding=2, groups=16)
        conv = conv.reshape(2, 48, 196).transpose(1, 2)                       # channel = head * 16 + i
        w = attn.attention_weights(q, k)                                      # (B, h, 197, 197)
        glob = (w @ v.reshape(2, 197, 3, 16).transpose(1, 2)).transpose(1, 2).reshape(2, 197, 48)
    torch.testing.assert_close(pre[:, 0], glob[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pre[:, 1:], glob[:, 1:] + conv, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reference, pre, rtol=1e-4, atol=1e-5)


def test_features_and_intermediates():
    model = timm.create_model(NAME, features_only=True, depth=4)
    feats = model(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 14, 14)] * 3   # last 3 blocks
    assert model.feature_info.reduction() == [16, 16, 16]

    full = timm.create_model(NAME, depth=4).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        final, inter = full.forward_intermediates(x, indices=[0, -1], norm=True)
        tokens = full.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
        ref = full.forward_features(x)
    assert final.shape == (1, 197, 192) and [t.shape[-1] for t in inter] == [14, 14]
    torch.testing.assert_close(final, ref)
    # the last NCHW map is the normed patch tokens of forward_features
    torch.testing.assert_close(inter[-1].flatten(2).transpose(1, 2), ref[:, 1:])
    assert tokens[0].shape == (1, 196, 192)


def test_softmax_baseline_is_deit_tiny():
    """The S variant has exactly timm's DeiT-Tiny parameters (an independent implementation)."""
    with torch.device("meta"):
        ours = timm.create_model("flatten_softmax_deit_t")
        reference = timm.create_model("deit_tiny_patch16_224")
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in reference.named_parameters()}
    assert not any("positional_encoding" in n or n.endswith("attn.scale") for n, _ in ours.named_parameters())


def test_arch_kwargs():
    model = timm.create_model(NAME, depths=[2], num_heads=[4], embed_dim=64, num_classes=5)
    assert len(model.blocks) == 2 and model.blocks[0].attn.num_heads == 4
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 5)
    assert model.num_prefix_tokens == 1 and model.output_fmt == "NLC"
    with pytest.raises(ModelConfigError, match="attn_type"):
        timm.create_model(NAME, attn_type="LL")
    with pytest.raises(TypeError):
        timm.create_model(NAME, window_size=7)


def test_224_weights_load_at_384():
    small = timm.create_model(NAME, depth=2)
    big = timm.create_model(NAME, img_size=384, depth=2).eval()
    sd = checkpoint_filter_fn({"model": small.state_dict()}, big)
    big.load_state_dict(sd, strict=True)
    assert big.blocks[0].attn.positional_encoding.shape == (1, 1 + 24 * 24, 192)
    torch.testing.assert_close(big.pos_embed[:, 0], small.pos_embed[:, 0])   # class token kept
    torch.testing.assert_close(big.blocks[1].attn.positional_encoding[:, 0],
                               small.blocks[1].attn.positional_encoding[:, 0])
    with torch.no_grad():
        assert big(torch.randn(1, 3, 384, 384)).shape == (1, 1000)
