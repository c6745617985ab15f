"""Probes into a model's focused attention, for the attention-map and rank tools.

Records what every focused attention module receives -- q, k, v after the
family's projections, the token grid and the number of prefix tokens -- by
wrapping each module's ``attend`` on the instance for the duration of one
forward pass (no model code is changed), and turns q, k into the explicit
N x M weights of softmax, vanilla linear and focused attention, and a
depthwise conv into its N x N matrix.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers.attention import FocusedLinearAttention, LinearAttention

from .cli import ScriptError
from .models import build_with_weights


def add_model_arguments(parser) -> None:
    """The arguments every attention script takes to choose a model, its weights and an image."""
    parser.add_argument("--cfg", required=True, help="model config (YAML)")
    parser.add_argument("--resume", metavar="FILE", help="checkpoint to load (default: random weights)")
    parser.add_argument("--image", help="input image (default: a fixed random image)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides")


def build_focused(args) -> Tuple[Any, nn.Module, List[Tuple[str, LinearAttention]]]:
    """(config, model, its focused attention modules) from the :func:`add_model_arguments` values;
    a one-line error when the model has no focused attention."""
    cfg, model = build_with_weights(args.cfg, args.opts, args.resume)
    mods = focused_modules(model)
    if not mods:
        raise ScriptError(f"{args.cfg} has no focused linear attention (ATTN_TYPE {cfg.MODEL.LA.ATTN_TYPE})")
    return cfg, model, mods


def load_image(path: Optional[str], cfg, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(normalised input (1, 3, S, S), display image (S, S, 3) in [0, 1]).

    With ``path`` the image goes through the evaluation transform of the config
    (docs/model.md, section 3); without, a fixed random image is used.
    """
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    size = cfg.DATA.IMG_SIZE
    if path:
        from PIL import Image

        from data.transforms import build_eval_transform
        with Image.open(path) as im:
            x = build_eval_transform(size, cfg.TEST.CROP, cfg.DATA.INTERPOLATION)(im.convert("RGB"))
    else:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(3, size, size, generator=g)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    show = (x * std + mean).clamp(0, 1).permute(1, 2, 0)
    return x.unsqueeze(0), show


def focused_modules(model: nn.Module) -> List[Tuple[str, LinearAttention]]:
    """Every focused (or Table 3) linear attention of ``model``, in forward order of definition."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LinearAttention)]


@contextlib.contextmanager
def capture_attend(modules: Sequence[LinearAttention]) -> Iterator[Dict[int, dict]]:
    """Record the inputs of ``attend`` of each module during the forwards run inside the block.

    Yields {index in ``modules``: dict(q, k, v, hw, num_prefix_tokens)} (detached,
    first call of each module).
    """
    records: Dict[int, dict] = {}

    def wrap(i: int, module: LinearAttention):
        original = module.attend

        def attend(q, k, v, hw, num_prefix_tokens=0):
            if i not in records:
                records[i] = dict(q=q.detach(), k=k.detach(), v=v.detach(), hw=tuple(hw),
                                  num_prefix_tokens=int(num_prefix_tokens))
            return original(q, k, v, hw, num_prefix_tokens)
        return attend

    for i, m in enumerate(modules):
        m.attend = wrap(i, m)                       # instance attribute shadows the method
    try:
        yield records
    finally:
        for m in modules:
            m.__dict__.pop("attend", None)


def global_weights(module: LinearAttention, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, h, N, M) weights of the module's global (non-conv) attention."""
    return module.attention_weights(q, k)


def vanilla_linear_weights(module: LinearAttention, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, h, N, M) weights of vanilla ReLU linear attention on the same q, k.

    For focused attention: the module's own kernel (positional encoding, ReLU,
    temperature) without the focusing function; otherwise plain ReLU + eps.
    """
    from models.layers.attention import EPS, explicit_attention_matrix
    if isinstance(module, FocusedLinearAttention):
        focused = module.focused
        module.focused = False
        try:
            qf, kf = module.kernel(q, k)
        finally:
            module.focused = focused
    else:
        qf, kf = F.relu(q.float()) + EPS, F.relu(k.float()) + EPS
    return explicit_attention_matrix(module.split_heads(qf), module.split_heads(kf))


def softmax_weights(module: LinearAttention, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, h, N, M) softmax attention ``softmax(q k^T / sqrt(d))`` on the same q, k."""
    qh, kh = module.split_heads(q.float()), module.split_heads(k.float())
    return (qh @ kh.transpose(-2, -1) * qh.shape[-1] ** -0.5).softmax(dim=-1)


def dwc_matrix(conv: nn.Conv2d, channel: int, hw: Tuple[int, int]) -> torch.Tensor:
    """(N, N) matrix of one channel of a depthwise conv (bias excluded) on an H x W grid.

    ``dwc_matrix(conv, c, hw) @ v[:, c]`` equals channel ``c`` of ``conv`` applied to v
    on the grid, i.e. the conv as an attention matrix (paper Fig. 5).
    """
    n = hw[0] * hw[1]
    basis = torch.eye(n, dtype=conv.weight.dtype, device=conv.weight.device).reshape(n, 1, *hw)
    out = F.conv2d(basis, conv.weight[channel:channel + 1], padding=conv.padding)   # (N, 1, H, W)
    return out.reshape(n, n).t()                                                   # column j = response to e_j


def dwc_channel(module: LinearAttention, head: int, channel: int) -> int:
    """Conv channel acting on channel ``channel`` of head ``head``.

    Focused attention shares one d-channel conv across heads; the Table 3
    'enhanced' conv has all C channels.
    """
    if module.dwc.weight.shape[0] == module.head_dim:
        return channel
    return head * module.head_dim + channel


def dwc_row(conv: nn.Conv2d, channel: int, hw: Tuple[int, int], index: int) -> torch.Tensor:
    """Row ``index`` of :func:`dwc_matrix` (the conv weights one output token puts on every input), (N,).

    The kernel placed around the token, clipped at the border (zero padding);
    O(N) instead of the O(N^2) of the full matrix. Needs 'same' padding (k // 2).
    """
    H, W = hw
    k = conv.weight.shape[-1]
    p = conv.padding[0]
    yi, xi = divmod(index, W)
    canvas = conv.weight.new_zeros(H + 2 * p, W + 2 * p)                  # input grid, padded by p
    canvas[yi:yi + k, xi:xi + k] = conv.weight[channel, 0]
    return canvas[p:p + H, p:p + W].reshape(-1)
