"""Each canned report's numbers against the same figure computed independently (polars, numpy,
Python sets) from the Parquet files or from the arrays the inputs were built from."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import write_routing_trace
from tests.reports.builders import COMPONENTS
from tests.reports.conftest import Inputs
from tracekit.errors import UnknownNameError, UsageError
from tracekit.reports import Catalog, ReportResult, get_report, report_names, run_report
from tracekit.reports.registry import ends_in_order_by, used_params

REQUIRED = {
    "expert-load", "imbalance", "routing-drift", "comm-summary", "comm-matrix",
    "step-breakdown", "replay-compare", "kernel-summary",
}  # fmt: skip


def run(paths: list[str | Path], name: str, **params: object) -> list[dict[str, object]]:
    cat = Catalog.from_paths(paths)
    con = cat.connect()
    try:
        res: ReportResult = run_report(con, cat, name, params)
    finally:
        con.close()
    return [dict(zip(res.columns, r, strict=True)) for r in res.rows]


def scan(trace: Path, table: str) -> pl.DataFrame:
    """Read a trace table straight from its Parquet files with polars (no tracekit reader)."""
    return pl.read_parquet(str(trace / table / "*.parquet"))


def gini(x: np.ndarray) -> float:
    """Gini by the mean absolute difference (a different formula from the report's)."""
    x = x.astype(float)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean()))


def test_the_required_reports_exist_and_are_documented() -> None:
    assert set(report_names()) >= REQUIRED
    for name in report_names():
        spec = get_report(name)
        assert spec.title and spec.answers and spec.columns
        assert ends_in_order_by(spec.sql), name
        assert {p.name for p in spec.params} == used_params(spec.sql)


@pytest.mark.parametrize(
    ("sql", "ok"),
    [
        ("SELECT a FROM t ORDER BY a", True),
        ("SELECT a FROM t ORDER BY list_position([1, 2], a), b DESC", True),
        ("SELECT * FROM (SELECT a FROM t ORDER BY a)", False),
        ("SELECT row_number() OVER (ORDER BY a) FROM t", False),
        ("SELECT a FROM t ORDER BY a UNION ALL SELECT b FROM u", False),
        ("SELECT a FROM t", False),
    ],
)
def test_order_by_rule(sql: str, ok: bool) -> None:
    assert ends_in_order_by(sql) is ok


def test_report_columns_match_their_header(inputs: Inputs) -> None:
    cat = Catalog.from_paths(
        [inputs.trace, inputs.ep.path, inputs.replay_h200, inputs.replay_nvl72, inputs.sweep]
    )
    con = cat.connect()
    for name in report_names():
        res = run_report(con, cat, name)
        assert list(res.columns) == [c for c, _ in get_report(name).columns], name
        assert res.rows, f"report {name} gave no rows on the test inputs"
    con.close()


def test_expert_load_top_experts(inputs: Inputs) -> None:
    got = run([inputs.trace], "expert-load", top=3)
    load = scan(inputs.trace, "expert_load").group_by("layer", "expert").agg(pl.col("num_tokens").sum())
    total = load.group_by("layer").agg(pl.col("num_tokens").sum().alias("total"))
    want = (
        load.join(total, on="layer")
        .sort(["layer", "num_tokens", "expert"], descending=[False, True, False])
        .group_by("layer", maintain_order=True)
        .head(3)
    )
    assert [(r["layer"], r["expert"], r["num_tokens"]) for r in got] == list(
        zip(want["layer"], want["expert"], want["num_tokens"], strict=True)
    )
    for r, share in zip(got, (want["num_tokens"] / want["total"]).to_list(), strict=True):
        assert r["share"] == pytest.approx(share)
        assert r["vs_mean"] == pytest.approx(share * 8)
    assert [r["hot_rank"] for r in got] == [1, 2, 3] * 3


