"""What the collector reads from the live model and the machine for the manifest."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn


def text_config(config: Any) -> Any:
    """The decoder's config (multimodal configs nest it)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def config_int(config: Any, *names: str) -> int | None:
    """The first of ``names`` that the (text) config holds as an int."""
    if config is None:
        return None
    config = text_config(config)
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def model_name(model: nn.Module, config: Any) -> str:
    path = getattr(config, "_name_or_path", "") if config is not None else ""
    if path:
        return Path(str(path)).name or str(path)
    return type(model).__name__


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> str:
    for p in model.parameters():
        return str(p.dtype).removeprefix("torch.")
    return "unknown"


def hardware(device: torch.device) -> dict[str, Any]:
    hw: dict[str, Any] = {"cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        hw["device"] = torch.cuda.get_device_name(device)
        hw["device_count"] = torch.cuda.device_count()
    else:
        hw["device"] = "cpu"
        hw["device_count"] = 1
        hw["cpu_threads"] = torch.get_num_threads()
    return hw


def software() -> dict[str, Any]:
    import tracekit

    sw: dict[str, Any] = {
        "tracekit": tracekit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import transformers

        sw["transformers"] = transformers.__version__
    except ImportError:  # transformers is optional for hand-written models
        pass
    return sw
