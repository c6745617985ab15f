"""Config -> model: the one place where the models read a config.

``build_model(config)`` = ``timm.create_model(config.MODEL.NAME, **model_kwargs(config))``
on the CPU. ``config`` is a CfgNode of ``config.load_config`` (this package
never imports the ``config`` module; it only reads the keys below).

The family of ``MODEL.NAME`` (the module it is registered from: deit, pvt,
pvt_v2, swin, cswin) decides which architecture keys apply. Architecture keys
left empty / 0 keep the registered model's value; a set key that the family
does not have is a :class:`ModelConfigError` naming the key, as is a value the
model cannot take (the constructor's :class:`ModelConfigError` is re-raised with
the config key instead of the argument). Any other exception from the
constructor is a bug and propagates unchanged.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import timm
import torch.nn as nn

from .layers.family import ModelConfigError

__all__ = ["ModelConfigError", "build_model", "model_kwargs", "family_of", "FAMILIES"]

FAMILIES = ("deit", "pvt", "pvt_v2", "swin", "cswin")

# Architecture keys (MODEL.*) -> constructor argument, per family.
_ARCH_KEYS: Dict[str, Dict[str, str]] = {
    "deit": {"EMBED_DIM": "embed_dim", "DEPTHS": "depths", "NUM_HEADS": "num_heads"},
    "pvt": {"EMBED_DIMS": "embed_dims", "DEPTHS": "depths", "NUM_HEADS": "num_heads", "SR_RATIOS": "sr_ratios"},
    "swin": {"EMBED_DIM": "embed_dim", "DEPTHS": "depths", "NUM_HEADS": "num_heads", "WINDOW_SIZE": "window_size"},
    "cswin": {"EMBED_DIM": "embed_dim", "DEPTHS": "depths", "NUM_HEADS": "num_heads", "SPLIT_SIZE": "split_size"},
}
_ARCH_KEYS["pvt_v2"] = _ARCH_KEYS["pvt"]
_ALL_ARCH_KEYS = sorted({k for keys in _ARCH_KEYS.values() for k in keys})

# Linear-attention keys (MODEL.LA.*) -> la_kwargs entries.
_LA_KEYS = {"FOCUSING_FACTOR": "focusing_factor", "KERNEL_SIZE": "kernel_size", "USE_DWC": "use_dwc",
            "FOCUSED": "focused", "KIND": "kind", "USE_PE": "use_pe"}


def family_of(name: str) -> str:
    """The family ('deit', 'pvt', 'pvt_v2', 'swin', 'cswin') of a registered FLatten model name or alias."""
    try:
        module = timm.models.model_entrypoint(name.split(".", 1)[0]).__module__
    except RuntimeError:
        raise ModelConfigError(f"{name!r} is not a registered model", "model_name", name) from None
    family = module.rsplit(".", 1)[-1]
    if not module.startswith(__package__ + ".") or family not in FAMILIES:
        raise ModelConfigError(f"{name!r} is not a FLatten model", "model_name", name)
    return family


def _kwargs_and_keys(config) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """(constructor kwargs, {argument: the config key it came from})."""
    m = config.MODEL
    la = m.LA
    family = family_of(m.NAME)
    kwargs = dict(num_classes=m.NUM_CLASSES, drop_rate=m.DROP_RATE, drop_path_rate=m.DROP_PATH_RATE,
                  img_size=config.DATA.IMG_SIZE, attn_type=la.ATTN_TYPE,
                  la_kwargs={arg: la[key] for key, arg in _LA_KEYS.items()})
    keys = dict(num_classes="MODEL.NUM_CLASSES", drop_rate="MODEL.DROP_RATE", drop_path_rate="MODEL.DROP_PATH_RATE",
                img_size="DATA.IMG_SIZE", attn_type="MODEL.LA.ATTN_TYPE", la_kwargs="MODEL.LA")
    keys.update({f"la_kwargs.{arg}": f"MODEL.LA.{key}" for key, arg in _LA_KEYS.items()})
    own = _ARCH_KEYS[family]
    for key in _ALL_ARCH_KEYS:
        value = m[key]
        if not value:
            continue                      # empty / 0: the registered value
        if key not in own:
            raise ModelConfigError(f"MODEL.{key} {_show(value)} does not apply to {m.NAME} ({family} family; its "
                                   f"keys: {', '.join('MODEL.' + k for k in own)})", key, value)
        kwargs[own[key]] = list(value) if isinstance(value, (list, tuple)) else value
        keys[own[key]] = f"MODEL.{key}"
    sr = list(la.PVT_LA_SR_RATIOS)
    if family in ("pvt", "pvt_v2"):
        kwargs["la_sr_ratios"] = sr
        keys["la_sr_ratios"] = "MODEL.LA.PVT_LA_SR_RATIOS"
    elif any(r != 1 for r in sr):
        raise ModelConfigError(f"MODEL.LA.PVT_LA_SR_RATIOS {sr} applies to PVT models only, not {m.NAME}",
                               "PVT_LA_SR_RATIOS", sr)
    split = list(la.CSWIN_LA_SPLIT_SIZE)
    if split:
        if family != "cswin":
            raise ModelConfigError(f"MODEL.LA.CSWIN_LA_SPLIT_SIZE {split} applies to CSWin models only, not "
                                   f"{m.NAME}", "CSWIN_LA_SPLIT_SIZE", split)
        kwargs["la_split_size"] = split
        keys["la_split_size"] = "MODEL.LA.CSWIN_LA_SPLIT_SIZE"
    return kwargs, keys


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(list(value) if isinstance(value, tuple) else value)


def model_kwargs(config) -> Dict[str, Any]:
    """Keyword arguments of ``timm.create_model(config.MODEL.NAME, ...)`` from a config."""
    return _kwargs_and_keys(config)[0]


def build_model(config, **overrides) -> nn.Module:
    """The model of ``config`` (a CfgNode from ``config.load_config``), on the CPU.

    ``overrides`` are constructor arguments that replace the config's (for
    example ``num_classes=``, ``dynamic_img_size=True``).

    Raises:
        ModelConfigError: an unknown MODEL.NAME, or a config value (or override) the
            model cannot take; one line that names the key and the value.
    """
    name = config.MODEL.NAME
    known = timm.list_models("flatten_*")
    if name not in known:
        raise ModelConfigError(f"MODEL.NAME {name!r} is not a registered FLatten model; known: {', '.join(known)}",
                               "MODEL.NAME", name)
    kwargs, keys = _kwargs_and_keys(config)
    kwargs.update(overrides)
    keys.update({k: f"build_model({k}=...)" for k in overrides})
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except ModelConfigError as e:
        arg = e.argument or ""
        key = keys.get(arg) or keys.get(arg.split(".", 1)[0])
        if key is None:
            raise ModelConfigError(f"{name}: {e}", e.argument, e.value) from None
        value = kwargs[arg] if arg in kwargs else e.value
        raise ModelConfigError(f"{key} {_show(value)}: {e}", key, value) from None
