"""Whole models: ours, timm's and the official code's, inference or one training step."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from scripts.core import models as zoo
from scripts.core.memory import peak_memory_mb
from scripts.core.official import OFFICIAL_FILES, OfficialCode, load_same_weights
from scripts.core.timing import Candidate, Prepared, prepare, result, time_round_robin

from .common import make_meta, plan_of
from .report import print_results

_logger = logging.getLogger(__name__)
SMOKE_MODELS = ["flatten_pvt_v2_b0", "pvt_v2_b0"]


def candidates(names: List[str], impls: List[str], img_size: Optional[int],
               official: Optional[OfficialCode]) -> List[Candidate]:
    """For each config name, one candidate per implementation that has the model."""
    import timm
    files = zoo.config_files()
    out: List[Candidate] = []
    for name in names:
        cfg = zoo.load(files[name])
        fam = zoo.family_of(cfg)
        attention = "flatten" if name.startswith("flatten_") else "softmax"
        img = img_size or cfg.DATA.IMG_SIZE
        over = {"img_size": img_size} if img_size else {}

        def ours(c=cfg, o=over) -> nn.Module:
            return zoo.build(c, **o)
        if "ours" in impls:
            out.append(Candidate(name, "ours", fam, attention, ours, img))
        if "official" in impls and attention == "flatten" and fam in OFFICIAL_FILES:
            def official_model(n=name, f=fam, mine=ours, o=over) -> nn.Module:
                model = official.build(n, f, o.get("img_size"))
                load_same_weights(model, mine())
                return model
            out.append(Candidate(name, "official", fam, attention, official_model, img))
        if "timm" in impls and name in zoo.TIMM_BASELINES:
            timm_name = zoo.TIMM_BASELINES[name]
            out.append(Candidate(name, "timm", fam, attention,
                                 lambda t=timm_name, o=over: timm.create_model(t, **o), img,
                                 extra={"timm_name": timm_name}))
    return out


def with_compile(cands: List[Candidate], compile_: bool, eager_too: bool) -> List[Candidate]:
    """Compiled copies of the candidates (and the eager ones too with ``eager_too``)."""
    if not compile_:
        return cands
    out = []
    for c in cands:
        if eager_too:
            out.append(c)
        out.append(dataclasses.replace(c, compiled=True))
    return out


def measure(prepared: List[Prepared], args, device: torch.device, memory: bool = True) -> List[Dict[str, Any]]:
    """Time the prepared candidates and return one result per candidate (peak memory included)."""
    time_round_robin(prepared, plan_of(args), device)
    results = []
    for p in prepared:
        res = result(p, args.batch)
        if memory and "error" not in res:
            try:
                res["peak_mem_mb"] = peak_memory_mb(p.model, p.eager_step, p.x, device, p.eager_opt)
            except Exception as e:  # memory is a bonus; never lose the timing for it
                _logger.warning("memory of %s (%s): %s", p.candidate.model, p.candidate.impl, e)
                res["peak_mem_mb"] = None
        results.append(res)
    return results


def run(args, device: torch.device):
    """The models mode: returns (meta, results, prepared) after printing the table."""
    from scripts.core.environment import tag
    official = OfficialCode(args.official_path) if "official" in args.impl else None
    meta = make_meta(args, device, "models")
    print(f"benchmark: {tag(meta)}")
    names = zoo.select_configs(args.models or (SMOKE_MODELS if args.smoke else None))
    cands = with_compile(candidates(names, args.impl, args.img_size, official), args.compile, args.eager_too)
    prepared = prepare(cands, device, args.batch, args.train, args.amp, args.channels_last)
    results = measure(prepared, args, device)
    print_results(results, meta)
    return meta, results, prepared
