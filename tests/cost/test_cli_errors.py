"""Negative --bytes to the communication primitives: one line naming --bytes, exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli


@pytest.mark.parametrize("op", ["alltoall", "allreduce", "allgather", "reduce-scatter"])
def test_negative_bytes(op: str) -> None:
    r = CliRunner().invoke(cli, ["cost", op, "--hw", "h200-sxm", "--bytes", "-5", "--ranks", "8"])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [
        "tracekit: error: --bytes must be >= 0, got -5; give a byte count per rank"
    ]
