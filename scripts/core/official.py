"""The official FLatten implementation, imported from the user's checkout (never copied here).

``OfficialCode(path)`` imports ``PATH/models/flatten_<family>.py`` of a clone of
https://github.com/LeapLabTHU/FLatten-Transformer and builds its models the way
the official ``models/build.py`` does from ``PATH/cfgs/<name>.yaml``. Parameter
names are the same as ours, so :func:`load_same_weights` gives both the same
weights. Importing the official files registers timm names that this project
uses too; ours are restored right after the import.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import paper
from .cli import ScriptError

# Official code file per family (PATH/models/<file>.py); DeiT has no released code.
OFFICIAL_FILES = {"swin": "flatten_swin", "pvt": "flatten_pvt", "pvt_v2": "flatten_pvt_v2", "cswin": "flatten_cswin"}


class OfficialCode:
    """Imports and builds the official models of a checkout at ``path``."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(os.path.join(self.path, "models", "flatten_swin.py")):
            raise ScriptError(f"--official-path {path}: no official FLatten checkout there "
                              f"(expected {os.path.join(self.path, 'models', 'flatten_swin.py')})")
        self._modules: Dict[str, Any] = {}

    def module(self, family: str):
        import timm
        if family not in OFFICIAL_FILES:
            raise ScriptError(f"the official code has no {family} models")
        if family in self._modules:
            return self._modules[family]
        fname = OFFICIAL_FILES[family]
        name = f"flatten_official.{fname}"
        spec = importlib.util.spec_from_file_location(name, os.path.join(self.path, "models", f"{fname}.py"))
        mod = importlib.util.module_from_spec(spec)
        ours = {n: timm.models.model_entrypoint(n) for n in timm.list_models("flatten_*")}
        sys.modules[name] = mod  # timm's register_model looks the module up there
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                spec.loader.exec_module(mod)
        except ImportError as e:
            del sys.modules[name]
            hint = " (pip install einops)" if "einops" in str(e) else ""
            raise ScriptError(f"cannot import the official {fname}.py from {self.path}: {e}{hint}") from None
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for n, fn in ours.items():
                    if timm.models.model_entrypoint(n) is not fn:
                        timm.models.register_model(fn)
        self._modules[family] = mod
        return mod

    def read_cfg(self, name: str) -> dict:
        import yaml
        cfg_name = paper.official_name(name)
        path = os.path.join(self.path, "cfgs", f"{cfg_name}.yaml")
        if not os.path.isfile(path):
            raise ScriptError(f"the official checkout has no cfgs/{cfg_name}.yaml")
        with open(path) as f:
            return yaml.safe_load(f) or {}

    def build(self, name: str, family: str, img_size: Optional[int] = None) -> nn.Module:
        """The official model of config ``name``, built as the official build.py does."""
        mod = self.module(family)
        cfg = self.read_cfg(name)
        m, data = cfg.get("MODEL", {}), cfg.get("DATA", {})
        la = m.get("LA", {})
        common = dict(focusing_factor=la.get("FOCUSING_FACTOR", 3), kernel_size=la.get("KERNEL_SIZE", 5),
                      attn_type=la.get("ATTN_TYPE", "LLLL"), drop_path_rate=0.0)
        img = img_size or data.get("IMG_SIZE", 224)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if family == "swin":
                sw = m.get("SWIN", {})
                return mod.FLattenSwinTransformer(
                    img_size=img, embed_dim=sw.get("EMBED_DIM", 96), depths=sw.get("DEPTHS", [2, 2, 6, 2]),
                    num_heads=sw.get("NUM_HEADS", [3, 6, 12, 24]), window_size=sw.get("WINDOW_SIZE", 7), **common)
            if family in ("pvt", "pvt_v2"):
                return getattr(mod, m["TYPE"])(la_sr_ratios=str(la.get("PVT_LA_SR_RATIOS", 1111)), **common)
            return getattr(mod, m["TYPE"])(img_size=img, la_split_size=la.get("CSWIN_LA_SPLIT_SIZE", "56-28-14-7"),
                                           **common)


def load_same_weights(official: nn.Module, ours: nn.Module) -> None:
    """Copy our parameters (and persistent buffers) into the official model; names are identical."""
    missing, unexpected = official.load_state_dict(ours.state_dict(), strict=False)
    own_buffers = {n for n, _ in official.named_buffers()}
    missing = [k for k in missing if k not in own_buffers]  # index tables / masks the official code builds
    # Parts the official models carry but never use (PVT v1's final norm) are left as they are.
    unused = {k for k in missing if k.startswith("norm.")} if hasattr(official, "pos_embed1") else set()
    missing = [k for k in missing if k not in unused]
    if missing or unexpected:
        raise ScriptError(f"weights do not transfer to the official model: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")


def official_op_sequence(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         hw: Tuple[int, int]) -> torch.Tensor:
    """The official op sequence between ``qkv`` and ``proj`` (FLatten release), op for op.

    The yardstick of the op benchmark: every step is its own elementwise pass over
    (B, N, C), the power is taken of the raw features, heads are split with
    permutes, and the mean, the normaliser and the conv branch are separate kernels.
    """
    B, N, C = q.shape
    h = attn.num_heads
    p = attn.focusing_factor
    k = k + attn.positional_encoding
    q = F.relu(q) + 1e-6
    k = F.relu(k) + 1e-6
    temperature = F.softplus(attn.scale)
    q = q / temperature
    k = k / temperature
    q_norm = q.norm(dim=-1, keepdim=True)
    k_norm = k.norm(dim=-1, keepdim=True)
    q = q ** p
    k = k ** p
    q = (q / q.norm(dim=-1, keepdim=True)) * q_norm
    k = (k / k.norm(dim=-1, keepdim=True)) * k_norm
    q, k, v = (t.reshape(B, N, h, -1).permute(0, 2, 1, 3) for t in (q, k, v))   # (B, h, N, d)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k.transpose(-2, -1) * (N ** -0.5)) @ (v * (N ** -0.5))
    x = q @ kv * z
    x = x.transpose(1, 2).reshape(B, N, C)
    grid = v.reshape(B * h, hw[0], hw[1], -1).permute(0, 3, 1, 2)               # (B*h, d, H, W)
    return x + attn.dwc(grid).reshape(B, C, N).permute(0, 2, 1)
