"""Replay engine: hand-checkable traces, values checked against the cost primitives directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cost import EPTraffic, combine, dispatch, grouped_gemm
from tracekit.cost.kernels import elementwise_time
from tracekit.errors import DeploymentError, UsageError
from tracekit.hardware import get_hardware
from tracekit.models import expert_weight_bytes
from tracekit.placement import Placement, route_to_slots
from tracekit.replay import Deployment, replay

R, E, K = 4, 8, 2


def _balanced_ids(steps: int = 2, layers: int = 2, tokens: int = 8) -> np.ndarray:
    """Token ``i = rank * tokens + t`` picks experts 2i and 2i+1 (mod 8): both on rank ``t mod 4``."""
    r = np.arange(R)[:, None, None, None]
    t = np.arange(tokens)[None, None, None, :]
    i = np.broadcast_to(r * tokens + t, (R, steps, layers, tokens))
    return np.stack([(2 * i) % E, (2 * i + 1) % E], axis=-1)


def test_balanced_routing_has_zero_straggler_cost(tmp_path: Path) -> None:
    write_ranked_trace(tmp_path / "t", _balanced_ids(), num_experts=E)
    res = replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=R, impl="nccl"))
    moe = res.layers.filter(pl.col("kind") == "moe")
    assert moe.height == 2 * 2
    assert moe["straggler_s"].abs().max() == pytest.approx(0.0, abs=1e-15)
    assert moe["imbalance"].max() == 0.0
    # every rank received exactly its share: 32 tokens x 2 choices / 4 ranks
    ranks = res.ranks.filter(pl.col("layer") >= 1)
    assert set(ranks["tokens_recv"].to_list()) == {16}
    assert res.summary.breakdown["straggler"] == pytest.approx(0.0, abs=1e-15)


def test_hot_expert_rank_is_the_straggler_by_the_expected_amount(tmp_path: Path) -> None:
    tokens = 8
    ids = np.zeros((R, 1, 2, tokens, K), dtype=np.int64)
    ids[..., 1] = 1  # every token picks experts 0 and 1, both on rank 0
    write_ranked_trace(tmp_path / "t", ids, num_experts=E)
    dep = Deployment(hw="h200-sxm", ep=R, impl="nccl")
    res = replay(tmp_path / "t", dep)
    hw = get_hardware("h200-sxm")
    arch = res.run  # noqa: F841  (the trace's tiny model: hidden 64, expert ffn 32)
    hidden, ffn = 64, 32
    # Independent computation: per-rank routed-expert kernels from hand-built local counts (the
    # NCCL all-to-all hands the experts a contiguous layout: two grouped GEMMs, SiLU-and-mul with
    # quantisation, a permute and an unpermute, one launch gap each) ...
    local = np.zeros((R, E // R))
    local[0] = [R * tokens, R * tokens]
    from tests.factories import tiny_arch

    model = tiny_arch(num_experts=E, top_k=K, num_layers=3)
    g = grouped_gemm(
        hw,
        tokens_per_expert=local,
        hidden_size=hidden,
        ffn_size=ffn,
        precision="fp8",
        weight_precision="fp8",
        expert_weight_bytes=expert_weight_bytes(model, "fp8"),
        layout="contiguous",
    ).time_s
    rows = local.sum(axis=1)
    small = (
        elementwise_time(hw, hbm_bytes=rows * ffn * (4 + 1)).time_s
        + elementwise_time(hw, hbm_bytes=rows * hidden * (2 * 1 + 4), kernels=2).time_s
        + np.where(rows > 0, 5 * hw.launch_gap_s, 0.0)
    )
    # ... and dispatch / combine from the per-peer matrix: every rank sends its 8 tokens to rank 0.
    m = np.zeros((R, R))
    m[:, 0] = tokens
    traffic = EPTraffic.from_rank_matrix(m, hw.scaleup_size)
    d = dispatch(hw, traffic, impl="nccl", bytes_per_token=hidden + hidden / 128 * 4).time_s  # fp8 + scales
    c = combine(hw, traffic, impl="nccl", bytes_per_token=hidden * 2.0).time_s
    varying = g + small + d + c  # attention, router and shared parts are equal on every rank
    expected = varying.max() - varying.mean()
    moe = res.layers.filter(pl.col("kind") == "moe")
    assert expected > 0
    assert moe["slowest_rank"].to_list() == [0, 0]
    assert moe["straggler_s"].to_numpy() == pytest.approx(np.full(2, expected), rel=1e-9)
    rank0 = res.ranks.filter((pl.col("layer") == 1) & (pl.col("rank") == 0)).row(0, named=True)
    assert rank0["tokens_recv"] == R * tokens * K
    assert rank0["active_experts"] == 2
    assert rank0["expert_gemm_s"] == pytest.approx(g[0])


@pytest.mark.parametrize("redundant", [0, 4])
def test_dispatch_bytes_equal_per_peer_counts_of_routing_and_placement(
    tmp_path: Path, redundant: int
) -> None:
    rng = np.random.default_rng(7)
    tokens = 12
    ids = random_ids(rng, (R, 2, 2, tokens), E, K)
    write_ranked_trace(tmp_path / "t", ids, num_experts=E)
    res = replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=R, impl="nccl", redundant=redundant))
    placement = Placement.contiguous([1, 2], E, R, num_redundant=redundant)
    spr = placement.slots_per_rank
    expected = np.zeros((2, R, R), dtype=np.int64)  # [layer, src, dst] summed over steps
    for li, layer in enumerate((1, 2)):
        for s in range(2):
            # one dispatch per (step, layer): every rank's tokens, in rank order
            src = np.repeat(np.arange(R), tokens)
            slots = route_to_slots(placement, layer, ids[:, s, li].reshape(-1, K), src, 8)
            for row, r in zip(slots, src, strict=True):  # a plain loop: the second implementation
                for dst in set((row // spr).tolist()):
                    expected[li, r, dst] += 1
    peers = res.peers.sort(["layer", "src_rank", "dst_rank"])
    got = peers["tokens"].to_numpy().reshape(2, R, R)
    np.testing.assert_array_equal(got, expected)
    per_token = 66  # fp8: 64 bytes of hidden state + one fp32 scale per 128 values (64 / 128 x 4 = 2)
    remote = (peers["src_rank"] != peers["dst_rank"]).to_numpy()
    assert (peers["dispatch_bytes"].to_numpy() == peers["tokens"].to_numpy() * per_token * remote).all()
    off = expected * (1 - np.eye(R, dtype=np.int64))
    sent = (
        res.ranks.filter(pl.col("layer") >= 1).group_by("layer", "rank").agg(pl.col("dispatch_bytes").sum())
    )
    sent = sent.sort(["layer", "rank"])["dispatch_bytes"].to_numpy().reshape(2, R)
    np.testing.assert_array_equal(sent, off.sum(axis=-1) * per_token)


def test_ep16_crosses_the_network_on_h200_but_not_on_gb200(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ids = random_ids(rng, (1, 4, 2, 32), 32, 4)
    write_ranked_trace(tmp_path / "t", ids, num_experts=32)
    for hw, crosses in (("h200-sxm", True), ("gb200-nvl72", False)):
        res = replay(tmp_path / "t", Deployment(hw=hw, ep=16, batch_per_gpu=4, impl="nccl"))
        net = int(res.ranks["network_bytes"].sum())
        links = set(res.peers.filter(pl.col("tokens") > 0)["link"].to_list())
        assert (net > 0) is crosses, hw
        assert ("network" in links) is crosses, hw
        assert "nvlink" in links


def test_model_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = random_ids(rng, (1, 1, 1, 16), 256, 8)
    ids[0, 0, 0, 0, 0] = 255
    write_ranked_trace(tmp_path / "t", ids, num_experts=256)
    with pytest.raises(
        DeploymentError, match=r"deepseek-r1 does not fit on h200-sxm with --ep 2.*raise --ep"
    ):
        replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=2, model="deepseek-r1"))
    # a batch whose KV cache does not fit is refused too, naming the largest that fits
    with pytest.raises(DeploymentError, match=r"at most \d+ sequences per GPU fit"):
        replay(
            tmp_path / "t",
            Deployment(hw="h200-sxm", ep=8, model="deepseek-r1", batch_per_gpu=2, kv_len=10**7),
        )


def test_target_model_must_share_expert_count_and_top_k(tmp_path: Path) -> None:
    write_ranked_trace(tmp_path / "t", _balanced_ids(), num_experts=E)
    with pytest.raises(UsageError, match="same expert count and top-k"):
        replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=R, model="deepseek-r1"))


def test_catalog_target_reuses_trace_layers_cyclically(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = random_ids(rng, (1, 1, 2, 32), 256, 8)
    write_ranked_trace(tmp_path / "t", ids, num_experts=256)
    res = replay(tmp_path / "t", Deployment(hw="gb200-nvl72", ep=32, batch_per_gpu=1, model="deepseek-r1"))
    layers = res.layers.filter(pl.col("kind") == "moe").sort("layer")
    assert layers.height == 58
    # target MoE layer i (decoder layers 3..60) takes trace MoE layer (i mod 2) (decoder layers 1, 2)
    assert layers["source_layer"].to_list() == [1 + (i % 2) for i in range(58)]
    even = layers.filter(pl.col("source_layer") == 1)
    assert even["tokens_recv_max"].n_unique() == 1
    assert res.run["layer_map"][0] == "cyclic"
    assert res.layers.filter(pl.col("kind") == "dense").height == 3


def test_step_time_is_the_sum_of_its_components(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    ids = random_ids(rng, (R, 3, 2, 8), E, K)
    write_ranked_trace(tmp_path / "t", ids, num_experts=E)
    for tbo in (False, True):
        res = replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=R, tbo=tbo, impl="nccl"))
        s = res.steps
        parts = [
            "attention_s",
            "attn_proj_s",
            "expert_gemm_s",
            "dense_s",
            "fixed_s",
            "dispatch_s",
            "combine_s",
            "tp_comm_s",
            "straggler_s",
            "embedding_s",
            "lm_head_s",
        ]
        total = s.select(pl.sum_horizontal(parts)).to_series().to_numpy()
        np.testing.assert_allclose(total, s["step_time_s"].to_numpy(), rtol=1e-9)
        layer_sum = res.layers.group_by("step").agg(pl.col("time_s").sum()).sort("step")["time_s"].to_numpy()
        assert (layer_sum <= s.sort("step")["step_time_s"].to_numpy()).all()
        r = res.ranks
        # NCCL kernels hold a fifth of the SMs: what they add is at most their time plus that share
        assert (r["exposed_comm_s"] <= r["comm_s"] * 1.2 + 1e-15).all()
        np.testing.assert_allclose(r["total_s"], r["compute_s"] + r["exposed_comm_s"])


def test_measured_step_times_are_reported_for_the_same_hardware(tmp_path: Path) -> None:
    write_ranked_trace(
        tmp_path / "t", _balanced_ids(), num_experts=E, duration_ns=2_000_000, device="NVIDIA H200"
    )
    res = replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=R))
    assert res.steps["measured_time_s"].to_list() == [0.002, 0.002]
    other = replay(tmp_path / "t", Deployment(hw="gb200-nvl72", ep=R))
    assert other.steps["measured_time_s"].null_count() == other.steps.height


def test_placement_file_and_tensor_parallel_attention(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    ids = random_ids(rng, (R, 2, 2, 8), E, K)
    write_ranked_trace(tmp_path / "t", ids, num_experts=E)
    # a placement file that reverses the experts: rank r holds experts 7-2r and 6-2r
    phy2log = np.tile(np.arange(E)[::-1], (2, 1))
    pfile = Placement(layers=(1, 2), phy2log=phy2log, num_ranks=R, slots_per_rank=2, policy="file").write(
        tmp_path / "p.parquet"
    )
    res = replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=R, placement=str(pfile), impl="nccl"))
    run = res.run.row(0, named=True)
    assert (run["num_slots"], run["slots_per_rank"], run["redundant_slots"]) == (8, 2, 0)
    got = (
        res.ranks.filter((pl.col("layer") == 1) & (pl.col("step") == 0))
        .sort("rank")["tokens_recv"]
        .to_numpy()
    )
    per_expert = np.bincount(ids[:, 0, 0].reshape(-1), minlength=E)
    np.testing.assert_array_equal(got, [per_expert[7 - 2 * r] + per_expert[6 - 2 * r] for r in range(R)])
    with pytest.raises(DeploymentError, match="--ep 8"):
        replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=8, batch_per_gpu=4, placement=str(pfile)))
    # tensor-parallel attention: 2 DP groups of 2 ranks; the all-reduce shows up, attention is shared
    tp = replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=R, tp=2, impl="nccl"))
    r = tp.ranks.filter((pl.col("step") == 0) & (pl.col("layer") == 1)).sort("rank")
    assert (r["tp_comm_s"] > 0).all()
    assert r["attention_s"][0] == r["attention_s"][1] and r["attention_s"][2] == r["attention_s"][3]
    assert tp.run["dp"][0] == 2 and tp.run["tp"][0] == 2


def test_two_batch_overlap_hides_communication_and_reads_weights_twice(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ids = random_ids(rng, (1, 2, 2, 64), 32, 4)
    write_ranked_trace(tmp_path / "t", ids, num_experts=32)
    base = Deployment(hw="h200-sxm", ep=16, batch_per_gpu=8, impl="nccl")
    off = replay(tmp_path / "t", base)
    on = replay(tmp_path / "t", base.replace(tbo=True))
    moe_off = off.ranks.filter(pl.col("layer") >= 1)
    moe_on = on.ranks.filter(pl.col("layer") >= 1)
    # without overlap every second of communication is exposed; with it, some hides under compute
    # (the stage-by-stage formulas are checked by hand in test_attribution.py)
    np.testing.assert_allclose(moe_off["exposed_comm_s"], moe_off["comm_s"], rtol=1e-12)
    assert (moe_on["exposed_comm_s"] < moe_on["comm_s"]).any()
    assert on.steps["hidden_comm_s"].sum() > 0
    assert off.steps["hidden_comm_s"].sum() == pytest.approx(0.0, abs=1e-15)
    # two micro-batches: an expert with tokens in both halves has its weights read twice
    assert moe_on["weight_bytes"].sum() > moe_off["weight_bytes"].sum()
    assert set(on.run["tbo"].to_list()) == {True}
