"""Compute primitives against hand-computed roofline values, and their monotonicity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.cost import attention, gemm, grouped_gemm, roofline
from tracekit.hardware import get_hardware
from tracekit.models import expert_weight_bytes, get_model

H200 = get_hardware("h200-sxm")


def test_roofline_by_hand() -> None:
    # 1 TFLOP of bf16 at 989 TFLOP/s x 0.7 -> compute bound
    c = roofline(H200, flops=1e12, hbm_bytes=1e6)
    assert c.time_s == pytest.approx(1e12 / (989e12 * 0.7))
    assert c.bound == "compute"
    # 1 GB from HBM at 4.8 TB/s x 0.8 -> memory bound
    c = roofline(H200, flops=1e6, hbm_bytes=1e9)
    assert c.time_s == pytest.approx(1e9 / (4.8e12 * 0.8))
    assert c.bound == "memory"
    c = roofline(H200, flops=1.0, hbm_bytes=1.0)
    assert c.time_s == H200.kernel_launch_s and c.bound == "latency"


def test_gemm_by_hand() -> None:
    m, n, k = 4096, 7168, 2048
    c = gemm(H200, m=m, n=n, k=k, precision="fp8")
    eff = 0.7 * m / (m + 64)
    assert c.flops == 2 * m * n * k
    assert c.time_s == pytest.approx(2 * m * n * k / (1979e12 * eff))
    assert c.bound == "compute"
    # decode-sized GEMM with bf16 weights: reading the weights dominates
    c = gemm(H200, m=8, n=7168, k=18432)
    bytes_ = 7168 * 18432 * 2 + 8 * 18432 * 2 + 8 * 7168 * 2
    assert (
        c.hbm_bytes == bytes_ and c.time_s == pytest.approx(bytes_ / (4.8e12 * 0.8)) and c.bound == "memory"
    )


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
    hbm = 2 * wb + 13 * 7168 * (1 + 2)
    assert c.time_s == pytest.approx(hbm / (4.8e12 * 0.8))
    assert c.bound == "memory"
    # a big prefill batch: compute bound, efficiency with 64 rows of padding per active expert
    big = np.full(4, 8192)
    c = grouped_gemm(H200, tokens_per_expert=big, hidden_size=7168, ffn_size=2048, precision="fp8")
    assert c.bound == "compute"
    assert c.time_s == pytest.approx(6 * 7168 * 2048 * (4 * 8192 + 4 * 64) / (1979e12 * 0.7))


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
    assert b.time_s >= a.time_s
    m = np.array(tokens)
    g1 = gemm(H200, m=m, n=4096, k=4096)
    g2 = gemm(H200, m=m + extra, n=4096, k=4096)
    assert np.all(g2.time_s >= g1.time_s)


def test_attention_by_hand_and_monotone() -> None:
    arch = get_model("qwen3-235b-a22b")
    c = attention(H200, arch, new_tokens=np.ones(32), context_tokens=np.full(32, 8000), phase="decode")
    kv = 2 * 4 * 128 * 2
    weights = (4096 * 8192 * 2 + 2 * 4096 * 512) * 2
    hbm = weights + 32 * (8001 + 1) * kv + 32 * 4096 * 4
    flops = 32 * (2 * (4096 * 8192 * 2 + 2 * 4096 * 512) + 8001 * 4 * 64 * 128)
    assert c.hbm_bytes == pytest.approx(hbm) and c.flops == pytest.approx(flops)
    assert c.time_s == pytest.approx(max(hbm / (4.8e12 * 0.8), flops / (989e12 * 0.5)))
    longer = attention(H200, arch, new_tokens=np.ones(32), context_tokens=np.full(32, 16000), phase="decode")
    assert longer.time_s > c.time_s
    split = attention(
        H200, arch, new_tokens=np.ones(32), context_tokens=np.full(32, 8000), phase="decode", tp=4
    )
    assert split.time_s < c.time_s
