"""Routing statistics: skew, co-activation, cross-layer correlation and drift of expert routing."""

from tracekit.stats.compute import (
    TABLE_FILES,
    RoutingStats,
    compute_stats,
    hot_set_size,
    load_stats_or_trace,
    read_stats,
)

__all__ = [
    "TABLE_FILES",
    "RoutingStats",
    "compute_stats",
    "hot_set_size",
    "load_stats_or_trace",
    "read_stats",
]
