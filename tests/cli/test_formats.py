"""--format table|csv|json|markdown on the replay, compare, sweep and cost commands, checked against
the same command's JSON (--json stays as a hidden alias of --format json)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cli.main import cli


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fmt") / "t"
    write_ranked_trace(path, random_ids(np.random.default_rng(3), (2, 2, 2, 8), 8, 2), num_experts=8)
    return path


def _out(args: list[str]) -> str:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout


def test_replay_csv_carries_the_json_figures(trace: Path) -> None:
    base = ["replay", trace, "--hw", "h200-sxm", "--ep", "2"]
    summary = json.loads(_out([*base, "--format", "json"]))
    assert json.loads(_out([*base, "--json"])) == summary
    rows = list(csv.reader(io.StringIO(_out([*base, "--format", "csv"]))))
    assert rows[0] == ["quantity", "value"]
    values = dict(r for r in rows[1:] if len(r) == 2)
    assert float(values["output tokens/s per GPU"]) == pytest.approx(
        summary["tokens_per_s_per_gpu"], rel=1e-3
    )
    assert float(values["tokens/s per user"]) == pytest.approx(summary["tokens_per_s_per_user"], rel=1e-3)


def test_compare_markdown_has_a_column_per_system(trace: Path) -> None:
    base = ["compare", trace, "--hw", "h200-sxm", "--hw", "gb200-nvl72", "--ep", "2"]
    md = _out([*base, "--format", "markdown"]).splitlines()
    assert md[0].replace(" ", "") == "|quantity|h200-sxm|gb200-nvl72|"
    ratio = json.loads(_out([*base, "--format", "json"]))["systems"][1]["ratio"]
    cells = next(line for line in md if line.startswith("| ratio vs h200-sxm")).split("|")
    assert float(cells[3].strip().rstrip("x")) == pytest.approx(ratio, rel=1e-3)


def test_sweep_csv_is_the_json_frontier(trace: Path, tmp_path: Path) -> None:
    base = [
        "sweep",
        trace,
        "--hw",
        "h200-sxm",
        "--ep",
        "2",
        "--batch-per-gpu",
        "1,4,16",
        "--jobs",
        "1",
        "--no-plot",
    ]
    front = json.loads(_out([*base, "--out", tmp_path / "a", "--format", "json"]))["pareto"]
    rows = list(csv.DictReader(io.StringIO(_out([*base, "--out", tmp_path / "b", "--format", "csv"]))))
    assert [int(r["batch_per_gpu"]) for r in rows] == [p["batch_per_gpu"] for p in front]


def test_cost_formats() -> None:
    base = ["cost", "gemm", "--hw", "h200-sxm", "--m", "128", "--n", "7168", "--k", "2048", "--dtype", "fp8"]
    as_json = json.loads(_out([*base, "--format", "json"]))
    rows = dict(csv.reader(io.StringIO(_out([*base, "--format", "csv"]))))
    assert float(rows["time_s"]) == pytest.approx(as_json["time_s"])
    assert json.loads(_out([*base, "--json"])) == as_json
