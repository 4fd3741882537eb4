"""Result files of replay, compare and sweep: the column types their schema files declare, and
tracekit's metadata (schema version, table, tracekit version, the command that wrote them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit._version import __version__
from tracekit.cli.main import cli
from tracekit.schema import result_spec
from tracekit.schema.tables import type_name


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("res") / "t"
    write_ranked_trace(
        path, random_ids(np.random.default_rng(5), (2, 2, 2, 8), 8, 2), num_experts=8, prefill_tokens=6
    )
    return path


def _check(out: Path, args: list[str]) -> None:
    files = sorted(out.glob("*.parquet"))
    assert files, f"no result tables in {out}"
    for f in files:
        spec = result_spec(f.stem)
        schema = pq.read_schema(f)
        declared = {c.name: c.type for c in spec.columns}
        assert {n: type_name(schema.field(n).type) for n in schema.names} == declared, f.name
        meta = schema.metadata
        assert meta[b"tracekit.table"] == f.stem.encode(), f.name
        assert meta[b"tracekit.version"] == __version__.encode()
        assert meta[b"tracekit.command"].decode() == "tracekit " + " ".join(args)


@pytest.mark.parametrize(
    "kind",
    [
        ["replay", "--hw", "h200-sxm", "--ep", "2"],
        ["compare", "--hw", "h200-sxm", "--hw", "gb200-nvl72", "--ep", "2"],
        ["sweep", "--hw", "h200-sxm", "--ep", "2", "--batch-per-gpu", "1,4", "--jobs", "1"],
    ],
    ids=["replay", "compare", "sweep"],
)
def test_result_tables_have_declared_types_and_provenance(
    trace: Path, tmp_path: Path, kind: list[str]
) -> None:
    out = tmp_path / "out"
    args = [kind[0], str(trace), *kind[1:], "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    _check(out, args)
