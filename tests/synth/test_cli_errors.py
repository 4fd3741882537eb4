"""tracekit synth --out naming a file: one line, exit 2, the file kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_out_is_a_file(tmp_path: Path, force: list[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    argv = ["synth", "--model", "mixtral-8x7b", "--phase", "decode", "--steps", "2", "--tokens-per-step", "4"]
    r = CliRunner().invoke(cli, [*argv, "--out", str(notes), *force])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--out {notes}: exists and is not a directory" in lines[0]
    assert notes.read_text() == "mine\n"
