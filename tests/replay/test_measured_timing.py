"""Measured kernel databases as a timing source of the replay (--timing analytic|measured|auto).

Each component priced from a table is checked against the table's own lookup at the shape the
replay's rank tables say the rank saw (an independent computation from replay_ranks' tokens, KV
tokens, active experts and received tokens); the replay_sources table names the source of every
component. The databases are AIConfigurator's (aiconfigurator-core is part of the dev extra).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from tests.factories import r1_h200_ep8
from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cli.main import cli
from tracekit.cost.measured import MeasuredTable
from tracekit.cost.measured_source import MeasuredTiming, aiconfigurator_system, resolve_timing
from tracekit.errors import MissingDependencyError, UsageError
from tracekit.replay import Deployment, replay


@pytest.fixture(scope="module")
def ds_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 experts top-8 on 8 ranks, 2 decode steps, 16 tokens per rank at KV 1000: DeepSeek-R1
    reuses its routing."""
    path = tmp_path_factory.mktemp("measured") / "ds"
    ids = random_ids(np.random.default_rng(5), (8, 2, 3, 16), 256, 8)
    write_ranked_trace(path, ids, num_experts=256, position=999)
    return path


@pytest.fixture(scope="module")
def h200() -> MeasuredTable:
    return MeasuredTable.from_aiconfigurator(system="h200_sxm", framework="sglang")


def _moe_ranks(res: object) -> pl.DataFrame:
    ranks = res.ranks  # type: ignore[attr-defined]
    layers = res.layers.select("step", "layer", "kind")  # type: ignore[attr-defined]
    return ranks.join(layers, on=["step", "layer"]).filter(pl.col("kind") == "moe")


def test_components_come_from_the_table_at_the_ranks_shapes(ds_trace: Path, h200: MeasuredTable) -> None:
    res = replay(ds_trace, r1_h200_ep8(timing="measured"), phases=["decode"])
    ranks = _moe_ranks(res)
    tok = ranks["tokens"].to_numpy().astype(float)
    kv = ranks["kv_tokens"].to_numpy() / tok  # mean KV length of the rank's sequences
    # the attention core: FlashMLA decode at (128 heads, the rank's sequences, their mean KV length)
    want = h200.time_s(
        "mla_decode",
        dtype="bf16",
        kv_lora_rank=512,
        qk_rope_head_dim=64,
        num_heads=128,
        batch_size=tok,
        kv_len=kv,
    )
    assert np.isfinite(want).all()
    np.testing.assert_allclose(ranks["attention_s"].to_numpy(), want, rtol=1e-9)
    # the routed experts: the measured MoE FFN (DeepGEMM block-scaled FP8) at the rank's active
    # experts and their mean tokens
    active = ranks["active_experts"].to_numpy().astype(float)
    per = ranks["tokens_recv"].to_numpy() / active
    moe = h200.time_s(
        "grouped_gemm",
        dtype="fp8_block",
        hidden_size=7168,
        ffn_size=2048,
        num_experts=active,
        tokens_per_expert=per,
    )
    assert np.isfinite(moe).all()
    np.testing.assert_allclose(ranks["expert_gemm_s"].to_numpy(), moe, rtol=1e-9)
    src = {r["component"]: r for r in res.tables["replay_sources"].iter_rows(named=True)}
    for comp in ("attention", "expert_gemm", "attn_proj", "dense"):
        assert src[comp]["source"] == "measured" and src[comp]["measured_share"] == pytest.approx(1.0)
        assert src[comp]["table"] == "aiconfigurator h200_sxm/sglang"
    for comp in ("fixed", "dispatch", "combine"):
        assert src[comp]["source"] == "analytic" and src[comp]["table"] is None
    # the table's time per step is the replay_steps component (mean rank, summed over layers)
    steps = res.steps
    assert src["attention"]["time_s"] == pytest.approx(float(steps["attention_s"].mean()), rel=1e-9)


def test_analytic_and_auto(ds_trace: Path) -> None:
    analytic = replay(ds_trace, r1_h200_ep8(), phases=["decode"])
    measured = replay(ds_trace, r1_h200_ep8(timing="measured"), phases=["decode"])
    auto = replay(ds_trace, r1_h200_ep8(timing="auto"), phases=["decode"])
    assert set(analytic.tables["replay_sources"]["source"].to_list()) == {"analytic"}
    assert not np.allclose(analytic.ranks["attention_s"].to_numpy(), measured.ranks["attention_s"].to_numpy())
    # auto on a system with a database is the measured replay
    np.testing.assert_allclose(auto.steps["step_time_s"].to_numpy(), measured.steps["step_time_s"].to_numpy())
    # h800 has no database: auto prices analytically, measured refuses in one line
    h800 = replay(ds_trace, r1_h200_ep8(hw="h800-sxm", ep=32, timing="auto"), phases=["decode"])
    assert set(h800.tables["replay_sources"]["source"].to_list()) == {"analytic"}
    with pytest.raises(UsageError, match="no measured database is known for h800-sxm"):
        replay(ds_trace, r1_h200_ep8(hw="h800-sxm", ep=32, timing="measured"), phases=["decode"])
    # an explicit database of the same SMs and HBM prices it
    h100 = replay(
        ds_trace,
        r1_h200_ep8(hw="h800-sxm", ep=32, timing="measured", measured="aiconfigurator:h100_sxm/sglang"),
        phases=["decode"],
    )
    src = {r["component"]: r["table"] for r in h100.tables["replay_sources"].iter_rows(named=True)}
    assert src["attention"] == "aiconfigurator h100_sxm/sglang"


