"""``tracekit plan`` end to end through click's CliRunner: the documented 16-H200 case, a TOML plan
file, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli

ARGS: list[object] = [
    "plan", "--synth", "zipf:0.6", "--model", "deepseek-r1", "--hw", "h200-sxm", "--gpus", "16",
    "--isl", "2000", "--osl", "1000", "--ttft", "2", "--tpot", "0.05",
]  # fmt: skip


def _run(args: list[object]) -> tuple[int, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.output


def test_plan_16_h200_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "plan"
    code, text = _run([*ARGS, "--out", out])
    assert code == 0, text
    flat = " ".join(text.split())  # the title wraps at the runner's 80 columns
    assert "Best of" in flat and "TPOT <= 50 ms" in flat
    best = pl.read_parquet(out / "plan_best.parquet")
    points = pl.read_parquet(out / "plan_points.parquet")
    front = pl.read_parquet(out / "plan_pareto.parquet")
    assert set(best["mode"]) == {"aggregated", "disaggregated"}
    for row in best.iter_rows(named=True):
        # the best is the SLA-meeting point with the most tokens per GPU, on the frontier
        mine = points.filter((pl.col("mode") == row["mode"]) & pl.col("meets_sla"))
        assert row["tokens_per_s_per_gpu"] == mine["tokens_per_s_per_gpu"].max()
        assert row["tpot_s"] <= 0.05 and row["ttft_s"] <= 2.0
        assert row["gpus_used"] <= 16 and row["decode_gpus"] + row["prefill_gpus"] == row["gpus_used"]
        assert f"{row['tokens_per_s_per_gpu']:,.1f}" in text
    assert front.height >= 2 and front.height <= points.height
    assert (out / "pareto.png").stat().st_size > 0
    meta = json.loads((out / "result.json").read_text())
    assert meta["kind"] == "plan" and meta["points"] == points.height
    # the search covers attention TP and MoE TP
    assert {(1, 1), (8, 1), (8, 8)} <= set(zip(points["tp"], points["moe_tp"], strict=True))


def test_plan_from_a_toml_file_two_systems_with_the_ratio(tmp_path: Path) -> None:
    cfg = tmp_path / "plan.toml"
    cfg.write_text(
        'systems = ["h200-sxm", "gb200-nvl72"]\ntotal_gpus = [32]\nmodel = "deepseek-r1"\n'
        "[sla]\nisl = 2000\nosl = 1000\ntokens_per_s_per_user = 5\n"
        "[grid]\neps = [16]\ntps = [1]\nmoe_tp = [false]\nbatches = [16, 64]\ntbos = [false]\n"
        "prefill_chunks = [0]\n"
    )
    code, text = _run(["plan", "--synth", "zipf:0.6", "--config", cfg, "--json"])
    assert code == 0, text
    meta = json.loads(text)
    assert meta["sla"]["tpot_s"] == pytest.approx(0.2)
    rows = {(r["hw"], r["mode"]): r for r in meta["best"]}
    for mode in ("aggregated", "disaggregated"):
        h200, gb200 = rows[("h200-sxm", mode)], rows[("gb200-nvl72", mode)]
        assert h200["ratio"] == pytest.approx(1.0)
        assert gb200["ratio"] == pytest.approx(gb200["tokens_per_s_per_gpu"] / h200["tokens_per_s_per_gpu"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "--model", "deepseek-r1", "--hw", "h200-sxm", "--gpus", "16", "--isl", "2000", "--osl", "1000"],
         "give a TRACE or --synth SPEC"),
        (["plan", "--synth", "zipf:0.6", "--model", "deepseek-r1", "--hw", "h200-sxm", "--gpus", "16", "--osl", "10"],
         "--isl is required"),
        (["plan", "--synth", "zipf:0.6", "--model", "deepseek-r1", "--hw", "h200-sxm", "--gpus", "x",
          "--isl", "1", "--osl", "1"], "--gpus 'x'"),
        (["plan", "--synth", "zipf:0.6", "--model", "deepseek-r1", "--hw", "h200-sxm", "--gpus", "16",
          "--isl", "1", "--osl", "1", "--config", "nope.toml"], "nope.toml: no such plan file"),
    ],
)  # fmt: skip
def test_plan_user_errors_are_one_line(args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output


def test_progress_is_silent_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from tracekit.cli.plan import progress_bar

    with progress_bar("searching") as progress:
        assert progress is None  # pytest's captured stderr is not a terminal
    assert capsys.readouterr().err == ""
