"""The attribution stage: from every rank's priced kernels and collectives to layer and step times,
and where the time went.

A collective hides only under the compute that real engines run beside it, stage by stage: a
*block* of compute ``c`` beside a collective of duration ``span`` whose kernels take ``busy`` of the
GPU (SMs held in flight, NVLink copies that stay resident) lasts ``max(span, c + busy)``, the
collective slowed by its implementation's ``overlap_derate``. Per rank and layer:

- no overlap: compute, then every collective in full;
- single-batch overlap: the dispatch beside the shared experts, the combine beside the down GEMM
  (a third of the routed experts' GEMM time);
- two-batch overlap in decode (DeepSeek's and SGLang's five-stage pipeline, micro-batches offset by
  two stages): micro-batch ``a``'s dispatch runs beside ``a``'s shared experts and ``b``'s first
  attention stage (norms, projections), ``a``'s combine beside ``b``'s second (core, output
  projection, router);
- two-batch overlap in prefill (two stages per layer, no offset): each dispatch and combine beside one
  block of the other micro-batch: ``D(a) | X(b)``, ``D(b) | Y(a)``, ``C(a) | Y(b)``, ``C(b) | X(a)``,
  with ``X`` the attention, router and shared experts and ``Y`` the routed experts; the compute runs
  on the SMs the all-to-all kernels leave, all layer long (SGLang gives DeepGEMM the GPU's SMs minus
  DeepEP's).

The send and receive kernels (``launch``) and the tensor-parallel all-reduce are never hidden. A
layer takes as long as its slowest rank; the mean over ranks is the *mean load*, the rest the
*straggler* cost of routing imbalance. A step is its layers plus the slowest rank's embedding and
LM head (and MTP draft passes, :mod:`tracekit.replay.mtp`). Each rank's bound is its largest component's; a layer's bound is its slowest rank's; a
step's bound the one carrying the most of its time.

To change how the straggler is attributed, or how communication hides: this module.

Shape legend: ``W`` steps of the window, ``T`` target decoder layers, ``R`` ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracekit.replay.timing import (
    BOUND_NAMES,
    COMM_COMPONENTS,
    COMPONENTS,
    CommTimes,
    WindowCost,
    bound_of_largest,
)


@dataclass(frozen=True, kw_only=True, eq=False)
class RankTimes:
    """Per (step, layer, rank) [W, T, R]."""

    compute: np.ndarray
    #: Every collective in full (dispatch, combine with their kernels, tensor-parallel all-reduce).
    comm: np.ndarray
    #: ``total - compute``: the communication not hidden under compute, and compute slowed by it.
    exposed: np.ndarray
    total: np.ndarray
    #: int8 bound code of the rank's largest component.
    bound: np.ndarray


@dataclass(frozen=True, kw_only=True, eq=False)
class LayerTimes:
    """Per (step, layer) [W, T]."""

    time: np.ndarray
    #: Mean of the ranks' times.
    mean_load: np.ndarray
    #: ``time - mean_load``: what the slowest rank adds.
    straggler: np.ndarray
    slowest_rank: np.ndarray
    bound: np.ndarray
    #: Per communication component: its exposed share, [W, T, R].
    exposed_parts: dict[str, np.ndarray]


@dataclass(frozen=True, kw_only=True, eq=False)
class StepTimes:
    """Per step [W]."""

    time: np.ndarray
    #: Straggler seconds: over layers, plus the slowest rank's embedding and LM head beyond the mean.
    straggler: np.ndarray
    bound: np.ndarray
    #: Per (step, rank) [W, R]: embedding + LM head.
    edge: np.ndarray


@dataclass(frozen=True, kw_only=True, eq=False)
class Attribution:
    ranks: RankTimes
    layers: LayerTimes
    steps: StepTimes


#: How a layer's collectives overlap its compute.
SCHEDULES = ("serial", "sbo", "tbo-decode", "tbo-prefill")


def schedule_of(*, tbo: bool, sbo: bool, phase: str) -> str:
    if tbo:
        return "tbo-decode" if phase == "decode" else "tbo-prefill"
    return "sbo" if sbo else "serial"


def attribute(cost: WindowCost, *, schedule: str, derate: float = 1.0) -> Attribution:
    """Layer and step times of a priced window (see the module docstring)."""
    ranks = rank_times(cost, schedule=schedule, derate=derate)
    layers = layer_times(cost, ranks)
    return Attribution(ranks=ranks, layers=layers, steps=step_times(cost, layers))


def _block(window: np.ndarray, comm: CommTimes, m: int, derate: float) -> np.ndarray:
    """Seconds beyond ``window`` of compute that micro-batch ``m``'s collective adds beside it."""
    span = comm.span[m] * derate
    busy = comm.busy[m] * derate
    return np.maximum(span, window + busy) - window


