"""What a cost primitive returns: times in seconds and the bound that set each one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: The bounds a time can be set by.
BOUNDS = ("compute", "memory", "network", "latency")
#: The links a collective's time can be set by (``none``: its floor).
LINKS = ("none", "nvlink", "nic")

F64 = NDArray[np.float64]
#: int8 indices into a tuple of names (:data:`BOUNDS`, :data:`LINKS`).
Codes = NDArray[np.int8]


def names_of(codes: Codes, names: Sequence[str]) -> NDArray[np.str_]:
    """The ``<U8`` names of int8 ``codes`` (indices into ``names``)."""
    return np.asarray(names, dtype="<U8")[codes]


@dataclass(frozen=True, kw_only=True)
class Cost:
    """Times of a primitive, element by element over the input arrays.

    ``time_s``: seconds. ``code``: the index into :data:`BOUNDS` of the bound that set each time (int8,
    the same shape); :attr:`bound` names it. Hot paths (the replay) read the codes, and never build
    the names.
    """

    time_s: F64
    code: Codes

    @property
    def bound(self) -> NDArray[np.str_]:
        """Which of :data:`BOUNDS` set each time (a ``<U8`` string array of the shape of ``time_s``)."""
        return names_of(self.code, BOUNDS)

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

    ``link_code``: the index into :data:`LINKS` of the link that set the time (:attr:`link` names it:
    "nvlink", "nic", or "none" when the floor did).
    """

    link_code: Codes
    nvlink_bytes_sent: F64
    nvlink_bytes_recv: F64
    network_bytes_sent: F64
    network_bytes_recv: F64
    #: The time NVLink traffic alone would take (0 without any), and the NIC traffic's.
    up_time_s: F64 | None = None
    out_time_s: F64 | None = None

    @property
    def link(self) -> NDArray[np.str_]:
        """Which of :data:`LINKS` set each time (a ``<U8`` string array)."""
        return names_of(self.link_code, LINKS)

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


def pick_largest(times: Sequence[F64], codes: Sequence[int]) -> tuple[F64, Codes]:
    """Element-wise maximum of ``times`` and the code of the largest (``codes[i]`` for ``times[i]``):
    the first wins on ties, and the first NaN where there is one, as ``np.argmax`` over their stack
    (one pass per candidate, no stack)."""
    shape = np.broadcast_shapes(*(np.shape(t) for t in times))
    best = np.broadcast_to(np.asarray(times[0], dtype=np.float64), shape)
    code = np.full(shape, codes[0], dtype=np.int8)
    if len(times) == 1:
        return np.array(best, dtype=np.float64), code
    for t, c in zip(times[1:], codes[1:], strict=True):
        t = np.asarray(t, dtype=np.float64)
        code[t > best] = c  # a later candidate wins only when strictly larger
        best = np.maximum(best, t)
    nan = np.isnan(best)  # NaN wherever a candidate is
    if nan.any():
        for t, c in zip(reversed(times), reversed(codes), strict=True):
            code[nan & np.isnan(t)] = c
    return np.array(best, dtype=np.float64), code
