"""timm registration glue shared by the families: pretrained cfgs and the build call.

* :func:`pretrained_cfgs` makes a family's ``default_cfgs`` entries from
  ``models/released.py``: the ``.in1k`` tag with the release's download link for
  the released checkpoints, an untagged cfg (no weights) otherwise.
* :func:`register_config_names` registers the config name of each Table 8 model
  (``flatten_swin_t`` for ``flatten_swin_tiny_patch4_224``) from the table's ``alias``.
* :func:`build_flatten_model` is every registered factory's call to timm's
  ``build_model_with_cfg``. Weights given by file or link are loaded by the
  model's ``load_pretrained`` (timm's ``custom_load``): the project's safe
  unpickler, the released-weights filter and a strict load
  (``models/layers/weights.py``). The release links end in ``/?dl=1``, a path
  without a file name, so the download cache uses ``<config name>.pth``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional
from urllib.parse import urlparse

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, register_model

from .layers.weights import checkpoint_filter_fn
from .released import TABLE8, by_timm_name

__all__ = ["pretrained_cfgs", "build_flatten_model", "register_config_names"]

PAPER = dict(paper_name="FLatten Transformer: Vision Transformer using Focused Linear Attention",
             paper_ids="arXiv:2308.00442")
ORIGIN = "https://github.com/LeapLabTHU/FLatten-Transformer"


def pretrained_cfgs(arch: str, first_conv: str, input_size: int = 224, pool_size: Optional[int] = 7,
                    **overrides) -> Dict[str, Dict[str, Any]]:
    """``{arch(.in1k): cfg}`` for ``generate_default_cfgs``; the eval protocol of docs/model.md, section 3.

    The cfg says ``fixed_input_size=True``: built without ``dynamic_img_size`` a model
    runs at ``input_size`` only.
    """
    row = by_timm_name(arch)
    cfg = dict(num_classes=1000, input_size=(3, input_size, input_size),
               pool_size=(pool_size, pool_size) if pool_size else None,
               crop_pct=0.875 if input_size == 224 else 1.0, crop_mode="squash", interpolation="bicubic",
               fixed_input_size=True, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
               first_conv=first_conv, classifier="head", custom_load=True, **PAPER)
    cfg.update(overrides)
    if row is not None and row.url:
        cfg.update(url=(row.url, row.file_name), origin_url=ORIGIN)
        return {f"{arch}.in1k": cfg}
    return {arch: cfg}


def _named_url(url, variant: str):
    """A link whose path has no file name (the release's ``.../?dl=1``) gets ``<variant>.pth``."""
    if isinstance(url, str) and not os.path.basename(urlparse(url).path):
        return url, f"{variant}.pth"
    return url


def build_flatten_model(cls, variant: str, pretrained: bool = False, feature_cfg: Optional[dict] = None,
                        **kwargs):
    """``timm.models.build_model_with_cfg`` with the project's weight loading (see the module doc)."""
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    # Files and links are released checkpoints or this project's: our loader (timm's custom_load).
    overlay.setdefault("custom_load", True)
    if "url" in overlay:
        overlay["url"] = _named_url(overlay["url"], variant)
    return build_model_with_cfg(
        cls, variant, pretrained,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg or dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs)


def register_config_names(namespace: Dict[str, Any]) -> None:
    """Register, in the family module whose ``globals()`` is ``namespace``, the config name of each of its
    Table 8 models (``models/released.py``: ``alias``) as a timm model that builds the same thing."""
    for row in TABLE8:
        target = namespace.get(row.timm_name)
        if row.alias is None or target is None:
            continue

        def entrypoint(pretrained: bool = False, _target=target, **kwargs):
            return _target(pretrained, **kwargs)
        entrypoint.__name__ = entrypoint.__qualname__ = row.alias
        entrypoint.__module__ = namespace["__name__"]
        entrypoint.__doc__ = f"Config name of :func:`{row.timm_name}`."
        namespace[row.alias] = register_model(entrypoint)
