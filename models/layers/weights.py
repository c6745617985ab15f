"""Checkpoint files: safe loading, the released-weights filter and strict loading into a model.

Parameter names are those of the official release, so a released state dict
loads as is. :func:`checkpoint_filter_fn` (timm's ``pretrained_filter_fn`` of
every family) only

* unwraps ``{'model': ...}`` / ``{'state_dict': ...}`` / DDP ``module.`` prefixes,
* drops the keys of an explicit list, each with its reason: the buffers in
  :data:`IGNORED_KEYS` (the model rebuilds them) and a family's own
  ``ignored_checkpoint_keys`` (PVT v1's final ``norm``, never applied in the
  release), and reports what it dropped,
* resamples the resolution-bound parameters when the model was built for another
  image size or window: ``positional_encoding`` and ``pos_embed*`` (token grids,
  bicubic; ``models/layers/pos_embed.py``) and ``relative_position_bias_table``
  (bicubic over the offset grid).

:func:`safe_load` reads a checkpoint file without running code from it: PyTorch's
restricted ``weights_only`` unpickler with a small allow-list. Released files are
Swin-style pickles whose ``config`` is a yacs ``CfgNode`` and which may hold numpy
scalars; the ``CfgNode`` is read as a plain mapping and rebuilt afterwards, so no
class of the file gets to run code. Anything outside the allow-list is refused.

:func:`load_checkpoint` combines the two for ``create_model(..., pretrained=True)``
(timm calls the model's ``load_pretrained``): strict, except for a classifier of
another size (dropped and left freshly initialised) and a first conv adapted to
another number of input channels.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .pos_embed import rel_pos_table_resample, resample_token_grid, square_grid

__all__ = ["CheckpointError", "safe_load", "IGNORED_KEYS", "ignored_keys", "is_ignored_key", "unwrap_state_dict",
           "checkpoint_filter_fn", "load_checkpoint"]

_logger = logging.getLogger(__name__)

_MAX_LISTED = 10  # keys named in an error message before "... and N more"

# Keys a released checkpoint may carry that no model of this code loads, with the reason.
IGNORED_KEYS: Dict[str, str] = {
    r"(^|\.)attn_mask$": "Swin shifted-window masks: recomputed from the input size",
    r"(^|\.)relative_position_index$": "Swin relative-position index: recomputed from the window size",
    r"(^|\.)relative_coords_table$": "derived buffer: recomputed",
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (one line that names the file)."""


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _first_sentence(text: Any) -> str:
    line = _one_line(text)
    return line.split(". ")[0].rstrip(".")[:200]


def listing(items: List[str]) -> str:
    """The first items of a list of keys, then how many more."""
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


# ----------------------------------------------------------------------------- safe loading
def _numpy_globals() -> List[Any]:
    """numpy objects a pickled scalar / array needs, under their numpy 1.x and 2.x names."""
    import numpy as np
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore
    allowed: List[Any] = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{mod}.scalar"), (multiarray._reconstruct, f"{mod}._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 pickles dtypes through their classes
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _allowed_globals() -> List[Any]:
    # A CfgNode is a dict subclass; the restricted unpickler only fills plain dicts, so
    # the name is mapped to OrderedDict and the node is rebuilt after loading.
    return [(collections.OrderedDict, "yacs.config.CfgNode")] + _numpy_globals()


_ALLOWED_NAMES = {"yacs.config.CfgNode", "numpy.dtype", "numpy.ndarray"}


def _refused_global(path: str, err: Exception) -> Optional[str]:
    """The first global of ``path`` the allow-list refused, if it can be named."""
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    if m:
        return m.group(1)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: the message above is all there is
        return None
    names = [n for n in names if n not in _ALLOWED_NAMES and not n.startswith("numpy")]
    return names[0] if names else None


def _to_cfgnode(value: Any) -> Any:
    from yacs.config import CfgNode
    if isinstance(value, CfgNode) or not isinstance(value, Mapping):
        return value
    return CfgNode({k: _to_cfgnode(v) for k, v in value.items()})


def safe_load(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint dict without running code from the file.

    Raises:
        CheckpointError: missing file, not a PyTorch checkpoint (text, truncated
            zip, ...), a pickle that needs a global outside the allow-list, or a
            file that holds something other than a dict.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    with open(path, "rb") as f:
        head = f.read(2)
    if not head:
        raise CheckpointError(f"{path}: empty file, not a PyTorch checkpoint")
    if head != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = _refused_global(path, e)
        if culprit:
            raise CheckpointError(f"{path}: refuses to unpickle {culprit}: not a plain checkpoint") from None
        detail = str(e).split("WeightsUnpickler error:")[-1]
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_sentence(detail)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, MemoryError) as e:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a damaged one "
                              f"({_first_sentence(e) or type(e).__name__})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict")
    ckpt = dict(obj)
    if isinstance(ckpt.get("config"), Mapping):
        ckpt["config"] = _to_cfgnode(ckpt["config"])
    return ckpt


# ----------------------------------------------------------------------------- ignored keys
def ignored_keys(model: Optional[torch.nn.Module] = None) -> Dict[str, str]:
    """{key pattern: reason} of the keys not loaded into ``model`` (the generic list without a model)."""
    return {**IGNORED_KEYS, **(getattr(model, "ignored_checkpoint_keys", None) or {})}


def is_ignored_key(key: str, model: Optional[torch.nn.Module] = None) -> bool:
    """Whether ``key`` is on the ignore list (of ``model``'s family, when given)."""
    return any(re.search(p, key) for p in ignored_keys(model))


