"""Communication primitives: hand-computed times, dedup rules, topology split, monotonicity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.cost import (
    EPTraffic,
    allgather,
    allreduce,
    alltoall,
    combine,
    contiguous_expert_to_rank,
    dispatch,
    ep_traffic,
    random_routing,
    reduce_scatter,
)
from tracekit.errors import DeploymentError
from tracekit.hardware import get_hardware

H200 = get_hardware("h200-sxm")
GB200 = get_hardware("gb200-nvl72")


def test_nccl_dispatch_by_hand() -> None:
    p = H200.comm["nccl"]
    m = np.zeros((16, 16))
    m[0, 1] = 4e6  # same domain: NVLink
    m[0, 9] = 1e6  # other domain: NIC
    c = dispatch(H200, m, impl="nccl")
    lat = p.dispatch_latency_s + p.latency_log2_s * math.log2(16 / 8)
    penalty = 1 + p.eff_log2_penalty
    t_up = lat + 4e6 / (450e9 * p.eff_up) * penalty
    hop = H200.scaleout_latency_s - H200.scaleup_latency_s  # leaving the NVLink domain
    t_out = lat + hop + 1e6 / (50e9 * p.eff_out) * penalty
    assert c.time_s[0] == pytest.approx(max(t_up, t_out, p.dispatch_floor_s))
    assert c.link[0] == ("nic" if t_out > t_up else "nvlink")
    assert c.network_bytes_sent[0] == 1e6 and c.nvlink_bytes_sent[0] == 4e6
    assert c.network_bytes_recv[9] == 1e6 and c.nvlink_bytes_recv[1] == 4e6
    # rank 5 neither sends nor receives: only the floor
    assert c.time_s[5] == p.dispatch_floor_s and c.bound[5] == "latency" and c.link[5] == "none"


def test_dedup_rules_of_one_token() -> None:
    """One token on rank 0 routed to all 8 ranks of domain 1 (ranks 8..15) of an EP16 group on h200."""
    t = ep_traffic(dst_rank=np.arange(8, 16)[None, :], src_rank=np.array([0]), num_ranks=16, domain_size=8)
    assert t.rank_tokens[0, 8:].tolist() == [1.0] * 8 and t.domain_tokens[0].tolist() == [0.0, 1.0]
    normal = dispatch(H200, t, impl="deepep-normal", bytes_per_token=1000)
    # the network once (rank 0 -> rank 8, same local index), then rank 8 forwards to 9..15 over NVLink
    assert normal.network_bytes_sent[0] == 1000 and normal.network_bytes_recv[8] == 1000
    assert normal.nvlink_bytes_sent[8] == 7000 and normal.nvlink_bytes_recv[9:].tolist() == [1000] * 7
    assert normal.nvlink_bytes_sent[0] == 0
    ll = dispatch(H200, t, impl="deepep-ll", bytes_per_token=1000)  # one copy per expert, over the NIC
    assert ll.network_bytes_sent[0] == 8000 and ll.nvlink_bytes_sent.sum() == 0
    # two experts on one rank: per-rank dedup sends once, low-latency twice
    t2 = ep_traffic(dst_rank=np.array([[3, 3]]), src_rank=np.array([0]), num_ranks=8, domain_size=8)
    assert dispatch(H200, t2, impl="nccl", bytes_per_token=10).nvlink_bytes_sent[0] == 10
    assert dispatch(H200, t2, impl="deepep-ll", bytes_per_token=10).nvlink_bytes_sent[0] == 20


def test_combine_mirrors_dispatch() -> None:
    t = ep_traffic(dst_rank=np.array([[9, 2]]), src_rank=np.array([0]), num_ranks=16, domain_size=8)
    d = dispatch(H200, t, impl="nccl", bytes_per_token=100)
    c = combine(H200, t, impl="nccl", bytes_per_token=100)
    assert np.array_equal(c.network_bytes_recv, d.network_bytes_sent)
    assert np.array_equal(c.nvlink_bytes_sent, d.nvlink_bytes_recv)


def _uniform(ep: int, tokens: int, seed: int = 0, experts: int = 256, top_k: int = 8) -> EPTraffic:
    rng = np.random.default_rng(seed)
    ids = random_routing(ep * tokens, experts, top_k, rng=rng)
    dst = contiguous_expert_to_rank(experts, ep)[ids]
    return ep_traffic(dst_rank=dst, src_rank=np.repeat(np.arange(ep), tokens), num_ranks=ep, domain_size=8)


@pytest.mark.parametrize("impl", ["nccl", "deepep-normal", "deepep-ll"])
def test_topology_split_ep16(impl: str) -> None:
    """An EP=16 all-to-all crosses the network on h200-sxm (8-GPU domains) and stays on NVLink on GB200."""
    t = _uniform(16, 64)
    on_h200 = dispatch(H200, t, impl=impl, bytes_per_token=7168)
    # the same routing with all 16 ranks in one 72-GPU domain
    t72 = EPTraffic(
        rank_tokens=t.rank_tokens, expert_tokens=t.expert_tokens, domain_tokens=t.rank_tokens.sum(-1, keepdims=True),
        domain_size=72,
    )  # fmt: skip
    on_gb200 = dispatch(GB200, t72, impl=impl, bytes_per_token=7168)
    assert np.all(on_h200.network_bytes_sent > 0) and set(on_h200.link) == {"nic"}
    assert np.all(on_gb200.network_bytes_sent == 0) and set(on_gb200.link) == {"nvlink"}
    assert on_gb200.time_s.max() < on_h200.time_s.max()
    via_cli = alltoall(H200, nbytes=1e8, ranks=16)
    assert np.all(via_cli.network_bytes_sent > 0)
    assert np.all(alltoall(GB200, nbytes=1e8, ranks=16).network_bytes_sent == 0)


def test_nvl_a2a_refuses_to_cross_domains() -> None:
    with pytest.raises(DeploymentError, match="one scale-up domain"):
        dispatch(H200, np.ones((16, 16)), impl="nvl-a2a")


@settings(max_examples=40)
@given(
    st.lists(st.floats(0, 1e7), min_size=64, max_size=64),
    st.integers(0, 63),
    st.floats(1.0, 1e7),
    st.sampled_from(["nccl", "deepep-normal", "deepep-ll", "deepep-ll-rdma"]),
)
def test_more_bytes_never_cost_less(vals: list[float], idx: int, extra: float, impl: str) -> None:
    """Adding traffic to any rank pair never makes any rank faster (EP16 on h200: 2 domains)."""
    m = np.zeros((16, 16))
    m[:8, 8:] = np.array(vals).reshape(8, 8)
    more = m.copy()
    more[idx // 8, 8 + idx % 8] += extra
    more[idx % 16, (idx * 7) % 16] += extra
    a = dispatch(H200, m, impl=impl)
    b = dispatch(H200, more, impl=impl)
    assert np.all(b.time_s >= a.time_s - 1e-15)
    assert np.all(combine(H200, more, impl=impl).time_s >= combine(H200, m, impl=impl).time_s - 1e-15)


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from([16, 32, 64]),
    st.integers(1, 256),
    st.sampled_from([2, 4, 8]),
    st.sampled_from(["nccl", "deepep-normal", "deepep-ll"]),
    st.integers(0, 1000),
)
def test_network_never_cheaper_than_one_nvlink_domain(
    ep: int, tokens: int, top_k: int, impl: str, seed: int
) -> None:
    """The same EP ranks and routing: split over 8-GPU domains (NIC between them) never beats one
    NVLink domain holding them all."""
    rng = np.random.default_rng(seed)
    ids = random_routing(ep * tokens, 256, top_k, rng=rng)
    dst = contiguous_expert_to_rank(256, ep)[ids]
    src = np.repeat(np.arange(ep), tokens)
    multi = ep_traffic(dst_rank=dst, src_rank=src, num_ranks=ep, domain_size=8)
    single = ep_traffic(dst_rank=dst, src_rank=src, num_ranks=ep, domain_size=ep)
    one_domain = get_hardware("h200-sxm", {"scaleup_size": ep})
    for fn in (dispatch, combine):
        over_net = fn(H200, multi, impl=impl, bytes_per_token=7168).time_s.max()
        inside = fn(one_domain, single, impl=impl, bytes_per_token=7168).time_s.max()
        assert over_net >= inside


def test_collectives_by_hand() -> None:
    p = H200.comm["nccl"]
    b = 1e8
    t = allreduce(H200, nbytes=b, ranks=8)
    assert t.time_s == pytest.approx(p.dispatch_latency_s + 2 * 7 / 8 * b / (450e9 * p.eff_up))
    t16 = allreduce(H200, nbytes=b, ranks=16)
    expect = (
        p.dispatch_latency_s
        + p.latency_log2_s
        + (2 * 7 / 8 * b / (450e9 * p.eff_up) + 2 * 1 / 2 * b / 8 / (50e9 * p.eff_out))
        * (1 + p.eff_log2_penalty)
    )
    assert t16.time_s == pytest.approx(expect) and t16.bound == "network"
    assert allgather(H200, nbytes=b, ranks=8).time_s == pytest.approx(
        p.dispatch_latency_s + 7 / 8 * b / (450e9 * p.eff_up)
    )
    assert reduce_scatter(H200, nbytes=b, ranks=8).time_s == allgather(H200, nbytes=b, ranks=8).time_s
    assert allreduce(H200, nbytes=1.0, ranks=8).bound == "latency"
    sizes = np.array([1e3, 1e6, 1e9])
    assert np.all(np.diff(allreduce(H200, nbytes=sizes, ranks=32).time_s) > 0)


def test_traffic_domain_must_match_hardware() -> None:
    from tracekit.errors import UsageError

    t = ep_traffic(dst_rank=np.array([[1]]), src_rank=np.array([0]), num_ranks=16, domain_size=72)
    with pytest.raises(UsageError, match=r"domain_size=hw\.scaleup_size"):
        dispatch(H200, t)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    ranks=st.integers(1, 12),
    domain=st.integers(1, 8),
    impl=st.sampled_from(["deepep-ll", "deepep-ll-rdma", "nccl", "deepep-normal"]),
)
def test_link_loads_match_masked_sums_over_the_peer_matrix(
    seed: int, ranks: int, domain: int, impl: str
) -> None:
    """Per-link bytes against a second computation: the peer matrix masked pair by pair (own rank
    free; own domain on NVLink, others on the NIC; deepep-ll-rdma: every peer on the NIC)."""
    from tracekit.cost.comm import link_loads
    from tracekit.cost.traffic import EPTraffic

    if impl == "deepep-normal" and ranks > domain:
        ranks = domain  # across domains deepep-normal forwards through a peer: its own test
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 5, (3, ranks, ranks)).astype(np.float64)
    pairs = m + rng.integers(0, 3, m.shape)
    traffic = EPTraffic.from_rank_matrix(m, domain)
    traffic = EPTraffic(
        rank_tokens=m, expert_tokens=pairs, domain_tokens=traffic.domain_tokens, domain_size=domain
    )
    got = link_loads(traffic, impl, bytes_per_token=3.0)
    x = (pairs if impl.startswith("deepep-ll") else m) * 3.0
    dom = np.arange(ranks) // domain
    same = dom[:, None] == dom[None, :]
    other = ~np.eye(ranks, dtype=bool)
    nvl = np.zeros_like(other) if impl == "deepep-ll-rdma" else same & other
    net = other if impl == "deepep-ll-rdma" else ~same
    np.testing.assert_array_equal(got["nvlink_sent"], (x * nvl).sum(axis=-1))
    np.testing.assert_array_equal(got["nvlink_recv"], (x * nvl).sum(axis=-2))
    np.testing.assert_array_equal(got["network_sent"], (x * net).sum(axis=-1))
    np.testing.assert_array_equal(got["network_recv"], (x * net).sum(axis=-2))
