"""TEMPORARY stand-in (branch issue11) for the table of released models of issue 10; replaced at merge."""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional


class Row(NamedTuple):
    config: str
    paper_name: str
    img_size: int
    params_m: str
    gflops: str
    top1: Optional[float]
    acc1: Optional[float] = None
    acc5: Optional[float] = None
    url: str = ""


_R = Row
TABLE8 = [
    _R("deit_t", "DeiT-T", 224, "5.7", "1.2", 72.2), _R("flatten_deit_t", "FLatten-DeiT-T", 224, "6.1", "1.1", 74.1),
    _R("pvt_t", "PVT-T", 224, "13.2", "1.9", 75.1),
    _R("flatten_pvt_t", "FLatten-PVT-T", 224, "12.2", "2.0", 77.8, 77.758, 93.910, "u"),
    _R("pvt_s", "PVT-S", 224, "24.5", "3.8", 79.8), _R("flatten_pvt_s", "FLatten-PVT-S", 224, "21.7", "4.0", 81.7),
    _R("pvt_m", "PVT-M", 224, "44.2", "6.7", 81.2), _R("flatten_pvt_m", "FLatten-PVT-M", 224, "37.2", "7.0", 83.0),
    _R("pvt_l", "PVT-L", 224, "61.4", "9.8", 81.7), _R("flatten_pvt_l", "FLatten-PVT-L", 224, "50.6", "10.4", 83.4),
    _R("pvt_v2_b0", "PVTv2-B0", 224, "3.4", "0.6", 70.5),
    _R("flatten_pvt_v2_b0", "FLatten-PVTv2-B0", 224, "3.6", "0.6", 71.1, 71.098, 90.596, "u"),
    _R("pvt_v2_b1", "PVTv2-B1", 224, "13.1", "2.1", 78.7),
    _R("flatten_pvt_v2_b1", "FLatten-PVTv2-B1", 224, "12.9", "2.2", 79.5),
    _R("pvt_v2_b2", "PVTv2-B2", 224, "25.4", "4.0", 82.0),
    _R("flatten_pvt_v2_b2", "FLatten-PVTv2-B2", 224, "22.6", "4.3", 82.5),
    _R("pvt_v2_b3", "PVTv2-B3", 224, "45.2", "6.9", 83.2),
    _R("flatten_pvt_v2_b3", "FLatten-PVTv2-B3", 224, "38.3", "7.3", 83.7),
    _R("pvt_v2_b4", "PVTv2-B4", 224, "62.6", "10.1", 83.6),
    _R("flatten_pvt_v2_b4", "FLatten-PVTv2-B4", 224, "51.8", "10.7", 84.0),
    _R("swin_t", "Swin-T", 224, "29", "4.5", 81.3),
    _R("flatten_swin_t", "FLatten-Swin-T", 224, "29", "4.5", 82.1, 82.106, 95.900, "u"),
    _R("swin_s", "Swin-S", 224, "50", "8.7", 83.0),
    _R("flatten_swin_s", "FLatten-Swin-S", 224, "51", "8.7", 83.5, 83.5, None, "u"),
    _R("swin_b", "Swin-B", 224, "88", "15.4", 83.5),
    _R("flatten_swin_b", "FLatten-Swin-B", 224, "89", "15.4", 83.8, 83.8, None, "u"),
    _R("swin_b_384", "Swin-B", 384, "88", "47.0", 84.5),
    _R("flatten_swin_b_384", "FLatten-Swin-B", 384, "91", "46.5", 85.0, 85.0, None, "u"),
    _R("cswin_t", "CSwin-T", 224, "23", "4.3", 82.7),
    _R("flatten_cswin_t", "FLatten-CSwin-T", 224, "21", "4.3", 83.1, 83.130, 96.376, "u"),
    _R("cswin_s", "CSwin-S", 224, "35", "6.9", 83.6), _R("flatten_cswin_s", "FLatten-CSwin-S", 224, "35", "6.9", 83.8),
    _R("cswin_b", "CSwin-B", 224, "78", "15.0", 84.2), _R("flatten_cswin_b", "FLatten-CSwin-B", 224, "75", "15.0", 84.5),
    _R("cswin_b_384", "CSwin-B", 384, "78", "47.0", 85.4),
    _R("flatten_cswin_b_384", "FLatten-CSwin-B", 384, "78", "46.4", 85.5),
]
_OFFICIAL = {"flatten_pvt_l": "flatten_pvt_b"}


def by_config() -> Dict[str, Row]:
    return {r.config: r for r in TABLE8}


def official_name(config: str) -> str:
    return _OFFICIAL.get(config, config)


def from_official_name(name: str) -> str:
    return {v: k for k, v in _OFFICIAL.items()}.get(name, name)
