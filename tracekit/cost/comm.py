"""Communication primitives: expert-parallel dispatch and combine, all-to-all, all-reduce,
all-gather, reduce-scatter.

Links: ranks in one scale-up domain talk over NVLink (``scaleup_bw`` per GPU per direction), ranks
in different domains over their NICs (``scaleout_bw``). A rank's time is

    max(floor, latency + max(bytes_sent, bytes_recv) / (link_bw * eff / penalty))

taken over the links it uses (the NIC term also adds ``scaleout_latency_s - scaleup_latency_s``), with the implementation's parameters (:class:`CommParams`: fitted
by ``tracekit calibrate`` where measurements exist). Implementations:

- ``deepep-normal``: per-rank dedup inside a domain; across domains a token crosses the network
  once per destination domain, to the rank with the same local index there, which forwards it over
  NVLink to its target ranks (so NVLink carries every (token, rank) pair whose local indices differ).
- ``deepep-ll``: one copy per (token, expert); NVLink inside the domain, the NIC across.
- ``deepep-ll-rdma``: as deepep-ll but every peer over the NIC (DeepEP's first low-latency release).
- ``nvl-a2a``: one-sided NVLink all-to-all (TensorRT-LLM / FlashInfer MoE all-to-all), per-rank
  dedup, inside one scale-up domain only.
- ``nccl``: NCCL all-to-all of the per-rank matrix; NVLink inside, the NIC across.

Combine moves the same tokens back (each rank's sent and received bytes swap), with
``combine_latency_s`` and ``combine_floor_s``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from tracekit.cost.result import BOUNDS, F64, LINKS, CommCost, Cost, pick_largest
from tracekit.cost.traffic import EPTraffic, num_domains
from tracekit.errors import DeploymentError, UsageError, param
from tracekit.hardware import COMM_IMPL_REGISTRY, CommParams, HardwareSpec, comm_impl


def _as_traffic(traffic: EPTraffic | ArrayLike, hw: HardwareSpec) -> EPTraffic:
    if isinstance(traffic, EPTraffic):
        if traffic.domain_size != hw.scaleup_size:
            raise UsageError(
                f"traffic was counted for scale-up domains of {traffic.domain_size} ranks but {hw.name} has "
                f"{hw.scaleup_size}: build it with domain_size=hw.scaleup_size"
            )
        return traffic
    return EPTraffic.from_rank_matrix(traffic, hw.scaleup_size)


def link_loads(traffic: EPTraffic, impl: str, bytes_per_token: float = 1.0) -> dict[str, F64]:
    """Bytes each rank sends and receives on NVLink and on the NIC for one dispatch ([..., R] each).

    Keys: nvlink_sent, nvlink_recv, network_sent, network_recv. Same-rank traffic is free. What one
    copy on the wire is and which links it takes follow the implementation's registry entry
    (:mod:`tracekit.hardware.comm_impls`).
    """
    spec = comm_impl(impl)
    r = traffic.num_ranks
    s = traffic.domain_size
    if spec.dedup == "domain" and r > s:
        return _deepep_normal_loads(traffic, bytes_per_token)
    m = traffic.expert_tokens if spec.dedup == "expert" else traffic.rank_tokens
    # Row and column sums, split into the sender's own domain and the rest (one pass each over the
    # [..., R, R] matrix; the byte factor applies to the [..., R] sums).
    own = np.diagonal(m, axis1=-2, axis2=-1)
    if r <= s or spec.links == "nic":
        sent, recv = m.sum(axis=-1), m.sum(axis=-2)
        # nic: every peer over the NIC, even inside the domain; otherwise one domain holds all
        local_sent, local_recv = (own, own) if spec.links == "nic" else (sent, recv)
    else:
        q = num_domains(r, s)
        pad = q * s - r
        mp = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(0, pad), (0, pad)]) if pad else m
        lead = m.shape[:-2]
        dom = np.arange(r) // s
        by_dom_sent = mp.reshape(*lead, q * s, q, s).sum(axis=-1)[..., :r, :]  # [..., R, Q]
        by_dom_recv = mp.reshape(*lead, q, s, q * s).sum(axis=-2)[..., :, :r]  # [..., Q, R]
        local_sent = np.take_along_axis(by_dom_sent, np.broadcast_to(dom[:, None], (*lead, r, 1)), -1)[..., 0]
        local_recv = np.take_along_axis(by_dom_recv, np.broadcast_to(dom[None, :], (*lead, 1, r)), -2)[
            ..., 0, :
        ]
        # totals from the domain sums: without traffic to other domains they equal the local sums
        sent, recv = by_dom_sent.sum(axis=-1), by_dom_recv.sum(axis=-2)
    loads = {
        "nvlink_sent": (local_sent - own) * bytes_per_token,
        "nvlink_recv": (local_recv - own) * bytes_per_token,
        "network_sent": (sent - local_sent) * bytes_per_token,
        "network_recv": (recv - local_recv) * bytes_per_token,
    }
    if spec.links == "domain" and np.any(loads["network_sent"] > 0):
        others = [c.name for c in COMM_IMPL_REGISTRY.values() if c.links != "domain"]
        raise DeploymentError(
            f"{impl} runs inside one scale-up domain only; {r} ranks span {num_domains(r, s)} domains of {s}: "
            f"use {', '.join(others)}, or fewer ranks"
        )
    return loads


def _deepep_normal_loads(traffic: EPTraffic, bpt: float) -> dict[str, F64]:
    r = traffic.num_ranks
    s = traffic.domain_size
    if r % s:
        raise DeploymentError(
            f"deepep-normal across domains needs whole domains: {r} ranks is not a multiple of {s} per domain"
        )
    n = r // s
    lead = traffic.rank_tokens.shape[:-2]
    m = (traffic.rank_tokens * bpt).reshape(*lead, n, s, n, s)  # [a, i, b, j]
    diff_local = ~np.eye(s, dtype=bool)  # NVLink carries pairs whose local indices differ
    nvl = m * diff_local[:, None, :]  # broadcast over [i, b, j] (a leading)
    # sender on NVLink of (a, i) -> (b, j) is (b, i): sent by rank (b, i)
    nvl_sent = np.swapaxes(nvl.sum(axis=(-4, -1)), -1, -2).reshape(*lead, r)  # sum a, j -> [i, b] -> [b, i]
    nvl_recv = nvl.sum(axis=(-4, -3)).reshape(*lead, r)  # sum a, i -> [b, j]
    d = (traffic.domain_tokens * bpt).reshape(*lead, n, s, n)  # [a, i, b]
    remote = ~np.eye(n, dtype=bool)
    net = d * remote[:, None, :]
    net_sent = net.sum(axis=-1).reshape(*lead, r)
    net_recv = np.swapaxes(net.sum(axis=-3), -1, -2).reshape(*lead, r)  # sum a -> [i, b] -> [b, i]
    return {
        "nvlink_sent": nvl_sent,
        "nvlink_recv": nvl_recv,
        "network_sent": net_sent,
        "network_recv": net_recv,
    }


_NONE, _NVLINK, _NIC = (LINKS.index(n) for n in ("none", "nvlink", "nic"))
_LATENCY, _NETWORK = BOUNDS.index("latency"), BOUNDS.index("network")


def _group_factor(ranks: int) -> float:
    return float(np.log2(max(ranks, 8) / 8.0))


def _time(
    hw: HardwareSpec, p: CommParams, loads: dict[str, F64], ranks: int, *, latency_s: float, floor_s: float
) -> tuple[F64, Any, Any, F64, F64]:
    """(time, bound, link, NVLink-limited time, NIC-limited time) of each rank."""
    g = _group_factor(ranks)
    penalty = 1.0 + p.eff_log2_penalty * g
    lat = latency_s + p.latency_log2_s * g
    up_bytes = np.maximum(loads["nvlink_sent"], loads["nvlink_recv"])
    out_bytes = np.maximum(loads["network_sent"], loads["network_recv"])
    up_xfer = up_bytes / (hw.scaleup_bw * p.eff_up) * penalty
    out_xfer = out_bytes / (hw.scaleout_bw * p.eff_out) * penalty
    t_up = np.where(up_bytes > 0, lat + up_xfer, 0.0)
    hop = max(hw.scaleout_latency_s - hw.scaleup_latency_s, 0.0)  # extra latency of leaving the domain
    t_out = np.where(out_bytes > 0, lat + hop + p.latency_out_s + out_xfer, 0.0)
    floor = np.full(up_bytes.shape, floor_s)
    t, link = pick_largest([floor, t_up, t_out], [_NONE, _NVLINK, _NIC])
    nic, nvlink = link == _NIC, link == _NVLINK
    xfer = np.where(nic, out_xfer, np.where(nvlink, up_xfer, 0.0))
    lat_of = np.where(nic, lat + hop + p.latency_out_s, lat)
    latency = (link == _NONE) | (xfer < lat_of)
    bound = np.where(latency, _LATENCY, _NETWORK).astype(np.int8)
    return t, bound, link, t_up, t_out


def dispatch(
    hw: HardwareSpec,
    traffic: EPTraffic | ArrayLike,
    *,
    impl: str = "deepep-normal",
    bytes_per_token: float = 1.0,
) -> CommCost:
    """Dispatch time of every rank ([..., R]).

    ``traffic``: an :class:`EPTraffic` (token counts; multiply by ``bytes_per_token``) or a per-peer
    matrix ``[..., R, R]`` (bytes when ``bytes_per_token`` is 1), see ``EPTraffic.from_rank_matrix``.
    """
    t = _as_traffic(traffic, hw)
    return dispatch_from_loads(hw, link_loads(t, impl, bytes_per_token), impl=impl, ranks=t.num_ranks)


def dispatch_from_loads(hw: HardwareSpec, loads: dict[str, F64], *, impl: str, ranks: int) -> CommCost:
    """Dispatch time of every rank from its link loads (bytes, the keys of :func:`link_loads`) in an
    all-to-all of ``ranks`` ranks: what :func:`dispatch` computes once the loads are known (the
    planner's fast path counts the loads without the per-peer matrices)."""
    p = hw.comm_params(impl)
    timed = _time(hw, p, loads, ranks, latency_s=p.dispatch_latency_s, floor_s=p.dispatch_floor_s)
    return _comm_cost(*timed, loads)


def _comm_cost(time: F64, code: Any, link: Any, t_up: F64, t_out: F64, loads: dict[str, F64]) -> CommCost:
    """A CommCost from the times and this rank's link loads (sent / received per link)."""
    return CommCost(
        time_s=time,
        code=code,
        link_code=link,
        up_time_s=t_up,
        out_time_s=t_out,
        nvlink_bytes_sent=loads["nvlink_sent"],
        nvlink_bytes_recv=loads["nvlink_recv"],
        network_bytes_sent=loads["network_sent"],
        network_bytes_recv=loads["network_recv"],
    )


def combine(
    hw: HardwareSpec,
    traffic: EPTraffic | ArrayLike,
    *,
    impl: str = "deepep-normal",
    bytes_per_token: float = 1.0,
) -> CommCost:
    """Combine time of every rank ([..., R]): the dispatch's tokens sent back (``traffic`` is the
    dispatch's traffic; ``bytes_per_token`` the combine's, usually bf16 ``2 * hidden``)."""
    t = _as_traffic(traffic, hw)
    return combine_from_loads(hw, link_loads(t, impl, bytes_per_token), impl=impl, ranks=t.num_ranks)


def combine_from_loads(hw: HardwareSpec, loads: dict[str, F64], *, impl: str, ranks: int) -> CommCost:
    """Combine time of every rank from the link loads of the dispatch it answers (bytes at the
    combine's payload): each rank's sent and received bytes swap (see :func:`dispatch_from_loads`)."""
    p = hw.comm_params(impl)
    swapped = {
        "nvlink_sent": loads["nvlink_recv"],
        "nvlink_recv": loads["nvlink_sent"],
        "network_sent": loads["network_recv"],
        "network_recv": loads["network_sent"],
    }
    timed = _time(hw, p, swapped, ranks, latency_s=p.combine_latency_s, floor_s=p.combine_floor_s)
    return _comm_cost(*timed, swapped)


def alltoall(hw: HardwareSpec, *, nbytes: ArrayLike, ranks: int, impl: str = "nccl") -> CommCost:
    """A uniform all-to-all: every rank sends ``nbytes`` in all, split evenly over the ``ranks``
    ranks (itself included). Result per rank: ``[..., R]`` for ``nbytes`` of shape ``[...]``."""
    if ranks < 1:
        raise UsageError(f"ranks must be >= 1, got {ranks}")
    b = np.asarray(nbytes, dtype=np.float64)
    if np.any(b < 0):
        raise UsageError(
            f"{param('nbytes', '--bytes')} must be >= 0, got {float(b.min()):g}; give a byte count per rank"
        )
    m = np.broadcast_to(b[..., None, None] / ranks, (*b.shape, ranks, ranks))
    return dispatch(hw, EPTraffic.from_rank_matrix(m, hw.scaleup_size), impl=impl)


def _collective(hw: HardwareSpec, nbytes: ArrayLike, ranks: int, impl: str, kind: str) -> Cost:
    if ranks < 1:
        raise UsageError(f"ranks must be >= 1, got {ranks}")
    b = np.asarray(nbytes, dtype=np.float64)
    if np.any(b < 0):
        raise UsageError(
            f"{param('nbytes', '--bytes')} must be >= 0, got {float(b.min()):g}; give a byte count per rank"
        )
    p = hw.comm_params(impl)
    s = min(ranks, hw.scaleup_size)
    n = num_domains(ranks, hw.scaleup_size)
    passes = 2.0 if kind == "allreduce" else 1.0
    g = _group_factor(ranks)
    penalty = 1.0 + p.eff_log2_penalty * g
    up = passes * (s - 1) / s * b / (hw.scaleup_bw * p.eff_up) * penalty
    out = passes * (n - 1) / n * b / s / (hw.scaleout_bw * p.eff_out) * penalty if n > 1 else np.zeros_like(b)
    lat = np.full(b.shape, p.dispatch_latency_s + p.latency_log2_s * g)
    if ranks == 1:
        t = np.zeros(b.shape)
        return Cost(time_s=t, code=np.full(b.shape, _LATENCY, dtype=np.int8))
    xfer = up + out
    t = np.maximum(lat + xfer, p.dispatch_floor_s)
    return Cost(time_s=t, code=np.where(xfer > lat, _NETWORK, _LATENCY).astype(np.int8))


def allreduce(hw: HardwareSpec, *, nbytes: ArrayLike, ranks: int, impl: str = "nccl") -> Cost:
    """All-reduce of ``nbytes`` per rank: hierarchical (reduce-scatter and all-gather over NVLink
    inside each domain, ring all-reduce of the 1/S shard over the NIC across domains)."""
    return _collective(hw, nbytes, ranks, impl, "allreduce")


def allgather(hw: HardwareSpec, *, nbytes: ArrayLike, ranks: int, impl: str = "nccl") -> Cost:
    """All-gather whose output is ``nbytes`` per rank (each rank contributes ``nbytes / ranks``)."""
    return _collective(hw, nbytes, ranks, impl, "allgather")


def reduce_scatter(hw: HardwareSpec, *, nbytes: ArrayLike, ranks: int, impl: str = "nccl") -> Cost:
    """Reduce-scatter whose input is ``nbytes`` per rank (each rank keeps ``nbytes / ranks``)."""
    return _collective(hw, nbytes, ranks, impl, "reduce_scatter")
