"""AIConfigurator's databases as a measured table: conversions checked on small tables built in code
(AIConfigurator's file layout and columns), then on the installed aiconfigurator-core data (part of
the dev extra): its own rows reproduced, and held-out grid points predicted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli
from tracekit.cost.measured import MeasuredTable, holdout_errors
from tracekit.errors import InputFormatError, MissingDependencyError, UsageError
from tracekit.importers import aiconfigurator as aic
from tracekit.schema.measured import family_spec

HEAD = {"framework": "TRTLLM", "device": "NVIDIA H200", "kernel_source": "x"}


def _write(root: Path, rel: str, data: dict) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(data.values())))
    pl.DataFrame({**{k: [v] * n for k, v in HEAD.items()}, **data}).write_parquet(path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    sysdir = "h200_sxm"
    _write(root, f"{sysdir}/gemm/trtllm/1.0.0/gemm_perf.parquet",
           {"op_name": ["gemm"] * 3, "gemm_dtype": ["bfloat16", "bfloat16", "int4_wo"],
            "m": [1, 4, 4], "n": [64, 64, 64], "k": [32, 32, 32], "latency": [0.010, 0.020, 0.5]})  # fmt: skip
    # an older version that must not be taken by default, but is with --version 0.9
    _write(root, f"{sysdir}/gemm/trtllm/0.9.0/gemm_perf.parquet",
           {"op_name": ["gemm"], "gemm_dtype": ["bfloat16"], "m": [1], "n": [64], "k": [32], "latency": [0.5]})  # fmt: skip
    _write(root, f"{sysdir}/moe/trtllm/1.0.0/moe_perf.parquet",
           {"op_name": ["moe"] * 3, "moe_dtype": ["fp8_block"] * 3, "num_tokens": [1, 64, 64],
            "hidden_size": [7168] * 3, "inter_size": [2048] * 3, "topk": [8] * 3, "num_experts": [256] * 3,
            "moe_tp_size": [1] * 3, "moe_ep_size": [8] * 3,
            "distribution": ["balanced", "balanced", "power_law_1.2"], "latency": [0.1, 0.2, 0.3]})  # fmt: skip
    _write(root, f"{sysdir}/mla/trtllm/1.0.0/generation_mla_perf.parquet",
           {"op_name": ["mla_generation"], "mla_dtype": ["bfloat16"], "kv_cache_dtype": ["fp8"], "num_heads": [16],
            "batch_size": [8], "isl": [1], "tp_size": [8], "step": [1023], "latency": [0.05]})  # fmt: skip
    _write(root, f"{sysdir}/attention/trtllm/1.0.0/context_attention_perf.parquet",
           {"op_name": ["context_attention"] * 3, "batch_size": [2] * 3, "isl": [512] * 3, "num_heads": [32] * 3,
            "num_key_value_heads": [8] * 3, "head_dim": [128] * 3, "window_size": [0, 128, 0], "beam_width": [1] * 3,
            "attn_dtype": ["bfloat16", "bfloat16", "bfloat16"], "kv_cache_dtype": ["bfloat16", "bfloat16", "fp8"],
            "step": [0] * 3, "latency": [0.3, 0.2, 0.25]})  # fmt: skip
    _write(root, f"{sysdir}/comm/nccl/2.26.2/nccl_perf.parquet",
           {"op_name": ["all_gather", "alltoall"], "nccl_dtype": ["half", "int8"], "num_gpus": [8, 8],
            "message_size": [1024, 4096], "latency": [0.02, 0.03]})  # fmt: skip
    _write(root, f"{sysdir}/comm/trtllm/1.0.0/custom_allreduce_perf.parquet",
           {"op_name": ["all_reduce"], "allreduce_dtype": ["bfloat16"], "num_gpus": [4], "message_size": [2048],
            "latency": [0.004], "implementation": ["trtllm"]})  # fmt: skip
    _write(root, f"{sysdir}/comm/trtllm/0.8.0/moe_a2a_perf.parquet",
           {"op_name": ["moe_a2a"] * 2, "comm_backend": ["trtllm_deepep_ll"] * 2, "phase": ["dispatch", "combine"],
            "comm_dtype": ["fp8", "bfloat16"], "ep_size": [8, 8], "node_num": [1, 1], "hidden_size": [7168] * 2,
            "topk": [8, 8], "num_experts": [256, 256], "num_tokens": [128, 128], "sms": [0, 0],
            "transmit_us": [1.0, 1.0], "notify_us": [0.0, 0.0], "latency": [0.040, 0.060]})  # fmt: skip
    return root


def _row(frame: pl.DataFrame, family: str) -> list[dict]:
    return frame.filter(pl.col("family") == family).to_dicts()


def test_conversions_from_aiconfigurator_tables(data_dir: Path) -> None:
    result = aic.import_aiconfigurator(system="h200_sxm", data_dir=data_dir)
    f = result.frame
    gemm = sorted(_row(f, "gemm"), key=lambda r: r["m"])
    assert [(r["m"], r["dtype"], r["library_version"]) for r in gemm] == [
        (1, "bf16", "1.0.0"),
        (4, "bf16", "1.0.0"),
    ]
    assert gemm[0]["time_s"] == pytest.approx(10e-6)  # milliseconds -> seconds
    assert gemm[0]["flops"] == 2 * 1 * 64 * 32 and gemm[0]["flops_per_s"] == pytest.approx(4096 / 10e-6)
    assert result.dropped["h200_sxm/gemm/trtllm/1.0.0/gemm_perf.parquet"] == 1  # int4_wo
    # balanced MoE on EP8 of 256 experts, top-8 (stride 32): 1 token -> the measured rank holds
    # expert 0 only; 64 tokens -> each of its 32 experts gets tokens i and i + 32, i.e. 2
    moe = sorted(_row(f, "grouped_gemm"), key=lambda r: r["num_experts"])
    assert [(r["num_experts"], r["tokens_per_expert"], r["ffn_size"]) for r in moe] == [
        (1, 1.0, 2048),
        (32, 2.0, 2048),
    ]
    (mla,) = _row(f, "mla_decode")
    assert (mla["kv_len"], mla["dtype"], mla["num_heads"], mla["kv_lora_rank"]) == (1024, "fp8", 16, 512)
    (attn,) = _row(f, "gqa_prefill")  # window 128 and the fp8-cache row left out
    assert (attn["seq_len"], attn["num_kv_heads"], attn["time_s"]) == (512, 8, pytest.approx(3e-4))
    nccl = {r["family"]: r for r in f.filter(pl.col("library") == "nccl").to_dicts()}
    assert nccl["all_gather"]["message_bytes"] == 2048 and nccl["all_to_all"]["message_bytes"] == 4096
    assert nccl["all_gather"]["library_version"] == "2.26.2"
    (ar,) = _row(f, "all_reduce")
    assert (ar["library"], ar["message_bytes"], ar["num_gpus"]) == ("trtllm_custom_allreduce", 4096, 4)
    disp, comb = _row(f, "ep_dispatch")[0], _row(f, "ep_combine")[0]
    assert (disp["library"], disp["dtype"], disp["ep_size"], disp["top_k"]) == (
        "trtllm_deepep_ll",
        "fp8",
        8,
        8,
    )
    assert comb["dtype"] == "bf16" and comb["time_s"] == pytest.approx(60e-6)
    assert set(f["source"].unique().to_list()) == {"aiconfigurator"}
    assert all("h200_sxm/" in d for d in f["source_detail"].to_list())


def test_version_backfill_and_errors(data_dir: Path) -> None:
    old = aic.import_aiconfigurator(system="h200_sxm", version="0.9.0", data_dir=data_dir).frame
    assert _row(old, "gemm")[0]["time_s"] == pytest.approx(0.5e-3)
    assert _row(old, "ep_dispatch") and not _row(old, "grouped_gemm")  # moe only exists at 1.0.0
    with pytest.raises(UsageError, match="valid: h200_sxm"):
        aic.import_aiconfigurator(system="h999", data_dir=data_dir)
    with pytest.raises(UsageError, match="no trtllm data for h200_sxm at or before"):
        aic.import_aiconfigurator(system="h200_sxm", version="0.1", data_dir=data_dir)
    assert aic.version_key("1.3.0rc3") < aic.version_key("1.3.0rc20") < aic.version_key("1.3.0")
    assert aic.version_key("1.3.0") < aic.version_key("1.3.0.post1") < aic.version_key("1.10.0")


def test_a_changed_layout_is_named(data_dir: Path) -> None:
    path = data_dir / "h200_sxm/gemm/trtllm/1.0.0/gemm_perf.parquet"
    pl.read_parquet(path).drop("m").write_parquet(path)
    with pytest.raises(InputFormatError, match=r"gemm_perf\.parquet: missing column"):
        aic.import_aiconfigurator(system="h200_sxm", data_dir=data_dir)


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "aiconfigurator_core" else real(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"tracekit\[aiconfigurator\]"):
        aic.aiconfigurator_data_dir()


def test_cli_import_show_and_lookup(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "aic.parquet"
    r = CliRunner().invoke(
        cli, ["bench", "import-aiconfigurator", "--data-dir", str(data_dir), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "converted 11 rows" in r.output
    again = CliRunner().invoke(
        cli, ["bench", "import-aiconfigurator", "--data-dir", str(data_dir), "--out", str(out)]
    )
    assert again.exit_code == 2 and "--force" in again.output
    shown = CliRunner().invoke(cli, ["bench", "show", str(out), "--format", "csv"])
    assert shown.exit_code == 0 and "grouped_gemm,fp8_block,trtllm" in shown.output
    got = CliRunner().invoke(
        cli, ["bench", "lookup", str(out), "gemm", "--dtype", "bf16", "m=2", "n=64", "k=32"]
    )
    # between m=1 (10 us) and m=4 (20 us), linear in time vs m (GEMMs are affine along m):
    # 10 + 10 * (2 - 1) / (4 - 1) = 13.333 us
    assert got.exit_code == 0 and "13.333 us" in got.output
    miss = CliRunner().invoke(
        cli, ["bench", "lookup", str(out), "gemm", "--dtype", "bf16", "m=8", "n=64", "k=32"]
    )
    assert miss.exit_code == 1 and "not covered" in miss.output
    bad = CliRunner().invoke(cli, ["bench", "lookup", str(out), "gemm", "--dtype", "bf16", "m8"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


# -- the installed databases (aiconfigurator-core is part of the dev extra) ------------------------


@pytest.fixture(scope="module")
def databases() -> dict[tuple[str, str], MeasuredTable]:
    return {
        (fw, system): MeasuredTable.from_aiconfigurator(system=system, framework=fw)
        for fw in ("trtllm", "sglang")
        for system in ("h200_sxm", "gb200")
    }


def test_installed_database_rows_are_reproduced(databases: dict[tuple[str, str], MeasuredTable]) -> None:
    h200 = databases[("trtllm", "h200_sxm")]
    raw_path = aic.aiconfigurator_data_dir() / "h200_sxm/gemm/trtllm/1.3.0rc20/gemm_perf.parquet"
    raw = pl.from_arrow(pq.read_table(raw_path))
    assert isinstance(raw, pl.DataFrame)
    sample = raw.filter(pl.col("gemm_dtype") == "bfloat16").sample(200, seed=1)
    # the median of the file's rows at each shape, in seconds: what the lookup must return
    want = (
        raw.filter(pl.col("gemm_dtype") == "bfloat16").group_by("m", "n", "k").agg(pl.col("latency").median())
    )
    want = sample.select("m", "n", "k").join(want, on=["m", "n", "k"])
    got = h200.time_s(
        "gemm", dtype="bf16", m=want["m"].to_numpy(), n=want["n"].to_numpy(), k=want["k"].to_numpy()
    )
    np.testing.assert_allclose(got, want["latency"].to_numpy() * 1e-3, rtol=1e-12)
    assert {"gemm", "grouped_gemm", "mla_decode", "mla_prefill", "gqa_decode", "all_reduce"} <= set(
        h200.families()
    )


#: Families whose median held-out error is not within 3% on a database, with the limit the test
#: holds them to and why (docs/calibration.md gives the figures). Every other family of the four
#: databases below is held to 3%.
OVER_3_PERCENT = {
    # NCCL's small-message plateau alternates by 10-20% from size to size on this system (one
    # NCCL table, shared by both frameworks): 3.01%
    ("trtllm", "h200_sxm", "all_gather"): 0.035,
    ("sglang", "h200_sxm", "all_gather"): 0.035,
    # gb200 MLA prefill: the bend from the latency floor to the quadratic falls between the grid's
    # doubling seq_len steps (4.5-5.6% at 128-512 tokens): 3.52%; h200 GQA prefill in SGLang's
    # database: unbiased errors spread evenly over every length, the rows' own scatter: 4.32%
    ("trtllm", "gb200", "mla_prefill"): 0.04,
    ("sglang", "h200_sxm", "gqa_prefill"): 0.05,
    # SGLang's GEMM rows scatter by several percent between shapes one row apart (m and m + 1),
    # more than any interpolation of neighbours can follow: 7.7% / 3.8%
    ("sglang", "h200_sxm", "gemm"): 0.085,
    ("sglang", "gb200", "gemm"): 0.04,
}


@pytest.mark.parametrize("framework", ["trtllm", "sglang"])
@pytest.mark.parametrize("system", ["h200_sxm", "gb200"])
def test_held_out_grid_points_are_predicted(
    databases: dict[tuple[str, str], MeasuredTable], framework: str, system: str
) -> None:
    """Every family of the database: each interior grid point along the size axis held out and
    predicted from the rest (holdout_errors); the median within 3% (OVER_3_PERCENT names the
    exceptions and their limits)."""
    table = databases[(framework, system)]
    families = table.families()
    assert {"gemm", "grouped_gemm", "mla_decode", "gqa_prefill", "all_reduce", "all_gather"} <= set(families)
    medians = {}
    for family in families:
        err = holdout_errors(table, family)
        covered = err["error"].drop_nans()
        assert covered.len() >= 0.95 * err.height, family
        medians[family] = float(covered.abs().median())
    over = {f: m for f, m in medians.items() if m > OVER_3_PERCENT.get((framework, system, f), 0.03)}
    assert not over, over
    # the exceptions are still over 3% (else their entry should go)
    for (fw, sy, family), _ in OVER_3_PERCENT.items():
        if (fw, sy) == (framework, system):
            assert medians[family] > 0.03, (family, medians[family])


@pytest.mark.parametrize("system", ["h200_sxm", "gb200"])
def test_held_out_points_of_the_deepseek_slices_of_the_sglang_databases(
    databases: dict[tuple[str, str], MeasuredTable], system: str
) -> None:
    """The databases the replay prices DeepSeek-R1 decode from by default (SGLang's, see
    docs/calibration.md): the routed-expert slice (hidden 7168, expert FFN 2048) and MLA decode at
    128 heads: every interior grid point held out (holdout_errors), median within 3%; and, by a
    second route, single rows dropped one at a time and looked up in the rest, median within 3%."""
    table = databases[("sglang", system)]
    for family, sel in (
        ("grouped_gemm", (pl.col("hidden_size") == 7168) & (pl.col("ffn_size") == 2048)),
        ("mla_decode", pl.col("num_heads") == 128),
    ):
        err = holdout_errors(table, family).filter(sel)
        covered = err.filter(pl.col("error").is_not_nan())
        assert covered.height >= 100, (system, family)
        assert covered["error"].abs().median() <= 0.03, (system, family)
        # a second route: true leave-one-out of 15 of those points (only that row dropped, the
        # lookup on the rest of the family's table)
        fam = table.frame.filter(pl.col("family") == family)
        keys = [k for k in family_spec(family).shape_keys]
        errors = []
        for row in covered.sample(15, seed=2).iter_rows(named=True):
            same = pl.all_horizontal(*(pl.col(k) == row[k] for k in keys), pl.col("dtype") == row["dtype"])
            rest = MeasuredTable(fam.filter(~same))
            got = rest.time_s(
                family, dtype=row["dtype"], library=row["library"], **{k: float(row[k]) for k in keys}
            )
            errors.append(abs(float(got) / row["measured_s"] - 1))
        assert float(np.median(errors)) <= 0.03, (system, family, errors)
