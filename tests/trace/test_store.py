"""Writer/reader round trips of every table, part files, shards and lazy reading."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.factories import tiny_manifest, write_routing_trace
from tracekit.errors import SchemaError, UsageError
from tracekit.schema import TABLE_NAMES, table_spec
from tracekit.trace import TraceWriter, open_trace, validate

TOP_K = 2


def random_column(t: pa.DataType, n: int, rng: np.random.Generator) -> pa.Array:
    if pa.types.is_fixed_size_list(t):
        flat = random_column(t.value_type, n * t.list_size, rng)
        return pa.FixedSizeListArray.from_arrays(flat, t.list_size)
    if pa.types.is_list(t):
        lengths = rng.integers(0, 4, n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), random_column(t.value_type, int(offsets[-1]), rng))
    if pa.types.is_integer(t):
        info = np.iinfo(t.to_pandas_dtype())
        return pa.array(rng.integers(max(info.min, -1000), min(info.max, 1000), n), type=t)
    if pa.types.is_floating(t):
        return pa.array(rng.standard_normal(n).astype(t.to_pandas_dtype()), type=t)
    if pa.types.is_boolean(t):
        return pa.array(rng.integers(0, 2, n).astype(bool))
    if pa.types.is_string(t):
        return pa.array([f"v{i}-ü" for i in rng.integers(0, 50, n)])
    raise AssertionError(t)


def random_table(table: str, n: int, seed: int = 0) -> pa.Table:
    schema = table_spec(table).arrow_schema(TOP_K if table_spec(table).needs_top_k else None)
    rng = np.random.default_rng(seed)
    return pa.Table.from_arrays([random_column(f.type, n, rng) for f in schema], schema=schema)


def valid_table(table: str, n: int, seed: int = 0) -> pa.Table:
    """Random values, except where a valid trace has rules: ids within tiny_manifest()'s model
    (8 experts, MoE layers 1 and 2), steps in order with one row per step, finite gate weights."""
    t = random_table(table, n, seed)
    rng = np.random.default_rng(seed + 1)
    fixes: dict[str, pa.Array] = {
        "step": pa.array(np.arange(n), pa.int32()),
        "layer": pa.array(rng.integers(1, 3, n), pa.int16()),
        "expert": pa.array(rng.integers(0, 8, n), pa.int16()),
        "expert_ids": pa.FixedSizeListArray.from_arrays(
            pa.array(rng.integers(0, 8, n * TOP_K), pa.int16()), TOP_K
        ),
        "gate_weights": pa.FixedSizeListArray.from_arrays(
            pa.array(rng.random(n * TOP_K), pa.float32()), TOP_K
        ),
    }
    for name, values in fixes.items():
        i = t.schema.get_field_index(name)
        if i >= 0:
            t = t.set_column(i, t.schema.field(i), values)
    return t


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_every_table_round_trips(tmp_path: Path, table: str) -> None:
    data = valid_table(table, 257)
    with TraceWriter(tmp_path / "t", tiny_manifest(), rows_per_part=100) as w:
        for start in range(0, 257, 50):  # several appends, several part files
            w.append(table, data.slice(start, 50))
    trace = open_trace(tmp_path / "t")
    assert len(trace.files(table)) == 3  # 100 + 100 + 57 rows
    back = trace.read(table)
    if "rank" in data.schema.names:  # the writer stamps its own rank where the column was given
        assert back.column("rank").to_pylist() == data.column("rank").to_pylist()
    assert back.equals(data.cast(back.schema))
    assert trace.scan(table).collect().height == 257
    con = trace.duckdb()
    assert con.execute(f"SELECT count(*) FROM {table}").fetchone() == (257,)
    assert validate(tmp_path / "t").ok


def test_rank_is_filled_in_and_shards_form_one_trace(tmp_path: Path) -> None:
    m = tiny_manifest(world_size=2)
    for rank in (0, 1):
        with TraceWriter(tmp_path / "t", m, rank=rank) as w:
            w.append(
                "steps",
                {
                    "step": [0, 1],
                    "phase": ["prefill", "decode"],
                    "num_tokens": [5, 2],
                    "num_requests": [2, 2],
                },
            )
    trace = open_trace(tmp_path / "t")
    assert trace.ranks == [0, 1] and trace.complete
    got = trace.scan("steps").sort("rank", "step").select("rank", "step").collect().rows()
    assert got == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_two_d_numpy_arrays_become_fixed_size_lists(tmp_path: Path) -> None:
    ids = np.array([[[[1, 3], [0, 2], [3, 1]]]])  # one step, one MoE layer, three tokens, top-2
    write_routing_trace(tmp_path / "t", ids)
    rows = (
        open_trace(tmp_path / "t")
        .duckdb()
        .execute("SELECT token_index, expert_ids FROM routing ORDER BY token_index")
        .fetchall()
    )
    assert [tuple(r[1]) for r in rows] == [(1, 3), (0, 2), (3, 1)]


def test_wrong_top_k_width_is_refused(tmp_path: Path) -> None:
    with (
        TraceWriter(tmp_path / "t", tiny_manifest()) as w,
        pytest.raises(SchemaError, match="expected top_k = 2"),
    ):
        w.append(
            "routing", {"step": [0], "layer": [1], "token_index": [0], "expert_ids": np.array([[1, 2, 3]])}
        )


def test_missing_required_and_unknown_columns_are_refused(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "t", tiny_manifest()) as w:
        with pytest.raises(SchemaError, match="required column 'phase' is missing"):
            w.append("steps", {"step": [0], "num_tokens": [1], "num_requests": [1]})
        with pytest.raises(SchemaError, match=r"unknown columns \['colour'\]"):
            w.append(
                "steps",
                {"step": [0], "phase": ["decode"], "num_tokens": [1], "num_requests": [1], "colour": [1]},
            )


def test_nonempty_output_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    write_routing_trace(tmp_path / "t", np.zeros((1, 1, 2, 2), dtype=np.int64))
    with pytest.raises(UsageError, match="not empty"):
        TraceWriter(tmp_path / "t", tiny_manifest())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a tracekit trace; refusing to delete"):
        TraceWriter(tmp_path / "other", tiny_manifest(), overwrite=True)
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"


def test_background_writer_writes_the_same_rows(tmp_path: Path) -> None:
    data = random_table("routing", 1000, seed=3)
    for bg in (False, True):
        with TraceWriter(tmp_path / f"t{bg}", tiny_manifest(), rows_per_part=128, background=bg) as w:
            for s in range(0, 1000, 64):
                w.append("routing", data.slice(s, 64))
    a = open_trace(tmp_path / "tFalse").read("routing")
    b = open_trace(tmp_path / "tTrue").read("routing")
    assert a.equals(b) and a.num_rows == 1000


def test_memory_stays_bounded_by_rows_per_part(tmp_path: Path) -> None:
    w = TraceWriter(tmp_path / "t", tiny_manifest(), rows_per_part=100)
    for _ in range(50):
        w.append("routing", random_table("routing", 30))
        assert sum(t.num_rows for t in w._buffers.get("routing", [])) < 100
    w.close()
    assert w.rows_written["routing"] == 1500


def test_empty_table_reads_with_its_schema(tmp_path: Path) -> None:
    write_routing_trace(tmp_path / "t", np.zeros((1, 1, 2, 2), dtype=np.int64))
    trace = open_trace(tmp_path / "t")
    assert not trace.has("comm")
    assert trace.scan("comm").collect().height == 0
    assert "bytes_sent" in trace.scan("comm").collect_schema().names()
    con = trace.duckdb()
    assert con.execute("SELECT count(*), sum(bytes_sent) FROM comm").fetchone() == (0, None)
    assert con.execute("SELECT typeof(send_bytes_per_peer) FROM comm LIMIT 0").fetchall() == []


def test_parquet_is_readable_without_tracekit(tmp_path: Path) -> None:
    ids = np.arange(24).reshape(2, 1, 3, 4) % 8
    write_routing_trace(tmp_path / "t", ids)
    glob = str(tmp_path / "t" / "routing" / "*.parquet")
    got = duckdb.sql(f"SELECT sum(list_sum(expert_ids::INT[])) FROM read_parquet('{glob}')").fetchall()
    assert got == [(int(ids.sum()),)]
    assert pl.read_parquet(glob).height == 6


@given(
    steps=st.integers(1, 4),
    layers=st.integers(1, 3),
    tokens=st.integers(1, 20),
    k=st.integers(1, 4),
    parts=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_routing_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory,
    steps: int,
    layers: int,
    tokens: int,
    k: int,
    parts: int,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(16)[:k] for _ in range(steps * layers * tokens)]).reshape(
        steps, layers, tokens, k
    )
    weights = rng.random((steps, layers, tokens, k)).astype(np.float32)
    path = tmp_path_factory.mktemp("prop") / "t"
    write_routing_trace(path, ids, gate_weights=weights, rows_per_part=parts)
    trace = open_trace(path)
    df = trace.scan("routing").sort("step", "layer", "token_index").collect()
    got_ids = np.stack(df["expert_ids"].to_numpy()).reshape(steps, layers, tokens, k)
    got_w = np.stack(df["gate_weights"].to_numpy()).reshape(steps, layers, tokens, k)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_w, weights)
    load = (
        trace.scan("expert_load").group_by("expert").agg(pl.col("num_tokens").sum()).sort("expert").collect()
    )
    np.testing.assert_array_equal(
        load["num_tokens"].to_numpy(), np.bincount(ids.reshape(-1), minlength=int(ids.max()) + 1)
    )
