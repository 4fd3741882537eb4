"""Skew and association measures over expert loads and routing choices, in numpy.

Every function takes loads along the last axis (experts or ranks) and reduces it, so one call
handles a single vector, a [steps, experts] matrix or a [layers, steps, experts] block. Shape
suffixes: ``_E`` experts, ``_R`` ranks, ``_NK`` N tokens by top-k. A load vector whose sum is zero
has no skew: its measures are NaN.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tracekit.errors import UsageError

FloatArray = npt.NDArray[np.float64]


def _as_float(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def _safe_div(num: FloatArray, den: FloatArray) -> FloatArray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def max_over_mean(load: npt.ArrayLike) -> FloatArray:
    """max / mean along the last axis."""
    x = _as_float(load)
    return _safe_div(x.max(axis=-1), x.mean(axis=-1))


def imbalance(load: npt.ArrayLike) -> FloatArray:
    """(max - mean) / mean along the last axis: 0 for perfectly even load."""
    return max_over_mean(load) - 1.0


def cv(load: npt.ArrayLike) -> FloatArray:
    """Coefficient of variation (population standard deviation / mean) along the last axis."""
    x = _as_float(load)
    return _safe_div(x.std(axis=-1), x.mean(axis=-1))


def gini(load: npt.ArrayLike) -> FloatArray:
    """Gini coefficient along the last axis: 0 even, (n - 1) / n when one entry holds everything."""
    x = np.sort(_as_float(load), axis=-1)
    n = x.shape[-1]
    ranks = np.arange(1, n + 1, dtype=np.float64)
    total = x.sum(axis=-1)
    weighted = (x * ranks).sum(axis=-1)
    return _safe_div(2.0 * weighted, n * total) - (n + 1.0) / n


def entropy_bits(load: npt.ArrayLike) -> FloatArray:
    """Shannon entropy (bits) of the load shares along the last axis."""
    x = _as_float(load)
    total = x.sum(axis=-1, keepdims=True)
    p = _safe_div(x, np.broadcast_to(total, x.shape))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    out = terms.sum(axis=-1)
    return np.where(total[..., 0] > 0, out, np.nan)


def rank_loads(load_E: npt.ArrayLike, slot_experts: npt.ArrayLike, num_ranks: int) -> FloatArray:
    """Load per rank from load per logical expert and a slot map.

    ``slot_experts[slot]`` is the logical expert of each physical slot, slots numbered rank by rank.
    An expert with several replicas has its load split evenly between them.
    """
    slots = np.asarray(slot_experts, dtype=np.int64)
    x = _as_float(load_E)
    num_experts = x.shape[-1]
    if slots.size % num_ranks:
        raise UsageError(f"{slots.size} expert slots do not split evenly over {num_ranks} ranks")
    if slots.size and (slots.min() < 0 or slots.max() >= num_experts):
        raise UsageError(f"a slot names an expert outside 0..{num_experts - 1}")
    replicas = np.bincount(slots, minlength=num_experts).astype(np.float64)
    if (replicas == 0).any():
        missing = np.flatnonzero(replicas == 0)[:5].tolist()
        raise UsageError(f"experts {missing} have no slot in the placement; every expert needs one")
    per_slot = x[..., slots] / replicas[slots]
    return per_slot.reshape(*x.shape[:-1], num_ranks, slots.size // num_ranks).sum(axis=-1)


def contiguous_slots(num_experts: int, num_ranks: int) -> npt.NDArray[np.int64]:
    """The slot map of contiguous placement: rank r holds experts r*E/R .. (r+1)*E/R - 1."""
    if num_ranks < 1:
        raise UsageError(f"--ep must be at least 1, got {num_ranks}")
    if num_experts % num_ranks:
        raise UsageError(
            f"--ep {num_ranks} does not divide the {num_experts} experts evenly; "
            "pick an EP degree that divides the expert count or give a placement"
        )
    return np.arange(num_experts, dtype=np.int64)


def hot_set(load_E: npt.ArrayLike, size: int) -> npt.NDArray[np.int64]:
    """The ``size`` most loaded experts along the last axis (ties: lower expert id first), sorted."""
    x = _as_float(load_E)
    order = np.lexsort((np.broadcast_to(np.arange(x.shape[-1]), x.shape), -x), axis=-1)
    return np.sort(order[..., :size], axis=-1)


def jaccard(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """|a & b| / |a | b| of two sets of ids."""
    sa, sb = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = sa | sb
    return len(sa & sb) / len(union) if union else float("nan")


def pearson(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Pearson correlation of two load vectors (NaN when either is constant)."""
    x, y = _as_float(a), _as_float(b)
    xs, ys = x - x.mean(), y - y.mean()
    den = float(np.sqrt((xs * xs).sum() * (ys * ys).sum()))
    return float((xs * ys).sum() / den) if den > 0 else float("nan")


def normalized_mutual_information(joint: npt.ArrayLike) -> float:
    """Mutual information of a joint count matrix over the geometric mean of its marginal entropies.

    0 when rows and columns are independent, 1 when either determines the other.
    """
    j = _as_float(joint)
    total = j.sum()
    if total <= 0:
        return float("nan")
    p = j / total
    pa, pb = p.sum(axis=1), p.sum(axis=0)
    ha = float(-(pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
    if ha <= 0 or hb <= 0:
        return 0.0
    nz = p > 0
    outer = np.outer(pa, pb)
    mi = float((p[nz] * np.log(p[nz] / outer[nz])).sum())
    return max(0.0, mi) / float(np.sqrt(ha * hb))


def coactivation_counts(ids_NK: npt.ArrayLike, num_experts: int) -> npt.NDArray[np.int64]:
    """[E, E] symmetric matrix: tokens that chose both experts a and b (diagonal zero)."""
    ids = np.asarray(ids_NK, dtype=np.int64)
    n, k = ids.shape
    if k < 2 or n == 0:
        return np.zeros((num_experts, num_experts), dtype=np.int64)
    a_idx, b_idx = np.triu_indices(k, 1)
    a, b = ids[:, a_idx].reshape(-1), ids[:, b_idx].reshape(-1)
    keep = a != b
    codes = np.concatenate([a[keep] * num_experts + b[keep], b[keep] * num_experts + a[keep]])
    return np.bincount(codes, minlength=num_experts * num_experts).reshape(num_experts, num_experts)


def transition_counts(
    ids_a_NK: npt.ArrayLike, ids_b_NK: npt.ArrayLike, num_experts: int
) -> npt.NDArray[np.int64]:
    """[E, E] counts over tokens of (expert at one layer, expert at the next), all k x k pairs."""
    a = np.asarray(ids_a_NK, dtype=np.int64)
    b = np.asarray(ids_b_NK, dtype=np.int64)
    if a.shape[0] != b.shape[0]:
        raise UsageError("transition_counts needs the same tokens at both layers")
    codes = (a[:, :, None] * num_experts + b[:, None, :]).reshape(-1)
    return np.bincount(codes, minlength=num_experts * num_experts).reshape(num_experts, num_experts)
