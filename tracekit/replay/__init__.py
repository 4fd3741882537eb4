"""Replay: re-time a trace's real routing on a hardware model under a deployment.

``replay(trace, Deployment(...))`` returns a :class:`ReplayResult` (polars tables and a summary);
``write_result`` writes it as a result directory. See docs/replay.md.
"""

from tracekit.replay.deployment import IMPLS, PRECISION_PARTS, Deployment, Precision
from tracekit.replay.engine import ReplayResult, replay

__all__ = ["IMPLS", "PRECISION_PARTS", "Deployment", "Precision", "ReplayResult", "replay"]
