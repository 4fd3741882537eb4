"""Validation of good and bad traces; each bad case asserts its message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.factories import write_routing_trace
from tracekit.errors import NotATraceError, SchemaError, SchemaVersionError
from tracekit.trace import open_trace, validate


@pytest.fixture
def good(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(3 * 2 * 6)]).reshape(3, 2, 6, 2)
    write_routing_trace(tmp_path / "good", ids, rows_per_part=4)
    return tmp_path / "good"


def _one_problem(path: Path) -> str:
    result = validate(path)
    assert len(result.problems) == 1, result.problems
    return str(result.problems[0])


def test_good_trace_is_valid(good: Path) -> None:
    assert validate(good).ok


def test_path_that_is_not_a_trace(tmp_path: Path) -> None:
    with pytest.raises(NotATraceError, match="no such file or directory"):
        validate(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotATraceError, match=r"not a tracekit trace \(no manifest.json\)"):
        validate(tmp_path / "plain")
    (tmp_path / "file.parquet").write_bytes(b"PAR1")
    with pytest.raises(NotATraceError, match="not a tracekit trace"):
        open_trace(tmp_path / "file.parquet")


def test_truncated_parquet_file(good: Path) -> None:
    part = sorted((good / "routing").glob("*.parquet"))[1]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    msg = _one_problem(good)
    assert msg.startswith(str(part)) and "not a readable Parquet file (truncated or corrupted" in msg


def test_corrupted_parquet_file(good: Path) -> None:
    part = sorted((good / "steps").glob("*.parquet"))[0]
    part.write_bytes(b"this is not parquet at all")
    assert "not a readable Parquet file" in _one_problem(good)


def _flip_inside(part: Path, column: str) -> None:
    """Flip bytes in the middle of a column chunk's pages: the footer stays intact."""
    md = pq.ParquetFile(part).metadata
    chunk = next(
        md.row_group(0).column(i)
        for i in range(md.num_columns)
        if md.row_group(0).column(i).path_in_schema.split(".")[0] == column
    )
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(part.read_bytes())
    at = start + chunk.total_compressed_size - 6  # the last bytes of the chunk's last page
    data[at : at + 4] = bytes(b ^ 0xFF for b in data[at : at + 4])
    part.write_bytes(bytes(data))


@pytest.mark.parametrize("column", ["token_index", "expert_ids"])
def test_damage_inside_a_file_is_a_problem_not_a_traceback(good: Path, column: str) -> None:
    part = sorted((good / "routing").glob("*.parquet"))[1]
    _flip_inside(part, column)
    msg = _one_problem(good)
    assert msg.startswith(str(part)) and "damaged data" in msg and "re-record the trace" in msg


def test_damage_that_still_decodes_is_caught_by_the_page_checksums(good: Path) -> None:
    """Uncompressed plain pages decode whatever bytes they hold: only the checksum tells."""
    part = sorted((good / "routing").glob("*.parquet"))[1]
    table = pq.read_table(part)
    pq.write_table(table, part, compression="none", use_dictionary=False, write_page_checksum=True)
    _flip_inside(part, "token_index")
    assert pq.read_table(part)["token_index"] != table["token_index"]  # silently different values
    msg = _one_problem(good)
    assert msg.startswith(str(part)) and "damaged data inside the file" in msg


def _rewrite(part: Path, table: pa.Table, version: bytes = b"1.0", name: bytes = b"routing") -> None:
    md = {b"tracekit.schema_version": version, b"tracekit.table": name}
    pq.write_table(table.replace_schema_metadata(md), part)


def test_missing_required_column(good: Path) -> None:
    part = sorted((good / "routing").glob("*.parquet"))[0]
    _rewrite(part, pq.read_table(part).drop_columns(["expert_ids"]))
    assert _one_problem(good) == f"{part}: missing required column 'expert_ids' of table routing"


def test_wrong_column_type(good: Path) -> None:
    part = sorted((good / "routing").glob("*.parquet"))[0]
    t = pq.read_table(part)
    t = t.set_column(t.schema.get_field_index("layer"), "layer", t.column("layer").cast(pa.float64()))
    _rewrite(part, t)
    assert _one_problem(good) == f"{part}: column 'layer' has type float64, expected int16 (schema v1)"


