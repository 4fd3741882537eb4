"""Replay: re-time a trace's real routing on a hardware model under a deployment.

``replay(trace, Deployment(...))`` returns a :class:`ReplayResult` (polars tables and a summary);
``write_result`` writes it as a result directory; ``compare``, ``at_interactivity`` and
``run_sweep`` replay several deployments. See docs/replay.md.
"""

from tracekit.replay.compare import SystemResult, at_interactivity, compare, default_deployment
from tracekit.replay.deployment import IMPLS, PRECISION_PARTS, Deployment, Precision
from tracekit.replay.disagg import replay_disaggregated
from tracekit.replay.engine import ReplayResult, replay
from tracekit.replay.results import read_result, write_result
from tracekit.replay.sweep import grid, pareto, run_sweep, write_sweep

__all__ = [
    "IMPLS",
    "PRECISION_PARTS",
    "Deployment",
    "Precision",
    "ReplayResult",
    "SystemResult",
    "at_interactivity",
    "compare",
    "default_deployment",
    "grid",
    "pareto",
    "read_result",
    "replay",
    "replay_disaggregated",
    "run_sweep",
    "write_result",
    "write_sweep",
]
