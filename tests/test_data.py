"""Data side: layout checks, labels, unreadable images, samplers, loaders and workers, demo data."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from config import load_config
from data import build_loader, build_mixup
from data.datasets import (DataError, ExactDistributedSampler, ImageFolderDataset, SeededTrainSampler,
                           build_dataset, check_image_folder, check_same_classes, pil_rgb_loader,
                           resolve_classes, write_demo_dataset)
from data.transforms import build_eval_transform, build_train_transform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- helpers
def random_image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def make_split(root, split, classes=None, size=(20, 14)):
    """root/split/<class>/<i>.png with small random images; returns root."""
    classes = classes or {"cat": 3, "dog": 2}
    for c, (name, n) in enumerate(sorted(classes.items())):
        folder = os.path.join(root, split, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(n):
            random_image(*size, seed=100 * c + i).save(os.path.join(folder, f"{i}.png"))
    return str(root)


def cfg(*opts):
    return load_config(None, list(opts))


# ----------------------------------------------------------------------------- layout checks
def test_missing_data_path_and_split(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(DataError, match="does not exist") as e:
        check_image_folder(missing, "train")
    assert missing in str(e.value)
    root = make_split(tmp_path, "train")
    with pytest.raises(DataError, match="missing split") as e:
        check_image_folder(root, "val")
    assert os.path.join(root, "val") in str(e.value)
    assert "\n" not in str(e.value)


def test_empty_class_folder(tmp_path):
    root = make_split(tmp_path, "train")
    empty = tmp_path / "train" / "zebra"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="empty class folder") as e:
        check_image_folder(root, "train")
    assert str(empty) in str(e.value)


def test_images_directly_in_split(tmp_path):
    split = tmp_path / "val"
    split.mkdir()
    random_image(8, 8).save(split / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="wrong layout") as e:
        check_image_folder(str(tmp_path), "val")
    assert str(split) in str(e.value) and "one folder per class" in str(e.value)


def test_no_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        check_image_folder(str(tmp_path), "train")


def test_train_val_class_lists_must_match(tmp_path):
    make_split(tmp_path, "train", {"cat": 1, "dog": 1})
    make_split(tmp_path, "val", {"cat": 1, "emu": 1})
    with pytest.raises(DataError, match="only in train: dog; only in val: emu"):
        check_same_classes(str(tmp_path))
    make_split(tmp_path, "val", {"dog": 1})
    with pytest.raises(DataError, match="only in val: emu"):
        check_same_classes(str(tmp_path))


def test_good_folder(tmp_path):
    root = make_split(tmp_path, "train", {"b": 1, "a": 2})
    assert check_image_folder(root, "train") == ["a", "b"]
    ds = build_dataset(True, root, build_eval_transform(32, True))
    assert len(ds) == 3 and ds.classes == ["a", "b"]
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == 0


# ----------------------------------------------------------------------------- unreadable images
@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_names_the_file(tmp_path, kind):
    root = make_split(tmp_path, "val", {"cat": 1})
    bad = tmp_path / "val" / "cat" / "zz_bad.png"
    if kind == "garbage":
        bad.write_bytes(b"this is not a png")
    else:
        good = (tmp_path / "val" / "cat" / "0.png").read_bytes()
        bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as e:
        pil_rgb_loader(str(bad))
    assert str(bad) in str(e.value) and "unreadable image" in str(e.value)

    ds = build_dataset(False, root, build_eval_transform(32, True))
    with pytest.raises(DataError) as e:
        ds[1]
    assert str(bad) in str(e.value)


def test_corrupt_image_in_worker_is_one_line_data_error(tmp_path):
    from data import _worker_context
    root = make_split(tmp_path, "val", {"cat": 1})
    bad = tmp_path / "val" / "cat" / "zz_bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    ds = build_dataset(False, root, build_eval_transform(32, True))
    loader = DataLoader(ds, batch_size=2, num_workers=1, multiprocessing_context=_worker_context("forkserver"))
    with pytest.raises(DataError) as e:
        list(loader)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and msg.startswith("unreadable image")
    assert "Traceback" in e.value.worker_traceback


def _with_bad_training_file(tmp_path, kind="garbage"):
    root = make_split(tmp_path, "train", {"cat": 3, "dog": 3})
    bad = tmp_path / "train" / "cat" / "1.png"
    if kind == "garbage":
        bad.write_bytes(b"not an image")
    else:
        good = bad.read_bytes()
        bad.write_bytes(good[: len(good) // 2])
    return root, str(bad)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_unreadable_training_image_is_replaced_deterministically(tmp_path, kind):
    root, bad = _with_bad_training_file(tmp_path, kind)
    ds = build_dataset(True, root, build_eval_transform(16, True))
    index = [p for p, _ in ds.samples].index(bad)
    x1, y1, note1 = ds[(index, 12345)]
    x2, y2, note2 = ds[(index, 12345)]
    assert torch.equal(x1, x2) and y1 == y2 and note1 == note2            # the same replacement every time
    assert note1.startswith(bad + ": ") and "\n" not in note1
    _, _, note3 = ds[(index, 777)]
    assert note3.startswith(bad)
    x0, y0, note0 = ds[(0, 12345)]
    assert note0 == ""                                                    # a good file: nothing to report
    with pytest.raises(DataError, match="unreadable image " + bad):      # evaluation never replaces
        ds[index]
    strict = ImageFolderDataset(os.path.join(root, "train"), build_eval_transform(16, True))
    with pytest.raises(DataError):
        strict[(index, 12345)]


def test_all_training_images_unreadable_gives_up(tmp_path):
    root = make_split(tmp_path, "train", {"cat": 1})
    (tmp_path / "train" / "cat" / "0.png").write_bytes(b"nope")
    ds = build_dataset(True, root, None)
    with pytest.raises(DataError, match="16 unreadable training images in a row"):
        ds[(0, 1)]


def test_storage_forms_load_as_rgb(tmp_path):
    img = random_image(12, 10, seed=3)
    forms = {
        "cmyk.jpg": lambda p: img.convert("CMYK").save(p, "JPEG"),
        "grey.JPEG": lambda p: img.convert("L").save(p, "JPEG"),
        "progressive.jpeg": lambda p: img.save(p, "JPEG", progressive=True),
        "rgba.PNG": lambda p: img.convert("RGBA").save(p),
        "palette.png": lambda p: img.convert("P", palette=Image.ADAPTIVE).save(p, transparency=0),
        "grey16.png": lambda p: Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 257)).save(p),
    }
    import warnings
    for name, write in forms.items():
        path = str(tmp_path / name)
        write(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")               # no conversion warnings from Pillow either
            out = pil_rgb_loader(path)
        assert out.mode == "RGB" and out.size == (12, 10), name


# ----------------------------------------------------------------------------- labels
def test_resolve_classes_rules():
    info = resolve_classes(["cat", "dog", "emu"], None, "/d/train")
    assert (info.num_classes, info.order, info.note) == (3, "folders", None)
    assert info.class_to_idx == {"cat": 0, "dog": 1, "emu": 2}
    assert resolve_classes(["cat", "dog", "emu"], 0, "/d/train").num_classes == 3
    with pytest.raises(DataError, match=r"^/d/train has 3 class folders but MODEL.NUM_CLASSES is 2; "
                                        r"use --num-classes 3"):
        resolve_classes(["cat", "dog", "emu"], 2, "/d/train")
    larger = resolve_classes(["cat", "dog", "emu"], 5, "/d/train")
    assert larger.num_classes == 5 and "2 outputs will never be a target" in larger.note

    wnids = ["n01440764", "n01443537", "n02123045"]         # tench, goldfish, tabby cat
    auto = resolve_classes(wnids, None, "/d/val")
    assert (auto.num_classes, auto.order) == (1000, "imagenet")
    assert auto.class_to_idx == {"n01440764": 0, "n01443537": 1, "n02123045": 281}
    assert "--num-classes 3" in auto.note
    explicit = resolve_classes(wnids, 1000, "/d/val")
    assert explicit.class_to_idx == auto.class_to_idx and explicit.note is None
    small = resolve_classes(wnids, 3, "/d/val")            # a 3-way head: folder order
    assert small.order == "folders" and small.class_to_idx["n02123045"] == 2
    unknown = resolve_classes(["n01440764", "n99999999"], None, "/d/val")   # not all ImageNet-1k wnids
    assert unknown.order == "folders" and unknown.num_classes == 2


def test_imagenet_subset_evaluates_with_imagenet_labels(tmp_path):
    root = make_split(tmp_path, "val", {"n02123045": 2, "n01440764": 1})
    bundle = build_loader(cfg("DATA.DATA_PATH", root, "DATA.IMG_SIZE", 16, "DATA.BATCH_SIZE", 4,
                              "DATA.NUM_WORKERS", 0), eval_only=True)
    assert bundle.num_classes == 1000 and bundle.label_order == "imagenet"
    _, targets = next(iter(bundle.loader_val))
    assert sorted(targets.tolist()) == [0, 281, 281]


# ----------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("n,replicas", [(7, 2), (7, 3), (2, 3), (0, 2)])
def test_exact_sampler_covers_each_index_once(n, replicas):
    data = list(range(n))
    parts = [list(ExactDistributedSampler(data, replicas, r)) for r in range(replicas)]
    assert sorted(i for p in parts for i in p) == data
    lengths = [len(ExactDistributedSampler(data, replicas, r)) for r in range(replicas)]
    assert lengths == [len(p) for p in parts]
    if (n, replicas) == (7, 2):
        assert parts == [[0, 2, 4, 6], [1, 3, 5]]


def test_train_order_and_augmentation_depend_only_on_seed_and_epoch(tmp_path):
    root = make_split(tmp_path, "train", {"a": 4, "b": 4}, size=(24, 24))
    tf = build_train_transform(16, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5,
                               remode="pixel", recount=1, interpolation="bicubic")
    ds = ImageFolderDataset(os.path.join(root, "train"), transform=tf, replace_bad=True)

    def epoch_batches(loader, epoch, start=0):
        loader.sampler.set_epoch(epoch, start=start)
        return [(x.clone(), y.clone()) for x, y, bad in loader]

    def loader(workers):
        from data import _worker_context
        extra = dict(multiprocessing_context=_worker_context("forkserver")) if workers else {}
        return DataLoader(ds, batch_size=2, sampler=SeededTrainSampler(ds, seed=3), drop_last=True,
                          num_workers=workers, persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(0), **extra)

    rng_before = torch.get_rng_state()
    single = loader(0)
    e0 = epoch_batches(single, 0)
    e1 = epoch_batches(single, 1)
    # The caller's RNG is left alone by loading and augmenting in the main process.
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(e0, e1))

    resumed = epoch_batches(loader(0), 1)             # a fresh run starting at epoch 1
    workers = loader(2)                              # persistent workers, after epoch 0
    epoch_batches(workers, 0)
    from_workers = epoch_batches(workers, 1)
    skipped = epoch_batches(workers, 1, start=4)     # resumed after 2 batches, same persistent workers
    for ref, other in ((e1, resumed), (e1, from_workers), (e1[2:], skipped)):
        assert len(ref) == len(other) and len(other) in (2, 4)
        for (xa, ya), (xb, yb) in zip(ref, other):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_loader_workers_ignore_stop_signals(tmp_path):
    """SIGTERM / SIGINT sent to a whole process group must not kill the rank's loader workers."""
    root = make_split(tmp_path, "val", {"a": 6, "b": 6})
    c = cfg("DATA.DATA_PATH", root, "DATA.IMG_SIZE", 16, "DATA.BATCH_SIZE", 2, "DATA.NUM_WORKERS", 2)
    loader = build_loader(c, eval_only=True).loader_val
    it = iter(loader)
    first = [next(it), next(it)]       # one batch from each worker: both have run their init
    pids = [w.pid for w in it._workers]
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
    rest = list(it)
    assert len(rest) == 4 and first[0][0].shape == (2, 3, 16, 16)
    assert all(w.is_alive() for w in it._workers)
    assert loader.multiprocessing_context.get_start_method() == "forkserver"


