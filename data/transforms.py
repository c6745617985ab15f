"""Image transforms.

Evaluation follows the protocol the released FLatten numbers were measured
with (docs/model.md, section 3): the *whole* image is resized to a square, so the aspect
ratio is not kept, then center-cropped. On PIL images torchvision's ``Resize``
calls ``PIL.Image.resize``, which always filters over the full source support
(antialiased); ``antialias`` only matters for tensor inputs, so the pipeline
below gives exactly the pixels of the official (Swin) data code.

Training uses timm's ``create_transform`` (RandomResizedCrop, flip,
RandAugment / colour jitter, random erasing); for tiny images (<= 32 px, the
demo) the random-resized crop is replaced by a padded random crop, as Swin's
code does for CIFAR-sized inputs.

Posterize with 0 bits. timm's RandAugment asks ``PIL.ImageOps.posterize`` for
0 bits at the top of the magnitude range (``rand-...-inc1`` at magnitude 10,
which ``mstd0.5`` noise reaches; the plain ``Posterize`` op below magnitude
2.5). The Pillow the released recipe ran on had no range check and computed
the bit mask ``~(2**8 - 1)``, which maps every value to 0: an all-black image.
Pillow 13 raises ``ValueError`` instead. :func:`posterize` keeps the released
behaviour (0 bits or fewer: all black, same size and mode) and
:func:`build_train_transform` gives every posterize op of the policy this
function, so every op runs at every magnitude with the pinned Pillow.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.auto_augment import AugmentOp, RandAugment
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from torchvision.transforms import InterpolationMode

__all__ = ["build_eval_transform", "build_train_transform", "interp_mode", "posterize", "augment_ops",
           "SMALL_IMAGE_SIZE"]

# At or below this size images are treated like CIFAR: no random-resized crop in
# training and no 256/224 crop margin in evaluation.
SMALL_IMAGE_SIZE = 32


def interp_mode(name: str) -> InterpolationMode:
    """'bicubic' -> InterpolationMode.BICUBIC, with a one-line error for unknown names."""
    try:
        return InterpolationMode(str(name).lower())
    except ValueError:
        choices = ", ".join(m.value for m in InterpolationMode)
        raise ValueError(f"unknown interpolation {name!r} (DATA.INTERPOLATION); "
                         f"choose one of {choices}") from None


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of every channel (timm's op signature).

    8 or more: the image unchanged; 0 or fewer: all black, as the released
    recipe's Pillow produced (see the module docstring).
    """
    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    if bits <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits)


def augment_ops(transform) -> Iterator[AugmentOp]:
    """Every timm ``AugmentOp`` inside ``transform`` (a Compose tree holding a RandAugment)."""
    pending = [transform]
    while pending:
        t = pending.pop()
        if isinstance(t, RandAugment):
            yield from t.ops
        elif isinstance(t, AugmentOp):
            yield t
        pending.extend(getattr(t, "transforms", None) or [])


def build_eval_transform(img_size: int, crop: bool, interpolation: str = "bicubic",
                         mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                         std: Sequence[float] = IMAGENET_DEFAULT_STD) -> transforms.Compose:
    """The evaluation transform of docs/model.md, section 3.

    Args:
        img_size: network input size (square).
        crop: ``True`` (224 models): resize the whole image to a square of
            ``int(256 / 224 * img_size)`` and center-crop ``img_size``.
            ``False`` (384 models): resize straight to ``img_size x img_size``.
            Images of at most ``SMALL_IMAGE_SIZE`` px are always resized straight
            to ``img_size`` (no crop margin), matching the padded-crop training path.
        interpolation: resize filter name ('bicubic' for every released model).
        mean, std: normalisation after ``ToTensor``.
    """
    mode = interp_mode(interpolation)
    if crop and img_size > SMALL_IMAGE_SIZE:
        size = int((256 / 224) * img_size)
        resize = [transforms.Resize((size, size), interpolation=mode), transforms.CenterCrop(img_size)]
    else:
        resize = [transforms.Resize((img_size, img_size), interpolation=mode)]
    return transforms.Compose(resize + [transforms.ToTensor(), transforms.Normalize(mean, std)])


def build_train_transform(img_size: int, color_jitter: Optional[float] = 0.4,
                          auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
                          reprob: float = 0.25, remode: str = "pixel", recount: int = 1,
                          interpolation: str = "bicubic", hflip: float = 0.5,
                          mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                          std: Sequence[float] = IMAGENET_DEFAULT_STD) -> transforms.Compose:
    """Training augmentation through timm's ``create_transform``.

    Args:
        img_size: network input size (square).
        color_jitter: jitter strength; ``None``/0 disables (timm ignores it when
            RandAugment is on).
        auto_augment: timm policy string such as ``'rand-m9-mstd0.5-inc1'``;
            ``None``, ``''`` or ``'none'`` disables.
        reprob, remode, recount: random erasing probability, mode and count.
        interpolation: filter of the random-resized crop.
        hflip: horizontal flip probability (0 for data that is not mirror-symmetric).
        mean, std: normalisation.
    """
    interp_mode(interpolation)  # fail early, with a clear message, on unknown names
    if auto_augment is not None and str(auto_augment).lower() in ("", "none"):
        auto_augment = None
    transform = create_transform(
        input_size=img_size,
        is_training=True,
        hflip=hflip,
        color_jitter=color_jitter if color_jitter else None,
        auto_augment=auto_augment,
        re_prob=reprob,
        re_mode=remode,
        re_count=recount,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )
    for op in augment_ops(transform):
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize
    if img_size <= SMALL_IMAGE_SIZE:
        # Tiny images: a random-resized crop would throw most of the image away.
        transform.transforms[0] = transforms.Compose([
            transforms.Resize((img_size, img_size), interpolation=interp_mode(interpolation)),
            transforms.RandomCrop(img_size, padding=4),
        ])
    return transform
