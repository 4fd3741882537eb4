"""The DuckDB catalog: view names, the union over inputs, result directories, database files, and
the Parquet files read directly by DuckDB without tracekit."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from tests.reports.conftest import Inputs
from tracekit.errors import UsageError
from tracekit.reports import Catalog, describe_inputs, query


def test_single_trace_views(inputs: Inputs) -> None:
    cat = Catalog.from_paths([inputs.trace])
    con = cat.connect()
    names = {v.name for v in cat.views(con)}
    assert {"inputs", "routing", "expert_load", "steps", "comm", "kernels", "trace_a_routing"} <= names
    n = con.execute("SELECT count(*) FROM routing").fetchone()
    ids = inputs.expert_ids
    assert n == (ids.shape[0] * ids.shape[1] * ids.shape[2],)
    # The routing view holds exactly the ids written, as fixed-size lists.
    rows = con.execute(
        "SELECT step, layer, token_index, expert_ids FROM routing ORDER BY step, layer, token_index"
    ).fetchall()
    got = np.array([r[3] for r in rows]).reshape(ids.shape)
    assert np.array_equal(got, ids)
    assert con.execute("SELECT DISTINCT input FROM routing").fetchall() == [("trace_a",)]
    con.close()


def test_union_over_inputs_with_prefixed_views(inputs: Inputs) -> None:
    cat = Catalog.from_paths([f"a={inputs.trace}", f"b={inputs.trace_b}"])
    con = cat.connect()
    per_input = dict(con.execute("SELECT input, count(*) FROM routing GROUP BY input").fetchall())
    assert per_input["a"] == con.execute("SELECT count(*) FROM a_routing").fetchone()[0]  # type: ignore[index]
    assert per_input["b"] == con.execute("SELECT count(*) FROM b_routing").fetchone()[0]  # type: ignore[index]
    # a top-2 and a top-4 trace share one routing view
    assert dict(con.execute("SELECT input, max(len(expert_ids)) FROM routing GROUP BY 1").fetchall()) == {
        "a": 2,
        "b": 4,
    }
    info = con.execute(
        "SELECT input, position, kind, num_experts, top_k FROM inputs ORDER BY position"
    ).fetchall()
    assert info == [("a", 1, "trace", 8, 2), ("b", 2, "trace", 16, 4)]
    con.close()


def test_trace_and_result_together(inputs: Inputs) -> None:
    cat = Catalog.from_paths([inputs.trace, inputs.replay_h200, inputs.sweep])
    assert [(i.name, i.kind) for i in cat.inputs] == [
        ("trace_a", "trace"),
        ("replay_h200", "replay"),
        ("sweep", "sweep"),
    ]
    con = cat.connect()
    steps = pl.read_parquet(inputs.replay_h200 / "replay_steps.parquet")
    got = con.execute("SELECT sum(step_time_s), count(*) FROM replay_steps").fetchone()
    assert got is not None and got[0] == pytest.approx(steps["step_time_s"].sum()) and got[1] == steps.height
    assert con.execute("SELECT count(*) FROM replay_h200_replay_steps").fetchone() == (steps.height,)
    raw = con.execute("SELECT result_json FROM inputs WHERE input = 'replay_h200'").fetchone()
    assert raw is not None and json.loads(raw[0])["kind"] == "replay"
    assert not cat.has("replay_peers") and cat.has("sweep_points")
    con.close()


def test_default_names_are_identifiers_and_unique(tmp_path: Path, inputs: Inputs) -> None:
    a = tmp_path / "x" / "out"
    b = tmp_path / "y" / "out"
    for p in (a, b):
        p.mkdir(parents=True)
        pl.DataFrame({"v": [1]}).write_parquet(p / "t.parquet")
    named = describe_inputs([a, b, inputs.trace])
    assert [i.name for i in named] == ["out", "out_2", "trace_a"]
    assert [i.kind for i in named] == ["parquet", "parquet", "trace"]


def test_bad_inputs_say_what_to_do(tmp_path: Path, inputs: Inputs) -> None:
    with pytest.raises(UsageError, match="no such file or directory"):
        Catalog.from_paths([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither a trace"):
        Catalog.from_paths([tmp_path / "empty"])
    with pytest.raises(UsageError, match="not a valid view prefix"):
        Catalog.from_paths([f"9x={inputs.trace}"])
    with pytest.raises(UsageError, match="given twice"):
        Catalog.from_paths([f"a={inputs.trace}", f"a={inputs.trace_b}"])
    with pytest.raises(UsageError, match="given twice"):  # DuckDB names ignore case
        Catalog.from_paths([f"a={inputs.trace}", f"A={inputs.trace_b}"])
    # "replay" as a trace name would make replay_steps both a shared view and that trace's steps
    with pytest.raises(UsageError, match="would be both"):
        Catalog.from_paths([f"replay={inputs.trace}", inputs.replay_h200])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "result.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"result\.json: cannot be read"):
        Catalog.from_paths([bad])


def test_bad_sql_is_one_usage_error(inputs: Inputs) -> None:
    con = Catalog.from_paths([inputs.trace]).connect()
    with pytest.raises(UsageError, match=r"SQL error: Parser Error.*tracekit sql --schema"):
        query(con, "SELEC 1")
    with pytest.raises(UsageError, match=r"Referenced column \"nope\" not found") as err:
        query(con, "SELECT nope FROM routing")
    assert "\n" not in str(err.value)
    con.close()


def test_database_file_opens_with_the_plain_duckdb_client(tmp_path: Path, inputs: Inputs) -> None:
    db = tmp_path / "all.duckdb"
    cat = Catalog.from_paths([inputs.trace, inputs.replay_h200])
    cat.connect(db).close()
    con = duckdb.connect(str(db), read_only=True)  # no tracekit involved from here on
    load = pl.read_parquet(str(inputs.trace / "expert_load" / "*.parquet"))
    want = load.group_by("layer").agg(pl.col("num_tokens").sum()).sort("layer")
    got = con.execute(
        "SELECT layer, sum(num_tokens) FROM expert_load GROUP BY layer ORDER BY layer"
    ).fetchall()
    assert got == list(zip(want["layer"], want["num_tokens"], strict=True))
    assert con.execute("SELECT count(*) FROM replay_steps").fetchone() == (
        pl.read_parquet(inputs.replay_h200 / "replay_steps.parquet").height,
    )
    assert con.execute("SELECT kind FROM inputs ORDER BY position").fetchall() == [("trace",), ("replay",)]
    con.close()


def test_trace_parquet_queried_directly_with_duckdb(inputs: Inputs) -> None:
    """The trace's own files, read by DuckDB with no tracekit code at all."""
    con = duckdb.connect()
    glob = str(inputs.trace / "routing" / "*.parquet")
    rows = con.execute(
        f"SELECT layer, e, count(*) FROM (SELECT layer, unnest(expert_ids) AS e FROM read_parquet('{glob}')) "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    ids = inputs.expert_ids
    want = [
        (li + 1, e, int((ids[:, li] == e).sum()))
        for li in range(ids.shape[1])
        for e in range(8)
        if (ids[:, li] == e).any()
    ]
    assert rows == want
    meta = con.execute(
        f"SELECT key, value FROM parquet_kv_metadata('{glob}') WHERE key = 'tracekit.table'"
    ).fetchall()
    assert meta and all(v == b"routing" for _, v in meta)
    con.close()