def test_seeded_sampler_shards_like_distributed_sampler(tmp_path):
    data = list(range(9))
    parts = [[i for i, _ in SeededTrainSampler(data, num_replicas=2, rank=r, seed=5)] for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 5        # padded to a multiple of the replicas, as DDP training
    assert set(parts[0]) | set(parts[1]) == set(data)


# ----------------------------------------------------------------------------- demo data
def test_write_demo_dataset(tmp_path):
    root = str(tmp_path / "demo")
    assert write_demo_dataset(root) == root
    train, val = check_same_classes(root)[:], check_image_folder(root, "val")
    assert train == val == [str(d) for d in range(10)]
    n_train = sum(len(f) for _, _, f in os.walk(os.path.join(root, "train")))
    n_val = sum(len(f) for _, _, f in os.walk(os.path.join(root, "val")))
    assert (n_train, n_val) == (1437, 360)
    img = Image.open(os.path.join(root, "val", "3", sorted(os.listdir(os.path.join(root, "val", "3")))[0]))
    assert img.size == (32, 32) and img.mode == "RGB"

    marker = os.path.join(root, "DEMO_COMPLETE.json")
    stamp = os.stat(marker).st_mtime_ns
    assert write_demo_dataset(root) == root               # idempotent: nothing rewritten
    assert os.stat(marker).st_mtime_ns == stamp
    assert json.load(open(marker))["counts"] == {"train": 1437, "val": 360}
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []   # no temp folders left

    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(DataError, match="not a demo dataset"):
        write_demo_dataset(str(other))


def test_write_photo_dataset_small(tmp_path):
    """The rehearsal's photos: real scikit-image photos in several storage forms, two undecodable files,
    written once, and a folder the code did not write is refused, not replaced."""
    from data.photos import CORRUPT_FILES, PHOTOS, write_photo_dataset
    root = str(tmp_path / "photos")
    assert write_photo_dataset(root, train_per_class=3, val_per_class=1) == root
    assert check_same_classes(root)[:] == sorted(PHOTOS)
    names = [f for _, _, files in os.walk(os.path.join(root, "train")) for f in files]
    assert len(names) == 3 * len(PHOTOS) + len(CORRUPT_FILES) and set(CORRUPT_FILES) <= set(names)
    assert len({os.path.splitext(f)[1] for f in names}) >= 3          # several storage forms
    for name in CORRUPT_FILES:
        path = next(os.path.join(d, name) for d, _, files in os.walk(root) if name in files)
        with pytest.raises(Exception):
            Image.open(path).convert("RGB")
    marker = os.path.join(root, "PHOTOS_COMPLETE.json")
    stamp = os.stat(marker).st_mtime_ns
    write_photo_dataset(root, train_per_class=3, val_per_class=1)
    assert os.stat(marker).st_mtime_ns == stamp                      # idempotent
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a photo dataset"):
        write_photo_dataset(str(other))
    assert (other / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- build_loader
def test_build_loader_tiny_folder(tmp_path):
    make_split(tmp_path, "train", {"a": 4, "b": 4})
    make_split(tmp_path, "val", {"a": 2, "b": 1})
    c = cfg("DATA.DATA_PATH", str(tmp_path), "DATA.IMG_SIZE", 32, "DATA.BATCH_SIZE", 2, "DATA.NUM_WORKERS", 0)
    b = build_loader(c)
    assert (len(b.dataset_train), len(b.dataset_val), len(b.loader_train), len(b.loader_val)) == (8, 3, 4, 2)
    assert b.num_classes == 2 and b.notes == []                      # one output per class folder
    assert b.mixup_fn is not None and b.mixup_fn.num_classes == 2
    b.loader_train.sampler.set_epoch(0)
    x, y, bad = next(iter(b.loader_train))
    assert x.shape == (2, 3, 32, 32) and list(bad) == ["", ""]
    mixed_x, soft_y = b.mixup_fn(x, y)
    assert soft_y.shape == (2, 2)
    # Rank 1 of 2 evaluates the odd one out exactly once.
    b1 = build_loader(c, rank=1, world_size=2)
    assert len(b1.loader_val.sampler) == 1 and len(b.loader_val.sampler) == 3


def test_build_loader_eval_only_needs_no_train(tmp_path):
    make_split(tmp_path, "val", {"a": 1, "b": 1})
    c = cfg("DATA.DATA_PATH", str(tmp_path), "DATA.IMG_SIZE", 32, "DATA.BATCH_SIZE", 3,
            "DATA.NUM_WORKERS", 0, "MODEL.NUM_CLASSES", 2)
    b = build_loader(c, eval_only=True)
    assert b.dataset_train is None and b.loader_train is None and b.mixup_fn is None and len(b.dataset_val) == 2
    with pytest.raises(DataError, match="missing split"):
        build_loader(c)


def test_build_loader_user_errors(tmp_path):
    with pytest.raises(DataError, match="DATA.DATA_PATH is empty"):
        build_loader(cfg("DATA.NUM_WORKERS", 0))
    make_split(tmp_path, "train", {"a": 2, "b": 2, "c": 2})
    make_split(tmp_path, "val", {"a": 1, "b": 1, "c": 1})
    base = ["DATA.DATA_PATH", str(tmp_path), "DATA.IMG_SIZE", 32, "DATA.NUM_WORKERS", 0]
    with pytest.raises(DataError, match="has 3 class folders but MODEL.NUM_CLASSES is 2"):
        build_loader(cfg(*base, "DATA.BATCH_SIZE", 2, "MODEL.NUM_CLASSES", 2))
    with pytest.raises(DataError, match=r"^DATA.BATCH_SIZE=3 is odd; Mixup/CutMix needs an even per-GPU"):
        build_loader(cfg(*base, "DATA.BATCH_SIZE", 3, "MODEL.NUM_CLASSES", 3))
    # Odd batches are fine without Mixup/CutMix, and when only evaluating.
    no_mix = ["AUG.MIXUP", 0.0, "AUG.CUTMIX", 0.0]
    build_loader(cfg(*base, "DATA.BATCH_SIZE", 3, "MODEL.NUM_CLASSES", 3, *no_mix))
    build_loader(cfg(*base, "DATA.BATCH_SIZE", 3, "MODEL.NUM_CLASSES", 3), eval_only=True)


def test_build_mixup_odd_batch():
    with pytest.raises(DataError, match="DATA.BATCH_SIZE=5 is odd"):
        build_mixup(cfg("DATA.BATCH_SIZE", 5), 10)
    assert build_mixup(cfg("DATA.BATCH_SIZE", 5, "AUG.MIXUP", 0.0, "AUG.CUTMIX", 0.0), 10) is None


def test_exit_with_live_persistent_workers_does_not_hang(tmp_path):
    """Workers ignore SIGTERM, which Python's exit handler uses to end daemon processes before waiting for
    them: a script that leaves a loader with live workers must still exit (data.shutdown_workers runs first).
    (``fork`` here only to skip the fork server's start-up; the exit path is the same for every method.)"""
    root = make_split(tmp_path, "train", {"a": 4, "b": 4})
    make_split(tmp_path, "val", {"a": 1, "b": 1})
    script = tmp_path / "leave_workers.py"
    script.write_text(
        "import sys\n"
        "from config import load_config\n"
        "from data import build_loader\n"
        "if __name__ == '__main__':\n"
        "    cfg = load_config(None, ['DATA.DATA_PATH', sys.argv[1], 'DATA.IMG_SIZE', 16, 'DATA.BATCH_SIZE', 2,\n"
        "                             'DATA.NUM_WORKERS', 1, 'DATA.WORKER_START_METHOD', 'fork',\n"
        "                             'AUG.MIXUP', 0.0, 'AUG.CUTMIX', 0.0])\n"
        "    loader = build_loader(cfg).loader_train\n"
        "    loader.sampler.set_epoch(0)\n"
        "    batches = iter(loader)\n"
        "    next(batches)\n"
        "    print(batches._workers[0].pid, flush=True)\n")
    r = subprocess.run([sys.executable, str(script), root], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    worker = int(r.stdout.split()[0])
    assert not os.path.exists(f"/proc/{worker}") or "Z" in open(f"/proc/{worker}/status").read().split()[3]


def test_workers_end_with_a_killed_training_process(tmp_path):
    """A worker forked by the fork server has the server as parent; it still ends when the process that
    uses it is killed with SIGKILL (and the server with it), instead of lingering."""
    root = make_split(tmp_path, "val", {"a": 4, "b": 4})
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, sys\n"
        "from multiprocessing import forkserver\n"
        "from config import load_config\n"
        "from data import build_loader\n"
        "if __name__ == '__main__':\n"
        "    cfg = load_config(None, ['DATA.DATA_PATH', sys.argv[1], 'DATA.IMG_SIZE', 16, 'DATA.BATCH_SIZE', 2,\n"
        "                             'DATA.NUM_WORKERS', 1])\n"
        "    batches = iter(build_loader(cfg, eval_only=True).loader_val)\n"
        "    next(batches)\n"
        "    print(batches._workers[0].pid, forkserver._forkserver._forkserver_pid, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, str(script), root], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == -signal.SIGKILL
    worker, server = (int(p) for p in r.stdout.split())
    for pid in (worker, server):          # wait (bounded) for each to end: they are not our children
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        import select
        ready, _, _ = select.select([fd], [], [], 60)
        os.close(fd)
        assert ready, f"process {pid} outlived the killed training process"


def test_unknown_worker_start_method(tmp_path):
    make_split(tmp_path, "val", {"a": 1})
    c = cfg("DATA.DATA_PATH", str(tmp_path), "DATA.NUM_WORKERS", 1)
    c.defrost()
    c.DATA.WORKER_START_METHOD = "vfork"
    with pytest.raises(DataError, match="DATA.WORKER_START_METHOD must be one of forkserver, spawn, fork"):
        build_loader(c, eval_only=True)