def test_wrong_top_k_width_is_a_type_error(good: Path) -> None:
    part = sorted((good / "routing").glob("*.parquet"))[0]
    t = pq.read_table(part)
    ids = pa.array([[1, 2, 3]] * t.num_rows, type=pa.list_(pa.int16(), 3))
    _rewrite(part, t.set_column(t.schema.get_field_index("expert_ids"), "expert_ids", ids))
    assert (
        "column 'expert_ids' has type fixed_size_list<int16>[3], expected fixed_size_list<int16>[2]"
        in _one_problem(good)
    )


def test_null_in_required_column(good: Path) -> None:
    part = sorted((good / "steps").glob("*.parquet"))[0]
    t = pq.read_table(part)
    phase = pa.array([None] * t.num_rows, type=pa.string())
    _rewrite(part, t.set_column(t.schema.get_field_index("phase"), "phase", phase), name=b"steps")
    assert _one_problem(good) == f"{part}: column 'phase' has {t.num_rows} null values but is required"


def test_extra_columns_are_accepted(good: Path) -> None:
    part = sorted((good / "routing").glob("*.parquet"))[0]
    t = pq.read_table(part)
    _rewrite(part, t.append_column("router_entropy", pa.array(np.ones(t.num_rows))))
    assert validate(good).ok
    assert open_trace(good).duckdb().execute("SELECT count(*) FROM routing").fetchone() == (36,)


def test_newer_major_version_in_a_file_is_refused(good: Path) -> None:
    part = sorted((good / "routing").glob("*.parquet"))[0]
    _rewrite(part, pq.read_table(part), version=b"2.0")
    msg = _one_problem(good)
    assert (
        msg.startswith(str(part))
        and "schema 2.0, newer than this tracekit reads (1.0); upgrade tracekit" in msg
    )


def test_newer_major_version_in_the_manifest_is_refused(good: Path) -> None:
    raw = json.loads((good / "manifest.json").read_text())
    raw["schema_version"] = "3.1"
    (good / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(SchemaVersionError, match="upgrade tracekit"):
        open_trace(good)
    assert "schema 3.1" in _one_problem(good)


def test_damaged_manifest(good: Path) -> None:
    (good / "manifest.json").write_text("{not json")
    with pytest.raises(SchemaError, match=r"manifest\.json: not valid JSON"):
        open_trace(good)


def test_file_in_the_wrong_table_folder(good: Path) -> None:
    part = sorted((good / "steps").glob("*.parquet"))[0]
    target = good / "routing" / "r00000-p999999.parquet"
    part.rename(target)
    msg = [str(p) for p in validate(good).problems]
    assert any("holds table 'steps' but sits in routing/" in m for m in msg)


def test_unclosed_shard_is_incomplete(good: Path) -> None:
    status = good / "_shards" / "rank-00000.json"
    raw = json.loads(status.read_text())
    raw["complete"] = False
    status.write_text(json.dumps(raw))
    result = validate(good)
    assert result.incomplete and not result.ok
    assert "incomplete: rank 0 did not close its shard" in _one_problem(good)


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from tests.factories import tiny_manifest
    from tracekit.trace import TraceWriter

    w = TraceWriter(sys.argv[1], tiny_manifest(), rows_per_part=100)
    rng = np.random.default_rng(0)
    step = 0
    while True:
        n = 50
        w.append("routing", {"step": np.full(n, step), "layer": np.ones(n), "token_index": np.arange(n),
                             "expert_ids": rng.integers(0, 8, (n, 2)), "gate_weights": rng.random((n, 2))})
        step += 1
        if step == 4:
            print("parts written", flush=True)
        time.sleep(0.002)
    """
)


def test_killed_writer_leaves_a_readable_incomplete_trace(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, env=env, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "parts written"
        time.sleep(0.3)  # let it write more parts, and likely be caught mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    trace = open_trace(out)
    assert not trace.complete
    result = validate(out)
    assert result.incomplete
    assert all(p.kind == "incomplete" for p in result.problems)
    assert any(
        "rank 0 did not close its shard (killed, crashed or still running)" in str(p) for p in result.problems
    )
    n = trace.duckdb().execute("SELECT count(*), count(DISTINCT step) FROM routing").fetchone()
    assert n is not None and n[0] >= 200 and n[0] % 100 == 0  # whole part files only
    assert n[1] == n[0] // 50
