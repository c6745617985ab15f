"""One factory for the linear attention of an ``L`` stage.

``MODEL.LA.KIND`` (the families' ``la_kwargs['kind']``) names the class:

=========  ==========================  =====================================
kind       class                       options it takes
=========  ==========================  =====================================
focused    FocusedLinearAttention      focusing_factor, kernel_size, use_dwc,
                                       focused, use_pe
hydra      HydraAttention              -
efficient  EfficientAttention          -
angular    AngularAttention            -
enhanced   EnhancedLinearAttention     kernel_size
=========  ==========================  =====================================

Options a kind does not take are ignored (a config carries all of them).
"""
from __future__ import annotations

from typing import Any, Dict, Type

from ..family import ModelConfigError
from .base import LinearAttention, check_focusing_factor, check_kernel_size
from .focused import FocusedLinearAttention
from .table3 import AngularAttention, EfficientAttention, EnhancedLinearAttention, HydraAttention

__all__ = ["LINEAR_ATTENTIONS", "LA_KINDS", "make_la_kwargs", "create_linear_attention"]

LINEAR_ATTENTIONS: Dict[str, Type[LinearAttention]] = {
    "focused": FocusedLinearAttention,
    "hydra": HydraAttention,
    "efficient": EfficientAttention,
    "angular": AngularAttention,
    "enhanced": EnhancedLinearAttention,
}
LA_KINDS = tuple(LINEAR_ATTENTIONS)

# Options of each kind (beyond the layout arguments every kind takes).
_KIND_OPTIONS = {
    "focused": ("focusing_factor", "kernel_size", "use_dwc", "focused", "use_pe"),
    "enhanced": ("kernel_size",),
}


def make_la_kwargs(focusing_factor: float = 3, kernel_size: int = 5, use_dwc: bool = True, focused: bool = True,
                   kind: str = "focused", use_pe: bool = True) -> Dict[str, Any]:
    """Checked linear-attention options (a family's ``la_kwargs``), defaults filled in.

    Raises:
        ModelConfigError: an unknown kind, p <= 0, or an even / non-positive kernel size.
    """
    if kind not in LINEAR_ATTENTIONS:
        raise ModelConfigError(f"linear attention kind must be one of {', '.join(LA_KINDS)}, got {kind!r}",
                               "la_kwargs.kind", kind)
    check_focusing_factor(focusing_factor)
    check_kernel_size(kernel_size)
    return dict(focusing_factor=focusing_factor, kernel_size=kernel_size, use_dwc=use_dwc, focused=focused,
                kind=kind, use_pe=use_pe)


def checked_la_kwargs(la_kwargs) -> Dict[str, Any]:
    """:func:`make_la_kwargs` of a dict (None = defaults), with unknown option names refused."""
    la_kwargs = dict(la_kwargs or {})
    try:
        return make_la_kwargs(**la_kwargs)
    except TypeError:
        known = make_la_kwargs.__code__.co_varnames[:make_la_kwargs.__code__.co_argcount]
        unknown = sorted(set(la_kwargs) - set(known))
        raise ModelConfigError(f"unknown linear attention option(s) {', '.join(unknown)}; known: {', '.join(known)}",
                               "la_kwargs", la_kwargs) from None


def create_linear_attention(kind: str, dim: int, num_heads: int, grid, num_prefix_tokens: int = 0,
                            focusing_factor: float = 3, kernel_size: int = 5, use_dwc: bool = True,
                            focused: bool = True, use_pe: bool = True, **layout) -> LinearAttention:
    """The linear attention of ``kind`` (see the module doc).

    Args:
        kind: a key of :data:`LINEAR_ATTENTIONS`.
        dim, num_heads, grid, num_prefix_tokens, **layout: see
            :class:`~models.layers.attention.base.LinearAttention` (``qkv``, ``qkv_bias``,
            ``sr_ratio``, ``proj_drop``, ``lepe``).
        focusing_factor, kernel_size, use_dwc, focused, use_pe: options; each kind takes its own.
    """
    options = make_la_kwargs(focusing_factor, kernel_size, use_dwc, focused, kind, use_pe)
    cls = LINEAR_ATTENTIONS[kind]
    own = {k: options[k] for k in _KIND_OPTIONS.get(kind, ())}
    return cls(dim, num_heads, grid, num_prefix_tokens, **own, **layout)
