"""export perfetto --out that cannot be written: one line before any work, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli


@pytest.mark.parametrize("where", ["missing-folder", "folder"])
def test_unwritable_out(tmp_path: Path, where: str) -> None:
    src = tmp_path / "res"
    src.mkdir()
    (src / "result.json").write_text('{"kind": "replay"}')
    if where == "folder":
        out = tmp_path / "a-folder"
        out.mkdir()
        args = ["--force"]
    else:
        out = tmp_path / "missing" / "o.json"
        args = []
    r = CliRunner().invoke(cli, ["export", "perfetto", str(src), "--out", str(out), *args])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--out {out}" in lines[0]
    assert out.is_dir() if where == "folder" else not out.parent.exists()


def test_corrupted_result_table(tmp_path: Path) -> None:
    src = tmp_path / "res"
    src.mkdir()
    (src / "result.json").write_text('{"kind": "replay"}')
    (src / "replay_ranks.parquet").write_bytes(b"PAR1 but not really")
    r = CliRunner().invoke(cli, ["export", "perfetto", str(src), "--out", str(tmp_path / "o.json")])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(src / "replay_ranks.parquet") in lines[0]
    assert "not a readable Parquet file" in lines[0] and not (tmp_path / "o.json").exists()
