"""Expert placement: physical expert slots per rank, replica routing, and placement policies.

``Placement`` (which logical expert each physical slot holds, per layer), ``route_to_slots`` (the
documented replica rule the replay uses), Parquet I/O in the trace's ``placement`` table schema, the
policy registry (``compute_placement``, ``policy_names``), EPLB's algorithms (``rebalance_experts``)
and plans over a trace's steps (``plan``: windows, periodic recomputation, migration bytes).
"""

from tracekit.placement.core import (
    Placement,
    placement_at,
    placements_from_arrow,
    read_placement,
    read_placements,
    route_to_slots,
    write_placements,
)
from tracekit.placement.eplb import EplbPlan, rebalance_experts
from tracekit.placement.loads import StepLoads, read_loads_file, trace_loads
from tracekit.placement.metrics import LoadScore, rank_imbalance, rank_token_loads, score_loads
from tracekit.placement.plan import PlanResult, moved_replicas, plan
from tracekit.placement.policies import (
    PlacementProblem,
    PolicySpec,
    compute_placement,
    get_policy,
    policy_names,
)

__all__ = [
    "EplbPlan",
    "LoadScore",
    "Placement",
    "PlacementProblem",
    "PlanResult",
    "PolicySpec",
    "StepLoads",
    "compute_placement",
    "get_policy",
    "moved_replicas",
    "placement_at",
    "placements_from_arrow",
    "plan",
    "policy_names",
    "rank_imbalance",
    "rank_token_loads",
    "read_loads_file",
    "read_placement",
    "read_placements",
    "rebalance_experts",
    "route_to_slots",
    "score_loads",
    "trace_loads",
    "write_placements",
]
