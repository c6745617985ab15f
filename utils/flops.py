"""Parameter and FLOP counts as reported in the paper (Table 8).

FLOPs are counted with fvcore's ``FlopCountAnalysis`` on one image in eval
mode, in fvcore's convention (the one of the Swin / PVT / CSWin papers): one
multiply-add counts as one FLOP, and only the ops that carry the cost are
counted -- linear / matmul / bmm / einsum / convolutions, plus fvcore's
defaults for normalisation layers and resampling.

fvcore skips (and warns about) every op without a handle. Here

* ops that carry real cost but that fvcore does not know get a handle:
  ``aten::scaled_dot_product_attention`` (the fused softmax attention of the
  baselines: q @ k^T and attn @ v), ``aten::upsample_linear1d`` (PVT's v
  resize when keys are reduced), ``aten::upsample_bicubic2d``; ``aten::matmul``
  is counted from the output shape so that broadcast operands count fully;
* element-wise ops and reductions (add, mul, softmax, GELU, softplus, the
  focusing power and norms, means, ...) are deliberately not counted, as in
  fvcore and the papers above (:data:`ELEMENTWISE_OPS`); their warnings are
  silenced;
* anything else that is skipped is logged as a warning with its count, so a
  new op in a model does not silently vanish from the total.

With this convention the Table 8 numbers of the FLatten models are reproduced
(see ``scripts/model_table.py``).
"""
from __future__ import annotations

import logging
import warnings
from math import prod
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

_logger = logging.getLogger(__name__)

# Element-wise ops and reductions: O(numel), not counted (fvcore / Swin / PVT convention).
ELEMENTWISE_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::rsub", "aten::mul", "aten::mul_",
    "aten::div", "aten::div_", "aten::neg", "aten::reciprocal", "aten::pow", "aten::sqrt",
    "aten::rsqrt", "aten::exp", "aten::log", "aten::abs", "aten::sign", "aten::square",
    "aten::softmax", "aten::log_softmax", "aten::gelu", "aten::gelu_", "aten::silu", "aten::silu_",
    "aten::sigmoid", "aten::tanh", "aten::hardswish", "aten::softplus", "aten::elu", "aten::leaky_relu",
    "aten::mean", "aten::sum", "aten::amax", "aten::amin", "aten::norm", "aten::linalg_vector_norm",
    "aten::frobenius_norm", "aten::clamp_min", "aten::clamp_max", "aten::maximum", "aten::minimum",
    "aten::where", "aten::lt", "aten::le", "aten::ne", "aten::fill_", "aten::masked_fill_",
    "aten::pad", "aten::repeat", "aten::expand_as", "aten::contiguous", "aten::clone",
    "aten::dropout_", "aten::feature_dropout", "aten::alias", "aten::lift_fresh", "aten::numpy_T",
    "aten::roll", "aten::unflatten", "aten::chunk", "aten::unfold", "aten::im2col", "aten::col2im",
    "aten::view_as", "aten::reshape_as", "aten::mT", "aten::matrix_H", "aten::movedim",
    "aten::adaptive_avg_pool1d", "aten::avg_pool2d", "aten::max_pool2d",
    "aten::bernoulli_", "aten::empty_like", "aten::zero_", "aten::detach_", "aten::resolve_conj",
    "aten::resolve_neg", "aten::_unsafe_view", "aten::index_select", "aten::repeat_interleave",
    "aten::log_sigmoid", "aten::erf", "aten::cumsum",
    # fused element-wise steps of focused attention (models/layers/attention/focused.py)
    "aten::addcmul", "aten::addcdiv", "aten::clamp_min_", "aten::new_ones",
)


def _shape(v) -> Optional[List[int]]:
    from fvcore.nn.jit_handles import get_shape
    return get_shape(v)


def _matmul_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """a @ b: one MAC per output element and contracted index (broadcast operands count fully)."""
    a = _shape(inputs[0])
    out = _shape(outputs[0])
    return prod(out) * a[-1]


def _sdpa_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Fused softmax attention: q @ k^T (B.h.N.M.d) + attn @ v (B.h.N.M.dv); softmax not counted."""
    q, k, v = (_shape(t) for t in inputs[:3])
    batch = prod(q[:-2])
    n, d = q[-2:]
    m, dv = k[-2], v[-1]
    return batch * n * m * (d + dv)


def _per_output_element(scale: float):
    def handle(inputs: List[Any], outputs: List[Any]) -> float:
        return scale * prod(_shape(outputs[0]))
    return handle


# Handles added to fvcore's defaults.
EXTRA_HANDLES = {
    "aten::matmul": _matmul_flops,
    "aten::scaled_dot_product_attention": _sdpa_flops,
    "aten::upsample_linear1d": _per_output_element(2),    # as fvcore's bilinear (4 per output)
    "aten::upsample_bicubic2d": _per_output_element(16),
}


def flop_analysis(model: nn.Module, img_size: Union[int, Tuple[int, int]] = 224, batch: int = 1,
                  in_chans: int = 3):
    """fvcore ``FlopCountAnalysis`` of ``model`` on a (batch, in_chans, H, W) zero input.

    The model is put in eval mode for the trace and returned to its mode after.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                # torch.jit deprecation notices at import
        from fvcore.nn import FlopCountAnalysis

    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(batch, in_chans, h, w, device=device)
    analysis = FlopCountAnalysis(model, x)
    analysis.set_op_handle(**EXTRA_HANDLES)
    analysis.set_op_handle(**{op: None for op in ELEMENTWISE_OPS})  # None = ignored, no warning
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")           # torch.jit.trace deprecation / tracer warnings
            analysis.total()                          # runs the trace once; results are cached
    finally:
        model.train(was_training)
    skipped = analysis.unsupported_ops()
    if skipped:
        _logger.warning("FLOPs of %s: ops without a handle were not counted: %s", type(model).__name__,
                        ", ".join(f"{op} x{n}" for op, n in sorted(skipped.items())))
    return analysis


def count_flops(model: nn.Module, img_size: Union[int, Tuple[int, int]] = 224, in_chans: int = 3) -> float:
    """GFLOPs (multiply-adds) of one ``img_size`` image through ``model``."""
    return flop_analysis(model, img_size, batch=1, in_chans=in_chans).total() / 1e9


def count_params(model: nn.Module) -> float:
    """Parameters in millions (every ``nn.Parameter``; buffers are not parameters)."""
    return sum(p.numel() for p in model.parameters()) / 1e6
