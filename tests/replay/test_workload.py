"""Workload extraction: schedules, attention load and routing counts against second implementations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cost import ep_traffic
from tracekit.placement import Placement
from tracekit.replay.workload import (
    RoutingSource,
    _sort_columns,
    attention_load,
    expert_window,
    load_tokens,
    make_schedule,
)
from tracekit.trace import open_trace


@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 10_000))
def test_sorting_network_sorts_rows(k: int, n: int, seed: int) -> None:
    x = np.random.default_rng(seed).integers(0, 5, (n, k))
    got = np.stack(_sort_columns([x[:, i] for i in range(k)]), axis=1)
    np.testing.assert_array_equal(got, np.sort(x, axis=1))


@given(num_tokens=st.integers(1, 200), ranks=st.integers(1, 9), batch=st.integers(1, 40))
def test_rebatching_conserves_tokens_and_fills_every_step(num_tokens: int, ranks: int, batch: int) -> None:
    from tracekit.replay.workload import PhaseTokens

    tok = PhaseTokens(
        phase="decode",
        trace_step=np.arange(num_tokens) // 7,
        trace_rank=np.zeros(num_tokens, dtype=np.int64),
        request=np.arange(num_tokens),
        kv_len=np.full(num_tokens, 5),
        output=np.ones(num_tokens, dtype=bool),
    )
    sch = make_schedule(tok, num_ranks=ranks, batch_per_gpu=batch)
    p, step, rank = sch.tokens
    # every replayed step is full: batch tokens on every rank
    counts = np.bincount(step * ranks + rank, minlength=sch.num_steps * ranks)
    assert (counts == batch).all()
    # every trace token is replayed, in order, the stream reused from its start only past its end
    assert set(p.tolist()) == set(range(num_tokens))
    assert sch.token_reuse == pytest.approx(sch.num_steps * ranks * batch / num_tokens)
    assert sch.num_steps == max(1, -(-num_tokens // (ranks * batch)))
    # replay order is step order, so a window's tokens are one slice
    for lo in range(sch.num_steps):
        sel = sch.token_range(lo, lo + 2)
        assert np.array_equal(np.arange(step.size)[sel], np.flatnonzero((step >= lo) & (step < lo + 2)))
    assert np.array_equal(sch.token_copy, np.nonzero(sch.step >= 0)[0])


def test_attention_load_counts_kv_and_requests(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = random_ids(rng, (2, 3, 1, 4), 8, 2)
    write_ranked_trace(
        tmp_path / "t", ids, num_experts=8, position=np.array([9, 19, 29, 39]), prefill_tokens=5
    )
    tokens, _ = load_tokens(open_trace(tmp_path / "t"))
    assert tokens["prefill"].num_tokens == 10 and tokens["decode"].num_tokens == 24
    sch = make_schedule(tokens["decode"], num_ranks=2, batch_per_gpu=None)
    load = attention_load(tokens["decode"], sch, (None, 16))
    # decode step s: KV lengths 10+s, 20+s, 30+s, 40+s on each rank
    for s in range(3):
        assert load.pairs[None][s].tolist() == [100 + 4 * s] * 2
        assert load.pairs[16][s].tolist() == [(10 + s) + 16 * 3] * 2
    assert load.requests.tolist() == [8, 8, 8]
    pre = make_schedule(tokens["prefill"], num_ranks=2, batch_per_gpu=None)
    pl_ = attention_load(tokens["prefill"], pre, (None,))
    assert pl_.pairs[None].tolist() == [[15, 15]]  # positions 0..4 attend 1..5 keys
    assert pl_.keys[None].tolist() == [[5, 5]]  # one sequence per rank, 5 keys read
    assert pl_.outputs.tolist() == [[1, 1]]  # the last prompt token yields the first output


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
    assert len(fetched.row_groups) == ranks * S
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
    assert not fetched._pending  # every prefetched row group was taken by a later window


def test_a_row_group_queued_for_prefetch_reads_the_same_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ids = random_ids(rng, (2, 3, 1, 4), 8, 2)
    write_ranked_trace(tmp_path / "t", ids, num_experts=8, rows_per_part=4)
    src = RoutingSource(trace=open_trace(tmp_path / "t"), layers=(1,), top_k=2)
    items = [(f, i) for f, i, _, _ in src.row_groups]
    src.prefetch(items)
    for item in items:  # taken back before the thread starts it, waited for, or already decoded
        got = pa.Table.from_batches(src.read(item))
        want = pq.ParquetFile(item[0]).read_row_group(item[1], columns=got.column_names)
        assert got.equals(want)


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


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_tokens_are_sorted_with_the_first_of_repeated_keys_kept(keys: list[tuple[int, int, int]]) -> None:
    import polars as pl

    from tracekit.replay.workload import _sorted_unique

    frame = pl.DataFrame(
        {
            "rank": [k[0] for k in keys],
            "step": [k[1] for k in keys],
            "token_index": [k[2] for k in keys],
            "row": list(range(len(keys))),
        }
    )
    got = _sorted_unique(frame)
    # second implementation: a dict keeps the first row of each key; sorted by (step, rank, index)
    first: dict[tuple[int, int, int], int] = {}
    for i, (r, s, t) in enumerate(keys):
        first.setdefault((s, r, t), i)
    assert got["row"].to_list() == [first[k] for k in sorted(first)]


def test_a_damaged_routing_row_group_is_a_one_line_trace_error(tmp_path: Path) -> None:
    from tests.trace.test_validate import _flip_inside
    from tracekit.errors import TraceError

    ids = random_ids(np.random.default_rng(5), (1, 2, 1, 4), 8, 2)
    write_ranked_trace(tmp_path / "t", ids, num_experts=8)
    part = sorted((tmp_path / "t" / "routing").glob("*.parquet"))[0]
    _flip_inside(part, "expert_ids")
    src = RoutingSource(trace=open_trace(tmp_path / "t"), layers=(1,), top_k=2)
    with pytest.raises(
        TraceError, match=r"routing row group 0 cannot be decoded .*the file is damaged"
    ) as err:
        src.read((str(part), 0))
    assert str(part) in str(err.value) and "\n" not in str(err.value)


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
