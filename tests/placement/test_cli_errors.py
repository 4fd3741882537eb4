"""tracekit place --out: never a traceback for a folder, never overwrites a file it did not write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.factories import write_routing_trace
from tracekit.cli.main import cli
from tracekit.placement.core import read_placements


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    rng = np.random.default_rng(4)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(2 * 2 * 4)]).reshape(2, 2, 4, 2)
    write_routing_trace(tmp_path / "t", ids, phases=["prefill", "decode"])
    return tmp_path / "t"


def place(trace: Path, out: Path, *extra: str) -> tuple[int, list[str]]:
    r = CliRunner().invoke(cli, ["place", str(trace), "--ep", "2", "--out", str(out), *extra])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.stderr.strip().splitlines()


def test_out_is_a_directory(trace: Path, tmp_path: Path) -> None:
    folder = tmp_path / "plans"
    folder.mkdir()
    code, lines = place(trace, folder)
    assert code == 2 and len(lines) == 1
    assert f"--out {folder}: is a directory" in lines[0] and "placement.parquet" in lines[0]


def test_out_is_someone_elses_file(trace: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("do not lose me\n")
    code, lines = place(trace, notes)
    assert code == 2 and len(lines) == 1 and "file exists" in lines[0] and "--force" in lines[0]
    code, lines = place(trace, notes, "--force")
    assert code == 2 and len(lines) == 1 and "not a tracekit placement file" in lines[0]
    assert notes.read_text() == "do not lose me\n"


def test_an_earlier_placement_is_replaced_only_with_force(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.parquet"
    assert place(trace, out)[0] == 0
    before = out.read_bytes()
    code, lines = place(trace, out)
    assert code == 2 and "--force" in lines[0] and out.read_bytes() == before
    assert place(trace, out, "--force")[0] == 0
    assert not list(tmp_path.glob(".p*"))  # no staging or lock leftovers beside it
    (plan,) = read_placements(out)
    assert plan.num_ranks == 2 and plan.num_experts == 8
