"""ColumnBatcher: what reaches the writer equals the chunks appended one by one, in order."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.collect.batching import ColumnBatcher


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=0, max_size=40),
    max_steps=st.integers(1, 8),
    max_rows=st.integers(1, 30),
)
def test_batched_rows_equal_the_rows_appended(
    steps: list[tuple[int, bool]], max_steps: int, max_rows: int
) -> None:
    got: dict[str, list[Any]] = {"a": [], "b": []}
    calls: list[int] = []

    def sink(table: str, cols: dict[str, Any]) -> None:
        lengths = {len(v) for v in cols.values()}
        assert len(lengths) == 1  # every column of one hand-over has the same length
        calls.append(lengths.pop())
        got[table].append(cols)

    b = ColumnBatcher(sink, max_steps=max_steps, max_rows=max_rows)
    want_a, want_b = [], []
    for i, (n, extra) in enumerate(steps):
        cols: dict[str, Any] = {"x": np.full(n, i), "s": [f"r{i}"] * n}
        if extra:
            cols["y"] = np.arange(n)  # a column present only in some steps
        b.add("a", cols, n)
        b.add("b", {"step": [i]}, 1)
        want_a += [(i, f"r{i}", j if extra else None) for j in range(n)]
        want_b.append(i)
        b.end_step()
    b.drain()
    flat_a = [
        (int(x), s, int(c["y"][k]) if "y" in c else None)
        for c in got["a"]
        for k, (x, s) in enumerate(zip(c["x"], c["s"], strict=True))
    ]
    assert flat_a == want_a
    assert [v for c in got["b"] for v in c["step"]] == want_b
