"""Collectors: record expert routing from live PyTorch MoE models into a trace.

Needs the ``torch`` extra. The public API::

    record(model, out, ...)            context manager: every forward of the model is one step
    RoutingCollector(model, out, ...)  begin_step / end_step for engines that drive their own steps
    register_moe(module_class, ...)    teach the collector another model's router or experts
    presets: tiny built-in models (tiny-mixtral, tiny-deepseek-v3, ...)
"""

from __future__ import annotations

from tracekit.collect.collector import PhaseDetector, RoutingCollector, StepInfo, default_phase
from tracekit.collect.record import ForwardRecorder, record
from tracekit.collect.sites import (
    MoERegistration,
    MoESite,
    find_moe_sites,
    register_moe,
    registered_moe,
    unregister_moe,
)

__all__ = [
    "ForwardRecorder",
    "MoERegistration",
    "MoESite",
    "PhaseDetector",
    "RoutingCollector",
    "StepInfo",
    "default_phase",
    "find_moe_sites",
    "record",
    "register_moe",
    "registered_moe",
    "unregister_moe",
]
