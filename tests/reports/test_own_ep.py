"""``report imbalance`` and ``report html`` take each trace's own EP unless ``--ep`` overrides it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from tests.reports.conftest import Inputs
from tracekit.cli.main import cli


def _imbalance(*args: str) -> list[dict]:
    r = CliRunner().invoke(cli, ["report", "imbalance", *args, "--format", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _rank_max_over_mean(trace: str, ep: int) -> dict[int, float]:
    """Per layer: busiest contiguous EP rank / mean rank, from the expert_load Parquet directly."""
    load = pl.read_parquet(f"{trace}/expert_load/*.parquet")
    experts = 8  # the builders' EP trace has 8 experts
    per_rank = -(-experts // ep)
    out = {}
    for layer, df in load.group_by("layer"):
        ranks = np.zeros(ep)
        np.add.at(ranks, df["expert"].to_numpy() // per_rank, df["num_tokens"].to_numpy())
        out[int(layer[0])] = float(ranks.max() / ranks.mean())
    return out


def test_imbalance_uses_the_traces_own_ep(inputs: Inputs) -> None:
    ep_trace = str(inputs.ep.path)
    rows = _imbalance(ep_trace)
    assert {r["ep"] for r in rows} == {4}  # the EP4 trace's manifest says ep_size 4
    want = _rank_max_over_mean(ep_trace, 4)
    assert {r["layer"]: r["rank_max_over_mean"] for r in rows} == {
        k: pytest.approx(v) for k, v in want.items()
    }
    rows = _imbalance(ep_trace, "--ep", "2")  # the override
    assert {r["ep"] for r in rows} == {2}
    want2 = _rank_max_over_mean(ep_trace, 2)
    assert [r["rank_max_over_mean"] for r in rows] == [pytest.approx(want2[r["layer"]]) for r in rows]
    # several inputs: each its own EP (the skewed trace was recorded on one GPU: shown at EP 8)
    both = _imbalance(ep_trace, str(inputs.trace))
    assert {(r["input"], r["ep"]) for r in both} == {("ep4", 4), ("trace_a", 8)}


def test_html_report_uses_each_traces_own_ep(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    r = CliRunner().invoke(cli, ["report", "html", str(inputs.ep.path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "EP 4" in text and "EP 8" not in text
    out2 = tmp_path / "r2.html"
    r = CliRunner().invoke(cli, ["report", "html", str(inputs.ep.path), "--ep", "2", "--out", str(out2)])
    assert r.exit_code == 0, r.output
    assert "EP 2" in out2.read_text()
