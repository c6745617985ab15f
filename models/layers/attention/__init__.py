"""Linear attentions of the ``L`` stages: the paper's focused attention and the Table 3 designs.

* ``base.py``: :class:`LinearAttention`, the projections and interface every kind shares;
* ``focused.py``: :class:`FocusedLinearAttention` and its math (reference and fused paths);
* ``table3.py``: Hydra, Efficient, Angular and Enhanced linear attention (paper Table 3);
* ``factory.py``: :func:`create_linear_attention`, the one place a kind becomes a class;
* ``triton_fla.py``: the Triton feature-map kernel of the fused path (CUDA).
"""
from .base import EPS, LinearAttention
from .factory import LA_KINDS, LINEAR_ATTENTIONS, checked_la_kwargs, create_linear_attention, make_la_kwargs
from .focused import (ATTENTION_IMPLS, FocusedLinearAttention, attention_impl, attention_impl_problem,
                      explicit_attention_matrix, focused_features, focusing_function, get_attention_impl,
                      linear_attention, set_attention_impl)
from .table3 import AngularAttention, EfficientAttention, EnhancedLinearAttention, HydraAttention

__all__ = ["EPS", "LinearAttention", "FocusedLinearAttention", "HydraAttention", "EfficientAttention",
           "AngularAttention", "EnhancedLinearAttention", "LINEAR_ATTENTIONS", "LA_KINDS", "make_la_kwargs",
           "checked_la_kwargs", "create_linear_attention", "ATTENTION_IMPLS", "attention_impl",
           "attention_impl_problem", "set_attention_impl", "get_attention_impl", "focusing_function",
           "focused_features", "linear_attention", "explicit_attention_matrix"]
