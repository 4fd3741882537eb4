"""Every shipped sample trace validates and summarises (what `tracekit validate` / `info --json` do)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli

SAMPLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "sample_traces").glob("*") if p.is_dir())


@pytest.mark.parametrize("trace", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_trace_validates_and_summarises(trace: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["validate", str(trace)])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(cli, ["info", "--json", str(trace)])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["complete"] and s["steps"]["count"] > 0 and s["tokens"] > 0
    assert s["tables"]["routing"]["rows"] > 0 or s["tables"]["expert_load"]["rows"] > 0
