"""Transforms: the evaluation protocol of docs/model.md (section 3) and the training augmentation,
swept op by op and magnitude by magnitude on a real photo with the pinned Pillow."""
import copy
import glob
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from timm.data.auto_augment import rand_augment_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

from config import load_config
from data.transforms import augment_ops, build_eval_transform, build_train_transform, posterize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def expected_eval(img, resize_to, crop):
    """docs/model.md section 3, computed without torchvision: square PIL bicubic resize, numpy center crop."""
    arr = np.asarray(img.resize((resize_to, resize_to), Image.BICUBIC))
    top = int(round((resize_to - crop) / 2.0))
    arr = arr[top:top + crop, top:top + crop]
    x = arr.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(IMAGENET_DEFAULT_MEAN, np.float32)) / np.asarray(IMAGENET_DEFAULT_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


# ----------------------------------------------------------------------------- eval transform
def test_eval_transform_crop_224_matches_protocol_on_non_square_image():
    img = random_image(300, 200, seed=1)  # wider than tall: down-sampled in x, up-sampled in y
    got = build_eval_transform(224, crop=True)(img)
    want = expected_eval(img, 256, 224)
    assert got.shape == want.shape == (3, 224, 224)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)

    # A short-side resize (aspect kept) gives other pixels: the comparison above can fail.
    short_side = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])(img)
    assert short_side.shape == want.shape
    assert (short_side - want).abs().max() > 0.1
    # So does another interpolation.
    bilinear = build_eval_transform(224, crop=True, interpolation="bilinear")(img)
    assert (bilinear - want).abs().max() > 0.1


def test_eval_transform_no_crop_384_matches_protocol_on_non_square_image():
    img = random_image(500, 330, seed=2)
    got = build_eval_transform(384, crop=False)(img)
    want = expected_eval(img, 384, 384)
    assert got.shape == (3, 384, 384)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)


def test_eval_transform_unknown_interpolation():
    with pytest.raises(ValueError, match="DATA.INTERPOLATION"):
        build_eval_transform(224, True, interpolation="cubic-ish")


def test_train_transform_shapes():
    img = random_image(40, 30)
    for size in (32, 48):
        tf = build_train_transform(size, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25,
                                   remode="pixel", recount=1, interpolation="bicubic")
        assert tf(img).shape == (3, size, size)
    tf = build_train_transform(32, color_jitter=0.0, auto_augment="none", reprob=0.0, remode="pixel",
                               recount=1, interpolation="bicubic", hflip=0.0)
    assert tf(img).shape == (3, 32, 32)


# ----------------------------------------------------------------------------- augmentation sweep
def configured_policies():
    """Every AUG.AUTO_AUGMENT of configs/ (RandAugment strings), and the non-increasing variant of the
    paper's policy, whose plain Posterize reaches 0 bits at low magnitudes."""
    found = set()
    for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True):
        if os.path.basename(path).startswith("_"):
            continue
        policy = load_config(path).AUG.AUTO_AUGMENT
        if policy and policy.lower() != "none":
            found.add(policy)
    assert "rand-m9-mstd0.5-inc1" in found
    return sorted(found | {"rand-m9-mstd0.5"})


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(skdata.astronaut()).resize((224, 224), Image.BICUBIC)


@pytest.mark.parametrize("policy", configured_policies())
def test_every_op_at_every_magnitude_runs(policy, photo):
    """Each op of the policy at magnitudes 0, 0.5, ..., 10 (the clip range of the mstd noise), both signs
    of the signed ops, through the transform ``build_train_transform`` makes."""
    tf = build_train_transform(224, auto_augment=policy)
    ops = list(augment_ops(tf))
    reference = rand_augment_transform(policy, dict(translate_const=100, img_mean=(124, 116, 104)))
    assert [op.name for op in ops] == [op.name for op in reference.ops]     # the whole policy is swept
    calls = 0
    for template in ops:
        op = copy.copy(template)
        op.prob, op.magnitude_std = 1.0, 0.0
        for magnitude in np.arange(0, 10.01, 0.5):
            op.magnitude = float(magnitude)
            for seed in range(4):   # _randomly_negate and the resample choice draw from `random`
                random.seed(seed)
                out = op(photo)
                assert isinstance(out, Image.Image) and out.size == photo.size and out.mode == "RGB", op.name
                calls += 1
    assert calls == len(ops) * 21 * 4


def test_posterize_zero_bits_is_black_as_released():
    """The released recipe's Pillow turned 0 bits into an all-black image; Pillow 13 raises instead."""
    img = Image.fromarray(skdata.coffee())
    black = posterize(img, 0)
    assert black.size == img.size and black.mode == "RGB" and not np.asarray(black).any()
    assert np.array_equal(np.asarray(posterize(img.convert("L"), -1)), np.zeros(img.size[::-1], np.uint8))
    four = np.asarray(posterize(img, 4))
    assert np.array_equal(four, np.asarray(img) & 0xF0)
    assert posterize(img, 8) is img
    with pytest.raises(ValueError):   # what the op would do without the replacement
        from PIL import ImageOps
        ImageOps.posterize(img, 0)


def test_policy_posterize_at_top_magnitude_is_black(photo):
    tf = build_train_transform(224, auto_augment="rand-m9-mstd0.5-inc1")
    op = copy.copy(next(o for o in augment_ops(tf) if o.name == "PosterizeIncreasing"))
    op.prob, op.magnitude_std, op.magnitude = 1.0, 0.0, 10.0
    assert not np.asarray(op(photo)).any()
    # and the magnitude noise reaches the top: gauss(9, 0.5) > 10 about 2% of the time, clipped to 10
    noisy = copy.copy(op)
    noisy.magnitude, noisy.magnitude_std = 9.0, 0.5
    random.seed(0)
    black = sum(not np.asarray(noisy(photo.resize((16, 16)))).any() for _ in range(2000))
    assert 10 <= black <= 100
