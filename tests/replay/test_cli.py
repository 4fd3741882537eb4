"""The replay, compare and sweep commands, through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cli.main import cli


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "t"
    ids = random_ids(np.random.default_rng(11), (2, 3, 2, 8), 8, 2)
    write_ranked_trace(path, ids, num_experts=8, prefill_tokens=6)
    return path


@pytest.fixture(scope="module")
def ds_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 experts top-8, like a tiny-deepseek-v3 recording: DeepSeek-R1 can reuse its routing."""
    path = tmp_path_factory.mktemp("cli") / "ds"
    ids = random_ids(np.random.default_rng(2), (1, 2, 2, 16), 256, 8)
    ids[0, 0, 0, 0, 0] = 255
    write_ranked_trace(path, ids, num_experts=256, position=200)
    return path


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    # stdout alone on success: a tiny test model's replay adds a warning line on stderr
    return res.exit_code, res.stdout if res.exit_code == 0 else res.output


def test_replay_json_has_the_documented_keys_and_writes_queryable_tables(
    small_trace: Path, tmp_path: Path
) -> None:
    out = tmp_path / "res"
    code, text = _run(["replay", small_trace, "--hw", "h200-sxm", "--ep", "2", "--out", out, "--json"])
    assert code == 0, text
    summary = json.loads(text)
    for key in (
        "tokens_per_s_per_gpu",
        "tokens_per_s_per_user",
        "step_time_s",
        "breakdown",
        "max_batch_per_gpu",
    ):
        assert key in summary
    assert summary["tokens_per_s_per_user"] == pytest.approx(1.0 / summary["step_time_s"])
    assert summary["step_time_s"] == pytest.approx(sum(summary["breakdown"].values()))
    meta = json.loads((out / "result.json").read_text())
    assert meta["kind"] == "replay" and meta["deployment"]["hw"] == "h200-sxm"
    con = duckdb.connect()
    n_ranks = con.execute(f"SELECT count(*) FROM '{out}/replay_ranks.parquet'").fetchone()
    # prefill (1 step) + decode (3 steps), 3 decoder layers, 2 ranks
    assert n_ranks == ((1 + 3) * 3 * 2,)
    run = con.execute(f"SELECT ep, hw, tbo, model FROM '{out}/replay_run.parquet'").fetchall()
    assert run == [(2, "h200-sxm", False, "tiny-test")]
    phases = con.execute(f"SELECT phase FROM '{out}/replay_summary.parquet' ORDER BY phase").fetchall()
    assert phases == [("decode",), ("prefill",)]


def test_replay_prints_a_summary_and_refuses_bad_input_in_one_line(small_trace: Path, ds_trace: Path) -> None:
    code, text = _run(["replay", small_trace, "--hw", "gb200-nvl72", "--ep", "2", "--tbo"])
    assert code == 0, text
    assert "output tokens/s per GPU" in text and "TBO on" in text
    code, text = _run(["replay", ds_trace, "--hw", "h200-sxm", "--ep", "1", "--model", "deepseek-r1"])
    assert code == 2
    assert text.startswith("tracekit: error: deepseek-r1 does not fit on h200-sxm") and text.count("\n") == 1
    code, text = _run(["replay", small_trace, "--hw", "no-such-gpu"])
    assert code == 2 and "valid names" in text


def test_compare_prints_both_systems_and_the_ratio(ds_trace: Path, tmp_path: Path) -> None:
    args = ["compare", ds_trace, "--model", "deepseek-r1", "--hw", "h200-sxm", "--hw", "gb200-nvl72"]
    code, text = _run(args)
    assert code == 0, text
    assert "h200-sxm" in text and "gb200-nvl72" in text
    assert "gb200-nvl72 / h200-sxm:" in text
    code, text = _run([*args, "--json", "--out", tmp_path / "cmp"])
    payload = json.loads(text)
    a, b = payload["systems"]
    assert payload["ratio"] == pytest.approx(b["tokens_per_s_per_gpu"] / a["tokens_per_s_per_gpu"])
    assert a["deployment"]["ep"] == 8 and b["deployment"]["ep"] == 64  # one NVLink domain each
    assert (tmp_path / "cmp" / "compare.parquet").is_file()


