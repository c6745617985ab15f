"""Models for the tools: configs by name, built by this project, by timm, or from a checkpoint."""
from __future__ import annotations

import fnmatch
import glob
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .cli import ScriptError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "configs")

# Softmax baselines that timm implements itself: config name -> timm model name.
TIMM_BASELINES: Dict[str, str] = {
    "deit_t": "deit_tiny_patch16_224",
    **{f"pvt_v2_b{i}": f"pvt_v2_b{i}" for i in range(5)},
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "swin_b_384": "swin_base_patch4_window12_384",
}


def config_files() -> Dict[str, str]:
    """{config name: path} of ``configs/*.yaml`` (FLatten models) and ``configs/baselines/*.yaml``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")) +
                       glob.glob(os.path.join(CONFIG_DIR, "baselines", "*.yaml"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if not name.startswith("_"):
            out[name] = path
    return out


def config_path(name: str) -> str:
    """``configs/<name>.yaml`` for FLatten models, ``configs/baselines/<name>.yaml`` otherwise, or
    ``configs/<name>.yaml`` for a path-like name such as ``ablations/t5_swin_t_p2``."""
    if "/" in name:
        return os.path.join(CONFIG_DIR, name + ".yaml")
    sub = "" if name.startswith("flatten_") else "baselines"
    return os.path.join(CONFIG_DIR, sub, name + ".yaml")


def select_configs(patterns: Optional[Sequence[str]], known: Optional[Sequence[str]] = None) -> List[str]:
    """Config names matching ``patterns`` (names or globs, in the given order); all when empty."""
    known = list(known if known is not None else config_files())
    if not patterns:
        return known
    chosen: List[str] = []
    for pat in patterns:
        pat = os.path.splitext(os.path.basename(pat))[0]
        hits = [n for n in known if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ScriptError(f"no config matches {pat!r}; known: {', '.join(known)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def load(path_or_name: str, opts: Optional[Sequence[str]] = None):
    """The frozen config of a YAML file or a config name."""
    import config as config_lib
    path = path_or_name if path_or_name.endswith((".yaml", ".yml")) else config_path(path_or_name)
    return config_lib.load_config(path, list(opts or []))


def family_of(cfg) -> str:
    """'swin', 'pvt', 'pvt_v2', 'cswin' or 'deit'."""
    import models
    return models.family_of(cfg.MODEL.NAME)


def build(cfg, **overrides) -> nn.Module:
    """This project's model of ``cfg`` on the CPU (random initialisation)."""
    from models import build_model
    return build_model(cfg, **overrides)


def build_with_weights(cfg_file: str, opts: Optional[Sequence[str]] = None, checkpoint: Optional[str] = None,
                       seed: int = 0) -> Tuple[object, nn.Module]:
    """(config, model in eval mode) from a config, ``--opts`` overrides and optional weights.

    Without ``checkpoint`` the weights are the model's random initialisation, drawn with ``seed``.
    """
    from utils.checkpoint import load_model_state, safe_load
    cfg = load(cfg_file, opts)
    torch.manual_seed(seed)
    model = build(cfg)
    if checkpoint:
        load_model_state(model, safe_load(checkpoint), checkpoint)
    return cfg, model.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
