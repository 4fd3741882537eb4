"""The row-group reader of the trace store: prefetched batches equal plain reads; damage is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.replay.counts import RoutingSource
from tracekit.trace import open_trace


def test_a_row_group_queued_for_prefetch_reads_the_same_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ids = random_ids(rng, (2, 3, 1, 4), 8, 2)
    write_ranked_trace(tmp_path / "t", ids, num_experts=8, rows_per_part=4)
    src = RoutingSource(trace=open_trace(tmp_path / "t"), layers=(1,), top_k=2)
    items = [(f, i) for f, i, _, _ in src.reader.row_groups]
    src.reader.prefetch(items)
    for item in items:  # taken back before the thread starts it, waited for, or already decoded
        got = pa.Table.from_batches(src.reader.read(item))
        want = pq.ParquetFile(item[0]).read_row_group(item[1], columns=got.column_names)
        assert got.equals(want)


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
        src.reader.read((str(part), 0))
    assert str(part) in str(err.value) and "\n" not in str(err.value)
