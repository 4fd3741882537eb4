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