def unwrap_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint: ``{'model': sd}``, ``{'state_dict': sd}`` or ``sd``; DDP prefixes removed."""
    sd = checkpoint
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


# ----------------------------------------------------------------------------- resampling
def _target_token_grid(model: torch.nn.Module, key: str) -> Tuple[Optional[Tuple[int, int]], int]:
    """(grid, prefix tokens) a token-grid parameter of ``model`` is built for; (None, 0) if unknown."""
    grids = getattr(model, "token_grids", None)
    if callable(grids):
        found = grids().get(key)
        if found is not None:
            return found
    module_name, _, leaf = key.rpartition(".")
    if leaf == "positional_encoding":
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            return None, 0
        if hasattr(module, "key_grid"):
            return tuple(module.key_grid(module.grid)), module.num_prefix_tokens
    return None, 0


def filter_state_dict(state_dict: Mapping, model: torch.nn.Module) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """:func:`checkpoint_filter_fn` that also returns the ignored keys."""
    sd = unwrap_state_dict(state_dict)
    target = model.state_dict()
    patterns = ignored_keys(model)
    out, ignored = {}, []
    for k, v in sd.items():
        if any(re.search(p, k) for p in patterns):
            ignored.append(k)
            continue
        if k in target and torch.is_tensor(v) and v.shape != target[k].shape:
            leaf = k.rsplit(".", 1)[-1]
            if leaf == "positional_encoding" or leaf.startswith("pos_embed"):
                grid, prefix = _target_token_grid(model, k)
                if grid is None:
                    grid = square_grid(target[k].shape[1] - prefix)
                if grid is not None:
                    v = resample_token_grid(v, grid, None, prefix)
            elif leaf == "relative_position_bias_table":
                v = rel_pos_table_resample(v, target[k].shape[0])
        out[k] = v
    return out, ignored


def checkpoint_filter_fn(state_dict: Mapping, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Adapt a released (or this project's) state dict to ``model``; see the module doc."""
    out, ignored = filter_state_dict(state_dict, model)
    if ignored:
        reasons = ignored_keys(model)
        why = sorted({r for k in ignored for p, r in reasons.items() if re.search(p, k)})
        _logger.info("checkpoint_filter_fn: ignored %d keys (%s): %s", len(ignored), listing(sorted(ignored)),
                     "; ".join(why))
    return out


# ----------------------------------------------------------------------------- strict loading
def state_dict_mismatch(model: torch.nn.Module, sd: Mapping[str, Any], may_miss=()) -> Tuple[List[str], ...]:
    """(missing, unexpected, mis-shaped) keys of the state dict ``sd`` for ``model``.

    Keys on the model's ignore list, and those in ``may_miss``, are not missing.
    """
    target = model.state_dict()
    missing = [k for k in target if k not in sd and k not in may_miss and not is_ignored_key(k, model)]
    unexpected = [k for k in sd if k not in target]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in sd.items()
              if k in target and torch.is_tensor(v) and v.shape != target[k].shape]
    return missing, unexpected, shapes


def describe_mismatch(missing: List[str], unexpected: List[str], shapes: List[str]) -> str:
    """'3 missing (a, b, c); 1 unexpected (d)': the first ten keys of each kind."""
    parts = [f"{len(keys)} {what} ({listing(keys)})"
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
             if keys]
    return "; ".join(parts)


def load_checkpoint(model: torch.nn.Module, path: str) -> Dict[str, List[str]]:
    """Load a checkpoint file into ``model`` through :func:`safe_load` and :func:`checkpoint_filter_fn`.

    Strict: every parameter and persistent buffer of the model must come from the
    file, with its shape, and the file may hold nothing else, except

    * the keys of the ignore list (reported in the log and the result),
    * the classifier named by the model's ``pretrained_cfg`` when its size differs
      (another ``num_classes``, or 0): dropped, the model keeps its fresh head,
    * the first conv, adapted with timm's ``adapt_input_conv`` when the model has
      another number of input channels.

    Returns:
        {'ignored': keys, 'dropped': classifier keys, 'adapted': first-conv keys}.
    Raises:
        CheckpointError: unreadable file, or keys that do not fit (named, one line).
    """
    from timm.models import adapt_input_conv

    ckpt = safe_load(path)
    sd, ignored = filter_state_dict(ckpt, model)
    target = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    heads = cfg.get("classifier") or "head"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    dropped = [k for k in list(sd) if any(k.startswith(h + ".") for h in heads)
               and (k not in target or sd[k].shape != target[k].shape)]
    for k in dropped:
        del sd[k]
    adapted = []
    convs = cfg.get("first_conv")
    for conv in ((convs,) if isinstance(convs, str) else tuple(convs or ())):
        k = conv + ".weight"
        if k in sd and k in target and sd[k].ndim == 4 and sd[k].shape[1] != target[k].shape[1]:
            sd[k] = adapt_input_conv(target[k].shape[1], sd[k])
            adapted.append(k)
    may_miss = {k for k in target if any(k.startswith(h + ".") for h in heads)} if dropped else set()
    missing, unexpected, shapes = state_dict_mismatch(model, sd, may_miss)
    if missing or unexpected or shapes:
        name = cfg.get("architecture") or type(model).__name__
        raise CheckpointError(f"{path} does not fit {name}: " + describe_mismatch(missing, unexpected, shapes))
    model.load_state_dict(sd, strict=not dropped)
    _logger.info("loaded %s: %d tensors%s%s%s", path, len(sd),
                 f"; ignored {listing(sorted(ignored))}" if ignored else "",
                 f"; classifier of another size dropped ({', '.join(dropped)})" if dropped else "",
                 f"; input conv adapted ({', '.join(adapted)})" if adapted else "")
    return {"ignored": sorted(ignored), "dropped": dropped, "adapted": adapted}
