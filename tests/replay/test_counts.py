"""Routing counts against second implementations (the cost model's traffic counter, unprefetched and
unordered reads)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cost import ep_traffic
from tracekit.placement import Placement
from tracekit.replay.counts import RoutingSource, expert_window, sort_columns
from tracekit.replay.schedule import load_tokens, make_schedule
from tracekit.trace import open_trace


@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 10_000))
def test_sorting_network_sorts_rows(k: int, n: int, seed: int) -> None:
    x = np.random.default_rng(seed).integers(0, 5, (n, k))
    got = np.stack(sort_columns([x[:, i] for i in range(k)]), axis=1)
    np.testing.assert_array_equal(got, np.sort(x, axis=1))


@settings(max_examples=12)
@given(seed=st.integers(0, 10_000), ranks=st.sampled_from([2, 4, 8]), rpn=st.sampled_from([2, 4, 8]))
def test_routing_counts_match_the_cost_models_traffic_counter(tmp_path_factory: pytest.TempPathFactory, seed: int, ranks: int, rpn: int) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    E, K, N = 16, 4, 6
    ids = random_ids(rng, (ranks, 2, 1, N), E, K)
    path = tmp_path_factory.mktemp("w") / "t"
    write_ranked_trace(path, ids, num_experts=E)
    tr = open_trace(path)
    tokens, index = load_tokens(tr)
    sch = make_schedule(tokens["decode"], num_ranks=ranks, batch_per_gpu=None)
    placement = Placement.contiguous([1], E, ranks)
    src = RoutingSource(trace=tr, layers=(1,), top_k=K)
    ew = expert_window(src, index, tokens["decode"], sch, placement, step_lo=0, step_hi=2, ranks_per_node=rpn)
    spr = E // ranks
    for s in range(2):
        dst = (ids[:, s, 0] // spr).reshape(-1, K)
        ref = ep_traffic(
            dst_rank=dst, src_rank=np.repeat(np.arange(ranks), N), num_ranks=ranks, domain_size=rpn
        )
        np.testing.assert_array_equal(ew.peer_tokens[s, 0], ref.rank_tokens)
        np.testing.assert_array_equal(ew.rank_pairs[s, 0], ref.expert_tokens)
        np.testing.assert_array_equal(ew.node_tokens[s, 0], ref.domain_tokens)
        np.testing.assert_array_equal(ew.recv[s, 0], np.bincount(ids[:, s, 0].reshape(-1), minlength=E))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), ranks=st.sampled_from([2, 4]))
def test_prefetched_windows_count_like_unprefetched_ones(tmp_path_factory: pytest.TempPathFactory, seed: int, ranks: int) -> None:  # fmt: skip
    """Windows of one step, each prefetching the next window's row groups (one row group per step
    and rank), count exactly what windows read without prefetch count, and what the cost model's
    own traffic counter gives."""
    rng = np.random.default_rng(seed)
    E, K, N, S = 16, 4, 5, 6
    ids = random_ids(rng, (ranks, S, 1, N), E, K)
    path = tmp_path_factory.mktemp("w") / "t"
    write_ranked_trace(path, ids, num_experts=E, rows_per_part=N)
    tr = open_trace(path)
    tokens, index = load_tokens(tr)
    sch = make_schedule(tokens["decode"], num_ranks=ranks, batch_per_gpu=None)
    placement = Placement.contiguous([1], E, ranks)
    fetched = RoutingSource(trace=tr, layers=(1,), top_k=K)
    assert len(fetched.reader.row_groups) == ranks * S
    spr = E // ranks
    for s in range(S):
        kw = {"step_lo": s, "step_hi": s + 1, "ranks_per_node": 2}
        ew = expert_window(fetched, index, tokens["decode"], sch, placement, prefetch_next=True, **kw)
        plain = RoutingSource(trace=tr, layers=(1,), top_k=K)
        ref_ew = expert_window(plain, index, tokens["decode"], sch, placement, **kw)
        for name in ("recv", "rank_pairs", "dup_rank", "dup_node"):
            np.testing.assert_array_equal(getattr(ew, name), getattr(ref_ew, name))
        ref = ep_traffic(
            dst_rank=(ids[:, s, 0] // spr).reshape(-1, K),
            src_rank=np.repeat(np.arange(ranks), N),
            num_ranks=ranks,
            domain_size=2,
        )
        np.testing.assert_array_equal(ew.peer_tokens[0, 0], ref.rank_tokens)
        np.testing.assert_array_equal(ew.rank_pairs[0, 0], ref.expert_tokens)
    assert not fetched.reader._pending  # every prefetched row group was taken by a later window


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), ranks=st.sampled_from([2, 4]), rpn=st.sampled_from([1, 2, 4]))
def test_rows_in_any_order_without_statistics_count_like_the_writers_files(tmp_path_factory: pytest.TempPathFactory, seed: int, ranks: int, rpn: int) -> None:  # fmt: skip
    """The routing rows rewritten as one file in random order, in row groups that mix ranks, steps
    and layers, without Parquet statistics, and with rows the replay must drop (a token index past
    the step's tokens, a step and a rank without tokens, a dense layer, a layer past the model):
    every window counts exactly what it counts from the writer's files, and what the cost model's
    own traffic counter gives."""
    rng = np.random.default_rng(seed)
    E, K, N, S, L = 16, 4, 6, 3, 2
    ids = random_ids(rng, (ranks, S, L, N), E, K)
    base = tmp_path_factory.mktemp("w")
    write_ranked_trace(base / "a", ids, num_experts=E)
    write_ranked_trace(base / "b", ids, num_experts=E)
    routing = sorted((base / "b" / "routing").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in routing])
    n = 5
    junk = pa.table(
        {
            "rank": pa.array([0, 0, 77, 0, 1], pa.int32()),
            "step": pa.array([0, 99, 1, 1, 2], pa.int32()),
            "layer": pa.array([1, 1, 1, 0, 40], pa.int16()),
            "token_index": pa.array([N + 5, 0, 0, 1, 2], pa.int32()),
            "expert_ids": pa.array([[0, 1, 2, 3]] * n, table.schema.field("expert_ids").type),
        }
    )
    table = pa.concat_tables([table.select(junk.column_names), junk], promote_options="permissive")
    table = table.take(rng.permutation(table.num_rows))
    for f in routing:
        f.unlink()
    pq.write_table(table, routing[0], row_group_size=7, write_statistics=False)
    placement = Placement.contiguous([1, 2], E, ranks)
    spr = E // ranks
    layers = (1, 2)
    for s in range(S):
        kw = {"step_lo": s, "step_hi": s + 1, "ranks_per_node": rpn}
        got, want = (
            expert_window(
                RoutingSource(trace=tr, layers=layers, top_k=K),
                index,
                tokens["decode"],
                make_schedule(tokens["decode"], num_ranks=ranks, batch_per_gpu=None),
                placement,
                **kw,
            )
            for tr in (open_trace(base / "b"), open_trace(base / "a"))
            for tokens, index in [load_tokens(tr)]
        )
        for name in ("recv", "rank_pairs", "dup_rank", "dup_node"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        for li in range(L):
            ref = ep_traffic(
                dst_rank=(ids[:, s, li] // spr).reshape(-1, K),
                src_rank=np.repeat(np.arange(ranks), N),
                num_ranks=ranks,
                domain_size=rpn,
            )
            np.testing.assert_array_equal(got.peer_tokens[0, li], ref.rank_tokens)
            np.testing.assert_array_equal(got.node_tokens[0, li], ref.domain_tokens)
            np.testing.assert_array_equal(
                got.recv[0, li], np.bincount(ids[:, s, li].reshape(-1), minlength=E)
            )


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), ranks=st.sampled_from([2, 4]), batch=st.integers(3, 12))
def test_rebatched_windows_reusing_tokens_count_every_copy(tmp_path_factory: pytest.TempPathFactory, seed: int, ranks: int, batch: int) -> None:  # fmt: skip
    """A short trace re-batched into big steps: each replayed step holds several copies of the
    token stream. Every window (two steps, so copies span windows too) counts what the cost
    model's traffic counter gives for the tokens the schedule puts on each step and rank."""
    rng = np.random.default_rng(seed)
    E, K, N, S = 16, 4, 5, 2
    ids = random_ids(rng, (1, S, 1, N), E, K)  # one recorded rank
    path = tmp_path_factory.mktemp("w") / "t"
    write_ranked_trace(path, ids, num_experts=E)
    tr = open_trace(path)
    tokens, index = load_tokens(tr)
    sch = make_schedule(tokens["decode"], num_ranks=ranks, batch_per_gpu=batch, num_steps=5)
    assert sch.step.shape[0] >= 3  # the stream is replayed several times over
    stream_ids = ids[0, :, 0].reshape(S * N, K)  # stream order: trace step, then token index
    p, step, rank = sch.tokens
    placement = Placement.contiguous([1], E, ranks)
    spr = E // ranks
    for lo in range(0, sch.num_steps, 2):
        hi = min(sch.num_steps, lo + 2)
        ew = expert_window(
            RoutingSource(trace=tr, layers=(1,), top_k=K),
            index,
            tokens["decode"],
            sch,
            placement,
            step_lo=lo,
            step_hi=hi,
            ranks_per_node=2,
        )
        for w in range(hi - lo):
            on = step == lo + w
            chosen = stream_ids[p[on]]
            ref = ep_traffic(dst_rank=chosen // spr, src_rank=rank[on], num_ranks=ranks, domain_size=2)
            np.testing.assert_array_equal(ew.recv[w, 0], np.bincount(chosen.reshape(-1), minlength=E))
            np.testing.assert_array_equal(ew.rank_pairs[w, 0], ref.expert_tokens)
            np.testing.assert_array_equal(ew.peer_tokens[w, 0], ref.rank_tokens)
            np.testing.assert_array_equal(ew.node_tokens[w, 0], ref.domain_tokens)
