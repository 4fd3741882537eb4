"""Traffic builders: vectorised counts against a per-token loop, expectations against sampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.cost import (
    EPTraffic,
    balanced_traffic,
    contiguous_expert_to_rank,
    ep_traffic,
    expected_uniform_traffic,
    random_routing,
)
from tracekit.errors import UsageError


def _loop_counts(
    dst: np.ndarray, src: np.ndarray, r: int, s: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rank = np.zeros((r, r))
    expert = np.zeros((r, r))
    dom = np.zeros((r, -(-r // s)))
    for row, sr in zip(dst.tolist(), src.tolist(), strict=True):
        valid = [d for d in row if d >= 0]
        for d in valid:
            expert[sr, d] += 1
        for d in set(valid):
            rank[sr, d] += 1
        for dd in {d // s for d in valid}:
            dom[sr, dd] += 1
    return rank, expert, dom


@given(
    st.integers(1, 40),
    st.sampled_from([(4, 2), (8, 4), (16, 8), (12, 8)]),
    st.integers(1, 6),
    st.integers(0, 2**31),
)
def test_ep_traffic_matches_loop(n: int, rs: tuple[int, int], k: int, seed: int) -> None:
    r, s = rs
    rng = np.random.default_rng(seed)
    dst = rng.integers(-1, r, size=(n, k))
    src = rng.integers(0, r, size=n)
    t = ep_traffic(dst_rank=dst, src_rank=src, num_ranks=r, domain_size=s)
    rank, expert, dom = _loop_counts(dst, src, r, s)
    assert np.array_equal(t.rank_tokens, rank)
    assert np.array_equal(t.expert_tokens, expert)
    assert np.array_equal(t.domain_tokens, dom)
    # conservation: every routed (token, expert) pair is counted once
    assert t.expert_tokens.sum() == (dst >= 0).sum()


def test_groups_stack_all_to_alls() -> None:
    dst = np.array([[0, 1], [1, 1], [3, 2]])
    src = np.array([0, 2, 1])
    g = np.array([0, 1, 1])
    t = ep_traffic(dst_rank=dst, src_rank=src, num_ranks=4, domain_size=2, group=g, num_groups=2)
    assert t.rank_tokens.shape == (2, 4, 4)
    assert t.rank_tokens[0, 0].tolist() == [1, 1, 0, 0]
    assert t.rank_tokens[1, 2, 1] == 1 and t.expert_tokens[1, 2, 1] == 2
    assert t.domain_tokens[1, 1].tolist() == [0, 1]


def test_expected_uniform_matches_sampling() -> None:
    ep, tokens = 16, 4000
    exp = expected_uniform_traffic(
        num_ranks=ep, tokens_per_rank=tokens, num_experts=256, top_k=8, domain_size=8
    )
    rng = np.random.default_rng(3)
    ids = random_routing(ep * tokens, 256, 8, rng=rng)
    dst = contiguous_expert_to_rank(256, ep)[ids]
    got = ep_traffic(dst_rank=dst, src_rank=np.repeat(np.arange(ep), tokens), num_ranks=ep, domain_size=8)
    for a, b in ((exp.rank_tokens, got.rank_tokens), (exp.expert_tokens, got.expert_tokens)):
        assert a.mean() == pytest.approx(b.mean(), rel=0.01)
    assert exp.domain_tokens.mean() == pytest.approx(got.domain_tokens.mean(), rel=0.01)
    # by hand: P(token reaches a rank with 16 of 256 experts) = 1 - C(240, 8) / C(256, 8)
    from math import comb

    assert exp.rank_tokens[0, 0] == pytest.approx(tokens * (1 - comb(240, 8) / comb(256, 8)))


def test_group_limited_routing_stays_in_groups() -> None:
    rng = np.random.default_rng(0)
    ids = random_routing(2000, 256, 8, num_groups=8, topk_groups=4, rng=rng)
    groups = ids // 32
    assert max(len(set(row)) for row in groups.tolist()) <= 4
    assert all(len(set(row)) == 8 for row in ids.tolist())  # distinct experts


def test_balanced_traffic() -> None:
    t = balanced_traffic(num_ranks=8, tokens_per_rank=100, top_k=8, domain_size=72)
    assert np.all(t.rank_tokens == 100)  # every token on every one of the 8 ranks
    t = balanced_traffic(num_ranks=32, tokens_per_rank=128, top_k=8, domain_size=8)
    assert t.rank_tokens.sum(axis=1)[0] == pytest.approx(128 * 8)


def test_bad_inputs() -> None:
    with pytest.raises(UsageError, match="split evenly"):
        contiguous_expert_to_rank(10, 4)
    with pytest.raises(UsageError, match="rank ids"):
        ep_traffic(dst_rank=np.array([[5]]), src_rank=np.array([0]), num_ranks=4, domain_size=4)
    with pytest.raises(UsageError, match=r"\[\.\.\., R, R\]"):
        EPTraffic.from_rank_matrix(np.ones((3, 4)), 8)
