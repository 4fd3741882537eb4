"""The replay reports on real results written by tracekit.replay (not hand-made tables)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.reports.builders import COMPONENTS, write_skewed_trace
from tracekit.reports import Catalog, run_report
from tracekit.reports.html import write_html

replay_mod = pytest.importorskip("tracekit.replay")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real-replay")
    trace = root / "trace"
    write_skewed_trace(trace, seed=7, steps=6, layers=3, tokens=16, experts=8, top_k=2)
    out = {"trace": trace}
    for hw in ("h200-sxm", "gb200-nvl72"):
        res = replay_mod.replay(
            trace, replay_mod.Deployment(hw=hw, model="mixtral-8x7b", ep=8, batch_per_gpu=4)
        )
        out[hw] = replay_mod.write_result(res, root / hw)
    base = replay_mod.Deployment(hw="h200-sxm", model="mixtral-8x7b")
    points = replay_mod.run_sweep(
        trace,
        replay_mod.grid(
            base,
            hws=["h200-sxm", "gb200-nvl72"],
            eps=[None],
            batches=[4, 16],
            precisions=[replay_mod.Precision()],
        ),
        jobs=1,
    )
    out["sweep"] = replay_mod.write_sweep(root / "sweep", trace, points, plot=False)
    return out


def rows(paths: list[str], name: str, **params: object) -> list[dict[str, object]]:
    cat = Catalog.from_paths(paths)
    con = cat.connect()
    res = run_report(con, cat, name, params)
    con.close()
    return [dict(zip(res.columns, r, strict=True)) for r in res.rows]


def test_step_breakdown_on_a_real_replay(results: dict[str, Path]) -> None:
    got = rows([f"h200={results['h200-sxm']}"], "step-breakdown")
    steps = pl.read_parquet(results["h200-sxm"] / "replay_steps.parquet")
    for (pool, phase), grp in steps.group_by("pool", "phase"):
        mine = [r for r in got if (r["pool"], r["phase"]) == (pool, phase)]
        assert [r["component"] for r in mine] == list(COMPONENTS)
        for r in mine:
            assert r["time_s"] == pytest.approx(grp[f"{r['component']}_s"].mean())
        # the replay's components add up to its step time, so the shares add up to one
        assert sum(r["share"] for r in mine) == pytest.approx(1.0, rel=1e-6)
        # EP 8: tokens cross ranks, so dispatch and combine take time
        assert {r["component"] for r in mine if r["time_s"] > 0} >= {"dispatch", "combine", "expert_gemm"}


def test_replay_compare_on_real_replays(results: dict[str, Path]) -> None:
    got = rows([f"h200={results['h200-sxm']}", f"nvl72={results['gb200-nvl72']}"], "replay-compare")
    summ = {
        n: pl.read_parquet(results[hw] / "replay_summary.parquet")
        for n, hw in (("h200", "h200-sxm"), ("nvl72", "gb200-nvl72"))
    }
    assert {r["input"] for r in got} == {"h200", "nvl72"}
    for r in got:
        mine = (
            summ[str(r["input"])]
            .filter((pl.col("pool") == r["pool"]) & (pl.col("phase") == r["phase"]))
            .row(0, named=True)
        )
        base = (
            summ["h200"]
            .filter((pl.col("pool") == r["pool"]) & (pl.col("phase") == r["phase"]))
            .row(0, named=True)
        )
        assert r["tokens_per_s_per_gpu"] == pytest.approx(mine["tokens_per_s_per_gpu"])
        assert r["speedup"] == pytest.approx(mine["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"])


def test_sweep_pareto_and_html_on_a_real_sweep(results: dict[str, Path], tmp_path: Path) -> None:
    got = rows([str(results["sweep"])], "sweep-pareto")
    front = pl.read_parquet(results["sweep"] / "sweep_pareto.parquet")
    assert len(got) == front.height
    assert sorted(r["tokens_per_s_per_gpu"] for r in got) == pytest.approx(
        sorted(front["tokens_per_s_per_gpu"].to_list())
    )
    page = write_html(
        [str(results["trace"]), str(results["h200-sxm"]), str(results["gb200-nvl72"]), str(results["sweep"])],
        tmp_path / "r.html",
    )
    text = page.read_text()
    assert "Replay: mean step time by component" in text and "Sweep: Pareto frontier" in text


def test_inputs_view_reads_result_json(results: dict[str, Path]) -> None:
    con = Catalog.from_paths(
        [str(results["trace"]), str(results["h200-sxm"]), str(results["sweep"])]
    ).connect()
    got = con.execute("SELECT input, kind, model, hw FROM inputs ORDER BY position").fetchall()
    con.close()
    assert got == [
        ("trace", "trace", "tiny-test", None),
        ("h200_sxm", "replay", "mixtral-8x7b", "h200-sxm"),
        ("sweep", "sweep", None, None),
    ]


SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "tiny-deepseek-v3"


@pytest.mark.skipif(
    not (SAMPLE / "manifest.json").exists(), reason="sample_traces/tiny-deepseek-v3 is not in this checkout"
)
def test_replay_reports_on_the_deepseek_sample(tmp_path: Path) -> None:
    """The sample re-timed as DeepSeek-V3 at EP 16 on two systems; reports against polars."""
    paths = []
    for hw in ("h200-sxm", "gb200-nvl72"):
        dep = replay_mod.Deployment(hw=hw, model="deepseek-v3", ep=16, batch_per_gpu=32)
        paths.append(replay_mod.write_result(replay_mod.replay(SAMPLE, dep), tmp_path / hw))
    breakdown = rows([str(p) for p in paths], "step-breakdown")
    compare = rows([str(p) for p in paths], "replay-compare")
    for p in paths:
        name = p.name.replace("-", "_")
        steps = pl.read_parquet(p / "replay_steps.parquet")
        summary = pl.read_parquet(p / "replay_summary.parquet")
        for (pool, phase), grp in steps.group_by("pool", "phase"):
            mine = {
                r["component"]: r["time_s"]
                for r in breakdown
                if (r["input"], r["pool"], r["phase"]) == (name, pool, phase)
            }
            assert mine == pytest.approx({c: grp[f"{c}_s"].mean() for c in COMPONENTS})
            assert sum(mine.values()) == pytest.approx(grp["step_time_s"].mean(), rel=1e-6)
        for s in summary.iter_rows(named=True):
            (r,) = [
                r for r in compare if (r["input"], r["pool"], r["phase"]) == (name, s["pool"], s["phase"])
            ]
            assert r["tokens_per_s_per_gpu"] == pytest.approx(s["tokens_per_s_per_gpu"])
            assert r["straggler_share"] == pytest.approx(s["straggler_s"] / s["step_time_s"])