def test_a_table_file_covering_one_family(ds_trace: Path, h200: MeasuredTable, tmp_path: Path) -> None:
    path = tmp_path / "mla.parquet"
    h200.select(family="mla_decode").write(path)
    res = replay(ds_trace, r1_h200_ep8(timing="measured", measured=str(path)), phases=["decode"])
    src = {r["component"]: r for r in res.tables["replay_sources"].iter_rows(named=True)}
    assert src["attention"]["source"] == "measured" and src["attention"]["table"] == str(path)
    assert src["attn_proj"]["source"] == "analytic" and src["expert_gemm"]["source"] == "analytic"
    analytic = replay(ds_trace, r1_h200_ep8(), phases=["decode"])
    np.testing.assert_allclose(
        res.ranks["expert_gemm_s"].to_numpy(), analytic.ranks["expert_gemm_s"].to_numpy()
    )


def test_uncovered_shapes_fall_back_and_mixed_is_reported(
    ds_trace: Path, h200: MeasuredTable, tmp_path: Path
) -> None:
    # attention rows up to KV 512 only: the replay's KV 1000 is not extrapolated to
    short = tmp_path / "short.parquet"
    h200.select(family="mla_decode").frame.filter(pl.col("kv_len") <= 512).pipe(MeasuredTable).write(short)
    res = replay(ds_trace, r1_h200_ep8(timing="measured", measured=str(short)), phases=["decode"])
    src = {r["component"]: r for r in res.tables["replay_sources"].iter_rows(named=True)}
    assert src["attention"]["source"] == "analytic"
    # GEMM rows with k = hidden only: of the attention projections, q_a/kv_a (n = 1536 + 512 + 64)
    # is measured, q_b, w_kc, w_vc and o_proj are not
    hidden = tmp_path / "k7168.parquet"
    h200.frame.filter((pl.col("family") == "gemm") & (pl.col("k") == 7168)).pipe(MeasuredTable).write(hidden)
    res = replay(ds_trace, r1_h200_ep8(timing="measured", measured=str(hidden)), phases=["decode"])
    src = {r["component"]: r for r in res.tables["replay_sources"].iter_rows(named=True)}
    assert src["attn_proj"]["source"] == "mixed" and 0 < src["attn_proj"]["measured_share"] < 1
    q_a = float(h200.time_s("gemm", dtype="bf16", m=16, n=2112, k=7168))
    assert src["attn_proj"]["measured_s"] == pytest.approx(61 * q_a, rel=1e-9)  # every layer, per step
    timing = MeasuredTiming.of(MeasuredTable.load(hidden), "k7168")
    t = timing.gemm(np.array([16.0, 16.0, 0.0]), 2112.0, 7168.0, "bf16")
    assert t[0] == pytest.approx(q_a) and np.isnan(t[2])  # no rows: nothing to price
    assert np.isnan(timing.gemm(np.array([16.0]), 2112.0, 1536.0, "bf16")).all()


def test_errors_and_the_missing_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="valid: analytic, measured, auto"):
        Deployment(hw="h200-sxm", timing="fast")
    with pytest.raises(UsageError, match="only with timing measured or auto"):
        Deployment(hw="h200-sxm", measured="aiconfigurator")
    with pytest.raises(UsageError, match="no such file"):
        resolve_timing("measured", str(tmp_path / "none.parquet"), gpu="H200 SXM", hw_name="h200-sxm")
    assert aiconfigurator_system("GB200 Blackwell GPU (1200 W)") == ("gb200", "sglang")
    assert aiconfigurator_system("H800 SXM 80GB") is None
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "aiconfigurator_core" else real(name, *a),
    )
    # auto without the extra: analytic; measured names the extra to install
    assert resolve_timing("auto", None, gpu="B200 (1000 W)", hw_name="b200-hgx") is None
    from tracekit.cost import measured_source

    measured_source._aiconfigurator_table.cache_clear()
    with pytest.raises(MissingDependencyError, match=r"tracekit\[aiconfigurator\]"):
        resolve_timing("measured", None, gpu="B200 (1000 W)", hw_name="b200-hgx")


def test_cli_prints_the_source_of_each_component(ds_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    args = ["replay", str(ds_trace), "--hw", "h200-sxm", "--model", "deepseek-r1", "--ep", "8",
            "--phase", "decode", "--timing", "measured", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    # the table column may wrap between "aiconfigurator" and the system on a narrow terminal
    assert "h200_sxm/sglang" in res.output and "priced by" in res.output, res.output
    table = pl.read_parquet(out / "replay_sources.parquet")
    assert table.filter(pl.col("component") == "attention")["source"].to_list() == ["measured"]
    bad = CliRunner().invoke(cli, [*args[:-2], "--measured", "aiconfigurator", "--timing", "analytic"])
    assert bad.exit_code == 2 and "--measured aiconfigurator prices kernels only with --timing" in bad.output
