"""Replay: re-time a trace's real routing on a hardware model under a deployment.

``replay(trace, Deployment(...))`` returns a :class:`ReplayResult` (polars tables and a typed
:class:`ReplaySummary`); ``write_result`` writes it as a result directory. ``compare``,
``compare_at_interactivity``, ``at_interactivity``, ``run_sweep``, ``replay_disaggregated`` and
``placement_whatif`` replay several deployments. See docs/replay.md.
"""

from tracekit.hardware.comm_impls import COMM_IMPLS
from tracekit.replay.compare import (
    CompareResult,
    SystemResult,
    at_interactivity,
    compare,
    compare_at_interactivity,
    default_deployment,
    write_compare,
)
from tracekit.replay.deployment import PRECISION_PARTS, Deployment, Precision
from tracekit.replay.disagg import replay_disaggregated
from tracekit.replay.engine import ReplayResult, replay
from tracekit.replay.results import read_result, write_result
from tracekit.replay.setup import ReplaySetup, make_setup, target_model
from tracekit.replay.summary import PhaseSummary, ReplaySummary
from tracekit.replay.sweep import grid, pareto, run_sweep, write_sweep
from tracekit.replay.whatif import PlacementWhatIf, placement_whatif

__all__ = [
    "COMM_IMPLS",
    "PRECISION_PARTS",
    "CompareResult",
    "Deployment",
    "PhaseSummary",
    "PlacementWhatIf",
    "Precision",
    "ReplayResult",
    "ReplaySetup",
    "ReplaySummary",
    "SystemResult",
    "at_interactivity",
    "compare",
    "compare_at_interactivity",
    "default_deployment",
    "grid",
    "make_setup",
    "pareto",
    "placement_whatif",
    "read_result",
    "replay",
    "replay_disaggregated",
    "run_sweep",
    "target_model",
    "write_compare",
    "write_result",
    "write_sweep",
]