def test_expert_load_phase_filter_counts_only_that_phase(inputs: Inputs) -> None:
    got = run([inputs.trace], "expert-load", top=8, phase="prefill")
    ids = inputs.expert_ids[:2]  # the first two steps are prefill
    for r in got:
        li = int(r["layer"]) - 1
        assert r["num_tokens"] == int((ids[:, li] == r["expert"]).sum())


def test_imbalance_against_numpy(inputs: Inputs) -> None:
    got = {r["layer"]: r for r in run([inputs.trace], "imbalance", ep=4)}
    ids = inputs.expert_ids  # [step, layer, token, k], 8 experts
    for li in range(ids.shape[1]):
        counts = np.bincount(ids[:, li].ravel(), minlength=8)
        r = got[li + 1]
        assert r["num_tokens"] == counts.sum()
        assert r["hot_expert"] == int(np.argmax(counts))
        assert r["expert_max_over_mean"] == pytest.approx(counts.max() / counts.mean())
        assert r["expert_gini"] == pytest.approx(gini(counts))
        ranks = counts.reshape(4, 2).sum(axis=1)
        assert r["rank_max_over_mean"] == pytest.approx(ranks.max() / ranks.mean())
        assert r["rank_excess"] == pytest.approx((ranks.max() - ranks.mean()) / ranks.mean())
        per_step = np.stack(
            [np.bincount(ids[s, li].ravel(), minlength=8).reshape(4, 2).sum(1) for s in range(ids.shape[0])]
        )
        excess = per_step.max(1) / per_step.mean(1) - 1
        assert r["step_rank_excess_mean"] == pytest.approx(excess.mean())
        assert r["step_rank_excess_max"] == pytest.approx(excess.max())
        assert r["ep"] == 4


def test_imbalance_with_experts_not_divisible_by_ep(inputs: Inputs) -> None:
    # 8 experts over 3 ranks: ceil(8 / 3) = 3 experts per rank -> ranks hold {0,1,2}, {3,4,5}, {6,7}.
    got = {r["layer"]: r for r in run([inputs.trace], "imbalance", ep=3)}
    for li in range(inputs.expert_ids.shape[1]):
        counts = np.bincount(inputs.expert_ids[:, li].ravel(), minlength=8)
        ranks = np.array([counts[0:3].sum(), counts[3:6].sum(), counts[6:8].sum()])
        assert got[li + 1]["rank_max_over_mean"] == pytest.approx(ranks.max() / ranks.mean())


