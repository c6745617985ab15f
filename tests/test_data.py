"""Data side: eval transform of SPEC section 3, layout checks, samplers, demo data, helpers."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader
from torchvision import transforms

from config import load_config
from data import build_loader, build_mixup
from data.datasets import (DataError, ExactDistributedSampler, ImageFolderDataset, SeededTrainSampler,
                           build_dataset, check_image_folder, check_same_classes, pil_rgb_loader,
                           write_demo_dataset)
from data.transforms import build_eval_transform, build_train_transform
from utils import distributed as du
from utils.logging import JsonLogger, TensorboardWriter, create_logger


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


def expected_eval(img, resize_to, crop):
    """SPEC 3, computed without torchvision: square PIL bicubic resize, numpy center crop."""
    arr = np.asarray(img.resize((resize_to, resize_to), Image.BICUBIC))
    top = int(round((resize_to - crop) / 2.0))
    arr = arr[top:top + crop, top:top + crop]
    x = arr.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(IMAGENET_DEFAULT_MEAN, np.float32)) / np.asarray(IMAGENET_DEFAULT_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


# ----------------------------------------------------------------------------- eval transform
def test_eval_transform_crop_224_matches_spec_on_non_square_image():
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


def test_eval_transform_no_crop_384_matches_spec_on_non_square_image():
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
    root = make_split(tmp_path, "val", {"cat": 1})
    bad = tmp_path / "val" / "cat" / "zz_bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    ds = build_dataset(False, root, build_eval_transform(32, True))
    loader = DataLoader(ds, batch_size=2, num_workers=1)
    with pytest.raises(DataError) as e:
        list(loader)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and msg.startswith("unreadable image")
    assert "Traceback" in e.value.worker_traceback


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
    ds = ImageFolderDataset(os.path.join(root, "train"), transform=tf)

    def epoch_batches(loader, epoch):
        loader.sampler.set_epoch(epoch)
        return [(x.clone(), y.clone()) for x, y in loader]

    def loader(workers):
        return DataLoader(ds, batch_size=4, sampler=SeededTrainSampler(ds, seed=3), drop_last=True,
                          num_workers=workers, persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(0))

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
    for ref, other in ((e1, resumed), (e1, from_workers)):
        assert len(ref) == len(other) == 2
        for (xa, ya), (xb, yb) in zip(ref, other):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)


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


# ----------------------------------------------------------------------------- build_loader
def test_build_loader_tiny_folder(tmp_path):
    make_split(tmp_path, "train", {"a": 4, "b": 4})
    make_split(tmp_path, "val", {"a": 2, "b": 1})
    c = cfg("DATA.DATA_PATH", str(tmp_path), "DATA.IMG_SIZE", 32, "DATA.BATCH_SIZE", 2,
            "DATA.NUM_WORKERS", 0, "MODEL.NUM_CLASSES", 2)
    ds_train, ds_val, lt, lv, mixup = build_loader(c)
    assert (len(ds_train), len(ds_val), len(lt), len(lv)) == (8, 3, 4, 2)
    assert mixup is not None and mixup.num_classes == 2
    lt.sampler.set_epoch(0)
    x, y = next(iter(lt))
    assert x.shape == (2, 3, 32, 32)
    mixed_x, soft_y = mixup(x, y)
    assert soft_y.shape == (2, 2)
    # Rank 1 of 2 evaluates the odd one out exactly once.
    _, _, _, lv1, _ = build_loader(c, rank=1, world_size=2)
    assert len(lv1.sampler) == 1 and len(lv.sampler) == 3


def test_build_loader_eval_only_needs_no_train(tmp_path):
    make_split(tmp_path, "val", {"a": 1, "b": 1})
    c = cfg("DATA.DATA_PATH", str(tmp_path), "DATA.IMG_SIZE", 32, "DATA.BATCH_SIZE", 3,
            "DATA.NUM_WORKERS", 0, "MODEL.NUM_CLASSES", 2)
    ds_train, ds_val, lt, lv, mixup = build_loader(c, eval_only=True)
    assert ds_train is None and lt is None and mixup is None and len(ds_val) == 2
    with pytest.raises(DataError, match="missing split"):
        build_loader(c)


def test_build_loader_user_errors(tmp_path):
    with pytest.raises(DataError, match="DATA.DATA_PATH is empty"):
        build_loader(cfg("DATA.NUM_WORKERS", 0))
    make_split(tmp_path, "train", {"a": 2, "b": 2, "c": 2})
    make_split(tmp_path, "val", {"a": 1, "b": 1, "c": 1})
    base = ["DATA.DATA_PATH", str(tmp_path), "DATA.IMG_SIZE", 32, "DATA.NUM_WORKERS", 0]
    with pytest.raises(DataError, match="3 class folders but MODEL.NUM_CLASSES is 2"):
        build_loader(cfg(*base, "DATA.BATCH_SIZE", 2, "MODEL.NUM_CLASSES", 2))
    with pytest.raises(DataError, match=r"^DATA.BATCH_SIZE=3 is odd; Mixup/CutMix needs an even per-GPU"):
        build_loader(cfg(*base, "DATA.BATCH_SIZE", 3, "MODEL.NUM_CLASSES", 3))
    # Odd batches are fine without Mixup/CutMix, and when only evaluating.
    no_mix = ["AUG.MIXUP", 0.0, "AUG.CUTMIX", 0.0]
    build_loader(cfg(*base, "DATA.BATCH_SIZE", 3, "MODEL.NUM_CLASSES", 3, *no_mix))
    build_loader(cfg(*base, "DATA.BATCH_SIZE", 3, "MODEL.NUM_CLASSES", 3), eval_only=True)


def test_build_mixup_odd_batch():
    with pytest.raises(DataError, match="DATA.BATCH_SIZE=5 is odd"):
        build_mixup(cfg("DATA.BATCH_SIZE", 5))
    assert build_mixup(cfg("DATA.BATCH_SIZE", 5, "AUG.MIXUP", 0.0, "AUG.CUTMIX", 0.0)) is None


# ----------------------------------------------------------------------------- utils
def test_distributed_helpers_without_group(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    rank, world, local, device = du.init_distributed()
    assert (rank, world, local) == (0, 1, 0) and not du.is_dist()
    assert du.get_rank() == 0 and du.get_world_size() == 1 and du.is_main_process()
    du.barrier()
    assert du.all_reduce_sum([3, 4.5]) == [3.0, 4.5]
    assert du.all_reduce_sum(7) == 7.0
    t = du.all_reduce_sum(torch.tensor([1, 2], dtype=torch.int32))
    assert t.dtype == torch.float64 and t.tolist() == [1.0, 2.0]
    du.cleanup()


def test_logging(tmp_path):
    out = str(tmp_path)
    logger = create_logger(out, rank=0)
    create_logger(out, rank=0)  # a second call must not duplicate lines
    logger.info("hello %d", 1)
    for h in logging.getLogger().handlers:
        h.flush()
    text = open(os.path.join(out, "log_rank0.txt")).read()
    assert text.count("hello 1") == 1

    JsonLogger(out, rank=0).log({"epoch": 0, "loss": torch.tensor(1.5), "acc1": np.float64(50.0)})
    JsonLogger(out, rank=1).log({"epoch": 0})
    lines = open(os.path.join(out, "log.jsonl")).read().splitlines()
    assert [json.loads(ln) for ln in lines] == [{"epoch": 0, "loss": 1.5, "acc1": 50.0}]

    tb = TensorboardWriter(os.path.join(out, "tb"), rank=0)
    tb.add_scalars({"loss": 1.0, "note": "x"}, step=0, prefix="train/")
    tb.close()
    assert not tb.enabled or os.listdir(os.path.join(out, "tb"))
    assert not TensorboardWriter(os.path.join(out, "tb1"), rank=1).enabled
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_flatten_handler", False)]:
        root.removeHandler(h)
        h.close()


def _two_rank_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.cuda.is_available = lambda: False  # this forked child tests the CPU (gloo) path
    got_rank, world, _, device = du.init_distributed()
    data = list(range(7))
    seen = [float(i in set(ExactDistributedSampler(data, world, got_rank))) for i in data]
    sums = du.all_reduce_sum(seen + [len(ExactDistributedSampler(data, world, got_rank))])
    du.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(dict(rank=got_rank, world=world, device=str(device), dist=du.is_dist(), sums=sums), f)
    du.cleanup()


def test_all_reduce_sum_two_gloo_processes(tmp_path):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children reuse the imported modules (spawn would import torch again, slowly)
    mp.start_processes(_two_rank_worker, args=(port, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    for rank in range(2):
        res = json.load(open(tmp_path / f"rank{rank}.json"))
        assert res["rank"] == rank and res["world"] == 2 and res["dist"] and res["device"] == "cpu"
        assert res["sums"] == [1.0] * 7 + [7.0]       # each image counted once; 4 + 3 images
