"""An ImageFolder of real photos in the storage forms real collections hold (the dress rehearsal's data).

scikit-image ships a handful of photographs (no download). Each class is one
photo; its images are crops of it (random area 30-100 %, aspect 3:4 to 4:3,
random flip, a little brightness change), with the long side between 224 and
320 px, so the training crop and the evaluation resize do real work. The files
rotate through the forms an ImageNet-style folder really contains:

* JPEG: baseline, progressive, CMYK, greyscale; upper- and lower-case
  extensions (``.jpg``, ``.JPEG``, ``.JPG``, ``.jpeg``);
* PNG: RGB, RGBA (alpha), palette with a transparent colour, 16-bit greyscale;

and ``train/`` holds two files that do not decode (a JPEG cut short, an empty
file), which training replaces and counts (``DATA.MAX_BAD_FILES``).

The tree is written once (a marker file records the parameters) into a
temporary folder that is then renamed into place.
"""
from __future__ import annotations

import os
from typing import Callable, List, Tuple

import numpy as np
from PIL import Image

from .datasets import generated_dataset

__all__ = ["write_photo_dataset", "PHOTOS", "FORMS", "CORRUPT_FILES"]

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
_MARKER = "PHOTOS_COMPLETE.json"
_VERSION = 1


def _jpeg(**kw) -> Callable[[Image.Image, str], None]:
    return lambda img, path: img.save(path, "JPEG", quality=90, **kw)


def _palette(img: Image.Image, path: str) -> None:
    p = img.convert("P", palette=Image.ADAPTIVE, colors=255)
    p.save(path, "PNG", transparency=0)


def _rgba(img: Image.Image, path: str) -> None:
    a = img.convert("RGBA")
    alpha = np.full(a.size[::-1], 255, np.uint8)
    alpha[: alpha.shape[0] // 8] = 128                       # a translucent band, as in cut-out images
    a.putalpha(Image.fromarray(alpha))
    a.save(path, "PNG")


def _grey16(img: Image.Image, path: str) -> None:
    grey = np.asarray(img.convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(path, "PNG")


# (extension, what it is, writer)
FORMS: List[Tuple[str, str, Callable[[Image.Image, str], None]]] = [
    ("jpg", "baseline JPEG", lambda img, path: _jpeg()(img, path)),
    ("JPEG", "progressive JPEG", lambda img, path: _jpeg(progressive=True)(img, path)),
    ("jpeg", "CMYK JPEG", lambda img, path: _jpeg()(img.convert("CMYK"), path)),
    ("JPG", "greyscale JPEG", lambda img, path: _jpeg()(img.convert("L"), path)),
    ("png", "RGB PNG", lambda img, path: img.save(path, "PNG")),
    ("PNG", "RGBA PNG", _rgba),
    ("png", "palette PNG with transparency", _palette),
    ("png", "16-bit greyscale PNG", _grey16),
]
CORRUPT_FILES = ("zz_cut_short.jpg", "zz_empty.JPG")


def _photo(name: str) -> Image.Image:
    from skimage import data as skdata
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


def _variant(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = photo.size
    area = rng.uniform(0.3, 1.0) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    img = photo.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    long_side = int(rng.integers(224, 321))
    scale = long_side / max(img.size)
    img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BICUBIC)
    gain = rng.uniform(0.8, 1.2)
    return img.point(lambda v: min(255, int(v * gain)))


def write_photo_dataset(root: str, train_per_class: int = 21, val_per_class: int = 6, seed: int = 0) -> str:
    """Write the photo ImageFolder under ``root`` (``train/<photo>/``, ``val/<photo>/``) unless it is there.

    The defaults give 6 x 21 + 2 = 128 training files (16 steps of 8 a epoch on one process, 8 on two: every
    file, the two bad ones included, is drawn each epoch) and 36 validation images.

    Returns:
        ``root``.
    """
    params = dict(version=_VERSION, train_per_class=int(train_per_class), val_per_class=int(val_per_class),
                  seed=int(seed))

    def write(tmp: str) -> dict:
        rng = np.random.default_rng(seed)
        counts = {}
        for c, name in enumerate(PHOTOS):
            photo = _photo(name)
            for split, n in (("train", train_per_class), ("val", val_per_class)):
                folder = os.path.join(tmp, split, name)
                os.makedirs(folder, exist_ok=True)
                for i in range(n):
                    ext, _, save = FORMS[(i + c) % len(FORMS)]
                    save(_variant(photo, rng), os.path.join(folder, f"{name}_{i:03d}.{ext}"))
                counts[split] = counts.get(split, 0) + n
        # two training files that do not decode
        first = os.path.join(tmp, "train", PHOTOS[0])
        some_jpeg = next(os.path.join(first, f) for f in sorted(os.listdir(first)) if f.endswith(".jpg"))
        with open(some_jpeg, "rb") as f:
            data = f.read()
        with open(os.path.join(first, CORRUPT_FILES[0]), "wb") as f:
            f.write(data[: len(data) * 2 // 5])
        open(os.path.join(tmp, "train", PHOTOS[1], CORRUPT_FILES[1]), "wb").close()
        return dict(counts=counts, corrupt=list(CORRUPT_FILES), forms=[desc for _, desc, _ in FORMS],
                    source="skimage.data")

    return generated_dataset(root, _MARKER, params, write, "photo dataset")
