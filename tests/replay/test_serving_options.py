"""Serving options of a replay against hand-derived figures: multi-token prediction, decode KV
lengths scaled to a mean, prefix-cache hits, aggregated serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from tests.factories import write_routing_trace
from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cost.kernels import elementwise_time, grouped_gemm_time
from tracekit.errors import UsageError
from tracekit.precision import bytes_per_param, wire_bytes_per_token
from tracekit.replay import Deployment, engine, replay
from tracekit.replay.layer import LayerShape
from tracekit.replay.setup import make_setup
from tracekit.replay.timing import (
    RoutedCounts,
    WindowCost,
    _chunk_comm_s,
    _chunk_experts_s,
    _prefill_layer,
    _pricer,
)
from tracekit.trace import TraceWriter, open_trace

R, E, K = 4, 16, 2
PARTS = [
    "attention_s", "attn_proj_s", "expert_gemm_s", "dense_s", "fixed_s", "dispatch_s", "combine_s",
    "tp_comm_s", "straggler_s", "embedding_s", "lm_head_s", "mtp_s",
]  # fmt: skip


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serving") / "t"
    write_ranked_trace(path, random_ids(np.random.default_rng(3), (R, 3, 2, 8), E, K), num_experts=E)
    return path


def test_mtp_output_tokens_and_draft_passes(ranked: Path) -> None:
    base = replay(ranked, Deployment(hw="h200-sxm", ep=R))
    one = replay(ranked, Deployment(hw="h200-sxm", ep=R, mtp=(1, 0.8)))
    two = replay(ranked, Deployment(hw="h200-sxm", ep=R, mtp=(2, 0.5)))
    b, s1, s2 = base.steps.sort("step"), one.steps.sort("step"), two.steps.sort("step")
    # accepted tokens per sequence per step: 1 + a (one draft), 1 + a + a^2 (two)
    np.testing.assert_array_equal(
        s1["output_tokens"], np.rint(b["output_tokens"].to_numpy() * 1.8).astype(np.int64)
    )
    np.testing.assert_array_equal(
        s2["output_tokens"], np.rint(b["output_tokens"].to_numpy() * 1.75).astype(np.int64)
    )
    # a draft pass is the same work whatever the count: two cost twice one
    np.testing.assert_allclose(s2["mtp_s"], 2 * s1["mtp_s"], rtol=1e-9)
    assert (b["mtp_s"] == 0).all() and (s1["mtp_s"] > 0).all()
    # verification runs 2 and 3 tokens per sequence: the attention core does 2x and 3x the FLOPs
    assert (s1["attention_s"] > b["attention_s"]).all() and (s2["attention_s"] > s1["attention_s"]).all()
    # the components still add up to the step
    for s in (s1, s2):
        np.testing.assert_allclose(
            s.select(pl.sum_horizontal(PARTS)).to_series(), s["step_time_s"], rtol=1e-9
        )
    # tokens per second count accepted tokens
    for res, steps in ((one, s1), (two, s2)):
        want = steps["output_tokens"].sum() / steps["step_time_s"].sum() / R
        assert res.summary.tokens_per_s_per_gpu == pytest.approx(want)
    assert one.run["mtp_drafts"][0] == 1 and one.run["mtp_acceptance"][0] == pytest.approx(0.8)


def test_mtp_with_zero_acceptance_only_costs(ranked: Path) -> None:
    base = replay(ranked, Deployment(hw="h200-sxm", ep=R))
    zero = replay(ranked, Deployment(hw="h200-sxm", ep=R, mtp=(1, 0.0)))
    assert zero.steps["output_tokens"].sum() == base.steps["output_tokens"].sum()
    assert zero.summary.tokens_per_s_per_gpu < base.summary.tokens_per_s_per_gpu


def test_bad_mtp_and_kv_options_are_refused() -> None:
    with pytest.raises(UsageError, match="draft tokens"):
        Deployment(hw="h200-sxm", mtp=(0, 0.5))
    with pytest.raises(UsageError, match="acceptance"):
        Deployment(hw="h200-sxm", mtp=(1, 1.5))
    with pytest.raises(UsageError, match="one of them"):
        Deployment(hw="h200-sxm", kv_len=100, kv_len_mean=200)
    with pytest.raises(UsageError, match="prefix_hit"):
        Deployment(hw="h200-sxm", prefix_hit=1.0)


def test_kv_len_mean_keeps_the_spread(tmp_path: Path) -> None:
    """Positions 0..2 over three steps (KV 1, 2, 3): scaled to a mean of 200, every KV length is
    multiplied by 100, so the per-step means are 100, 200, 300."""
    ids = np.zeros((3, 2, 8, 2), dtype=np.int64)
    ids[..., 1] = 1
    write_routing_trace(tmp_path / "t", ids)
    res = replay(tmp_path / "t", Deployment(hw="h200-sxm", kv_len_mean=200))
    np.testing.assert_allclose(res.steps.sort("step")["kv_len_mean"], [100.0, 200.0, 300.0])
    fixed = replay(tmp_path / "t", Deployment(hw="h200-sxm", kv_len=200))
    np.testing.assert_allclose(fixed.steps["kv_len_mean"], 200.0)


def _prompt_trace(path: Path, prompt: int, requests: int) -> None:
    """One prefill step: ``requests`` prompts of ``prompt`` tokens, every token on experts 0 and 1."""
    from tests.factories import tiny_arch, tiny_manifest

    arch = tiny_arch(num_experts=8, top_k=2, num_layers=2)
    n = prompt * requests
    with TraceWriter(path, tiny_manifest(arch)) as w:
        w.append("steps", {"step": [0], "phase": ["prefill"], "num_tokens": [n], "num_requests": [requests]})
        w.append(
            "tokens",
            {
                "step": np.zeros(n, np.int32),
                "token_index": np.arange(n, dtype=np.int32),
                "request_id": np.repeat(np.arange(requests, dtype=np.int64), prompt),
                "position": np.tile(np.arange(prompt, dtype=np.int32), requests),
                "is_prefill": np.ones(n, bool),
            },
        )
        for layer in arch.moe_layers:
            w.append(
                "routing",
                {
                    "step": np.zeros(n, np.int32),
                    "layer": np.full(n, layer, np.int16),
                    "token_index": np.arange(n, dtype=np.int32),
                    "expert_ids": np.tile(np.array([0, 1], np.int16), (n, 1)),
                    "gate_weights": np.full((n, 2), 0.5, np.float32),
                },
            )


def test_prefix_hit_skips_the_cached_prompt_tokens(tmp_path: Path) -> None:
    """Prompts of 40 tokens with a 25% hit: the first floor(0.25 x 40) = 10 of each are cached, 30
    computed; throughput counts all 40 served."""
    _prompt_trace(tmp_path / "t", prompt=40, requests=4)
    full = replay(tmp_path / "t", Deployment(hw="h200-sxm"))
    hit = replay(tmp_path / "t", Deployment(hw="h200-sxm", prefix_hit=0.25))
    assert int(full.steps["num_tokens"].sum()) == 160
    assert int(hit.steps["num_tokens"].sum()) == 120
    # the computed tokens still attend over the cached ones: their mean KV is that of positions 10..39
    assert hit.steps["kv_len_mean"][0] == pytest.approx(np.arange(11, 41).mean())
    t = float(hit.steps["step_time_s"].sum())
    assert hit.summary.tokens_per_s_per_gpu == pytest.approx(160 / t)
    assert float(hit.steps["step_time_s"].sum()) < float(full.steps["step_time_s"].sum())


def test_aggregated_serving_stalls_decode(ranked: Path) -> None:
    plain = replay(ranked, Deployment(hw="h200-sxm", ep=R))
    agg = replay(ranked, Deployment(hw="h200-sxm", ep=R, aggregated=(512, 64)))
    chunked = replay(ranked, Deployment(hw="h200-sxm", ep=R, aggregated=(512, 64), prefill_chunk=128))
    assert agg.summary.tokens_per_s_per_gpu < plain.summary.tokens_per_s_per_gpu
    # the stall is straggler time: every other component is the decode step's own
    for c in ("attention_s", "expert_gemm_s", "dense_s"):
        np.testing.assert_allclose(agg.steps[c], plain.steps[c])
    assert (agg.steps["straggler_s"] > plain.steps["straggler_s"]).all()
    assert chunked.run["prefill_chunk"][0] == 128 and agg.run["aggregated_isl"][0] == 512


def test_a_prefill_chunks_alltoall_grows_with_its_tokens(ranked: Path) -> None:
    """A rank that also sends a chunk of 300 prompt tokens beside its 100 decode tokens sends 4x the
    bytes and receives what it did: on NVLink, above the floor, each of dispatch and combine takes
    (4 - 1) x its sent bytes / (NVLink bandwidth x efficiency) longer."""
    setup = make_setup(open_trace(ranked), Deployment(hw="h200-sxm", ep=R, aggregated=(512, 64)))
    hw, dep = setup.hw, setup.dep
    tok = 2e5  # tokens each rank sends and receives on NVLink per layer (far above the latency floor)
    loads = {
        "nvlink_sent": np.full((1, 2, R), tok),
        "nvlink_recv": np.full((1, 2, R), tok),
        "network_sent": np.zeros((1, 2, R)),
        "network_recv": np.zeros((1, 2, R)),
    }
    zero = np.zeros((1, 2, R))
    routed = RoutedCounts(
        loads=loads, tokens_recv=zero, active_experts=zero, sent_tokens=zero, recv_tokens=zero
    )
    got = _chunk_comm_s(setup, "decode", routed, 300.0, 100.0)
    p = hw.comm_params(dep.impl_for("decode"))
    H = setup.arch.hidden_size
    sent = (
        3
        * tok
        * (wire_bytes_per_token(dep.precision.dispatch, H) + wire_bytes_per_token(dep.precision.combine, H))
    )
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, sent / (hw.scaleup_bw * p.eff_up), rtol=1e-9)
    assert (_chunk_comm_s(setup, "decode", routed, 0.0, 100.0) == 0).all()


def test_a_prefill_chunks_expert_pairs_cost_the_rows_they_add(ranked: Path) -> None:
    """Each rank's 4 slots hold 8 rows each; 16 more pairs make it 12 each: the extra time is the
    two grouped GEMMs and the activation at 12 rows per expert minus the same at 8."""
    setup = make_setup(open_trace(ranked), Deployment(hw="h200-sxm", ep=R, aggregated=(512, 64)))
    hw, arch = setup.hw, setup.arch
    S = setup.placement.slots_per_rank
    assert S == E // R
    pricer = _pricer(setup, "decode")
    shape = LayerShape(
        tokens=np.full((1, 1, R), 16.0),
        new_tokens=np.ones((1, 1, R, 16)),
        context_tokens=np.full((1, 1, R, 16), 100.0),
        expert_tokens=np.full((1, 1, 2, R, S), 8.0),
        phase="decode",
        tp=1,
    )
    got = _chunk_experts_s(setup, pricer, shape, 16.0)
    H, F, prec = arch.hidden_size, arch.moe_intermediate_size, setup.dep.precision.experts

    def experts(rows: float) -> float:
        per = np.full(S, rows)
        kw = {"tokens_per_expert": per, "precision": prec, "layout": pricer.expert_layout}
        gemms = (
            grouped_gemm_time(hw, n=2 * F, k=H, **kw).time_s + grouped_gemm_time(hw, n=H, k=F, **kw).time_s
        )
        act = elementwise_time(hw, hbm_bytes=S * rows * F * (4.0 + bytes_per_param(prec))).time_s
        return float(gemms * hw.time_scale("expert_gemm") + act * hw.time_scale("elementwise"))

    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, experts(12.0) - experts(8.0), rtol=1e-9)
    assert (got > 0).all()
    assert (_chunk_experts_s(setup, pricer, shape, 0.0) == 0).all()


def test_a_prefill_chunk_joins_the_decode_tokens_kernels(ranked: Path) -> None:
    """On one GPU (no all-to-all) a step's chunk costs its own attention core plus what its 512 rows
    add to the kernels of the rank's decode rows (weights read and latency floors paid once): less
    than the same layer as kernels of its own, more than its core alone."""
    captured: list[WindowCost] = []
    real = engine.attribute

    def keep(cost: WindowCost, **kw: Any) -> Any:
        captured.append(cost)
        return real(cost, **kw)

    dep = Deployment(hw="h200-sxm", ep=1, aggregated=(512, 64))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "attribute", keep)
        res = replay(ranked, dep)
    cost = captured[0]
    assert cost.chunk_s is not None
    setup = make_setup(open_trace(ranked), dep)
    pre = _pricer(setup, "prefill")
    W = cost.chunk_s.shape[0]
    B = float(res.steps["num_tokens"][0])  # decode rows of the one GPU
    assert (res.steps["num_tokens"] == B).all() and B > 0
    own, core = _prefill_layer(setup, pre, 512.0, 0.0, W)
    both, both_core = _prefill_layer(setup, pre, B + 512.0, 0.0, W)
    alone, alone_core = _prefill_layer(setup, pre, B, 0.0, W)
    np.testing.assert_allclose(cost.chunk_s, core + (both - both_core) - (alone - alone_core), rtol=1e-12)
    assert (cost.chunk_s < own).all() and (cost.chunk_s > core).all()
    # each of the B sequences is replaced every 64 steps, one chunk each
    assert cost.chunk_prob == pytest.approx(B / 64)
