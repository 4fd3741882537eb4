"""Size-like arguments are bounded before anything is allocated: one-line errors that give the
limit and why, never MemoryError."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "tiny-deepseek-v3"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--ep", "100000"], "--ep 100000: at most 4096"),
        (["--redundant", "1000000000"], "--redundant 1000000000: at most"),
        (["--ep", "8", "--batch-per-gpu", str(10**12)], "--batch-per-gpu 1000000000000"),
    ],
)
def test_replay_refuses_sizes_memory_cannot_back(args: list[str], expect: str) -> None:
    r = CliRunner().invoke(cli, ["replay", str(SAMPLE), "--hw", "h200-sxm", "--phase", "decode", *args])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], lines


def test_place_refuses_huge_redundancy() -> None:
    r = CliRunner().invoke(cli, ["place", str(SAMPLE), "--ep", "8", "--redundant", "1000000000"])
    assert r.exit_code == 2
    assert "--redundant 1000000000: at most" in r.stderr
