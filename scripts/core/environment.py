"""The context printed beside every measured figure: hardware, versions, batch, precision."""
from __future__ import annotations

import os
import platform
import time
from typing import Any, Dict, List, Optional

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def versions() -> Dict[str, Any]:
    import timm
    out = {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
    return out


def base_meta(device: torch.device, mode: str, **extra: Any) -> Dict[str, Any]:
    """Hardware and software of a measurement, plus ``extra`` (batch, dtype, ...)."""
    meta = {"mode": mode, "hardware": hardware(device), "cpu": cpu_name(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "device": device.type, **versions(), "load_avg_start": loadavg(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    meta.update(extra)
    return meta


def tag(meta: Dict[str, Any], img_size: Optional[int] = None, compiled: Optional[bool] = None) -> str:
    """Context printed beside every figure."""
    img = img_size or meta.get("img_size")
    img = f"{img}px" if img else "each config's img size"
    compiled = meta.get("compile") if compiled is None else compiled
    mode = ("compiled" + (" +freezing" if meta.get("inductor_freezing") else "")) if compiled else "eager"
    malloc = meta.get("cpu_malloc")
    return (f"[{meta['hardware']}; torch {meta['torch']}; timm {meta['timm']}; batch {meta['batch']}; "
            f"{meta['dtype']}; {meta['device']}; {img}; {mode}"
            f"{'; channels-last' if meta.get('channels_last') else ''}{'; train step' if meta.get('train') else ''}"
            f"{'; malloc ' + malloc.split(' ')[0] if malloc else ''}]")
