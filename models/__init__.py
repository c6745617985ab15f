"""FLatten models. Importing this package registers every model with timm.

``build_model(config)`` = ``timm.create_model(config.MODEL.NAME, **kwargs from config)``.
"""
from __future__ import annotations

import importlib
import logging

import timm

_logger = logging.getLogger(__name__)

# One module per family; a family whose file is missing is skipped (logged), the rest register.
_FAMILIES = ("deit", "pvt", "pvt_v2", "swin", "cswin")
for _name in _FAMILIES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:  # pragma: no cover - only while a family is being written
        if _e.name != f"{__name__}.{_name}":
            raise
        _logger.debug("model family %s not available", _name)


class ModelConfigError(ValueError):
    """The config names a model or an option the model does not have."""


def build_model(config, **overrides):
    """The model of ``config`` (a CfgNode from ``config.load_config``), on the CPU."""
    from config import model_kwargs

    name = config.MODEL.NAME
    if name not in timm.list_models("flatten_*"):
        raise ModelConfigError(f"MODEL.NAME {name!r} is not a registered FLatten model; "
                               f"known: {', '.join(timm.list_models('flatten_*'))}")
    kwargs = model_kwargs(config)
    kwargs.update(overrides)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise ModelConfigError(f"{name}: {e}") from None
