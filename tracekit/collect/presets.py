"""Tiny built-in models: real transformers architectures, small sizes, the real routing shape.

Each preset (``presets.json`` beside this module) names a transformers config class and keyword
arguments: hidden and FFN sizes and the layer count are tiny, but the routed-expert count, top-k,
expert groups and scoring are those of the full model named by ``full_model``, so a recorded trace
can be replayed against the full catalog model. Weights are random, drawn from a seed; nothing is
downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from tracekit.errors import UnknownNameError

_PRESETS_FILE = Path(__file__).with_name("presets.json")


@dataclass(frozen=True, kw_only=True)
class TinyPreset:
    """One built-in tiny model."""

    #: Preset name, e.g. ``tiny-deepseek-v3``.
    name: str
    #: Catalog name of the full model whose routing shape the preset keeps.
    full_model: str
    #: transformers config class name (``DeepseekV3Config``).
    config_class: str
    #: transformers causal-LM class name (``DeepseekV3ForCausalLM``).
    model_class: str
    #: Keyword arguments of the config class.
    config: dict[str, Any]


@cache
def _load() -> dict[str, TinyPreset]:
    raw = json.loads(_PRESETS_FILE.read_text())
    return {name: TinyPreset(name=name, **spec) for name, spec in raw["presets"].items()}


def preset_names() -> list[str]:
    """Names of the built-in tiny presets, sorted."""
    return sorted(_load())


def get_preset(name: str) -> TinyPreset:
    """The preset called ``name``; raises UnknownNameError listing the valid names."""
    presets = _load()
    if name not in presets:
        raise UnknownNameError(
            "model", name, presets, hint="or give the path of a local transformers model directory"
        )
    return presets[name]


def build_preset(name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Instantiate the preset's causal LM with random weights drawn from ``seed`` (eval mode)."""
    import transformers

    preset = get_preset(name)
    from tracekit.collect.tokenizer import BOS_ID, EOS_ID, PAD_ID

    kwargs = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, **preset.config}
    config = getattr(transformers, preset.config_class)(**kwargs)
    model_cls = getattr(transformers, preset.model_class)
    devices_rng = torch.random.fork_rng(devices=[])
    with devices_rng:
        torch.manual_seed(seed)
        model = model_cls(config)
    model = model.to(dtype=dtype)
    model.eval()
    return model
