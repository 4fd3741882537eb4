"""Placement policies: EPLB's published example, packing rules, and balance on skewed traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.errors import UnknownNameError, UsageError
from tracekit.placement import (
    Placement,
    PlacementProblem,
    compute_placement,
    policy_names,
    rank_imbalance,
    rebalance_experts,
)
from tracekit.placement.eplb import balanced_packing, replicate_experts

# DeepSeek EPLB README example (2 layers, 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs).
EPLB_WEIGHT = np.array(
    [
        [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
        [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
    ]
)
EPLB_PHY2LOG = np.array(
    [
        [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
        [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
    ]
)
EPLB_LOGCNT = np.array(
    [
        [1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1],
        [1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1],
    ]
)
LOAD_POLICIES = ["greedy", "eplb-hierarchical", "eplb-global", "eplb"]


def test_eplb_published_example() -> None:
    plan = rebalance_experts(EPLB_WEIGHT, num_replicas=16, num_groups=4, num_nodes=2, num_gpus=8)
    assert plan.phy2log.tolist() == EPLB_PHY2LOG.tolist()
    assert plan.logcnt.tolist() == EPLB_LOGCNT.tolist()
    # log2phy lists each expert's slots; every listed slot holds that expert.
    for layer in range(2):
        for e in range(12):
            slots = [s for s in plan.log2phy[layer, e] if s >= 0]
            assert len(slots) == EPLB_LOGCNT[layer, e]
            assert all(EPLB_PHY2LOG[layer, s] == e for s in slots)


def test_eplb_example_through_the_registry() -> None:
    problem = PlacementProblem(
        layers=(0, 1), loads=EPLB_WEIGHT, num_ranks=8, num_redundant=4, num_nodes=2, num_groups=4
    )
    p = compute_placement("eplb-hierarchical", problem)
    assert p.phy2log.tolist() == EPLB_PHY2LOG.tolist()
    assert p.logcnt.tolist() == EPLB_LOGCNT.tolist()


def test_balanced_packing_hand_example() -> None:
    # Heaviest first: 5->p0, 4->p1, 3->p1 (4<5), 2->p0 (5<7), 1->p0 (7=7, lowest index), 0->p1 (p0 full).
    pack, pos = balanced_packing(np.array([[5.0, 4, 3, 2, 1, 0]]), 2)
    assert pack.tolist() == [[0, 1, 1, 0, 0, 1]]
    assert pos.tolist() == [[0, 0, 1, 1, 2, 2]]


def test_replication_hand_example() -> None:
    # 10 vs 3: first replica to 0 (10 > 3), then 10/2 = 5 > 3 again; 10/3 = 3.33 would be next.
    phy2log, rank, logcnt = replicate_experts(np.array([[10.0, 3.0]]), 4)
    assert phy2log.tolist() == [[0, 1, 0, 0]]
    assert rank.tolist() == [[0, 0, 1, 2]]
    assert logcnt.tolist() == [[3, 1]]


@given(
    data=st.data(),
    num_ranks=st.sampled_from([1, 2, 4, 8]),
    experts_per_rank=st.integers(1, 4),
    extra_per_rank=st.integers(0, 2),
    policy=st.sampled_from(["contiguous", "round-robin", *LOAD_POLICIES]),
)
def test_every_expert_has_a_slot_and_ranks_are_equal(
    data, num_ranks, experts_per_rank, extra_per_rank, policy
):
    E = num_ranks * experts_per_rank
    loads = np.array(data.draw(st.lists(st.integers(0, 1000), min_size=2 * E, max_size=2 * E))).reshape(2, E)
    problem = PlacementProblem(
        layers=(1, 4), loads=loads, num_ranks=num_ranks, num_redundant=extra_per_rank * num_ranks
    )
    p = compute_placement(policy, problem)
    assert p.phy2log.shape == (2, E + extra_per_rank * num_ranks)
    assert (p.logcnt >= 1).all()
    assert (p.expert_ranks().sum(axis=1) == experts_per_rank + extra_per_rank).all()
    # The per-rank token estimate conserves the tokens.
    assert np.allclose(p.rank_loads(loads).sum(axis=1), loads.sum(axis=1))


def zipf_loads(num_layers: int, num_experts: int, seed: int, s: float = 1.0) -> np.ndarray:
    """Skewed loads: each layer a random permutation of 1/rank^s, scaled to 1e5 tokens."""
    rng = np.random.default_rng(seed)
    base = 1.0 / np.arange(1, num_experts + 1) ** s
    return np.stack([rng.permutation(base) for _ in range(num_layers)]) * 1e5 / base.sum()


def imbalance(p: Placement, loads: np.ndarray) -> float:
    return float(rank_imbalance(p.rank_loads(loads)).mean())


@pytest.mark.parametrize("policy", LOAD_POLICIES)
def test_skewed_trace_imbalance_halved_at_ep32(policy: str) -> None:
    loads = zipf_loads(4, 256, seed=1)
    kw = {"layers": (1, 2, 3, 4), "loads": loads, "num_ranks": 32, "num_nodes": 4, "num_groups": 8}
    base0 = imbalance(compute_placement("contiguous", PlacementProblem(**kw)), loads)
    base32 = imbalance(compute_placement("contiguous", PlacementProblem(**kw, num_redundant=32)), loads)
    got = imbalance(compute_placement(policy, PlacementProblem(**kw, num_redundant=32)), loads)
    # Independent check of the metric: tokens per rank from slots by hand, for the contiguous layout.
    per_rank = loads.reshape(4, 32, 8).sum(-1)
    assert base0 == pytest.approx(float(((per_rank.max(1) - per_rank.mean(1)) / per_rank.mean(1)).mean()))
    assert base0 > 1.0
    assert got <= 0.5 * base0
    assert got <= 0.5 * base32


@pytest.mark.parametrize("policy", LOAD_POLICIES)
def test_balanced_trace_gains_nothing(policy: str) -> None:
    # Exactly balanced loads: every placement is already perfect.
    flat = np.full((2, 64), 100.0)
    problem = PlacementProblem(
        layers=(0, 1), loads=flat, num_ranks=8, num_redundant=8, num_nodes=2, num_groups=4
    )
    assert imbalance(compute_placement(policy, problem), flat) == pytest.approx(0.0, abs=1e-12)
    # Uniform routing sampled: a placement fitted on one half (in-sample it fits the noise) does
    # no better than the default layout on the other half.
    rng = np.random.default_rng(7)
    train, test = (rng.multinomial(20000, np.full(64, 1 / 64), size=2).astype(float) for _ in range(2))
    fitted = compute_placement(
        policy, PlacementProblem(**{**problem.__dict__, "loads": train, "num_redundant": 0})
    )
    base = Placement.contiguous((0, 1), 64, 8)
    assert imbalance(fitted, train) < imbalance(base, train)
    assert abs(imbalance(fitted, test) - imbalance(base, test)) < 0.03


def test_hierarchical_keeps_groups_on_one_node() -> None:
    loads = zipf_loads(3, 256, seed=3)
    problem = PlacementProblem(
        layers=(0, 1, 2), loads=loads, num_ranks=32, num_redundant=32, num_nodes=4, num_groups=8
    )
    p = compute_placement("eplb-hierarchical", problem)
    node_of_slot = p.slot_rank // 8
    group_of_slot = p.phy2log // 32
    for li in range(3):
        for g in range(8):
            nodes = np.unique(node_of_slot[group_of_slot[li] == g])
            assert nodes.size == 1, (li, g, nodes)
        # Two groups per node.
        assert (
            sorted(np.bincount(node_of_slot[np.unique(group_of_slot[li], return_index=True)[1]])) == [2] * 4
        )


def test_greedy_spreads_replicas_over_ranks() -> None:
    loads = zipf_loads(2, 64, seed=5, s=1.2)
    p = compute_placement(
        "greedy", PlacementProblem(layers=(0, 1), loads=loads, num_ranks=8, num_redundant=8)
    )
    assert p.expert_ranks().max() == 1


def test_hierarchical_refuses_indivisible_groups() -> None:
    problem = PlacementProblem(layers=(0,), loads=np.ones((1, 12)), num_ranks=6, num_nodes=3, num_groups=4)
    with pytest.raises(UsageError, match="eplb-global"):
        compute_placement("eplb-hierarchical", problem)
    # "eplb" falls back to the global policy, as EPLB does.
    assert compute_placement("eplb", problem).num_slots == 12


def test_unknown_policy_lists_names() -> None:
    with pytest.raises(UnknownNameError, match="eplb-global"):
        compute_placement("lpt", PlacementProblem(layers=(0,), loads=np.ones((1, 4)), num_ranks=2))
    assert {"contiguous", "round-robin", "greedy", "eplb-hierarchical", "eplb-global", "file"} <= set(
        policy_names()
    )


def test_file_policy(tmp_path: Path) -> None:
    p = Placement.round_robin((2, 3, 5), 8, 4, num_redundant=4)
    p.write(tmp_path / "p.parquet")
    problem = PlacementProblem(layers=(3, 5), loads=np.ones((2, 8)), num_ranks=4, file=tmp_path / "p.parquet")
    got = compute_placement("file", problem)
    assert got.layers == (3, 5) and np.array_equal(got.phy2log, p.phy2log[1:])
    with pytest.raises(UsageError, match=r"\(num_ranks\)"):
        compute_placement("file", PlacementProblem(**{**problem.__dict__, "num_ranks": 2}))
    with pytest.raises(UsageError, match="needs a placement file"):
        compute_placement("file", PlacementProblem(**{**problem.__dict__, "file": None}))
