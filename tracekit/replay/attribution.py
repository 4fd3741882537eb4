"""The attribution stage: from every rank's priced components to layer and step times, and where
the time went.

A rank's time in a layer is its compute (attention, expert GEMMs, dense) plus the communication that
is not hidden: without two-batch overlap all of it; with it, ``max(0, comm - compute)`` (the
communication of one micro-batch hides under the other's compute). A layer takes as long as its
slowest rank; the mean over ranks is the *mean load*, the rest the *straggler* cost of routing
imbalance. A step is its layers plus the slowest rank's embedding and LM head. Each rank's bound is
its largest component's; a layer's bound is its slowest rank's; a step's bound the one carrying the
most of its time.

To change how the straggler is attributed, or how communication hides: this module.

Shape legend: ``W`` steps of the window, ``T`` target decoder layers, ``R`` ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracekit.replay.timing import BOUND_NAMES, COMM_COMPONENTS, COMPONENTS, WindowCost


@dataclass(frozen=True, kw_only=True, eq=False)
class RankTimes:
    """Per (step, layer, rank) [W, T, R]."""

    compute: np.ndarray
    comm: np.ndarray
    #: Communication not hidden under compute.
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


def attribute(cost: WindowCost, *, tbo: bool) -> Attribution:
    """Layer and step times of a priced window (see the module docstring)."""
    ranks = rank_times(cost, tbo=tbo)
    layers = layer_times(cost, ranks)
    return Attribution(ranks=ranks, layers=layers, steps=step_times(cost, layers))


def rank_times(cost: WindowCost, *, tbo: bool) -> RankTimes:
    c = cost.components
    compute = sum((c[n].time for n in COMPONENTS if n not in COMM_COMPONENTS), np.zeros(cost.layer_map.shape))
    comm = c["dispatch"].time + c["combine"].time + c["tp_comm"].time
    exposed = np.maximum(comm - compute, 0.0) if tbo else comm
    stack = np.stack([c[n].time for n in COMPONENTS])  # [components, W, T, R]
    largest = stack.argmax(axis=0)
    bstack = np.stack([c[n].bound for n in COMPONENTS])
    return RankTimes(
        compute=compute,
        comm=comm,
        exposed=exposed,
        total=compute + exposed,
        bound=np.take_along_axis(bstack, largest[None], axis=0)[0],
    )


def layer_times(cost: WindowCost, ranks: RankTimes) -> LayerTimes:
    total = ranks.total
    time = total.max(axis=-1)
    slowest = total.argmax(axis=-1)
    mean_load = total.mean(axis=-1)
    share = np.divide(ranks.exposed, ranks.comm, out=np.zeros_like(ranks.comm), where=ranks.comm > 0)
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
