"""Compute primitives against hand-computed values of the kernel curves, and their monotonicity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.cost import attention, gemm, grouped_gemm, roofline
from tracekit.hardware import get_hardware
from tracekit.models import expert_weight_bytes, get_model

H200 = get_hardware("h200-sxm")


def test_roofline_by_hand() -> None:
    gemm_eff = H200.kernel_curve("gemm", "bf16").compute_eff
    ew = H200.kernel_curve("elementwise", "any")
    # 1 TFLOP of bf16 at 989 TFLOP/s x the GEMM curve's efficiency -> compute bound
    c = roofline(H200, flops=1e12, hbm_bytes=1e6)
    assert c.time_s == pytest.approx(1e12 / (989e12 * gemm_eff))
    assert c.bound == "compute"
    # 1 GB from HBM at 4.8 TB/s x the elementwise curve's efficiency -> memory bound
    c = roofline(H200, flops=1e6, hbm_bytes=1e9)
    assert c.time_s == pytest.approx(1e9 / (4.8e12 * ew.memory_eff))
    assert c.bound == "memory"
    c = roofline(H200, flops=1.0, hbm_bytes=1.0)
    assert c.time_s == ew.fixed_s and c.bound == "latency"


def _gemm_by_hand(m: int, n: int, k: int, peak: float, wb: float, ab: float, fam: str = "gemm") -> float:
    curve = H200.kernel_curve(fam, "fp8" if peak > 1e15 else "bf16")
    bm = 64 if m <= 128 else 128
    mt = math.ceil(m / bm)
    tiles = mt * math.ceil(n / 128)
    # below one wave the work is split over every SM; beyond, a partial last wave costs a whole one
    wq = 1.0 if tiles < 132 else tiles / (math.ceil(tiles / 132) * 132)
    k_eff = k / (k + curve.half_k)
    compute = 2 * mt * bm * n * k / (peak * curve.compute_eff * k_eff) / wq
    ctas = min(math.ceil(n / 128), 132)  # distinct weight tiles streamed at once
    hbm = n * k * wb + m * k * ab + m * n * 2
    memory = hbm / (4.8e12 * curve.memory_eff * k_eff * ctas / (ctas + curve.half_tiles))
    return curve.fixed_s + max(compute, memory)


def test_gemm_by_hand() -> None:
    m, n, k = 4096, 7168, 2048
    c = gemm(H200, m=m, n=n, k=k, precision="fp8")
    assert c.flops == 2 * m * n * k
    assert c.time_s == pytest.approx(_gemm_by_hand(m, n, k, 1979e12, 1, 1))
    assert c.bound == "compute"
    # decode-sized GEMM with bf16 weights: reading the weights dominates
    c = gemm(H200, m=8, n=7168, k=18432)
    bytes_ = 7168 * 18432 * 2 + 8 * 18432 * 2 + 8 * 7168 * 2
    assert c.hbm_bytes == bytes_ and c.bound == "memory"
    assert c.time_s == pytest.approx(_gemm_by_hand(8, 7168, 18432, 989e12, 2, 2))


def test_grouped_gemm_by_hand() -> None:
    arch = get_model("deepseek-v3")
    tokens = np.array([0, 3, 0, 10])  # 2 of 4 local experts active
    wb = expert_weight_bytes(arch, "fp8")
    c = grouped_gemm(
        H200,
        tokens_per_expert=tokens,
        hidden_size=7168,
        ffn_size=2048,
        precision="fp8",
        expert_weight_bytes=wb,
    )
    assert int(c.active_experts) == 2 and float(c.weight_bytes) == 2 * wb
    curve = H200.kernel_curve("grouped_gemm", "fp8")
    # two GEMMs, each over 2 tiles of 64 rows (one per active expert): memory bound
    want = 0.0
    for n, k in ((2 * 2048, 7168), (7168, 2048)):
        ctas = min(2 * math.ceil(n / 128), 132)
        hbm = 2 * n * k + 13 * (k + n * 2)
        k_eff = k / (k + curve.half_k)  # short rows of K amortise each tile's prologue less
        want += curve.fixed_s + hbm / (4.8e12 * curve.memory_eff * k_eff * ctas / (ctas + curve.half_tiles))
    assert c.time_s == pytest.approx(want)
    assert c.bound == "memory"
    # a big prefill batch is compute bound
    big = np.full(4, 8192)
    c = grouped_gemm(H200, tokens_per_expert=big, hidden_size=7168, ffn_size=2048, precision="fp8")
    assert c.bound == "compute" and c.flops == 6 * 7168 * 2048 * 4 * 8192


def test_grouped_gemm_vectorised_shape() -> None:
    t = np.random.default_rng(0).integers(0, 50, size=(3, 5, 8, 32))  # step, layer, rank, local expert
    c = grouped_gemm(H200, tokens_per_expert=t, hidden_size=2880, ffn_size=2880, weight_precision="mxfp4")
    assert c.time_s.shape == (3, 5, 8) and c.bound.shape == (3, 5, 8)


@given(
    st.lists(st.integers(0, 2000), min_size=1, max_size=16),
    st.integers(0, 15),
    st.integers(1, 500),
)
def test_more_tokens_never_cost_less(tokens: list[int], idx: int, extra: int) -> None:
    t = np.array(tokens)
    more = t.copy()
    more[idx % len(t)] += extra
    a = grouped_gemm(H200, tokens_per_expert=t, hidden_size=4096, ffn_size=1536)
    b = grouped_gemm(H200, tokens_per_expert=more, hidden_size=4096, ffn_size=1536)
    assert b.time_s >= a.time_s * (1 - 1e-12)  # equal work rounds alike
    m = np.array(tokens)
    g1 = gemm(H200, m=m, n=4096, k=4096)
    g2 = gemm(H200, m=m + extra, n=4096, k=4096)
    assert np.all(g2.time_s >= g1.time_s * (1 - 1e-12))


def test_attention_core_and_projections_by_hand() -> None:
    arch = get_model("qwen3-235b-a22b")
    c = attention(H200, arch, new_tokens=np.ones(32), context_tokens=np.full(32, 8000), phase="decode")
    # the core: 4 flops per (query, key) pair per head dim and head; KV read once plus the new keys
    pairs = 32 * 8001
    core_flops = pairs * 4 * 64 * 128
    kv = 32 * (8001 + 1) * 2 * 4 * 128 * 2
    curve = H200.kernel_curve("gqa_decode", "bf16")
    core = (
        curve.fixed_s
        + 32 * curve.per_seq_s
        + max(core_flops / (989e12 * curve.compute_eff), (kv + 32 * 4096 * 4) / (4.8e12 * curve.memory_eff))
    )
    proj_params = 4096 * 8192 * 2 + 2 * 4096 * 512
    proj = gemm(H200, m=32, n=proj_params / 4096, k=4096)
    assert c.flops == pytest.approx(core_flops + 2 * 32 * proj_params)
    assert c.time_s == pytest.approx(core + float(proj.time_s))
    longer = attention(H200, arch, new_tokens=np.ones(32), context_tokens=np.full(32, 16000), phase="decode")
    assert longer.time_s > c.time_s
    split = attention(
        H200, arch, new_tokens=np.ones(32), context_tokens=np.full(32, 8000), phase="decode", tp=4
    )
    assert split.time_s < c.time_s
