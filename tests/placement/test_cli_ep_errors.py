"""Zero or negative rank counts name the option they came from (not a misleading divisibility)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.factories import write_routing_trace
from tracekit.cli.main import cli


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--ep", "0"], "tracekit: error: --ep must be at least 1 rank, got 0"),
        (["--ep", "2", "--nodes", "0"], "tracekit: error: --nodes must be at least 1, got 0"),
    ],
)
def test_place_zero_counts(tmp_path: Path, extra: list[str], expected: str) -> None:
    rng = np.random.default_rng(8)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(2 * 2 * 4)]).reshape(2, 2, 4, 2)
    write_routing_trace(tmp_path / "t", ids, phases=["prefill", "decode"])
    r = CliRunner().invoke(cli, ["place", str(tmp_path / "t"), *extra])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [expected]