def _total(cost: WindowCost, compute: np.ndarray, schedule: str, derate: float) -> np.ndarray:
    """[W, T, R] every rank's time in every layer under ``schedule``."""
    st, d, c = cost.stages, cost.dispatch, cost.combine
    fixed = cost.tp_comm.sum(axis=0) + d.launch.sum(axis=0) + c.launch.sum(axis=0)
    if schedule == "serial":
        return compute + d.span.sum(axis=0) + c.span.sum(axis=0) + fixed
    if schedule == "sbo":
        down = st["experts"][0] / 3.0  # the down GEMM: a third of the routed experts' GEMM FLOPs
        return compute + _block(st["shared"][0], d, 0, derate) + _block(down, c, 0, derate) + fixed
    if schedule == "tbo-decode":
        extra = np.zeros(compute.shape)
        for m, o in ((0, 1), (1, 0)):
            extra += _block(st["shared"][m] + st["attn0"][o], d, m, derate)
            extra += _block(st["attn1"][o], c, m, derate)
        return compute + extra + fixed
    # prefill TBO runs its GEMMs on the SMs the normal all-to-all kernels leave (SGLang sets
    # DeepGEMM's SM count to the GPU's minus DeepEP's), for the whole layer
    slow = 1.0 / max(1.0 - cost.comm_sm_frac, 0.05)
    x = (st["attn0"] + st["attn1"] + st["shared"] + st["ffn"]) * slow  # [2, W, T, R]
    y = st["experts"] * slow
    d = CommTimes(span=d.span, busy=np.zeros(d.busy.shape), launch=d.launch)
    c = CommTimes(span=c.span, busy=np.zeros(c.busy.shape), launch=c.launch)
    blocks = (
        _block(x[1], d, 0, derate) + x[1],
        _block(y[0], d, 1, derate) + y[0],
        _block(y[1], c, 0, derate) + y[1],
        _block(x[0], c, 1, derate) + x[0],
    )
    return sum(blocks, np.zeros(compute.shape)) + fixed


def rank_times(cost: WindowCost, *, schedule: str, derate: float = 1.0) -> RankTimes:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown overlap schedule {schedule!r}")
    comp = cost.components
    compute = sum(
        (comp[n].time for n in COMPONENTS if n not in COMM_COMPONENTS), np.zeros(cost.layer_map.shape)
    )
    comm = comp["dispatch"].time + comp["combine"].time + comp["tp_comm"].time
    total = np.maximum(_total(cost, compute, schedule, derate), compute)
    return RankTimes(
        compute=compute,
        comm=comm,
        exposed=total - compute,
        total=total,
        bound=bound_of_largest([comp[n].time for n in COMPONENTS], [comp[n].bound for n in COMPONENTS]),
    )


def layer_times(cost: WindowCost, ranks: RankTimes) -> LayerTimes:
    """The slowest rank sets a layer's time. In aggregated serving, with chance ``p`` some rank
    also runs a prefill chunk (``c`` per layer: its attention core, what its rows add to the rank's
    other kernels, the extra all-to-all of its tokens) and the layer takes ``max(slowest, mean + c)``,
    plus what the chunks' tokens add to every rank's routed experts (``x``), plus ``e`` when decode
    runs under CUDA graphs (such a step is not captured: every kernel launches eagerly): the
    expected time is
    ``(1 - p) * slowest + p * (e + x + max(slowest, mean + c))`` (a straggler too)."""
    total = ranks.total
    time = total.max(axis=-1)
    slowest = total.argmax(axis=-1)
    mean_load = total.mean(axis=-1)
    if cost.chunk_s is not None and cost.chunk_prob > 0:
        p = cost.chunk_prob
        eager = 0.0 if cost.chunk_eager_s is None else cost.chunk_eager_s
        experts = 0.0 if cost.chunk_moe_s is None else cost.chunk_moe_s
        time = (1.0 - p) * time + p * (eager + experts + np.maximum(time, mean_load + cost.chunk_s))
    share = np.divide(
        np.minimum(ranks.exposed, ranks.comm), ranks.comm, out=np.zeros_like(ranks.comm), where=ranks.comm > 0
    )
    return LayerTimes(
        time=time,
        mean_load=mean_load,
        straggler=time - mean_load,
        slowest_rank=slowest,
        bound=np.take_along_axis(ranks.bound, slowest[..., None], axis=-1)[..., 0],
        exposed_parts={n: cost.components[n].time * share for n in COMM_COMPONENTS},
    )


def step_times(cost: WindowCost, layers: LayerTimes) -> StepTimes:
    edge = cost.embedding.time + cost.lm_head.time
    if cost.draft is not None:  # MTP draft passes: per rank, synchronised like the edges
        edge = edge + cost.draft.time
    edge_max = edge.max(axis=-1)
    return StepTimes(
        time=layers.time.sum(axis=-1) + edge_max,
        straggler=layers.straggler.sum(axis=-1) + edge_max - edge.mean(axis=-1),
        bound=_step_bound(layers.time, layers.bound, edge_max, cost.lm_head.bound.max(axis=-1)),
        edge=edge,
    )


def _step_bound(
    layer_time: np.ndarray, layer_bound: np.ndarray, edge: np.ndarray, edge_bound: np.ndarray
) -> np.ndarray:
    """Per step: the bound carrying the most time over its layers (and embedding / LM head)."""
    W = layer_time.shape[0]
    acc = np.zeros((W, len(BOUND_NAMES)))
    for b in range(len(BOUND_NAMES)):
        acc[:, b] = np.where(layer_bound == b, layer_time, 0.0).sum(axis=-1) + np.where(
            edge_bound == b, edge, 0.0
        )
    return acc.argmax(axis=-1)
