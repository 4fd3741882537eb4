"""Cost primitives, vectorised over numpy arrays: each returns times in seconds and the bound
(compute, memory, network, latency) that set each one. See docs/hardware.md."""

from tracekit.cost.comm import (
    allgather,
    allreduce,
    alltoall,
    combine,
    dispatch,
    link_loads,
    reduce_scatter,
)
from tracekit.cost.compute import attention, gemm, grouped_gemm, roofline
from tracekit.cost.result import BOUNDS, CommCost, ComputeCost, Cost, GroupedGemmCost
from tracekit.cost.traffic import (
    EPTraffic,
    balanced_traffic,
    contiguous_expert_to_rank,
    ep_traffic,
    expected_uniform_traffic,
    random_routing,
)

__all__ = [
    "BOUNDS",
    "CommCost",
    "ComputeCost",
    "Cost",
    "EPTraffic",
    "GroupedGemmCost",
    "allgather",
    "allreduce",
    "alltoall",
    "attention",
    "balanced_traffic",
    "combine",
    "contiguous_expert_to_rank",
    "dispatch",
    "ep_traffic",
    "expected_uniform_traffic",
    "gemm",
    "grouped_gemm",
    "link_loads",
    "random_routing",
    "reduce_scatter",
    "roofline",
]
