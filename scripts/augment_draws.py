"""Draw a config's training transform many times on real photos and count the draws that fail.

    .venv/bin/python -m scripts.augment_draws --cfg configs/flatten_swin_t.yaml --draws 15000

The photos are scikit-image's bundled ones (no download). Each draw runs the
transform under RNGs seeded with ``mix_seed(seed, draw)``, exactly as a
training sample is seeded, so a failing draw can be replayed with ``--first``.
Prints the number of draws, failures by exception type, and the time per draw.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time


def photos():
    """scikit-image's colour and grey photos as RGB PIL images."""
    from PIL import Image
    from skimage import data as skdata
    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
             "camera", "moon", "page"]
    out = []
    for name in names:
        arr = getattr(skdata, name)()
        img = Image.fromarray(arr)
        out.append((name, img.convert("RGB")))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="configs/flatten_swin_t.yaml", help="config whose DATA/AUG settings are used")
    p.add_argument("--draws", type=int, default=15000)
    p.add_argument("--first", type=int, default=0, help="index of the first draw")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from config import load_config
    from data.datasets import _seeded_rngs, mix_seed
    from data.transforms import build_train_transform

    cfg = load_config(args.cfg)
    aug, data = cfg.AUG, cfg.DATA
    tf = build_train_transform(data.IMG_SIZE, color_jitter=aug.COLOR_JITTER, auto_augment=aug.AUTO_AUGMENT,
                               reprob=aug.REPROB, remode=aug.REMODE, recount=aug.RECOUNT,
                               interpolation=data.INTERPOLATION)
    images = photos()
    failures = collections.Counter()
    examples = {}
    start = time.perf_counter()
    for d in range(args.first, args.first + args.draws):
        name, img = images[d % len(images)]
        try:
            with _seeded_rngs(mix_seed(args.seed, d)):
                tf(img)
        except Exception as e:  # counting every kind of failure is the point of this script
            key = f"{type(e).__name__}: {e}"
            failures[key] += 1
            examples.setdefault(key, (d, name))
    elapsed = time.perf_counter() - start
    total = sum(failures.values())
    print(f"{args.cfg}: {args.draws} draws of the training transform (AUTO_AUGMENT {aug.AUTO_AUGMENT}, "
          f"{data.IMG_SIZE} px) on {len(images)} photos: {total} failed; {1000 * elapsed / args.draws:.2f} ms "
          f"per draw")
    for key, n in failures.most_common():
        d, name = examples[key]
        print(f"  {n} x {key} (first: draw {d}, photo {name})")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