def test_compare_per_system_override(ds_trace: Path) -> None:
    code, text = _run(
        ["compare", ds_trace, "--model", "deepseek-r1", "--hw", "h200-sxm", "--hw", "gb200-nvl72",
         "--deploy", "gb200-nvl72:ep=32,precision=experts=fp4", "--json"]
    )  # fmt: skip
    assert code == 0, text
    b = json.loads(text)["systems"][1]["deployment"]
    assert b["ep"] == 32 and b["precision"]["experts"] == "fp4"


def test_compare_at_interactivity_reports_unreachable_systems(small_trace: Path) -> None:
    code, text = _run(
        [
            "compare",
            small_trace,
            "--hw",
            "h200-sxm",
            "--hw",
            "gb200-nvl72",
            "--at-interactivity",
            "1e9",
            "--json",
        ]
    )
    assert code == 0, text
    payload = json.loads(text)
    assert all(s["deployment"] is None and "cannot reach" in s["note"] for s in payload["systems"])
    code, text = _run(
        [
            "compare",
            small_trace,
            "--hw",
            "h200-sxm",
            "--hw",
            "gb200-nvl72",
            "--at-interactivity",
            "100",
            "--json",
        ]
    )
    payload = json.loads(text)
    for s in payload["systems"]:
        assert s["tokens_per_s_per_user"] >= 100
        assert s["deployment"]["batch_per_gpu"] >= 1


def test_sweep_writes_points_frontier_and_plot(small_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "sw"
    code, text = _run(
        ["sweep", small_trace, "--hw", "h200-sxm", "--hw", "gb200-nvl72", "--ep", "2,4",
         "--batch-per-gpu", "1,8", "--jobs", "2", "--out", out]
    )  # fmt: skip
    assert code == 0, text
    for name in ("result.json", "sweep_points.parquet", "sweep_pareto.parquet", "pareto.png", "pareto.svg"):
        assert (out / name).is_file(), name
    con = duckdb.connect()
    assert con.execute(f"SELECT count(*) FROM '{out}/sweep_points.parquet'").fetchone() == (8,)
    # no frontier point is dominated by another point of the same hw
    dominated = con.execute(
        f"""SELECT count(*) FROM '{out}/sweep_pareto.parquet' p JOIN '{out}/sweep_points.parquet' q
            ON p.hw = q.hw AND q.fits AND q.tokens_per_s_per_gpu >= p.tokens_per_s_per_gpu
            AND q.tokens_per_s_per_user >= p.tokens_per_s_per_user
            AND (q.tokens_per_s_per_gpu > p.tokens_per_s_per_gpu OR q.tokens_per_s_per_user > p.tokens_per_s_per_user)"""
    ).fetchone()
    assert dominated == (0,)
    assert json.loads((out / "result.json").read_text())["kind"] == "sweep"


def test_disaggregated_replay_counts_both_pools(small_trace: Path, tmp_path: Path) -> None:
    code, text = _run(
        ["replay", small_trace, "--hw", "gb200-nvl72", "--ep", "2", "--disagg", "--prefill-hw", "h200-sxm",
         "--prefill-ep", "2", "--json", "--out", tmp_path / "d"]
    )  # fmt: skip
    assert code == 0, text
    s = json.loads(text)
    assert s["disaggregated"] is True and s["kv_transfer_s"] > 0
    assert s["prefill_gpus"] % 2 == 0 and s["decode_gpus"] == 2
    assert s["ttft_s"] > s["kv_transfer_s"]
    assert s["tokens_per_s_per_gpu"] < s["decode_tokens_per_s_per_gpu"]
    pools = (
        duckdb.connect()
        .execute(f"SELECT DISTINCT pool FROM '{tmp_path}/d/replay_steps.parquet' ORDER BY 1")
        .fetchall()
    )
    assert pools == [("decode",), ("prefill",)]