@settings(max_examples=12)
@given(st.lists(st.integers(0, 50), min_size=8, max_size=8).filter(lambda c: sum(c) > 0), st.integers(1, 8))
def test_imbalance_gini_and_ratios_on_any_loads(
    tmp_path_factory: pytest.TempPathFactory, counts: list[int], ep: int
) -> None:
    """Loads given per expert (zeros included): the report's Gini and max/mean match numpy."""
    ids = np.repeat(np.arange(8), counts).astype(np.int16)
    # one step, one MoE layer, one token per assignment, top-1
    path = tmp_path_factory.mktemp("gini") / "t"
    write_routing_trace(path, ids.reshape(1, 1, -1, 1), manifest=None)
    (r,) = run([path], "imbalance", ep=ep)
    c = np.array(counts)
    num_experts = int(ids.max()) + 1  # the factory sizes the model to the largest id used
    c = c[:num_experts]
    assert r["expert_gini"] == pytest.approx(gini(c), abs=1e-12)
    assert 0.0 <= r["expert_gini"] < 1.0
    assert r["expert_max_over_mean"] == pytest.approx(c.max() / c.mean())
    per = math.ceil(num_experts / ep)
    ranks = np.bincount(np.arange(num_experts) // per, weights=c, minlength=ep)
    assert r["rank_max_over_mean"] == pytest.approx(ranks.max() / ranks.mean())


@pytest.mark.parametrize("window", [1, 4])
def test_routing_drift_against_python_sets(inputs: Inputs, window: int) -> None:
    top = 3
    got = run([inputs.trace], "routing-drift", top=top, window=window)
    raw = inputs.expert_ids
    # windows of steps: window w holds steps w*window .. w*window+window-1 (the last may be short)
    ids = [
        raw[s : s + window].transpose(1, 0, 2, 3).reshape(raw.shape[1], -1, raw.shape[3])
        for s in range(0, raw.shape[0], window)
    ]
    steps, layers = len(ids), raw.shape[1]
    assert len(got) == steps * layers

    def hot(counts: np.ndarray) -> set[int]:
        order = sorted(range(counts.size), key=lambda e: (-counts[e], e))
        return {e for e in order[:top] if counts[e] > 0}

    rows = {(r["layer"], r["step"]): r for r in got}
    for li in range(layers):
        overall_counts = np.bincount(raw[:, li].ravel(), minlength=8)
        overall = hot(overall_counts)
        prev: set[int] | None = None
        for s in range(steps):
            counts = np.bincount(ids[s][li].ravel(), minlength=8)
            h = hot(counts)
            r = rows[(li + 1, s * window)]
            assert set(r["hot_experts"]) == h
            assert r["num_tokens"] == counts.sum()
            if prev is None:
                assert r["jaccard_prev"] is None
            else:
                assert r["jaccard_prev"] == pytest.approx(len(h & prev) / len(h | prev))
            assert r["overlap_overall"] == pytest.approx(len(h & overall) / len(overall))
            assert r["overall_hot_share"] == pytest.approx(counts[sorted(overall)].sum() / counts.sum())
            prev = h


def test_comm_summary_against_polars(inputs: Inputs) -> None:
    got = run([inputs.ep.path], "comm-summary")
    comm = scan(inputs.ep.path, "comm").with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("dur"))
    want = comm.group_by("op", "purpose").agg(
        pl.len().alias("calls"),
        pl.col("rank").n_unique().alias("ranks"),
        pl.col("bytes_sent").sum(),
        pl.col("bytes_recv").sum(),
        pl.col("dur").sum().alias("dur"),
        pl.col("dur").count().alias("timed"),
    )
    assert len(got) == want.height == 4
    total_sent = comm["bytes_sent"].sum()
    for w in want.iter_rows(named=True):
        (r,) = [g for g in got if (g["op"], g["purpose"]) == (w["op"], w["purpose"])]
        assert (r["calls"], r["ranks"], r["bytes_sent"], r["bytes_recv"]) == (
            w["calls"],
            w["ranks"],
            w["bytes_sent"],
            w["bytes_recv"],
        )
        assert r["bytes_share"] == pytest.approx(w["bytes_sent"] / total_sent)
        assert r["timed_calls"] == w["timed"]
        if w["timed"]:
            assert r["time_s"] == pytest.approx(w["dur"] / 1e9)
            assert r["send_gb_per_s"] == pytest.approx(w["bytes_sent"] / w["dur"])
        else:
            assert r["time_s"] is None and r["send_gb_per_s"] is None
    assert [g["bytes_sent"] for g in got] == sorted((g["bytes_sent"] for g in got), reverse=True)


def test_comm_matrix_against_the_bytes_written(inputs: Inputs) -> None:
    ep = inputs.ep
    expected = ep.matrix["dispatch"] + ep.matrix["combine"] + ep.sends
    got = run([ep.path], "comm-matrix")
    m = np.zeros_like(expected)
    for r in got:
        assert r["src_rank"] != r["dst_rank"]
        m[r["src_rank"], r["dst_rank"]] = r["bytes"]
    off = ~np.eye(ep.world, dtype=bool)
    assert np.array_equal(m[off], expected[off])
    assert sum(r["share"] for r in got) == pytest.approx(1.0)

    only = run([ep.path], "comm-matrix", purpose="dispatch", include_self="true")
    m = np.zeros_like(expected)
    for r in only:
        m[r["src_rank"], r["dst_rank"]] = r["bytes"]
    assert np.array_equal(m, ep.matrix["dispatch"])

    sends = run([ep.path], "comm-matrix", op="send")
    m = np.zeros_like(expected)
    for r in sends:
        m[r["src_rank"], r["dst_rank"]] = r["bytes"]
    assert np.array_equal(m, ep.sends)


