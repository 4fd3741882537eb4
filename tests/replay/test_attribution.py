"""The overlap schedules of the attribution stage against hand-computed layer times."""

from __future__ import annotations

import numpy as np
import pytest

from tracekit.replay.attribution import layer_times, rank_times
from tracekit.replay.layer import Priced
from tracekit.replay.timing import COMPONENTS, CommTimes, LayerMap, RoutedWork, WindowCost

US = 1e-6


def _cost(
    stages: dict[str, list[float]],
    *,
    dispatch: list[float],
    combine: list[float],
    busy: float | None = 0.0,
    launch: float = 0.0,
    sm_frac: float = 0.0,
    ranks: int = 1,
) -> WindowCost:
    """One step, one MoE layer, ``ranks`` identical ranks; per micro-batch stage times (us).
    ``busy=None``: each collective keeps the GPU busy all its span."""
    M = len(dispatch)
    lm = LayerMap(source_of=np.array([0]), W=1, R=ranks)

    def arr(values: list[float]) -> np.ndarray:
        return np.broadcast_to(np.array(values)[:, None, None, None] * US, (M, 1, 1, ranks)).copy()

    st = {s: arr(stages.get(s, [0.0] * M)) for s in ("attn0", "attn1", "shared", "experts", "ffn")}
    compute = sum(st.values()).sum(axis=0)
    comps = {
        c: Priced(time=np.zeros((1, 1, ranks)), bound=np.zeros((1, 1, ranks), np.int8)) for c in COMPONENTS
    }
    comps["fixed"] = Priced(time=compute, bound=np.zeros((1, 1, ranks), np.int8))
    d = CommTimes(
        span=arr(dispatch), busy=arr(dispatch if busy is None else [busy] * M), launch=arr([launch] * M)
    )
    c = CommTimes(
        span=arr(combine), busy=arr(combine if busy is None else [busy] * M), launch=arr([launch] * M)
    )
    comps["dispatch"] = Priced(time=(d.span + d.launch).sum(axis=0), bound=np.zeros((1, 1, ranks), np.int8))
    comps["combine"] = Priced(time=(c.span + c.launch).sum(axis=0), bound=np.zeros((1, 1, ranks), np.int8))
    zero = np.zeros((1, 1, ranks))
    routed = RoutedWork(
        peer_tokens=np.zeros((1, 1, ranks, ranks)), tokens_recv=zero, active_experts=zero, weight_bytes=zero,
        dispatch_bytes=zero, dispatch_recv_bytes=zero, combine_bytes=zero, network_bytes=zero,
    )  # fmt: skip
    edge = Priced(time=np.zeros((1, ranks)), bound=np.zeros((1, ranks), np.int8))
    return WindowCost(
        layer_map=lm, M=M, stages=st, components=comps, dispatch=d, combine=c,
        tp_comm=np.zeros((M, 1, 1, ranks)), comm_sm_frac=sm_frac, routed=routed, embedding=edge, lm_head=edge,
    )  # fmt: skip


def _total(cost: WindowCost, schedule: str, derate: float = 1.0) -> float:
    return float(rank_times(cost, schedule=schedule, derate=derate).total[0, 0, 0]) / US


def test_serial_adds_every_collective() -> None:
    cost = _cost({"attn0": [30], "attn1": [100], "shared": [20], "experts": [80]}, dispatch=[150], combine=[300],
                 launch=6)  # fmt: skip
    assert _total(cost, "serial") == pytest.approx(30 + 100 + 20 + 80 + 150 + 300 + 2 * 6)


