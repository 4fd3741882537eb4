"""The equal-interactivity search and the sweep on the fast path against tracekit.replay.compare's
and tracekit.replay.sweep's (the previous implementation, one full replay per deployment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import synth_r1
from tracekit.replay.compare import at_interactivity, at_interactivity_fast
from tracekit.replay.deployment import Deployment, Precision
from tracekit.replay.fast import FastReplay
from tracekit.replay.sweep import grid, run_sweep, sweep_fast


@pytest.fixture(scope="module")
def r1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inter") / "trace"
    return synth_r1(out, spec="zipf:0.8", tokens_per_step=1024, steps=1, seed=5)


@pytest.mark.parametrize("hw", ["h200-sxm", "gb200-nvl72"])
def test_search_chooses_what_the_previous_search_chooses(r1: Path, hw: str) -> None:
    base = Deployment(hw=hw, precision=Precision.parse("fp8"), kv_len=2048, steps=4)
    kw = {"tokens_per_s_per_user": 25.0, "eps": [8, 16, 32], "batches": [1, 4, 16, 64]}
    old = at_interactivity(r1, base, **kw)  # type: ignore[arg-type]
    new, figures = at_interactivity_fast(FastReplay(r1), base, **kw)  # type: ignore[arg-type]
    assert old.deployment is not None and new.deployment == old.deployment
    assert old.summary is not None and figures is not None
    assert figures.tokens_per_s_per_gpu == pytest.approx(old.summary.tokens_per_s_per_gpu, rel=1e-9)


def test_sweep_rows_equal_the_previous_sweep(r1: Path) -> None:
    base = Deployment(hw="h200-sxm", kv_len=2048, steps=2)
    points = grid(
        base,
        hws=["h200-sxm", "gb200-nvl72"],
        eps=[4, 16],  # EP 4 does not fit: an error row on both sides
        batches=[8, 32],
        precisions=[Precision.parse("fp8")],
        tbos=[False, True],
    )
    old = run_sweep(r1, points, jobs=1, fast=False)
    # one process, and two processes given whole groups of points (rows back in the grid's order)
    for new in (sweep_fast(FastReplay(r1), points, jobs=1), run_sweep(r1, points, jobs=2)):
        assert old.select("hw", "ep", "batch_per_gpu", "tbo", "fits").equals(
            new.select("hw", "ep", "batch_per_gpu", "tbo", "fits")
        )
        ok = old["fits"].to_numpy()
        assert ok.sum() == 8
        assert new["tokens_per_s_per_gpu"].to_numpy()[ok] == pytest.approx(
            old["tokens_per_s_per_gpu"].to_numpy()[ok], rel=1e-9
        )
        assert new["error"].to_list() == old["error"].to_list()
