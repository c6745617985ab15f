"""The one table of the paper's models: Table 8 rows, the released checkpoints, their names.

Every row of paper Table 8 (appendix C): each FLatten model and the softmax
baseline it is compared with. Per row:

* ``config``: the config name (``configs/<config>.yaml``; baselines
  ``configs/baselines/<config>.yaml``);
* ``timm_name``: the registered architecture (``timm.create_model(timm_name)``);
  FLatten rows are also registered under their config name (``alias``) when it
  differs, baselines as ``flatten_softmax_<config>``;
* ``release_name``: the name of the official config / checkpoint (the release
  calls FLatten-PVT-L ``flatten_pvt_b``), None for models without released code;
* ``params`` / ``flops`` / ``top1``: Table 8 as printed (M, G, %);
* ``acc1`` / ``acc5``: the published accuracy of the released checkpoint
  (official evaluation logs for the four T/B0 models; the release README's
  top-1 for Swin-S/B/B-384), None when there is no released checkpoint;
* ``url``: the checkpoint's download link in the official README (TsinghuaCloud),
  verbatim, None when not released.

The pretrained cfgs of the ``.in1k`` tags (models/<family>.py), the scripts
(model table, released-weight evaluation, Fig. 7) and the tests read this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

__all__ = ["ModelRow", "TABLE8", "by_config", "by_timm_name", "released", "pretrained_url", "table8_top1"]


@dataclass(frozen=True)
class ModelRow:
    config: str
    timm_name: str
    paper_name: str
    resolution: int
    params: str                     # Table 8 #Params (M), as printed
    flops: str                      # Table 8 FLOPs (G), as printed
    top1: float                     # Table 8 top-1 (%)
    release_name: Optional[str] = None
    acc1: Optional[float] = None    # published Acc@1 of the released checkpoint
    acc5: Optional[float] = None    # published Acc@5 (official evaluation logs only)
    url: Optional[str] = None       # official download link

    @property
    def is_flatten(self) -> bool:
        return self.config.startswith("flatten_")

    @property
    def alias(self) -> Optional[str]:
        """The config name, registered with timm as well when it differs from ``timm_name``."""
        return self.config if self.is_flatten and self.config != self.timm_name else None

    @property
    def file_name(self) -> str:
        """Local file name of the released checkpoint (the download cache uses it)."""
        return f"{self.config}.pth"


def _row(config, timm_name, paper_name, resolution, params, flops, top1, **kw) -> ModelRow:
    return ModelRow(config, timm_name, paper_name, resolution, params, flops, top1, **kw)


TABLE8: List[ModelRow] = [
    _row("deit_t", "flatten_softmax_deit_t", "DeiT-T", 224, "5.7", "1.2", 72.2),
    _row("flatten_deit_t", "flatten_deit_tiny_patch16_224", "FLatten-DeiT-T", 224, "6.1", "1.1", 74.1),
    _row("pvt_t", "flatten_softmax_pvt_t", "PVT-T", 224, "13.2", "1.9", 75.1),
    _row("flatten_pvt_t", "flatten_pvt_tiny", "FLatten-PVT-T", 224, "12.2", "2.0", 77.8,
         release_name="flatten_pvt_t", acc1=77.758, acc5=93.910,
         url="https://cloud.tsinghua.edu.cn/f/3ab1d773f19d45648690/?dl=1"),
    _row("pvt_s", "flatten_softmax_pvt_s", "PVT-S", 224, "24.5", "3.8", 79.8),
    _row("flatten_pvt_s", "flatten_pvt_small", "FLatten-PVT-S", 224, "21.7", "4.0", 81.7,
         release_name="flatten_pvt_s"),
    _row("pvt_m", "flatten_softmax_pvt_m", "PVT-M", 224, "44.2", "6.7", 81.2),
    _row("flatten_pvt_m", "flatten_pvt_medium", "FLatten-PVT-M", 224, "37.2", "7.0", 83.0,
         release_name="flatten_pvt_m"),
    _row("pvt_l", "flatten_softmax_pvt_l", "PVT-L", 224, "61.4", "9.8", 81.7),
    _row("flatten_pvt_l", "flatten_pvt_large", "FLatten-PVT-L", 224, "50.6", "10.4", 83.4,
         release_name="flatten_pvt_b"),
    _row("pvt_v2_b0", "flatten_softmax_pvt_v2_b0", "PVTv2-B0", 224, "3.4", "0.6", 70.5),
    _row("flatten_pvt_v2_b0", "flatten_pvt_v2_b0", "FLatten-PVTv2-B0", 224, "3.6", "0.6", 71.1,
         release_name="flatten_pvt_v2_b0", acc1=71.098, acc5=90.596,
         url="https://cloud.tsinghua.edu.cn/f/5d1f01532b104da28e7b/?dl=1"),
    _row("pvt_v2_b1", "flatten_softmax_pvt_v2_b1", "PVTv2-B1", 224, "13.1", "2.1", 78.7),
    _row("flatten_pvt_v2_b1", "flatten_pvt_v2_b1", "FLatten-PVTv2-B1", 224, "12.9", "2.2", 79.5,
         release_name="flatten_pvt_v2_b1"),
    _row("pvt_v2_b2", "flatten_softmax_pvt_v2_b2", "PVTv2-B2", 224, "25.4", "4.0", 82.0),
    _row("flatten_pvt_v2_b2", "flatten_pvt_v2_b2", "FLatten-PVTv2-B2", 224, "22.6", "4.3", 82.5,
         release_name="flatten_pvt_v2_b2"),
    _row("pvt_v2_b3", "flatten_softmax_pvt_v2_b3", "PVTv2-B3", 224, "45.2", "6.9", 83.2),
    _row("flatten_pvt_v2_b3", "flatten_pvt_v2_b3", "FLatten-PVTv2-B3", 224, "38.3", "7.3", 83.7,
         release_name="flatten_pvt_v2_b3"),
    _row("pvt_v2_b4", "flatten_softmax_pvt_v2_b4", "PVTv2-B4", 224, "62.6", "10.1", 83.6),
    _row("flatten_pvt_v2_b4", "flatten_pvt_v2_b4", "FLatten-PVTv2-B4", 224, "51.8", "10.7", 84.0,
         release_name="flatten_pvt_v2_b4"),
    _row("swin_t", "flatten_softmax_swin_t", "Swin-T", 224, "29", "4.5", 81.3),
    _row("flatten_swin_t", "flatten_swin_tiny_patch4_224", "FLatten-Swin-T", 224, "29", "4.5", 82.1,
         release_name="flatten_swin_t", acc1=82.106, acc5=95.900,
         url="https://cloud.tsinghua.edu.cn/f/e1518e76703e4e57a7f2/?dl=1"),
    _row("swin_s", "flatten_softmax_swin_s", "Swin-S", 224, "50", "8.7", 83.0),
    _row("flatten_swin_s", "flatten_swin_small_patch4_224", "FLatten-Swin-S", 224, "51", "8.7", 83.5,
         release_name="flatten_swin_s", acc1=83.5,
         url="https://cloud.tsinghua.edu.cn/f/94188e52af354bf4a88b/?dl=1"),
    _row("swin_b", "flatten_softmax_swin_b", "Swin-B", 224, "88", "15.4", 83.5),
    _row("flatten_swin_b", "flatten_swin_base_patch4_224", "FLatten-Swin-B", 224, "89", "15.4", 83.8,
         release_name="flatten_swin_b", acc1=83.8,
         url="https://cloud.tsinghua.edu.cn/f/7a9e5186bad04e7fb3a9/?dl=1"),
    _row("swin_b_384", "flatten_softmax_swin_b_384", "Swin-B", 384, "88", "47.0", 84.5),
    _row("flatten_swin_b_384", "flatten_swin_base_patch4_384", "FLatten-Swin-B", 384, "91", "46.5", 85.0,
         release_name="flatten_swin_b_384", acc1=85.0,
         url="https://cloud.tsinghua.edu.cn/f/0d0330cf2e5249f1abb6/?dl=1"),
    _row("cswin_t", "flatten_softmax_cswin_t", "CSwin-T", 224, "23", "4.3", 82.7),
    _row("flatten_cswin_t", "flatten_cswin_tiny_224", "FLatten-CSwin-T", 224, "21", "4.3", 83.1,
         release_name="flatten_cswin_t", acc1=83.130, acc5=96.376,
         url="https://cloud.tsinghua.edu.cn/f/48ba765ba8b0451d9d5a/?dl=1"),
    _row("cswin_s", "flatten_softmax_cswin_s", "CSwin-S", 224, "35", "6.9", 83.6),
    _row("flatten_cswin_s", "flatten_cswin_small_224", "FLatten-CSwin-S", 224, "35", "6.9", 83.8,
         release_name="flatten_cswin_s"),
    _row("cswin_b", "flatten_softmax_cswin_b", "CSwin-B", 224, "78", "15.0", 84.2),
    _row("flatten_cswin_b", "flatten_cswin_base_224", "FLatten-CSwin-B", 224, "75", "15.0", 84.5,
         release_name="flatten_cswin_b"),
    _row("cswin_b_384", "flatten_softmax_cswin_b_384", "CSwin-B", 384, "78", "47.0", 85.4),
    _row("flatten_cswin_b_384", "flatten_cswin_base_384", "FLatten-CSwin-B", 384, "78", "46.4", 85.5,
         release_name="flatten_cswin_b_384"),
]

_BY_CONFIG: Dict[str, ModelRow] = {r.config: r for r in TABLE8}
_BY_TIMM: Dict[str, ModelRow] = {r.timm_name: r for r in TABLE8}
_BY_TIMM.update({r.alias: r for r in TABLE8 if r.alias})


def by_config(config: str) -> ModelRow:
    """The row of a config name (``flatten_swin_t``, ``swin_t``, ...); KeyError when unknown."""
    return _BY_CONFIG[config]


def by_timm_name(name: str) -> Optional[ModelRow]:
    """The row of a registered name or alias (tags such as ``.in1k`` ignored), or None."""
    return _BY_TIMM.get(name.split(".", 1)[0])


def released() -> List[ModelRow]:
    """Rows with a released checkpoint (a download link), in Table 8 order."""
    return [r for r in TABLE8 if r.url]


def pretrained_url(timm_name: str) -> Optional[str]:
    """The release link of a registered architecture, or None."""
    row = by_timm_name(timm_name)
    return row.url if row else None


def table8_top1() -> Dict[str, float]:
    """{config name: Table 8 top-1}."""
    return {r.config: r.top1 for r in TABLE8}
