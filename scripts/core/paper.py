"""The paper's numbers the tools compare with, read from one place.

Table 8 (params, FLOPs, top-1 of every model) and the published accuracies of
the released checkpoints come from the table of released models in
:mod:`models.released`; the ablation rows of Tables 3-7 are listed here, the
only place that needs them.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

from models import released


class PaperRow(NamedTuple):
    config: str                     # config name (configs/<name>.yaml or configs/baselines/<name>.yaml)
    model: str                      # the row's label in Table 8
    resolution: int
    params: str                     # as printed (millions); its digits set the tolerance
    flops: str                      # as printed (GFLOPs)
    top1: Optional[float]           # Table 8 ImageNet top-1 (%)


def table8() -> Dict[str, PaperRow]:
    """Table 8 by config name, in the paper's order (each softmax row before its FLatten row)."""
    return {r.config: PaperRow(r.config, r.paper_name, r.resolution, r.params, r.flops, r.top1)
            for r in released.TABLE8}


def top1(config: str) -> Optional[float]:
    row = table8().get(config)
    return row.top1 if row else None


def _row(config: str):
    try:
        return released.by_config(config)
    except KeyError:
        return None


def published(config: str) -> Tuple[Optional[float], Optional[float], str]:
    """(Acc@1, Acc@5, source) a checkpoint of ``config`` is compared with.

    The released checkpoints: their official evaluation (Acc@5 where the logs
    give it); any other FLatten config: Table 8 top-1.
    """
    r = _row(config)
    if r is not None and r.acc1 is not None:
        return r.acc1, r.acc5, "release log" if r.acc5 is not None else "release / Table 8"
    return top1(config), None, "Table 8"


def released_configs() -> List[str]:
    """Config names of the released checkpoints, in table order."""
    return [r.config for r in released.released()]


def from_official_name(name: str) -> str:
    """The config name for a name of the official release (``flatten_pvt_b`` -> ``flatten_pvt_l``)."""
    return next((r.config for r in released.TABLE8 if r.release_name == name), name)


def config_of(name: str) -> str:
    """The config name of a registered model name or alias (``flatten_swin_tiny_patch4_224`` ->
    ``flatten_swin_t``) or of a release name; other names are returned as they are."""
    row = released.by_timm_name(name)
    return row.config if row is not None else from_official_name(name)


def official_name(config: str) -> str:
    """The official release's name for a config (``flatten_pvt_l`` -> ``flatten_pvt_b``)."""
    r = _row(config)
    return r.release_name if r is not None and r.release_name else config


def tolerance(printed: str) -> float:
    """One unit of the last printed digit: '6.1' -> 0.1, '29' -> 1."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return 10.0 ** -decimals


def matches(measured: float, printed: str) -> bool:
    return abs(measured - float(printed)) <= tolerance(printed) + 1e-9


# ----------------------------------------------------------------------------- Tables 3-7
class AblationRow(NamedTuple):
    table: str                # paper table ("3a", "3b", "4", ..., "7")
    row: str                  # the row as the paper labels it
    config: str               # config path relative to configs/, without .yaml
    params: Optional[str]     # paper #Param (M) as printed; None = not given / not legible
    flops: Optional[str]      # paper FLOPs (G) as printed
    acc: Optional[str]        # paper top-1 (%) as printed


ABLATION_TITLES: Dict[str, str] = {
    "3a": "Table 3(a): other linear attentions, DeiT-T setting",
    "3b": "Table 3(b): other linear attentions, Swin-T setting",
    "4": "Table 4: focused function and DWC, DeiT-T",
    "5": "Table 5: focusing factor p, FLatten-Swin-T",
    "6": "Table 6: window size of focused attention, FLatten-Swin-T",
    "7": "Table 7: stages with focused attention, Swin-T",
}

# In our copy of the paper the Linear Angular and Enhanced rows of Table 3(b) are not
# legible: their values are None rather than guessed. The "Ours" rows repeat Table 8.
ABLATIONS: List[AblationRow] = [
    AblationRow("3a", "Hydra Attn", "ablations/t3_deit_t_hydra", "5.7", "1.1", "68.3"),
    AblationRow("3a", "Efficient Attn", "ablations/t3_deit_t_efficient", "5.7", "1.1", "70.2"),
    AblationRow("3a", "Linear Angular Attn", "ablations/t3_deit_t_angular", "5.7", "1.1", "70.8"),
    AblationRow("3a", "Enhanced Linear Attn", "ablations/t3_deit_t_enhanced", "5.8", "1.1", "72.9"),
    AblationRow("3a", "Ours", "flatten_deit_t", "6.1", "1.1", "74.1"),
    AblationRow("3b", "Hydra Attn", "ablations/t3_swin_t_hydra", "29", "4.5", "80.7"),
    AblationRow("3b", "Efficient Attn", "ablations/t3_swin_t_efficient", "29", "4.5", "81.0"),
    AblationRow("3b", "Linear Angular Attn", "ablations/t3_swin_t_angular", None, None, None),
    AblationRow("3b", "Enhanced Linear Attn", "ablations/t3_swin_t_enhanced", None, None, None),
    AblationRow("3b", "Ours", "flatten_swin_t", "29", "4.5", "82.1"),
    AblationRow("4", "Vanilla Linear Attention", "ablations/t4_deit_t_linear", "5.7", "1.1", "70.5"),
    AblationRow("4", "+ Focused Function", "ablations/t4_deit_t_linear_fp", "5.7", "1.1", "71.8"),
    AblationRow("4", "+ DWC", "ablations/t4_deit_t_linear_fp_dwc", "6.1", "1.1", "74.1"),
    AblationRow("4", "DeiT-T", "baselines/deit_t", "5.7", "1.2", "72.2"),
    AblationRow("5", "p = 2", "ablations/t5_swin_t_p2", None, None, "82.03"),
    AblationRow("5", "p = 3", "ablations/t5_swin_t_p3", None, None, "82.11"),
    AblationRow("5", "p = 4", "ablations/t5_swin_t_p4", None, None, "81.94"),
    AblationRow("5", "p = 8", "ablations/t5_swin_t_p8", None, None, "81.99"),
    AblationRow("5", "p = 32", "ablations/t5_swin_t_p32", None, None, "81.88"),
    AblationRow("6", "window 7^2", "ablations/t6_swin_t_win7", "29", "4.5", "81.6"),
    AblationRow("6", "window 14^2", "ablations/t6_swin_t_win14", "29", "4.5", "81.8"),
    AblationRow("6", "window 28^2", "ablations/t6_swin_t_win28", "29", "4.5", "81.9"),
    AblationRow("6", "window 56^2", "ablations/t6_swin_t_win56", "29", "4.5", "82.1"),
    AblationRow("6", "Swin-T (window 7^2)", "baselines/swin_t", "29", "4.5", "81.3"),
    AblationRow("7", "stage 1", "ablations/t7_swin_t_lsss", "29", "4.5", "81.7"),
    AblationRow("7", "stages 1-2", "ablations/t7_swin_t_llss", "29", "4.5", "82.1"),
    AblationRow("7", "stages 1-3", "ablations/t7_swin_t_llls", "30", "4.5", "82.0"),
    AblationRow("7", "stages 1-4", "ablations/t7_swin_t_llll", "30", "4.5", "81.9"),
    AblationRow("7", "Swin-T", "baselines/swin_t", "29", "4.5", "81.3"),
]
