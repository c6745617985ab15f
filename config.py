"""YACS configuration: defaults, YAML files with ``BASE:`` inheritance, ``--opts`` overrides.

``load_config(path, opts)`` and ``get_config(args)`` return a frozen CfgNode:
the config as the user gave it (this is what a run saves as ``config.yaml``,
and that file works as ``--cfg``). Unknown keys (in a file or in ``opts``) are
an error that names the key. Derived values (the LRs scaled with the global
batch) are set in one place, :func:`finalize`, called by ``main.py`` once the
world size is known; :func:`derived_values` lists them for the run record.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import yaml
from yacs.config import CfgNode as CN


class ConfigError(ValueError):
    """A user error in a config file or override (one line, names the culprit)."""


_C = CN()
_C.BASE = [""]                            # YAML files this one inherits from (relative to this file)
_C.NAME = ""                              # run name: outputs go to OUTPUT/NAME/TAG ('' = the --cfg file's stem)

# ----------------------------------------------------------------------------- data
_C.DATA = CN()
_C.DATA.BATCH_SIZE = 128                  # images per process per optimizer micro-step
_C.DATA.DATA_PATH = ""                    # ImageFolder root holding train/ and val/
_C.DATA.DATASET = "imagenet"              # 'imagenet' (ImageFolder layout) or 'demo' (generated digits)
_C.DATA.IMG_SIZE = 224                    # input resolution (square)
_C.DATA.INTERPOLATION = "bicubic"         # resize interpolation for train and eval
_C.DATA.PIN_MEMORY = True                 # pin host memory in the loaders
_C.DATA.NUM_WORKERS = 8                   # loader worker processes per rank
_C.DATA.PERSISTENT_WORKERS = True         # keep workers alive between epochs
_C.DATA.WORKER_START_METHOD = "forkserver"  # how workers start: forkserver | spawn | fork (fork can deadlock)
_C.DATA.MAX_BAD_FILES = 10                # unreadable training images replaced per epoch (all ranks) before stopping

# ----------------------------------------------------------------------------- model
_C.MODEL = CN()
_C.MODEL.NAME = "flatten_swin_tiny_patch4_224"  # registered timm model name (sets the family and the size defaults)
_C.MODEL.PRETRAINED = ""                  # weights to start from (e.g. 224 weights for 384 fine-tuning)
_C.MODEL.RESUME = ""                      # checkpoint to resume training or to evaluate
_C.MODEL.NUM_CLASSES = None               # classifier outputs; null (or 0) = one per class folder, 1000 for ImageNet wnids
_C.MODEL.DROP_RATE = 0.0                  # dropout rate, placed as in each official family (head / embeddings / projections)
_C.MODEL.DROP_PATH_RATE = 0.1             # stochastic depth, linearly increasing over blocks
_C.MODEL.LABEL_SMOOTHING = 0.1            # label smoothing when Mixup/CutMix is off
# Architecture overrides; empty / 0 keeps the registered model's value.
_C.MODEL.EMBED_DIM = 0                    # Swin/CSWin/DeiT base width
_C.MODEL.EMBED_DIMS = []                  # PVT/PVTv2 per-stage widths
_C.MODEL.DEPTHS = []                      # blocks per stage (DeiT: [depth])
_C.MODEL.NUM_HEADS = []                   # heads per stage
_C.MODEL.WINDOW_SIZE = 0                  # Swin: window of the L stages (56 = global at 224)
_C.MODEL.SPLIT_SIZE = []                  # CSWin: stripe widths of the S stages
_C.MODEL.SR_RATIOS = []                   # PVT/PVTv2: key reduction of the S stages

# Focused linear attention (paper section 4, Tables 4-7).
_C.MODEL.LA = CN()
_C.MODEL.LA.ATTN_TYPE = "LLSS"            # per stage: L = focused linear attention, S = the family's softmax attention
_C.MODEL.LA.FOCUSING_FACTOR = 3.0         # p of the focused function (Table 5)
_C.MODEL.LA.KERNEL_SIZE = 5               # DWC kernel size (Table 4)
_C.MODEL.LA.USE_DWC = True                # depthwise conv branch on v (Table 4)
_C.MODEL.LA.USE_PE = True                 # positional_encoding on the keys (Table 4 drops it with DWC)
_C.MODEL.LA.FOCUSED = True                # focused function on (False = vanilla ReLU linear attention)
_C.MODEL.LA.KIND = "focused"              # L-stage attention: focused | hydra | efficient | angular | enhanced (Table 3)
_C.MODEL.LA.PVT_LA_SR_RATIOS = [1, 1, 1, 1]  # PVT/PVTv2: key reduction of the L stages, one int per stage
_C.MODEL.LA.CSWIN_LA_SPLIT_SIZE = []      # CSWin: L-stage window per stage, e.g. [56, 28, 14, 7] ([] = stage grid)

# ----------------------------------------------------------------------------- training
_C.TRAIN = CN()
_C.TRAIN.EPOCHS = 300                     # total epochs, cool-down included
_C.TRAIN.WARMUP_EPOCHS = 20               # linear warm-up epochs
_C.TRAIN.COOLDOWN_EPOCHS = 0              # epochs at MIN_LR after the cosine decay
_C.TRAIN.WEIGHT_DECAY = 0.05              # AdamW weight decay (not on 1-d params, biases, the release's skip list)
_C.TRAIN.WEIGHT_DECAY_GROUPS = "released" # released | exempt_position (also no decay on scale / positional encodings)
_C.TRAIN.BASE_LR = 5e-4                   # LR per 512 images of global batch
_C.TRAIN.WARMUP_LR = 5e-7                 # warm-up start LR per 512 images
_C.TRAIN.MIN_LR = 5e-6                    # final LR per 512 images
_C.TRAIN.CLIP_GRAD = 5.0                  # gradient norm clipping; None or 0 disables
_C.TRAIN.AUTO_RESUME = True               # resume from the newest complete checkpoint in OUTPUT
_C.TRAIN.ACCUMULATION_STEPS = 1           # micro-steps per optimizer step
_C.TRAIN.USE_CHECKPOINT = False           # gradient checkpointing of blocks
_C.TRAIN.LR_SCHEDULER = CN()
_C.TRAIN.LR_SCHEDULER.NAME = "cosine"     # cosine (per-iteration, with warm-up)
_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.NAME = "adamw"         # any timm.optim name
_C.TRAIN.OPTIMIZER.EPS = 1e-8             # optimizer epsilon
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)   # Adam betas
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9         # SGD momentum
_C.TRAIN.EMA = CN()
_C.TRAIN.EMA.ENABLE = False               # keep an EMA of the weights (CSWin recipe)
_C.TRAIN.EMA.DECAY = 0.99984              # EMA decay per optimizer step

# ----------------------------------------------------------------------------- augmentation
_C.AUG = CN()
_C.AUG.COLOR_JITTER = 0.4                 # colour jitter strength (ignored with AutoAugment)
_C.AUG.AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"  # timm RandAugment policy; 'none' disables
_C.AUG.REPROB = 0.25                      # random erasing probability
_C.AUG.REMODE = "pixel"                   # random erasing mode
_C.AUG.RECOUNT = 1                        # random erasing count
_C.AUG.MIXUP = 0.8                        # mixup alpha (0 disables)
_C.AUG.CUTMIX = 1.0                       # cutmix alpha (0 disables)
_C.AUG.CUTMIX_MINMAX = None               # cutmix min/max ratio (overrides alpha)
_C.AUG.MIXUP_PROB = 1.0                   # probability of applying mixup or cutmix
_C.AUG.MIXUP_SWITCH_PROB = 0.5            # probability of cutmix instead of mixup
_C.AUG.MIXUP_MODE = "batch"               # 'batch', 'pair' or 'elem'

# ----------------------------------------------------------------------------- test
_C.TEST = CN()
_C.TEST.CROP = True                       # square resize to IMG_SIZE/0.875 then center crop (False: resize to IMG_SIZE)

# ----------------------------------------------------------------------------- misc
_C.AMP = True                             # automatic mixed precision (on CUDA)
_C.AMP_DTYPE = "bfloat16"                 # 'bfloat16' or 'float16' (float16 adds a loss scaler)
_C.AMP_CPU = False                        # autocast on the CPU too (CPUs with bf16/fp16 units; tests of the AMP path)
_C.COMPILE = False                        # torch.compile the model
_C.TF32 = True                            # TensorFloat-32 for float32 matmuls/convs on GPUs (faster; ~1e-3 rel.)
_C.OUTPUT = "output"                      # root of the output folders (OUTPUT/NAME/TAG)
_C.TAG = "default"                        # run tag
_C.SAVE_FREQ = 1                          # save a numbered checkpoint every SAVE_FREQ epochs
_C.SAVE_KEEP = 3                          # numbered checkpoints kept (newest); last/best/best_ema always kept
_C.PRINT_FREQ = 100                       # log every PRINT_FREQ steps
_C.SEED = 0                               # random seed (offset by rank)
_C.DETERMINISTIC = False                  # deterministic algorithms (slower; for exact resume tests)
_C.WATCHDOG_TIMEOUT = 1800                # seconds without progress (batch, step, collective) before an error; 0 = off
_C.EVAL_MODE = False                      # evaluate only
_C.THROUGHPUT_MODE = False                # measure throughput only


def get_defaults() -> CN:
    return _C.clone()


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "r") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _merge_file(cfg: CN, path: str, seen: tuple = ()) -> None:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config file {path} inherits from itself through BASE")
    data = _read_yaml(path)
    for base in data.get("BASE", [""]) or [""]:
        if base:
            _merge_file(cfg, os.path.join(os.path.dirname(path), base), seen + (path,))
    data.pop("BASE", None)
    try:
        cfg.merge_from_other_cfg(CN(data))
    except KeyError as e:
        raise ConfigError(f"config file {path}: {_key_message(e)}") from None
    except ValueError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def _key_message(e: KeyError) -> str:
    msg = str(e.args[0]) if e.args else str(e)
    for prefix in ("Non-existent config key:", "Non-existent key:"):
        if msg.startswith(prefix):
            return "unknown key " + msg.split(":", 1)[1].strip()
    return msg


def _merge_opts(cfg: CN, opts: Iterable[str]) -> None:
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"--opts needs KEY VALUE pairs, got an odd number of items: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (AssertionError, KeyError) as e:
        raise ConfigError(f"--opts: {_key_message(e)}") from None
    except ValueError as e:
        raise ConfigError(f"--opts: {e}") from None


def validate(cfg: CN) -> None:
    """Checks that need more than the type of a value."""
    attn = cfg.MODEL.LA.ATTN_TYPE
    if not attn or any(c not in "LS" for c in attn):
        raise ConfigError(f"MODEL.LA.ATTN_TYPE must be a string of L and S per stage, got {attn!r}")
    if cfg.AMP_DTYPE not in ("bfloat16", "float16"):
        raise ConfigError(f"AMP_DTYPE must be 'bfloat16' or 'float16', got {cfg.AMP_DTYPE!r}")
    if cfg.DATA.BATCH_SIZE < 1:
        raise ConfigError(f"DATA.BATCH_SIZE must be >= 1, got {cfg.DATA.BATCH_SIZE}")
    if cfg.TRAIN.ACCUMULATION_STEPS < 1:
        raise ConfigError(f"TRAIN.ACCUMULATION_STEPS must be >= 1, got {cfg.TRAIN.ACCUMULATION_STEPS}")
    choices = {"TRAIN.WEIGHT_DECAY_GROUPS": (cfg.TRAIN.WEIGHT_DECAY_GROUPS, ("released", "exempt_position")),
               "DATA.WORKER_START_METHOD": (cfg.DATA.WORKER_START_METHOD, ("forkserver", "spawn", "fork")),
               "TRAIN.LR_SCHEDULER.NAME": (cfg.TRAIN.LR_SCHEDULER.NAME, ("cosine",))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    n = cfg.MODEL.NUM_CLASSES
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ConfigError(f"MODEL.NUM_CLASSES must be a number of classes or null (one per class folder), got {n!r}")
    for key, value in (("DATA.NUM_WORKERS", cfg.DATA.NUM_WORKERS),
                       ("DATA.MAX_BAD_FILES", cfg.DATA.MAX_BAD_FILES), ("SAVE_KEEP", cfg.SAVE_KEEP),
                       ("WATCHDOG_TIMEOUT", cfg.WATCHDOG_TIMEOUT), ("TRAIN.EPOCHS", cfg.TRAIN.EPOCHS)):
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if cfg.SAVE_FREQ < 1:
        raise ConfigError(f"SAVE_FREQ must be >= 1, got {cfg.SAVE_FREQ}")
    for key, value in (("NAME", cfg.NAME), ("TAG", cfg.TAG)):
        if value and (os.sep in value or value in (".", "..")):
            raise ConfigError(f"{key} must be a plain folder name, got {value!r}")


def load_config(cfg_file: Optional[str] = None, opts: Optional[Iterable[str]] = None,
                freeze: bool = True) -> CN:
    """Defaults <- ``cfg_file`` (with its BASE chain) <- ``opts``; validated, frozen."""
    cfg = get_defaults()
    cfg.defrost()
    if cfg_file:
        _merge_file(cfg, cfg_file)
    _merge_opts(cfg, opts)
    validate(cfg)
    if freeze:
        cfg.freeze()
    return cfg


# Command-line flags that override config keys (Swin style).
_ARG_TO_KEY = {
    "batch_size": "DATA.BATCH_SIZE",
    "data_path": "DATA.DATA_PATH",
    "dataset": "DATA.DATASET",
    "num_workers": "DATA.NUM_WORKERS",
    "pretrained": "MODEL.PRETRAINED",
    "resume": "MODEL.RESUME",
    "accumulation_steps": "TRAIN.ACCUMULATION_STEPS",
    "use_checkpoint": "TRAIN.USE_CHECKPOINT",
    "amp_dtype": "AMP_DTYPE",
    "output": "OUTPUT",
    "tag": "TAG",
    "seed": "SEED",
    "epochs": "TRAIN.EPOCHS",
    "num_classes": "MODEL.NUM_CLASSES",
}


def get_config(args) -> CN:
    """Config from argparse ``args`` (``cfg``, ``opts`` and the flags in ``_ARG_TO_KEY``).

    ``NAME``, when empty, becomes the stem of the ``--cfg`` file (else ``MODEL.NAME``),
    so the saved ``config.yaml`` names its own run.
    """
    cfg = load_config(getattr(args, "cfg", None), getattr(args, "opts", None), freeze=False)
    overrides = []
    for arg, key in _ARG_TO_KEY.items():
        value = getattr(args, arg, None)
        if value is not None and value is not False:
            overrides += [key, value]
    for k, v in zip(overrides[::2], overrides[1::2]):
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    if getattr(args, "disable_amp", False):
        cfg.AMP = False
    if getattr(args, "compile", False):
        cfg.COMPILE = True
    if getattr(args, "deterministic", False):
        cfg.DETERMINISTIC = True
    if getattr(args, "eval", False):
        cfg.EVAL_MODE = True
    if getattr(args, "throughput", False):
        cfg.THROUGHPUT_MODE = True
    if not cfg.NAME:
        cfg_file = getattr(args, "cfg", None)
        cfg.NAME = os.path.splitext(os.path.basename(cfg_file))[0] if cfg_file else cfg.MODEL.NAME
    validate(cfg)
    cfg.freeze()
    return cfg


def finalize(cfg: CN, world_size: int) -> CN:
    """The config the code runs with: derived values set, once ``main.py`` knows the world size.

    ``TRAIN.BASE_LR``, ``WARMUP_LR`` and ``MIN_LR`` are scaled linearly with the
    global batch: ``lr * DATA.BATCH_SIZE * world_size * TRAIN.ACCUMULATION_STEPS / 512``
    (docs/model.md, section 4). Returns a new frozen node; ``cfg`` (the config as
    given, saved as ``config.yaml``) is left as it is.
    """
    out = cfg.clone()
    out.defrost()
    scale = cfg.DATA.BATCH_SIZE * world_size * cfg.TRAIN.ACCUMULATION_STEPS / 512.0
    out.TRAIN.BASE_LR = cfg.TRAIN.BASE_LR * scale
    out.TRAIN.WARMUP_LR = cfg.TRAIN.WARMUP_LR * scale
    out.TRAIN.MIN_LR = cfg.TRAIN.MIN_LR * scale
    out.freeze()
    return out


def derived_values(cfg: CN, world_size: int) -> dict:
    """The values :func:`finalize` derives, for the run record beside ``config.yaml``."""
    eff = finalize(cfg, world_size)
    return dict(world_size=world_size,
                global_batch=cfg.DATA.BATCH_SIZE * world_size * cfg.TRAIN.ACCUMULATION_STEPS,
                lr=eff.TRAIN.BASE_LR, warmup_lr=eff.TRAIN.WARMUP_LR, min_lr=eff.TRAIN.MIN_LR)
