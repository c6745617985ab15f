"""FLatten models. Importing this package registers every model with timm.

* ``build_model(config, **overrides)``: the model of a config (``models/build.py``);
* ``timm.create_model(name)``: any registered name, e.g. ``flatten_swin_tiny_patch4_224``
  or its config name ``flatten_swin_t``, softmax baselines as ``flatten_softmax_swin_t``;
  ``pretrained=True`` on the ``.in1k`` tags loads the released checkpoints;
* ``models/released.py``: the table of the paper's models and released checkpoints.
"""
from . import cswin, deit, pvt, pvt_v2, swin  # noqa: F401  (registers the models with timm)
from .build import FAMILIES, build_model, family_of, model_kwargs
from .layers.family import InputSizeError, ModelConfigError

__all__ = ["build_model", "model_kwargs", "family_of", "FAMILIES", "ModelConfigError", "InputSizeError"]
