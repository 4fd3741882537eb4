"""How balanced a placement is: per-rank load imbalance from expert loads.

``imbalance = (max - mean) / mean`` of the tokens each rank receives (0: perfectly balanced), with
each expert's tokens split evenly over its replicas (the policies' estimate; the replay gives exact
counts through ``route_to_slots``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracekit.placement.core import Placement


def rank_imbalance(rank_loads: np.ndarray) -> np.ndarray:
    """``(max - mean) / mean`` over the last axis (ranks); 0 where a row has no load."""
    x = np.asarray(rank_loads, dtype=np.float64)
    mean = x.mean(axis=-1)
    peak = x.max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(mean > 0, (peak - mean) / np.where(mean > 0, mean, 1.0), 0.0)
    return out


@dataclass(frozen=True, kw_only=True)
class LoadScore:
    """A placement scored on expert loads."""

    policy: str
    #: Imbalance of the loads summed over every evaluated step, mean over layers.
    imbalance_total: float
    #: Mean over (step, layer) of each step's imbalance (what makes per-step stragglers).
    imbalance_step_mean: float
    #: Worst (step, layer) imbalance.
    imbalance_step_max: float
    #: Mean over (step, layer) of the busiest rank's tokens divided by the mean rank's: the straggler
    #: factor of the expert GEMMs if their time followed tokens.
    max_over_mean: float
    #: Mean over (step, layer) of the busiest rank's token-expert pairs.
    tokens_max_mean: float
    #: Steps scored.
    num_steps: int


def rank_token_loads(placement: Placement, step_loads: np.ndarray) -> np.ndarray:
    """float64 [steps, layers, ranks]: tokens each rank receives, from ``step_loads`` float
    [steps, layers, experts] (layers as in the placement), replicas splitting evenly."""
    loads = np.asarray(step_loads, dtype=np.float64)
    if loads.ndim == 2:
        loads = loads[None]
    T = loads.shape[0]
    per_replica = loads / placement.logcnt[None]
    idx = np.broadcast_to(placement.phy2log, (T, *placement.phy2log.shape))
    per_slot = np.take_along_axis(per_replica, idx, axis=2)
    return per_slot.reshape(T, len(placement.layers), placement.num_ranks, placement.slots_per_rank).sum(-1)


def score_rank_loads(policy: str, ranks: np.ndarray) -> LoadScore:
    """Score per-rank tokens ``ranks`` float [steps, layers, ranks]."""
    T = ranks.shape[0]
    if T == 0:
        return LoadScore(
            policy=policy,
            imbalance_total=0.0,
            imbalance_step_mean=0.0,
            imbalance_step_max=0.0,
            max_over_mean=1.0,
            tokens_max_mean=0.0,
            num_steps=0,
        )
    per_step = rank_imbalance(ranks)
    total = rank_imbalance(ranks.sum(0))
    mean = ranks.mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(mean > 0, ranks.max(-1) / np.where(mean > 0, mean, 1.0), 1.0)
    return LoadScore(
        policy=policy,
        imbalance_total=float(total.mean()),
        imbalance_step_mean=float(per_step.mean()),
        imbalance_step_max=float(per_step.max()),
        max_over_mean=float(ratio.mean()),
        tokens_max_mean=float(ranks.max(-1).mean()),
        num_steps=T,
    )


def score_loads(placement: Placement, step_loads: np.ndarray) -> LoadScore:
    """Score ``placement`` on ``step_loads`` float [steps, layers, experts] (or [layers, experts])."""
    return score_rank_loads(placement.policy, rank_token_loads(placement, step_loads))
