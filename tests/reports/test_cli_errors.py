"""report and export --out in a folder that does not exist: one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from tests.factories import write_routing_trace
from tracekit.cli.main import cli


def test_report_out_in_a_missing_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(2 * 2 * 4)]).reshape(2, 2, 4, 2)
    write_routing_trace(tmp_path / "t", ids, phases=["prefill", "decode"])
    out = tmp_path / "missing" / "r.csv"
    r = CliRunner().invoke(
        cli, ["report", "imbalance", str(tmp_path / "t"), "--format", "csv", "--out", str(out)]
    )
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--out {out}: cannot write the file" in lines[0]


def test_bad_memory_limit_names_the_option(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(2 * 2 * 4)]).reshape(2, 2, 4, 2)
    write_routing_trace(tmp_path / "t", ids, phases=["prefill", "decode"])
    for argv in (["sql", "SELECT 1", str(tmp_path / "t")], ["report", "imbalance", str(tmp_path / "t")]):
        r = CliRunner().invoke(cli, [*argv, "--memory-limit", "lots"])
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "--memory-limit 'lots'" in lines[0] and "2GB" in lines[0]
