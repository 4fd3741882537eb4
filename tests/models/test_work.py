"""Per-layer FLOPs and bytes against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.models import (
    attended_pairs,
    attention_flops,
    attention_kv_bytes,
    expert_flops_per_token,
    expert_weight_bytes,
    get_model,
    kv_cache_bytes_per_token,
)


def test_expert_bytes_per_precision() -> None:
    ds = get_model("deepseek-v3")
    params = 3 * 7168 * 2048
    assert expert_weight_bytes(ds, "bf16") == params * 2
    assert expert_weight_bytes(ds, "fp8") == params
    assert expert_weight_bytes(ds, "fp4") == params * 4.5 / 8
    oss = get_model("gpt-oss-120b")
    matrices = 3 * 2880 * 2880
    biases = 2 * 2880 + 2880
    assert expert_weight_bytes(oss, "mxfp4") == matrices * 4.25 / 8 + biases * 2
    assert expert_flops_per_token(oss) == 2 * matrices


def test_kv_cache_per_token() -> None:
    assert kv_cache_bytes_per_token(get_model("deepseek-v3")) == (512 + 64) * 2
    assert kv_cache_bytes_per_token(get_model("qwen3-235b-a22b"), "fp8") == 2 * 4 * 128
    assert kv_cache_bytes_per_token(get_model("mixtral-8x7b")) == 2 * 8 * 128 * 2


def test_attention_flops_gqa_by_hand() -> None:
    arch = get_model("mixtral-8x7b")
    proj = 2 * (4096 * 4096 * 2 + 2 * 4096 * 1024)
    # decode of one token after 1000: 1001 keys; 4 * heads * head_dim per pair
    assert attention_flops(arch, new_tokens=1, context_tokens=1000, phase="decode") == pytest.approx(
        proj + 1001 * 4 * 32 * 128
    )
    # prefill of 4 tokens from scratch: 1 + 2 + 3 + 4 = 10 pairs
    assert attention_flops(arch, new_tokens=4, context_tokens=0, phase="prefill") == pytest.approx(
        4 * proj + 10 * 4 * 32 * 128
    )


def test_mla_absorbed_decode_vs_prefill_pair_cost() -> None:
    arch = get_model("deepseek-v3")
    one_decode = attention_flops(arch, new_tokens=1, context_tokens=0, phase="decode")
    one_prefill = attention_flops(arch, new_tokens=1, context_tokens=0, phase="prefill")
    # decode pair: 2*128*(512+64) + 2*128*512; prefill pair: 2*128*192 + 2*128*128
    assert one_decode - one_prefill == pytest.approx(
        2 * 128 * 576 + 2 * 128 * 512 - 2 * 128 * 192 - 2 * 128 * 128
    )


def test_sliding_window_caps_pairs_and_bytes() -> None:
    arch = get_model("gpt-oss-120b")
    full = attention_flops(arch, new_tokens=1, context_tokens=10_000, phase="decode", layer=1)
    slide = attention_flops(arch, new_tokens=1, context_tokens=10_000, phase="decode", layer=0)
    assert full - slide == pytest.approx((10_001 - 128) * 4 * 64 * 64)
    kv = kv_cache_bytes_per_token(arch)
    assert attention_kv_bytes(arch, new_tokens=1, context_tokens=10_000, layer=0) == pytest.approx(
        (128 + 1) * kv
    )


@given(q=st.integers(0, 300), c=st.integers(0, 300), w=st.integers(1, 400))
def test_attended_pairs_matches_loop(q: int, c: int, w: int) -> None:
    expected_full = sum(c + i for i in range(1, q + 1))
    expected_win = sum(min(c + i, w) for i in range(1, q + 1))
    assert attended_pairs(q, c) == expected_full
    assert attended_pairs(q, c, w) == expected_win


def test_vectorised_shapes() -> None:
    arch = get_model("qwen3-30b-a3b")
    out = attention_flops(
        arch, new_tokens=np.ones((3, 4)), context_tokens=np.arange(12).reshape(3, 4), phase="decode"
    )
    assert out.shape == (3, 4)
    assert np.all(np.diff(out.ravel()) > 0)
