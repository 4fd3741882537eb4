"""`tracekit validate`, `sql` and `info` on traces kept on the local S3 server, through the real click
entry point, against the same trace written to a local folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from tests.factories import write_routing_trace
from tests.servers import S3Server
from tracekit.cli.main import cli


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


def _ids(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # 4 steps x 2 MoE layers x 5 tokens, top-2 of 8 distinct experts
    return np.argsort(rng.random((4, 2, 5, 8)), axis=-1)[..., :2].astype(np.int16)


def test_validate_and_sql_on_s3_match_the_local_copy(tmp_path: Path, s3_server: S3Server) -> None:
    ids = _ids(11)
    uri = f"s3://{s3_server.bucket()}/trace"
    write_routing_trace(tmp_path / "trace", ids, rows_per_part=6)
    write_routing_trace(uri, ids, rows_per_part=6)  # type: ignore[arg-type]

    code, out, err = run("validate", uri)
    assert code == 0, err
    assert out.strip() == f"{uri}: valid (schema 1.0)"

    query = "SELECT e, count(*) AS n FROM (SELECT unnest(expert_ids) AS e FROM routing) GROUP BY e ORDER BY e"
    code, remote, err = run("sql", query, uri, "--format", "csv")
    assert code == 0, err
    code, local, err = run("sql", query, str(tmp_path / "trace"), "--format", "csv")
    assert code == 0, err
    assert remote == local
    # independent count: how often each expert was chosen, from the array itself
    counts = np.bincount(ids.reshape(-1), minlength=8)
    want = ["e,n"] + [f"{e},{c}" for e, c in enumerate(counts) if c]
    assert remote.splitlines() == want

    code, out, err = run("info", "--json", uri)
    assert code == 0, err
    assert json.loads(out)["tables"]["routing"]["rows"] == 4 * 2 * 5


def test_validate_on_s3_names_the_damaged_part_and_exits_2(s3_server: S3Server) -> None:
    bucket = s3_server.bucket()
    uri = f"s3://{bucket}/trace"
    write_routing_trace(uri, _ids(12), rows_per_part=6)  # type: ignore[arg-type]
    part = s3_server.keys(bucket, "trace/routing/")[1]
    s3_server.client.put_object(Bucket=bucket, Key=part, Body=b"garbage")
    code, _, err = run("validate", uri)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert f"s3://{bucket}/{part}" in lines[0] and "not a readable Parquet file" in lines[0]


def test_missing_trace_on_s3_is_one_line_exit_2(s3_server: S3Server) -> None:
    uri = f"s3://{s3_server.bucket()}/nothing"
    for cmd in (["validate", uri], ["sql", "SELECT 1 FROM routing", uri]):
        code, _, err = run(*cmd)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert uri in err
