"""Traces on object storage: written, read, validated and queried through the local S3 server, and a
filesystem that only fsspec provides (``memory://``)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.factories import tiny_manifest, write_routing_trace
from tests.servers import S3Server
from tracekit.errors import NotATraceError, StorageError, UsageError
from tracekit.trace import TraceWriter, open_trace, validate
from tracekit.trace.store import RemotePath, absolute, is_uri, location


def _ids(seed: int = 0, steps: int = 3, layers: int = 2, tokens: int = 6, k: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # distinct experts per token: the first k of a permutation of 8
    return np.argsort(rng.random((steps, layers, tokens, 8)), axis=-1)[..., :k].astype(np.int16)


def test_locations_tell_local_paths_from_uris(tmp_path: Path) -> None:
    assert location(tmp_path) == tmp_path
    assert location(f"file://{tmp_path}") == tmp_path
    assert location("relative/dir") == Path("relative/dir")
    assert not is_uri("relative/dir") and not is_uri(f"file://{tmp_path}") and is_uri("memory://b/t")
    assert absolute("relative/dir") == str(Path("relative/dir").resolve())
    assert absolute("memory://b/t") == "memory://b/t"


def test_remote_path_on_an_fsspec_filesystem() -> None:
    root = location("memory://tk-store-test/trace")
    assert isinstance(root, RemotePath)
    assert not root.exists() and list(root.iterdir()) == []
    f = root / "a" / "x.json"
    f.write_text('{"a": 1}')
    assert f.read_text() == '{"a": 1}' and f.stat().st_size == 8
    assert (f.name, f.suffix, f.stem, str(f.parent)) == (
        "x.json",
        ".json",
        "x",
        "memory://tk-store-test/trace/a",
    )
    assert root.is_dir() and (root / "a").is_dir() and f.is_file()
    assert [p.name for p in root.iterdir()] == ["a"]
    assert [str(p) for p in root.rglob() if p.is_file()] == ["memory://tk-store-test/trace/a/x.json"]
    again = pickle.loads(pickle.dumps(f))  # travels as its URI
    assert again == f and hash(again) == hash(f) and again.read_bytes() == b'{"a": 1}'
    root.remove_tree()
    assert not f.exists()


def test_trace_on_s3_reads_as_the_same_trace_written_locally(tmp_path: Path, s3_server: S3Server) -> None:
    ids = _ids()
    bucket = s3_server.bucket()
    uri = f"s3://{bucket}/traces/t1"
    local = tmp_path / "t1"
    write_routing_trace(local, ids, rows_per_part=4)
    write_routing_trace(uri, ids, rows_per_part=4)  # type: ignore[arg-type]
    # the writer's files, each put whole: no temporary names, parts as locally
    keys = s3_server.keys(bucket, "traces/t1/")
    here = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert [k.removeprefix("traces/t1/") for k in keys] == here
    a, b = open_trace(local), open_trace(uri)
    assert isinstance(b.path, RemotePath) and b.remote and b.complete
    for table in ("steps", "tokens", "routing", "expert_load"):
        assert b.read(table).equals(a.read(table)), table
        assert b.scan(table).collect().equals(a.scan(table).collect()), table
    assert b.summary()["tables"]["routing"]["rows"] == ids.shape[0] * ids.shape[1] * ids.shape[2]
    assert validate(uri).ok


def test_sql_over_a_remote_trace_matches_the_local_copy(tmp_path: Path, s3_server: S3Server) -> None:
    from tracekit.reports import Catalog

    ids = _ids(seed=3)
    uri = f"s3://{s3_server.bucket()}/t"
    write_routing_trace(tmp_path / "t", ids)
    write_routing_trace(uri, ids)  # type: ignore[arg-type]
    query = (
        "SELECT layer, e, count(*) FROM (SELECT layer, unnest(expert_ids) AS e FROM routing) "
        "GROUP BY ALL ORDER BY ALL"
    )
    want = Catalog.from_paths([str(tmp_path / "t")]).connect().execute(query).fetchall()
    got = Catalog.from_paths([uri]).connect().execute(query).fetchall()
    assert got == want and len(got) > 4
    # independent count: experts per layer from the array itself
    for layer_pos, layer in enumerate(open_trace(uri).manifest.model.moe_layers):
        counts = np.bincount(ids[:, layer_pos].reshape(-1), minlength=8)
        assert {e: n for lay, e, n in got if lay == layer} == {e: int(c) for e, c in enumerate(counts) if c}


def test_a_database_file_cannot_keep_arrow_views_of_a_remote_trace(
    tmp_path: Path, s3_server: S3Server
) -> None:
    from tracekit.reports import Catalog

    uri = f"s3://{s3_server.bucket()}/t"
    write_routing_trace(uri, _ids())  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="httpfs"):
        Catalog.from_paths([uri]).connect(tmp_path / "x.duckdb")


def test_validate_names_a_damaged_remote_part(s3_server: S3Server) -> None:
    bucket = s3_server.bucket()
    uri = f"s3://{bucket}/t"
    write_routing_trace(uri, _ids(), rows_per_part=4)  # type: ignore[arg-type]
    part = next(k for k in s3_server.keys(bucket, "t/routing/"))
    s3_server.client.put_object(Bucket=bucket, Key=part, Body=b"PAR1 not parquet PAR1")
    result = validate(uri)
    assert not result.ok
    assert any(
        p.path == f"s3://{bucket}/{part}" and "not a readable Parquet file" in p.message
        for p in result.problems
    )


def test_remote_output_is_refused_when_taken_and_replaced_with_force(s3_server: S3Server) -> None:
    uri = f"s3://{s3_server.bucket()}/t"
    write_routing_trace(uri, _ids(seed=1))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="pass --force"):
        TraceWriter(uri, tiny_manifest())
    write = TraceWriter(uri, tiny_manifest(), overwrite=True)
    write.append("steps", {"step": [0], "phase": ["decode"], "num_tokens": [1], "num_requests": [1]})
    write.close()
    tr = open_trace(uri)
    assert not tr.has("routing") and tr.read("steps").num_rows == 1  # the old trace is gone


def test_missing_remote_trace_and_unreachable_store_are_one_line_errors(s3_server: S3Server) -> None:
    with pytest.raises(NotATraceError, match="no such file"):
        open_trace(f"s3://{s3_server.bucket()}/nothing-here")
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL"):
        open_trace("s3://t-bucket-that-does-not-exist/x?endpoint_override=127.0.0.1:9&scheme=http")


def test_killed_synth_leaves_a_readable_trace_on_s3(tmp_path: Path, s3_server: S3Server) -> None:
    """The writer is SIGKILLed mid-run: the trace opens, validate calls it incomplete (not damaged),
    and every routing row it holds comes from whole part files."""
    bucket = s3_server.bucket()
    uri = f"s3://{bucket}/killed"
    rows_per_part = 20_000
    cmd = [sys.executable, "-m", "tracekit.cli.main", "synth", "--model", "qwen3-30b-a3b", "--phase", "decode",
           "--tokens-per-step", "256", "--steps", "4000", "--out", uri, "--rows-per-part", str(rows_per_part),
           "--no-gate-weights"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 120
        while len(s3_server.keys(bucket, "killed/routing/")) < 3:
            assert proc.poll() is None, "synth finished before it could be killed; give it more steps"
            assert time.monotonic() < deadline, "synth wrote no routing part in time"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    tr = open_trace(uri, warn=False)
    assert not tr.complete
    result = validate(uri)
    assert result.problems and all(p.kind == "incomplete" for p in result.problems), result.problems
    parts = tr.files("routing")
    routed = tr.read("routing", columns=["step"]).column("step").to_numpy()
    per_step = 256 * 48  # tokens x MoE layers of one step, appended at once
    # a part is flushed after the append that reaches rows_per_part: two whole steps each
    assert len(parts) >= 3 and routed.size == len(parts) * 2 * per_step
    assert np.array_equal(np.bincount(routed), np.full(routed.max() + 1, per_step))
    # whole parts only: every object under the trace is a finished file
    assert all(not k.rsplit("/", 1)[-1].startswith(".") for k in s3_server.keys(bucket, "killed/"))
    # and the commands read it as it is: validate names it incomplete (exit 2, one line per problem,
    # no damaged part), sql counts the rows of the whole parts
    from click.testing import CliRunner

    from tracekit.cli.main import cli

    res = CliRunner().invoke(cli, ["validate", uri])
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.stderr
    assert "incomplete" in res.stderr and "not a readable Parquet file" not in res.stderr
    res = CliRunner().invoke(cli, ["sql", "SELECT count(*) AS n FROM routing", uri, "--format", "csv"])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines() == ["n", str(routed.size)]


def test_remote_parquet_write_is_whole_or_absent(s3_server: S3Server) -> None:
    from tracekit.trace.store import write_parquet

    bucket = s3_server.bucket()
    dest = location(f"s3://{bucket}/x.parquet")
    assert isinstance(dest, RemotePath)
    with pytest.raises(pa.ArrowException):
        write_parquet(pa.table({"a": [1]}), dest, compression="no-such-codec")
    assert s3_server.keys(bucket) == []
    write_parquet(pa.table({"a": [1, 2]}), dest)
    assert s3_server.keys(bucket) == ["x.parquet"]