def test_kernel_summary_against_polars(inputs: Inputs) -> None:
    k = scan(inputs.ep.path, "kernels")
    for by, keys in (("category", ["category"]), ("name", ["category", "name"])):
        got = run([inputs.ep.path], "kernel-summary", by=by)
        want = k.group_by(keys).agg(
            pl.len().alias("n"),
            pl.col("duration_ns").sum().alias("t"),
            pl.col("duration_ns").max().alias("mx"),
        )
        assert len(got) == want.height
        total = k["duration_ns"].sum()
        for w in want.iter_rows(named=True):
            (r,) = [g for g in got if all(g[c] == w[c] for c in keys)]
            assert r["kernels"] == w["n"]
            assert r["time_s"] == pytest.approx(w["t"] / 1e9)
            assert r["share"] == pytest.approx(w["t"] / total)
            assert r["max_us"] == pytest.approx(w["mx"] / 1e3)
            if by == "category":
                assert r["name"] is None
        assert [g["time_s"] for g in got] == sorted((g["time_s"] for g in got), reverse=True)


def test_step_breakdown_against_polars(inputs: Inputs) -> None:
    got = run([inputs.replay_h200], "step-breakdown")
    steps = pl.read_parquet(inputs.replay_h200 / "replay_steps.parquet")
    for phase in ("prefill", "decode"):
        rows = [r for r in got if r["phase"] == phase]
        assert [r["component"] for r in rows] == list(COMPONENTS)
        sel = steps.filter(pl.col("phase") == phase)
        for r in rows:
            assert r["time_s"] == pytest.approx(sel[f"{r['component']}_s"].mean())
            assert r["steps"] == sel.height
        # the components add up to the step time
        assert sum(r["time_s"] for r in rows) == pytest.approx(sel["step_time_s"].mean())
        assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    per_step = run([inputs.replay_h200], "step-breakdown", by="step")
    assert len(per_step) == steps.height * len(COMPONENTS)
    first = [r for r in per_step if r["phase"] == "decode" and r["step"] == 0]
    row = steps.filter((pl.col("phase") == "decode") & (pl.col("step") == 0)).row(0, named=True)
    assert [r["time_s"] for r in first] == pytest.approx([row[f"{c}_s"] for c in COMPONENTS])


def test_replay_compare_against_polars(inputs: Inputs) -> None:
    paths = [f"h200={inputs.replay_h200}", f"nvl72={inputs.replay_nvl72}"]
    got = run(paths, "replay-compare")
    assert [(r["input"], r["phase"]) for r in got] == [
        ("h200", "decode"),
        ("h200", "prefill"),
        ("nvl72", "decode"),
        ("nvl72", "prefill"),
    ]
    summaries = {
        n: pl.read_parquet(p / "replay_summary.parquet")
        for n, p in (("h200", inputs.replay_h200), ("nvl72", inputs.replay_nvl72))
    }
    for r in got:
        s = summaries[r["input"]].filter(pl.col("phase") == r["phase"]).row(0, named=True)
        base = summaries["h200"].filter(pl.col("phase") == r["phase"]).row(0, named=True)
        assert r["tokens_per_s_per_gpu"] == pytest.approx(s["tokens_per_s_per_gpu"])
        assert r["speedup"] == pytest.approx(s["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"])
        assert r["comm_share"] == pytest.approx(
            (s["dispatch_s"] + s["combine_s"] + s["tp_comm_s"]) / s["step_time_s"]
        )
    assert {r["hw"] for r in got} == {"h200-sxm", "gb200-nvl72"}
    rebased = run(paths, "replay-compare", baseline="nvl72")
    assert [r["speedup"] for r in rebased if r["input"] == "nvl72"] == pytest.approx([1.0, 1.0])
    with pytest.raises(UsageError, match="baseline nope is not one of the replay inputs"):
        run(paths, "replay-compare", baseline="nope")


