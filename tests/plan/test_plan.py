"""The planner: its choices checked against full replays of every deployment of its grid, on a case
where the cost model's answer can be read off by hand."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import polars as pl
import pytest

from tests.factories import synth_r1
from tracekit.errors import DeploymentError
from tracekit.plan import Grid, PlanInputs, Sla, plan
from tracekit.replay.deployment import Deployment
from tracekit.replay.engine import replay
from tracekit.replay.fast import FastReplay

ISL, OSL = 2000, 1000


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """DeepSeek-R1 routing: one decode step of 512 tokens, one prefill step of two 2000-token prompts."""
    root = tmp_path_factory.mktemp("plan")
    synth_r1(root / "decode", spec="zipf:0.6", tokens_per_step=512, steps=1, seed=1, prompt_len=ISL)
    synth_r1(
        root / "prefill",
        spec="zipf:0.6",
        tokens_per_step=2 * ISL,
        steps=1,
        seed=1,
        prompt_len=ISL,
        phase="prefill",
    )
    return root / "decode", root / "prefill"


# 8 H200: expert parallel with attention data parallel (EP8 DP8), attention TP8 with EP8 experts, and
# TP8 everywhere (MoE TP8: every GPU a slice of every expert)
GRID = Grid(
    eps=(8,),
    tps=(1, 8),
    moe_tp=(False, True),
    batches=(1, 2, 4, 8, 16, 32),
    tbos=(False,),
    prefill_eps=(8,),
    prefill_tokens=(4000,),
)
SHAPES = {"EP8 DP8": (1, 1), "TP8 EP8": (8, 1), "TP8 MoE-TP8": (8, 8)}


def _full(decode: Path, tp: int, moe_tp: int, batch: int) -> float | None:
    """Tokens/s per user of a full replay (None: the batch's KV cache does not fit)."""
    dep = Deployment(hw="h200-sxm", ep=8, tp=tp, moe_tp=moe_tp, batch_per_gpu=batch, kv_len=ISL + OSL // 2)
    try:
        s = replay(decode, dep, phases=["decode"], collect_ranks=False).phases[0]
    except DeploymentError:
        return None
    return s.tokens_per_s_per_user


def _known(x: float | None) -> float:
    assert x is not None
    return x


def test_moe_tp_and_attention_tp_win_at_high_interactivity_and_dp_at_high_throughput(
    traces: tuple[Path, Path],
) -> None:
    decode, prefill = traces
    fast, pre = FastReplay(decode), FastReplay(prefill)

    def best(per_user: float, grid: Grid = GRID) -> dict[str, object]:
        sla = Sla(isl=ISL, osl=OSL, ttft_s=2.0, tpot_s=1.0 / per_user)
        res = plan(
            PlanInputs(systems=("h200-sxm",), total_gpus=(16,), sla=sla, grid=grid), fast, prefill_trace=pre
        )
        rows = res.best.filter(pl.col("mode") == "disaggregated").to_dicts()
        assert len(rows) == 1
        return rows[0]

    # By hand: MoE TP8 has no all-to-all and no straggler (every GPU holds 1/8 of every expert, so the
    # routing cannot load one GPU more than another), and attention TP splits the attention and dense
    # weights 8 ways: at one sequence per GPU it is the fastest per user. Attention TP keeps a DP
    # group's whole MLA KV cache (one KV head) on every GPU, so its batch caps 8x lower: at a loose
    # target EP8 DP8's large batches give the most tokens per GPU.
    speed = {name: {b: _full(decode, tp, m, b) for b in GRID.batches} for name, (tp, m) in SHAPES.items()}
    one = {name: _known(s[1]) for name, s in speed.items()}
    assert one["TP8 MoE-TP8"] > 1.5 * one["EP8 DP8"]  # the full replay agrees with the argument
    assert speed["TP8 EP8"][32] is None and speed["EP8 DP8"][32] is not None

    tight = 0.5 * (one["TP8 MoE-TP8"] + max(one["EP8 DP8"], one["TP8 EP8"]))  # only MoE TP meets it
    chosen = best(tight)
    assert (chosen["tp"], chosen["moe_tp"]) == (8, 8)
    # its batch: the largest whose full replay still meets the target
    ok = [b for b in GRID.batches if (speed["TP8 MoE-TP8"][b] or 0.0) >= tight]
    assert chosen["batch_per_gpu"] == max(ok)
    assert chosen["tokens_per_s_per_user"] == pytest.approx(speed["TP8 MoE-TP8"][max(ok)], rel=1e-9)

    # Without MoE TP: attention TP8 reads 1/8 of the attention projections and the shared expert per
    # GPU, so at one sequence per GPU it beats EP8 DP8 per user (the experts and all-to-all are alike)
    assert one["TP8 EP8"] > one["EP8 DP8"]
    between = 0.5 * (one["TP8 EP8"] + one["EP8 DP8"])
    chosen = best(between, dataclasses.replace(GRID, moe_tp=(False,)))
    assert (chosen["tp"], chosen["moe_tp"]) == (8, 1)
    ok = [b for b in GRID.batches if (speed["TP8 EP8"][b] or 0.0) >= between]
    assert chosen["batch_per_gpu"] == max(ok)

    loose = 0.9 * min(v for v in speed["EP8 DP8"].values() if v is not None)  # every fitting point meets it
    chosen = best(loose)
    assert (chosen["tp"], chosen["moe_tp"], chosen["batch_per_gpu"]) == (1, 1, 32)


def test_disaggregated_pools_are_sized_to_the_decode_rate(traces: tuple[Path, Path]) -> None:
    decode, prefill = traces
    sla = Sla(isl=ISL, osl=OSL, ttft_s=5.0, tpot_s=0.2)
    grid = dataclasses.replace(GRID, tps=(1,), moe_tp=(False,), batches=(8,))
    res = plan(
        PlanInputs(systems=("h200-sxm",), total_gpus=(32,), sla=sla, grid=grid),
        FastReplay(decode),
        prefill_trace=FastReplay(prefill),
    )
    row = res.points.filter(pl.col("mode") == "disaggregated").to_dicts()[0]
    dep = Deployment(hw="h200-sxm", ep=8, batch_per_gpu=8, kv_len=ISL + OSL // 2)
    d = replay(decode, dep, phases=["decode"], collect_ranks=False).phases[0]
    pdep = Deployment(hw="h200-sxm", ep=8, prefill_tokens_per_gpu=4000)
    p = replay(prefill, pdep, phases=["prefill"], collect_ranks=False).phases[0]
    decode_rate = d.tokens_per_s_per_gpu * 8 / OSL  # requests/s of one decode instance
    prefill_rate = p.tokens_per_s_per_gpu * 8 / ISL
    # every split of the 32 GPUs into decode and prefill instances, the best by served requests
    best = max(
        (min(n_d * decode_rate, n_p * prefill_rate), n_d, n_p)
        for n_d in range(1, 4)
        for n_p in range(1, 4 - n_d + 1)
    )
    assert (row["decode_gpus"], row["prefill_gpus"]) == (8 * best[1], 8 * best[2])
    assert row["tokens_per_s_per_gpu"] == pytest.approx(best[0] * OSL / 32, rel=1e-9)
    assert row["ttft_s"] > p.ttft_s  # the KV transfer on top
    assert math.isclose(row["tpot_s"], _known(d.tpot_s), rel_tol=1e-9)
