"""tracekit db: the file is in the previous minor release's storage format and appears only whole."""

from __future__ import annotations

from pathlib import Path

import duckdb
from click.testing import CliRunner

from tracekit.cli.main import cli
from tracekit.cli.sql import STORAGE_VERSION

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "tiny-mixtral"


def test_db_writes_the_older_storage_format_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "a.duckdb"
    r = CliRunner().invoke(cli, ["db", str(SAMPLE), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"DuckDB storage {STORAGE_VERSION}" in r.stdout and "DuckDB 1.5 and later" in r.stdout
    con = duckdb.connect()
    con.execute(f"ATTACH '{out}' AS a (READ_ONLY)")
    tags = con.execute("SELECT tags FROM duckdb_databases() WHERE database_name = 'a'").fetchone()
    assert tags is not None and tags[0]["storage_version"] == "v1.5.0+"
    assert con.execute("SELECT count(*) FROM a.routing").fetchone() == (2986,)
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.duckdb"]  # no staging copy, no lock, no WAL
