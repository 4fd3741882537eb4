"""The schedule stage: re-batching, attention load and token order against hand-counted values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.replay.schedule import PhaseTokens, _sorted_unique, attention_load, load_tokens, make_schedule
from tracekit.trace import open_trace


@given(num_tokens=st.integers(1, 200), ranks=st.integers(1, 9), batch=st.integers(1, 40))
def test_rebatching_conserves_tokens_and_fills_every_step(num_tokens: int, ranks: int, batch: int) -> None:
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


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_tokens_are_sorted_with_the_first_of_repeated_keys_kept(keys: list[tuple[int, int, int]]) -> None:
    import polars as pl

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