def test_predicted_vs_measured_against_polars(inputs: Inputs) -> None:
    table = pl.read_parquet(inputs.replay_h200 / "replay_profile.parquet")
    got = run([inputs.replay_h200], "predicted-vs-measured")
    for phase in ("prefill", "decode"):
        part = table.filter(pl.col("phase") == phase)
        n = part.select(pl.struct("step", "rank").n_unique()).item()  # profiled steps x ranks
        rows = [r for r in got if r["phase"] == phase]
        want_order = ["attention", "gemm", "expert_gemm", "elementwise", "launch_gaps", "dispatch", "combine"]
        want_order += ["unmatched"] if phase == "prefill" else []
        assert [r["component"] for r in rows] == [*want_order, "step"]
        for r in rows:
            sel = part.filter(pl.col("component") == r["component"])
            assert r["cells"] == sel.height
            assert r["measured_s"] == pytest.approx(sel["measured_s"].sum() / n)
            if r["component"] == "unmatched":
                assert r["predicted_s"] is None and r["error"] is None
                continue
            assert r["predicted_s"] == pytest.approx(sel["predicted_s"].sum() / n)
            assert r["error"] == pytest.approx(sel["predicted_s"].sum() / sel["measured_s"].sum() - 1)
            assert r["cell_error_median"] == pytest.approx(float(np.median(np.abs(sel["error"].to_numpy()))))
    by_layer = run([inputs.replay_h200], "predicted-vs-measured", by="layer")
    one = [r for r in by_layer if r["phase"] == "decode" and r["layer"] == 1 and r["component"] == "gemm"]
    sel = table.filter(
        (pl.col("phase") == "decode") & (pl.col("layer") == 1) & (pl.col("component") == "gemm")
    )
    assert one[0]["measured_s"] == pytest.approx(sel["measured_s"].sum() / 10)  # 5 steps x 2 ranks
    by_step = run([inputs.replay_h200], "predicted-vs-measured", by="step")
    step3 = [r for r in by_step if r["phase"] == "decode" and r["step"] == 3 and r["component"] == "step"]
    sel = table.filter(
        (pl.col("phase") == "decode") & (pl.col("step") == 3) & (pl.col("component") == "step")
    )
    assert step3[0]["measured_s"] == pytest.approx(sel["measured_s"].mean())  # per rank
    assert step3[0]["predicted_s"] == pytest.approx(sel["predicted_s"].mean())


def test_sweep_pareto_lists_the_frontier(inputs: Inputs) -> None:
    got = run([inputs.sweep], "sweep-pareto")
    pareto = pl.read_parquet(inputs.sweep / "sweep_pareto.parquet")
    assert len(got) == pareto.height
    for hw in ("h200-sxm", "gb200-nvl72"):
        rows = [r for r in got if r["hw"] == hw]
        users = [r["tokens_per_s_per_user"] for r in rows]
        gpus = [r["tokens_per_s_per_gpu"] for r in rows]
        assert users == sorted(users, reverse=True)
        assert gpus == sorted(gpus)  # on a frontier, less per user buys more per GPU


def test_gate_weights_against_numpy(inputs: Inputs) -> None:
    got = run([inputs.trace], "gate-weights")
    w = inputs.gate_weights  # [step, layer, token, k]
    for r in got:
        li = int(r["layer"]) - 1
        mx = w[:, li].max(axis=-1)
        assert r["tokens"] == mx.size
        assert r["mean_max_weight"] == pytest.approx(float(mx.mean()), rel=1e-6)
        assert r["mean_weight_sum"] == pytest.approx(float(w[:, li].sum(-1).mean()), rel=1e-6)
        assert abs(r["p50_max_weight"] - float(np.median(mx))) < 0.05


