"""Compute primitives: roofline, dense GEMM, grouped expert GEMM, attention.

Each time is ``max(flops / (peak * efficiency), bytes / (hbm_bw * hbm_eff), kernel_launch_s)`` and
the bound is whichever term is largest (compute, memory, latency). GEMM efficiency falls for small
row counts: ``gemm_eff * m / (m + gemm_half_tokens)``, which is the same as padding every GEMM
with ``gemm_half_tokens`` rows of compute.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from tracekit.cost.result import F64, ComputeCost, GroupedGemmCost, pick_bound
from tracekit.errors import UsageError
from tracekit.hardware import HardwareSpec
from tracekit.models.work import (
    attention_flops,
    attention_kv_bytes,
    attention_weight_bytes,
)
from tracekit.precision import bytes_per_param
from tracekit.schema import ModelArch


def _arr(x: ArrayLike, name: str) -> F64:
    a = np.asarray(x, dtype=np.float64)
    if np.any(a < 0) or not np.all(np.isfinite(a)):
        raise UsageError(f"{name} must be finite and >= 0")
    return a


def roofline(
    hw: HardwareSpec,
    *,
    flops: ArrayLike,
    hbm_bytes: ArrayLike,
    precision: str = "bf16",
    compute_eff: ArrayLike | None = None,
) -> ComputeCost:
    """Time of work with ``flops`` FLOPs (at ``precision``'s peak x ``compute_eff``, default
    ``hw.gemm_eff``) reading or writing ``hbm_bytes``; bound: compute, memory or latency."""
    f = _arr(flops, "flops")
    b = _arr(hbm_bytes, "hbm_bytes")
    eff = np.asarray(hw.gemm_eff if compute_eff is None else compute_eff, dtype=np.float64)
    peak = hw.peak_flops(precision)
    t_compute = np.divide(f, peak * eff, out=np.zeros(np.broadcast(f, eff).shape), where=eff > 0)
    t_memory = b / (hw.hbm_bw * hw.hbm_eff)
    t_floor = np.full(np.broadcast(f, b).shape, hw.kernel_launch_s)
    t, bound = pick_bound({"latency": t_floor, "compute": t_compute, "memory": t_memory})
    return ComputeCost(
        time_s=t,
        bound=bound,
        flops=np.broadcast_to(f, t.shape).copy(),
        hbm_bytes=np.broadcast_to(b, t.shape).copy(),
    )


def gemm(
    hw: HardwareSpec,
    *,
    m: ArrayLike,
    n: int,
    k: int,
    precision: str = "bf16",
    weight_precision: str | None = None,
) -> ComputeCost:
    """Dense GEMM ``[m, k] x [k, n]``: ``m`` rows (tokens, array), weights ``k x n`` read once.

    FLOPs ``2 m n k``; bytes: weights at ``weight_precision`` (default ``precision``), input rows at
    ``precision``, bf16 output.
    """
    rows = _arr(m, "m")
    wbytes = bytes_per_param(weight_precision or precision)
    abytes = bytes_per_param(precision)
    flops = 2.0 * rows * n * k
    hbm = n * k * wbytes + rows * k * abytes + rows * n * 2.0
    eff = hw.gemm_eff * rows / (rows + hw.gemm_half_tokens)
    return roofline(
        hw, flops=flops, hbm_bytes=hbm, precision=precision, compute_eff=np.where(rows > 0, eff, 1.0)
    )


def grouped_gemm(
    hw: HardwareSpec,
    *,
    tokens_per_expert: ArrayLike,
    hidden_size: int,
    ffn_size: int,
    precision: str = "bf16",
    weight_precision: str | None = None,
    expert_weight_bytes: float | None = None,
) -> GroupedGemmCost:
    """Grouped SwiGLU expert GEMMs of one rank: ``tokens_per_expert[..., E_local]`` (last axis: the
    rank's experts) gives times over ``[...]``.

    FLOPs ``6 * tokens * hidden * ffn``; each expert with tokens reads its weights once
    (``expert_weight_bytes``, default ``3 * hidden * ffn`` at ``weight_precision``); activations:
    input at ``precision`` and bf16 output per token. Compute efficiency per expert follows the GEMM
    curve (``gemm_half_tokens`` rows of padding per active expert).
    """
    t = _arr(tokens_per_expert, "tokens_per_expert")
    if t.ndim == 0:
        t = t[None]
    active = t > 0
    n_active = active.sum(axis=-1)
    total = t.sum(axis=-1)
    per_expert = 6.0 * hidden_size * ffn_size
    wb = (
        expert_weight_bytes
        if expert_weight_bytes is not None
        else 3.0 * hidden_size * ffn_size * bytes_per_param(weight_precision or precision)
    )
    weight_bytes = n_active * wb
    hbm = weight_bytes + total * hidden_size * (bytes_per_param(precision) + 2.0)
    flops = per_expert * total
    padded = per_expert * (total + hw.gemm_half_tokens * n_active)
    eff = np.divide(hw.gemm_eff * flops, padded, out=np.ones_like(flops), where=padded > 0)
    base = roofline(hw, flops=flops, hbm_bytes=hbm, precision=precision, compute_eff=eff)
    return GroupedGemmCost(
        time_s=base.time_s,
        bound=base.bound,
        flops=base.flops,
        hbm_bytes=base.hbm_bytes,
        active_experts=n_active.astype(np.int64),
        weight_bytes=np.asarray(weight_bytes, dtype=np.float64),
    )


def attention(
    hw: HardwareSpec,
    arch: ModelArch,
    *,
    new_tokens: ArrayLike,
    context_tokens: ArrayLike,
    phase: str,
    kv_precision: str = "bf16",
    weight_precision: str = "bf16",
    precision: str = "bf16",
    layer: int | None = None,
    tp: int = 1,
    seq_axis: int | None = -1,
) -> ComputeCost:
    """One attention layer of one rank: sequences along ``seq_axis`` of ``new_tokens`` /
    ``context_tokens`` (per-sequence arrays) are summed; weights are read once per rank.

    ``phase``: prefill (MLA decompressed) or decode (MLA absorbed). ``tp`` splits heads, weights and
    KV cache ``tp`` ways. ``seq_axis=None``: every element is its own rank (one sequence each).
    """
    if tp < 1:
        raise UsageError(f"tp must be >= 1, got {tp}")
    q = _arr(new_tokens, "new_tokens")
    c = _arr(context_tokens, "context_tokens")
    q, c = np.broadcast_arrays(q, c)
    flops = attention_flops(arch, new_tokens=q, context_tokens=c, phase=phase, layer=layer)
    kv = attention_kv_bytes(arch, new_tokens=q, context_tokens=c, kv_precision=kv_precision, layer=layer)
    acts = q * arch.hidden_size * 2.0 * 2.0  # bf16 input and output rows
    if seq_axis is not None and q.ndim > 0:
        flops, kv, acts, q = (x.sum(axis=seq_axis) for x in (flops, kv, acts, q))
    weights = np.where(q > 0, attention_weight_bytes(arch, weight_precision), 0.0)
    return roofline(
        hw,
        flops=flops / tp,
        hbm_bytes=(weights + kv) / tp + acts,
        precision=precision,
        compute_eff=hw.attn_eff,
    )
