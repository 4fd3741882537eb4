"""tracekit: trace-driven profiling and replay for Mixture-of-Experts LLM inference.

The public API is re-exported here; everything else is internal. Layers, each importing only from
those before it: ``schema`` <- ``trace`` (the store) <- ``collect`` / ``importers`` / ``synth`` <-
``hardware`` / ``models`` / ``cost`` <- ``replay`` / ``placement`` / ``reports`` <- ``cli``.
"""

from __future__ import annotations

from typing import Any

from tracekit._version import __version__
from tracekit.errors import TracekitError
from tracekit.schema import SCHEMA_VERSION, AttentionSpec, Manifest, ModelArch, ParallelLayout
from tracekit.trace import Trace, TraceWriter, open_trace, validate

__all__ = [
    "SCHEMA_VERSION",
    "AttentionSpec",
    "Manifest",
    "ModelArch",
    "ParallelLayout",
    "Trace",
    "TraceWriter",
    "TracekitError",
    "__version__",
    "open_trace",
    "record",
    "validate",
]


def record(model: Any, out: str, **options: Any) -> Any:
    """Record expert routing of ``model`` into the trace directory ``out`` (a context manager).

    Needs the ``torch`` extra; see :mod:`tracekit.collect`.
    """
    from tracekit.collect import record as _record

    return _record(model, out, **options)