def test_routing_check_finds_agreement_and_mismatch(inputs: Inputs, tmp_path: Path) -> None:
    ok = run([inputs.trace, inputs.ep.path], "routing-check")
    assert {r["input"] for r in ok} == {"trace_a"}  # the EP trace has no routing rows
    assert all(r["mismatched_cells"] == 0 and r["routing_assignments"] == r["expert_load_tokens"] for r in ok)
    # Damage one expert_load part: drop a row of layer 1, step 0.
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(inputs.trace, bad)
    part = sorted((bad / "expert_load").glob("*.parquet"))[0]
    df = pl.read_parquet(part)
    victim = df.filter((pl.col("num_tokens") > 0) & (pl.col("layer") == 1) & (pl.col("step") == 0)).row(
        0, named=True
    )
    df.filter(
        ~((pl.col("layer") == 1) & (pl.col("step") == 0) & (pl.col("expert") == victim["expert"]))
    ).write_parquet(part)
    got = {r["layer"]: r for r in run([bad], "routing-check")}
    assert got[1]["mismatched_cells"] == 1
    assert got[1]["routing_assignments"] - got[1]["expert_load_tokens"] == victim["num_tokens"]
    assert got[2]["mismatched_cells"] == 0


def test_several_traces_are_told_apart(inputs: Inputs) -> None:
    both = run([inputs.trace, inputs.trace_b], "imbalance")
    one = run([inputs.trace], "imbalance")
    other = run([inputs.trace_b], "imbalance")
    assert [r for r in both if r["input"] == "trace_a"] == one
    assert [{**r, "input": "trace_b"} for r in other] == [r for r in both if r["input"] == "trace_b"]
    assert {r["num_experts"] for r in both} == {8, 16}


def test_report_errors_are_usage_errors(inputs: Inputs) -> None:
    with pytest.raises(UnknownNameError, match=r"valid names: .*imbalance"):
        run([inputs.trace], "no-such-report")
    with pytest.raises(UnknownNameError, match="parameter of report imbalance"):
        run([inputs.trace], "imbalance", epp=4)
    with pytest.raises(UsageError, match="below the minimum"):
        run([inputs.trace], "imbalance", ep=-1)
    with pytest.raises(UsageError, match="not one of"):
        run([inputs.trace], "kernel-summary", by="stream")
    with pytest.raises(UsageError, match="not a valid integer"):
        run([inputs.trace], "expert-load", top="many")
    with pytest.raises(UsageError, match=r"replay_steps.*replay/sweep --out"):
        run([inputs.trace], "step-breakdown")


def _sample_traces() -> list[Path]:
    root = Path(__file__).resolve().parents[2] / "sample_traces"
    return sorted(p.parent for p in root.glob("*/manifest.json"))


SAMPLES = _sample_traces()


