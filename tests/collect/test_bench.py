"""``tracekit bench run`` on the CPU at tiny shapes: a valid measured table whose rows say what was
measured (flops and bytes from the shapes, the timing source, the device), priced back by the
lookup; the budget, the collectives over gloo ranks, and bad input as one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from tracekit.cli.main import cli
from tracekit.collect.bench import BenchOptions, parse_budget, run_bench
from tracekit.collect.bench.cases import TINY_SHAPES, single_device_cases
from tracekit.cost.measured import MeasuredTable
from tracekit.errors import UsageError


@pytest.fixture(scope="module")
def cpu_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MeasuredTable]:
    out = tmp_path_factory.mktemp("bench") / "cpu.parquet"
    r = CliRunner().invoke(cli, ["bench", "run", "--device", "cpu", "--budget", "2m", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "measured" in r.output and str(out) in r.output
    return out, MeasuredTable.load(out)


def test_every_single_device_family_is_measured(cpu_table: tuple[Path, MeasuredTable]) -> None:
    _, table = cpu_table
    want = {c.family for c in single_device_cases(__import__("torch").device("cpu"), tiny=True)}
    assert set(table.families()) == want
    assert want >= {"hbm_read", "hbm_copy", "gemm", "grouped_gemm", "gqa_decode", "gqa_prefill"}
    assert want >= {"mla_decode", "mla_prefill", "rmsnorm", "silu_mul"}
    f = table.frame
    assert f.height == len(single_device_cases(__import__("torch").device("cpu"), tiny=True))
    assert set(f["timing_source"].to_list()) == {"host_timer"}
    assert f["device"][0].startswith("cpu") and f["torch"][0] and f["source"][0] == "tracekit bench"
    assert (f["time_min_s"] <= f["time_s"]).all() and (f["repeats"] >= 3).all()


def test_rows_carry_flops_and_bytes_of_their_shapes(cpu_table: tuple[Path, MeasuredTable]) -> None:
    f = cpu_table[1].frame
    gemm = f.filter(pl.col("family") == "gemm")
    assert set(gemm["m"].to_list()) == set(TINY_SHAPES.gemm_m)
    m, n, k = (gemm[c].to_numpy().astype(float) for c in ("m", "n", "k"))
    np.testing.assert_allclose(gemm["flops"].to_numpy(), 2 * m * n * k)
    np.testing.assert_allclose(gemm["bytes"].to_numpy(), (m * k + k * n) * 4 + m * n * 2)  # fp32 operands
    np.testing.assert_allclose(
        gemm["flops_per_s"].to_numpy(), gemm["flops"].to_numpy() / gemm["time_s"].to_numpy()
    )
    moe = f.filter(pl.col("family") == "grouped_gemm").row(0, named=True)
    want = 6 * moe["num_experts"] * moe["tokens_per_expert"] * moe["hidden_size"] * moe["ffn_size"]
    assert moe["flops"] == pytest.approx(want)
    copy = f.filter(pl.col("family") == "hbm_copy")
    np.testing.assert_allclose(copy["bytes"].to_numpy(), 2 * copy["size_bytes"].to_numpy())
    assert copy["flops"].null_count() == copy.height


def test_the_lookup_prices_measured_shapes_at_their_times(cpu_table: tuple[Path, MeasuredTable]) -> None:
    _, table = cpu_table
    g = table.frame.filter(pl.col("family") == "gqa_decode")
    keys = ["head_dim", "num_kv_heads", "num_heads", "batch_size", "kv_len"]
    got = table.time_s("gqa_decode", dtype="fp32", **{k: g[k].to_numpy() for k in keys})
    np.testing.assert_allclose(got, g["time_s"].to_numpy(), rtol=1e-12)


def test_show_summarises_the_table(cpu_table: tuple[Path, MeasuredTable]) -> None:
    path, table = cpu_table
    r = CliRunner().invoke(cli, ["bench", "show", str(path), "--format", "csv"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("family,dtype,library,device,rows")
    assert len(lines) == 1 + table.frame.select("family", "dtype", "library", "device").unique().height
    cov = CliRunner().invoke(cli, ["bench", "show", str(path), "--family", "ep_dispatch"])
    assert cov.exit_code == 2 and "no ep_dispatch rows" in cov.output


def test_families_filter_and_budget() -> None:
    r = run_bench(BenchOptions(device="cpu", budget_s=60, families=("gemm", "rmsnorm")))
    assert set(r.frame["family"].to_list()) == {"gemm", "rmsnorm"}
    with pytest.raises(UsageError, match="no measurement fitted in the budget"):
        run_bench(BenchOptions(device="cpu", budget_s=1e-9))


@pytest.mark.slow
def test_collectives_over_gloo_ranks() -> None:
    r = run_bench(BenchOptions(device="cpu", budget_s=120, families=("all_reduce",), comm_ranks=2))
    comm = r.frame.filter(pl.col("library") == "gloo")
    assert set(comm["family"].to_list()) == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}
    assert set(comm["num_gpus"].to_list()) == {2}
    assert sorted(set(comm["message_bytes"].to_list())) == list(TINY_SHAPES.comm_bytes)
    np.testing.assert_allclose(
        comm["bytes_per_s"].to_numpy(), comm["message_bytes"].to_numpy() / comm["time_s"].to_numpy()
    )


def test_parse_budget() -> None:
    assert parse_budget("5m") == 300 and parse_budget("90s") == 90 and parse_budget("1h") == 3600
    assert parse_budget("12.5") == 12.5
    for bad in ("soon", "-1m", "0"):
        with pytest.raises(UsageError, match="--budget"):
            parse_budget(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "later"], "give a duration"),
        (["--family", "gemmm"], "unknown kernel family 'gemmm'"),
        (["--device", "cuda"], "no CUDA device is available here"),
        (["--device", "tpu"], "give cpu, cuda or cuda:N"),
        (["--comm-ranks", "-1"], "--comm-ranks must be 0 or more"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    r = CliRunner().invoke(
        cli, ["bench", "run", "--out", str(tmp_path / "x.parquet"), "--budget", "5s", *args]
    )
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.parquet").exists()


def test_existing_out_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    out.write_text("keep me")
    r = CliRunner().invoke(cli, ["bench", "run", "--out", str(out), "--family", "gemm"])
    assert r.exit_code == 2 and "--force" in r.output and out.read_text() == "keep me"
