"""Synthetic traces at production scale: uniform, zipf, balanced or fitted routing."""

from tracekit.synth.fit import FitResult, fit_model
from tracekit.synth.generate import SynthConfig, SynthResult, synthesize
from tracekit.synth.routing import Router, RoutingModel, RoutingSampler
from tracekit.synth.spec import RoutingSpec, parse_spec

__all__ = [
    "FitResult",
    "Router",
    "RoutingModel",
    "RoutingSampler",
    "RoutingSpec",
    "SynthConfig",
    "SynthResult",
    "fit_model",
    "parse_spec",
    "synthesize",
]