@pytest.mark.skipif(not SAMPLES, reason="no sample_traces/ in this checkout yet")
@pytest.mark.parametrize("trace", SAMPLES, ids=[p.name for p in SAMPLES])
def test_reports_on_sample_traces(trace: Path) -> None:
    load = scan(trace, "expert_load") if list((trace / "expert_load").glob("*.parquet")) else None
    if load is None or load.height == 0:
        pytest.skip(f"{trace.name} has no expert_load rows")
    per_expert = load.group_by("layer", "expert").agg(pl.col("num_tokens").sum())
    # expert-load: hottest expert per layer
    got = run([trace], "expert-load", top=1)
    want = (
        per_expert.sort(["layer", "num_tokens", "expert"], descending=[False, True, False])
        .group_by("layer", maintain_order=True)
        .head(1)
    )
    assert [(r["layer"], r["expert"], r["num_tokens"]) for r in got] == list(
        zip(want["layer"], want["expert"], want["num_tokens"], strict=True)
    )
    # imbalance: Gini and max/mean over every expert of the model
    import json

    num_experts = json.loads((trace / "manifest.json").read_text())["model"]["num_experts"]
    imb = {r["layer"]: r for r in run([trace], "imbalance", ep=4)}
    for layer, grp in per_expert.group_by("layer"):
        counts = np.zeros(num_experts)
        counts[grp["expert"].to_numpy()] = grp["num_tokens"].to_numpy()
        r = imb[layer[0]]
        assert r["expert_gini"] == pytest.approx(gini(counts))
        assert r["expert_max_over_mean"] == pytest.approx(counts.max() / counts.mean())
        ranks = np.bincount(np.arange(num_experts) // math.ceil(num_experts / 4), weights=counts)
        assert r["rank_max_over_mean"] == pytest.approx(ranks.max() / ranks.mean())
    # routing-drift: number of rows = (layer, step) pairs with tokens
    drift = run([trace], "routing-drift")
    pairs = load.filter(pl.col("num_tokens") > 0).select("layer", "step").unique().height
    assert len(drift) == pairs
    # routing vs expert_load agree in a recorded trace
    if list((trace / "routing").glob("*.parquet")):
        routing = scan(trace, "routing")
        top_k = json.loads((trace / "manifest.json").read_text())["model"]["top_k"]
        check = run([trace], "routing-check")
        by_layer: dict[int, int] = defaultdict(int)
        for layer in routing["layer"].to_list():
            by_layer[layer] += top_k
        assert {r["layer"]: r["routing_assignments"] for r in check} == dict(by_layer)
        assert all(r["mismatched_cells"] == 0 for r in check)
        # gate-weights: mean of the largest weight per token, per layer, with numpy
        gates = {r["layer"]: r for r in run([trace], "gate-weights")}
        for (layer,), grp in routing.group_by("layer"):
            w = grp["gate_weights"].to_numpy()
            assert gates[layer]["tokens"] == grp.height
            assert gates[layer]["mean_max_weight"] == pytest.approx(float(w.max(axis=1).mean()), rel=1e-6)
            assert gates[layer]["mean_weight_sum"] == pytest.approx(float(w.sum(axis=1).mean()), rel=1e-6)


COMM_SAMPLES = [p for p in SAMPLES if list((p / "comm").glob("*.parquet"))]


@pytest.mark.skipif(not COMM_SAMPLES, reason="no sample trace with a comm table in this checkout yet")
@pytest.mark.parametrize("trace", COMM_SAMPLES, ids=[p.name for p in COMM_SAMPLES])
def test_comm_reports_on_sample_traces(trace: Path) -> None:
    check_comm_reports(trace)


def test_comm_check_on_the_built_ep_trace(inputs: Inputs) -> None:
    check_comm_reports(inputs.ep.path)


def check_comm_reports(trace: Path) -> None:
    """comm-summary totals and comm-matrix cells against polars over the comm Parquet files."""
    comm = scan(trace, "comm")
    summary = run([trace], "comm-summary")
    assert sum(r["calls"] for r in summary) == comm.height
    assert sum(r["bytes_sent"] for r in summary) == comm["bytes_sent"].sum()
    # comm-matrix: explode the per-peer lists with polars and add sends
    peers = (
        comm.filter(pl.col("send_bytes_per_peer").is_not_null())
        .select(
            pl.col("rank").alias("src"),
            pl.col("group_ranks").alias("dst"),
            pl.col("send_bytes_per_peer").alias("b"),
        )
        .explode("dst", "b")
    )
    sends = comm.filter(
        pl.col("send_bytes_per_peer").is_null() & (pl.col("op") == "send") & pl.col("peer").is_not_null()
    )
    peers = pl.concat(
        [
            peers,
            sends.select(
                pl.col("rank").alias("src"), pl.col("peer").alias("dst"), pl.col("bytes_sent").alias("b")
            ),
        ]
    )
    want = peers.filter(pl.col("src") != pl.col("dst")).group_by("src", "dst").agg(pl.col("b").sum())
    got = {(r["src_rank"], r["dst_rank"]): r["bytes"] for r in run([trace], "comm-matrix")}
    assert got == {(r["src"], r["dst"]): r["b"] for r in want.iter_rows(named=True)}
