"""Each measure against a second, deliberately naive computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.errors import UsageError
from tracekit.stats import metrics as m

loads = st.lists(st.integers(min_value=0, max_value=1000), min_size=2, max_size=40).filter(
    lambda x: sum(x) > 0
)


def naive_gini(x: list[int]) -> float:
    n, mean = len(x), sum(x) / len(x)
    return sum(abs(a - b) for a in x for b in x) / (2 * n * n * mean)


def naive_entropy(x: list[int]) -> float:
    total = sum(x)
    return -sum(v / total * math.log2(v / total) for v in x if v)


@given(loads)
def test_skew_measures_match_naive_formulas(x: list[int]) -> None:
    mean = sum(x) / len(x)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / len(x))
    assert m.gini(x) == pytest.approx(naive_gini(x), abs=1e-9)
    assert m.max_over_mean(x) == pytest.approx(max(x) / mean)
    assert m.imbalance(x) == pytest.approx((max(x) - mean) / mean)
    assert m.cv(x) == pytest.approx(std / mean, abs=1e-9)
    assert m.entropy_bits(x) == pytest.approx(naive_entropy(x), abs=1e-9)


def test_extremes_and_empty() -> None:
    assert m.gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert m.gini([0, 0, 0, 8]) == pytest.approx(3 / 4)
    assert m.entropy_bits([1, 1, 1, 1]) == pytest.approx(2.0)
    assert math.isnan(float(m.gini([0, 0, 0])))
    assert math.isnan(float(m.max_over_mean([0, 0])))
    # a [steps, experts] block reduces row by row
    block = np.array([[1, 1, 1, 1], [0, 0, 0, 4]])
    assert m.max_over_mean(block).tolist() == [1.0, 4.0]


def test_rank_loads_contiguous_and_replicated() -> None:
    load = np.array([10, 0, 3, 7, 1, 1, 2, 6])
    got = m.rank_loads(load, m.contiguous_slots(8, 4), 4)
    assert got.tolist() == [10, 10, 2, 8]
    # expert 0 replicated on two ranks: its load splits in half; 10 slots over 2 ranks
    slots = np.array([0, 1, 2, 3, 4, 0, 5, 6, 7, 3])
    got = m.rank_loads(load, slots, 2)
    assert got.tolist() == [5 + 0 + 3 + 3.5 + 1, 5 + 1 + 2 + 6 + 3.5]
    with pytest.raises(UsageError, match="does not divide"):
        m.contiguous_slots(8, 3)
    with pytest.raises(UsageError, match="no slot"):
        m.rank_loads(load, np.array([0, 1, 2, 3]), 2)


def test_hot_set_jaccard_pearson() -> None:
    load = np.array([5, 9, 9, 1, 0, 7])
    assert m.hot_set(load, 3).tolist() == [1, 2, 5]
    assert m.hot_set(np.array([3, 3, 3, 3]), 2).tolist() == [0, 1]  # ties: lower id first
    assert m.jaccard([1, 2, 5], [2, 5, 6]) == pytest.approx(2 / 4)
    a, b = np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 6, 8.5])
    assert m.pearson(a, b) == pytest.approx(float(np.corrcoef(a, b)[0, 1]))


def naive_nmi(pairs: list[tuple[int, int]]) -> float:
    n = len(pairs)
    joint: dict[tuple[int, int], int] = {}
    left: dict[int, int] = {}
    right: dict[int, int] = {}
    for a, b in pairs:
        joint[(a, b)] = joint.get((a, b), 0) + 1
        left[a] = left.get(a, 0) + 1
        right[b] = right.get(b, 0) + 1
    mi = sum(c / n * math.log((c / n) / (left[a] / n * right[b] / n)) for (a, b), c in joint.items())
    ha = -sum(c / n * math.log(c / n) for c in left.values())
    hb = -sum(c / n * math.log(c / n) for c in right.values())
    return mi / math.sqrt(ha * hb)


def test_nmi_limits_and_naive() -> None:
    assert m.normalized_mutual_information(np.outer([1, 2, 3], [4, 1, 2])) == pytest.approx(0.0, abs=1e-12)
    assert m.normalized_mutual_information(np.eye(5) * 7) == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    pairs = [(int(a), int(b)) for a, b in rng.integers(0, 6, size=(200, 2))]
    joint = np.zeros((6, 6))
    for a, b in pairs:
        joint[a, b] += 1
    assert m.normalized_mutual_information(joint) == pytest.approx(naive_nmi(pairs))


def test_coactivation_and_transition_counts_match_loops() -> None:
    rng = np.random.default_rng(0)
    e, k = 10, 3
    a = np.stack([rng.choice(e, k, replace=False) for _ in range(50)])
    b = np.stack([rng.choice(e, k, replace=False) for _ in range(50)])
    co = np.zeros((e, e), dtype=int)
    tr = np.zeros((e, e), dtype=int)
    for t in range(50):
        for i in range(k):
            for j in range(k):
                tr[a[t, i], b[t, j]] += 1
                if i != j:
                    co[a[t, i], a[t, j]] += 1
    assert (m.coactivation_counts(a, e) == co).all()
    assert (m.transition_counts(a, b, e) == tr).all()
