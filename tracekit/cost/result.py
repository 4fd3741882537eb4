"""What a cost primitive returns: times in seconds and the bound that set each one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: The bounds a time can be set by.
BOUNDS = ("compute", "memory", "network", "latency")

F64 = NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class Cost:
    """Times of a primitive, element by element over the input arrays.

    ``time_s``: seconds. ``bound``: which of :data:`BOUNDS` set each time (a ``<U8`` string array of
    the same shape).
    """

    time_s: F64
    bound: NDArray[np.str_]

    def scalar(self) -> dict[str, Any]:
        """``{"time_s": float, "bound": str}`` of a 0-d (single-element) result."""
        return {
            "time_s": float(np.asarray(self.time_s).reshape(-1)[0]),
            "bound": str(np.asarray(self.bound).reshape(-1)[0]),
        }


@dataclass(frozen=True, kw_only=True)
class ComputeCost(Cost):
    """A roofline result: the FLOPs and HBM bytes it was computed from."""

    flops: F64
    hbm_bytes: F64


@dataclass(frozen=True, kw_only=True)
class GroupedGemmCost(ComputeCost):
    """A grouped expert GEMM per rank: also the experts that ran and the weight bytes they read."""

    active_experts: NDArray[np.int64]
    weight_bytes: F64


@dataclass(frozen=True, kw_only=True)
class CommCost(Cost):
    """A communication time per rank ([..., R]) and the bytes each rank moved over each link.

    ``link``: which link set the time ("nvlink", "nic", or "none" when the floor did).
    """

    link: NDArray[np.str_]
    nvlink_bytes_sent: F64
    nvlink_bytes_recv: F64
    network_bytes_sent: F64
    network_bytes_recv: F64
    #: The time NVLink traffic alone would take (0 without any), and the NIC traffic's.
    up_time_s: F64 | None = None
    out_time_s: F64 | None = None

    def slowest(self) -> dict[str, Any]:
        """The slowest rank of a single collective ([R] result) as a plain dict."""
        t = np.asarray(self.time_s).reshape(-1)
        i = int(np.argmax(t))
        return {
            "time_s": float(t[i]),
            "bound": str(np.asarray(self.bound).reshape(-1)[i]),
            "link": str(np.asarray(self.link).reshape(-1)[i]),
            "rank": i,
            "nvlink_bytes_sent": float(np.asarray(self.nvlink_bytes_sent).reshape(-1)[i]),
            "network_bytes_sent": float(np.asarray(self.network_bytes_sent).reshape(-1)[i]),
        }


def pick_bound(candidates: dict[str, F64]) -> tuple[F64, NDArray[np.str_]]:
    """Element-wise maximum of named times and the name of the largest (first wins on ties)."""
    names = list(candidates)
    stack = np.stack(np.broadcast_arrays(*[np.asarray(candidates[n], dtype=np.float64) for n in names]))
    idx = np.argmax(stack, axis=0)
    return stack.max(axis=0), np.asarray(names, dtype="<U8")[idx]
