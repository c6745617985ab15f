"""FLatten-DeiT specifics: class token and the DWC branch, features, S baseline, kwargs."""
import pytest
import timm
import torch

import models  # noqa: F401  (registers the models)
from models.deit import DeiTFocusedAttention

NAME = "flatten_deit_tiny_patch16_224"


def test_dwc_skips_class_token():
    torch.manual_seed(0)
    attn = DeiTFocusedAttention(192, 3, (14, 14), num_prefix_tokens=1).eval()
    assert attn.positional_encoding.shape == (1, 197, 192)     # covers the class token too
    x = torch.randn(2, 197, 192)
    with torch.no_grad():
        attn.scale.normal_()
        attn.positional_encoding.normal_(std=0.02)
        ref = attn(x)
        attn.dwc.weight.zero_()
        attn.dwc.bias.zero_()
        no_dwc = attn(x)
    torch.testing.assert_close(ref[:, 0], no_dwc[:, 0])        # class token: no local term
    assert (ref[:, 1:] - no_dwc[:, 1:]).abs().amax() > 1e-3     # patch tokens: dwc(v) added


def test_features_and_intermediates():
    model = timm.create_model(NAME, features_only=True)
    feats = model(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 14, 14)] * 3   # last 3 blocks
    assert model.feature_info.reduction() == [16, 16, 16]

    full = timm.create_model(NAME).eval()
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
    model = timm.create_model(NAME, attn_type="S")
    assert sum(p.numel() for p in model.parameters()) == 5_717_416   # DeiT-T
    assert not any("positional_encoding" in n or n.endswith("attn.scale") for n, _ in model.named_parameters())
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_arch_kwargs():
    model = timm.create_model(NAME, depths=[2], num_heads=[4], embed_dim=64, num_classes=5)
    assert len(model.blocks) == 2 and model.blocks[0].attn.num_heads == 4
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 5)
    assert model.num_prefix_tokens == 1
    with pytest.raises(ValueError):
        timm.create_model(NAME, attn_type="LL")
    with pytest.raises(TypeError):
        timm.create_model(NAME, window_size=7)


def test_224_weights_load_at_384():
    from models.layers import checkpoint_filter_fn
    small = timm.create_model(NAME)
    big = timm.create_model(NAME, img_size=384).eval()
    sd = checkpoint_filter_fn({"model": small.state_dict()}, big)
    big.load_state_dict(sd, strict=True)
    assert big.blocks[0].attn.positional_encoding.shape == (1, 1 + 24 * 24, 192)
    torch.testing.assert_close(big.pos_embed[:, 0], small.pos_embed[:, 0])   # class token kept
    with torch.no_grad():
        assert big(torch.randn(1, 3, 384, 384)).shape == (1, 1000)