def test_tbo_decode_hides_each_collective_under_its_stage() -> None:
    # per micro-batch: attn0 40, attn1 120, shared 25, experts 60; dispatch 180, combine 330 (us)
    st = {"attn0": [40, 40], "attn1": [120, 120], "shared": [25, 25], "experts": [60, 60]}
    cost = _cost(st, dispatch=[180, 180], combine=[330, 330])
    compute = 2 * (40 + 120 + 25 + 60)
    # a's dispatch beside a's shared experts and b's attn0 (65 us): 115 exposed; a's combine beside
    # b's attn1 (120 us): 210 exposed; the same for b
    assert _total(cost, "tbo-decode") == pytest.approx(compute + 2 * (115 + 210))
    # an NVLink transfer that keeps its kernels resident (busy = span) hides nothing
    blocked = _cost(st, dispatch=[180, 180], combine=[330, 330], busy=None)
    assert _total(blocked, "tbo-decode") == pytest.approx(compute + 2 * (180 + 330))
    # a derated collective is slower beside compute: 1.5 x 180 - 65 and 1.5 x 330 - 120
    assert _total(cost, "tbo-decode", 1.5) == pytest.approx(compute + 2 * (270 - 65 + 495 - 120))
    # compute longer than the collectives hides them all
    long = _cost({"attn0": [400, 400], "attn1": [500, 500], "shared": [300, 300]}, dispatch=[100, 100],
                 combine=[200, 200])  # fmt: skip
    assert _total(long, "tbo-decode") == pytest.approx(2 * (400 + 500 + 300))


def test_tbo_prefill_blocks_and_the_sms_the_collectives_hold() -> None:
    st = {"attn0": [100, 100], "attn1": [200, 200], "shared": [50, 50], "experts": [400, 400]}
    cost = _cost(st, dispatch=[300, 300], combine=[600, 600])
    # blocks: D(a)|X(b) = max(300, 350); D(b)|Y(a) = max(300, 400); C(a)|Y(b) = max(600, 400); C(b)|X(a)
    assert _total(cost, "tbo-prefill") == pytest.approx(350 + 400 + 600 + 600)
    # kernels holding a fifth of the SMs slow every GEMM of the layer by 1 / 0.8
    held = _cost(st, dispatch=[300, 300], combine=[600, 600], sm_frac=0.2)
    assert _total(held, "tbo-prefill") == pytest.approx(437.5 + 500 + 600 + 600)


def test_sbo_hides_dispatch_under_shared_and_combine_under_the_down_gemm() -> None:
    cost = _cost(
        {"attn0": [50], "attn1": [150], "shared": [40], "experts": [90]}, dispatch=[100], combine=[80]
    )
    # dispatch beside the shared experts (40): 60 exposed; combine beside the down GEMM (90 / 3): 50
    assert _total(cost, "sbo") == pytest.approx(50 + 150 + 40 + 90 + 60 + 50)


def test_an_aggregated_prefill_chunk_stalls_the_layer() -> None:
    cost = _cost({"attn0": [10], "attn1": [20]}, dispatch=[0], combine=[0], ranks=4)
    ranks = rank_times(cost, schedule="serial")
    base = float(layer_times(cost, ranks).time[0, 0])
    staged = cost.__class__(**{**cost.__dict__, "chunk_s": np.array([[100 * US]]), "chunk_prob": 0.25})
    got = float(layer_times(staged, ranks).time[0, 0])
    # every rank takes 30 us; a rank with a chunk takes 130: the layer waits for it a quarter of the time
    assert base == pytest.approx(30 * US)
    assert got == pytest.approx(0.75 * 30 * US + 0.25 * 130 * US)


def test_a_prefill_chunks_expert_pairs_lengthen_every_rank() -> None:
    """The chunks' tokens reach every rank's routed experts (8 us more each): a step with a chunk
    takes 8 + max(30, 30 + 100) us, whoever runs the chunk."""
    cost = _cost({"attn0": [10], "attn1": [20]}, dispatch=[0], combine=[0], ranks=4)
    ranks = rank_times(cost, schedule="serial")
    staged = cost.__class__(
        **{
            **cost.__dict__,
            "chunk_s": np.array([[100 * US]]),
            "chunk_prob": 0.25,
            "chunk_moe_s": np.array([[8 * US]]),
        }
    )
    got = float(layer_times(staged, ranks).time[0, 0])
    assert got == pytest.approx(0.75 * 30 * US + 0.25 * (8 + 130) * US)
