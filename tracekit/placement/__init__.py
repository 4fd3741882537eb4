"""Expert placement: physical expert slots per rank, replica routing, and placement policies.

``Placement`` (which logical expert each physical slot holds, per layer), ``route_to_slots`` (the
documented replica rule the replay uses), Parquet I/O in the trace's ``placement`` table schema.
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

__all__ = [
    "Placement",
    "placement_at",
    "placements_from_arrow",
    "read_placement",
    "read_placements",
    "route_to_slots",
    "write_placements",
]
