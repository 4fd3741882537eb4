"""Compute primitives: roofline, dense GEMM, a rank's routed-expert FFN, one attention layer.

Each is priced with the hardware preset's kernel curves (:mod:`tracekit.cost.kernels`): GEMMs by
the ``gemm`` and ``grouped_gemm`` curves (tiles, waves, streaming efficiency), the attention core
by its family's curve (MLA or GQA, decode or prefill), memory-bound work by the ``elementwise``
curve. Every result carries the bound that set each time (compute, memory or latency).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from tracekit.cost.kernels import attention_time, elementwise_time, gemm_time, grouped_gemm_time
from tracekit.cost.result import BOUNDS, F64, ComputeCost, GroupedGemmCost, pick_largest
from tracekit.errors import UsageError
from tracekit.hardware import HardwareSpec
from tracekit.models.work import (
    attended_pairs,
    attention_flops_per_pair,
    attention_params,
    kv_cache_bytes_per_token,
    layer_window,
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
    """Time of work with ``flops`` FLOPs (at ``precision``'s peak x ``compute_eff``, default the
    preset's GEMM curve) reading or writing ``hbm_bytes`` (as an elementwise kernel); bound:
    compute, memory or latency."""
    f = _arr(flops, "flops")
    b = _arr(hbm_bytes, "hbm_bytes")
    mem = elementwise_time(hw, hbm_bytes=b)
    eff = np.asarray(
        hw.kernel_curve("gemm", "bf16").compute_eff if compute_eff is None else compute_eff, dtype=np.float64
    )
    peak = hw.peak_flops(precision)
    t_compute = np.divide(f, peak * eff, out=np.zeros(np.broadcast(f, eff).shape), where=eff > 0)
    curve = hw.kernel_curve("elementwise", "any")
    t, code = pick_largest(
        [
            np.full(np.broadcast(f, b).shape, curve.fixed_s),
            t_compute,
            np.maximum(mem.time_s - curve.fixed_s, 0.0),
        ],
        [BOUNDS.index(name) for name in ("latency", "compute", "memory")],
    )
    return ComputeCost(
        time_s=t,
        code=code,
        flops=np.broadcast_to(f, t.shape).copy(),
        hbm_bytes=np.broadcast_to(b, t.shape).copy(),
    )


def gemm(
    hw: HardwareSpec,
    *,
    m: ArrayLike,
    n: ArrayLike,
    k: ArrayLike,
    precision: str = "bf16",
    weight_precision: str | None = None,
) -> ComputeCost:
    """Dense GEMM ``[m, k] x [k, n]``: ``m`` rows (tokens, array), weights ``k x n`` read once,
    inputs at ``precision`` (and its tensor cores), weights at ``weight_precision``, bf16 output."""
    return gemm_time(hw, m=_arr(m, "m"), n=n, k=k, precision=precision, weight_precision=weight_precision)


def grouped_gemm(
    hw: HardwareSpec,
    *,
    tokens_per_expert: ArrayLike,
    hidden_size: int,
    ffn_size: int,
    precision: str = "bf16",
    weight_precision: str | None = None,
    expert_weight_bytes: float | None = None,
    layout: str = "masked",
) -> GroupedGemmCost:
    """The SwiGLU experts of one rank: ``tokens_per_expert[..., E_local]`` (last axis: the rank's
    experts) through two grouped GEMMs (gate-up ``[.., 2 ffn]``, down ``[.., hidden]``); times over
    ``[...]``. Each expert with tokens reads its weights once (``expert_weight_bytes`` each: default
    ``3 x hidden x ffn`` at ``weight_precision``; biases included when given)."""
    t = _arr(tokens_per_expert, "tokens_per_expert")
    if t.ndim == 0:
        t = t[None]
    up = grouped_gemm_time(
        hw, tokens_per_expert=t, n=2 * ffn_size, k=hidden_size, precision=precision,
        weight_precision=weight_precision, layout=layout,
    )  # fmt: skip
    down = grouped_gemm_time(
        hw, tokens_per_expert=t, n=hidden_size, k=ffn_size, precision=precision,
        weight_precision=weight_precision, layout=layout,
    )  # fmt: skip
    n_active = (t > 0).sum(axis=-1)
    per_expert = (
        expert_weight_bytes
        if expert_weight_bytes is not None
        else 3.0 * hidden_size * ffn_size * bytes_per_param(weight_precision or precision)
    )
    time = up.time_s + down.time_s
    return GroupedGemmCost(
        time_s=time,
        code=np.where(up.time_s >= down.time_s, up.code, down.code),
        flops=up.flops + down.flops,
        hbm_bytes=up.hbm_bytes + down.hbm_bytes,
        active_experts=n_active.astype(np.int64),
        weight_bytes=np.asarray(n_active * per_expert, dtype=np.float64),
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
    core_precision: str = "bf16",
    layer: int | None = None,
    tp: int = 1,
    seq_axis: int | None = -1,
) -> ComputeCost:
    """One attention layer of one rank: the projections (one GEMM of all projection weights at
    ``precision``) and the core (its family's curve at ``core_precision``) of the sequences along
    ``seq_axis`` of ``new_tokens`` / ``context_tokens``; ``tp`` splits heads, weights and KV cache.
    ``seq_axis=None``: every element is its own rank (one sequence each). The replay prices each
    kernel of a layer separately (:mod:`tracekit.replay.layer`); this is the one-call estimate."""
    if tp < 1:
        raise UsageError(f"tp must be >= 1, got {tp}")
    if phase not in ("prefill", "decode"):
        raise UsageError(f"phase must be prefill or decode, got {phase!r}")
    q = _arr(new_tokens, "new_tokens")
    c = _arr(context_tokens, "context_tokens")
    q, c = np.broadcast_arrays(q, c)
    window = layer_window(arch, layer) if layer is not None else None
    pairs = attended_pairs(q, c, window)
    keys = q + c if window is None else np.minimum(q + c, float(window))
    kv = (keys + q) * kv_cache_bytes_per_token(arch, kv_precision)
    seqs = (q > 0).astype(np.float64)
    if seq_axis is not None and q.ndim > 0:
        pairs, kv, seqs, q = (x.sum(axis=seq_axis) for x in (pairs, kv, seqs, q))
    family = ("mla_" if arch.attention.kind == "mla" else "gqa_") + phase
    core = attention_time(
        hw,
        family=family,
        flops=pairs * attention_flops_per_pair(arch, phase) / tp,
        hbm_bytes=kv / tp + q * arch.hidden_size * 4.0,
        sequences=seqs,
        precision=core_precision,
    )
    params = attention_params(arch) / tp
    proj = gemm_time(hw, m=q, n=params / arch.hidden_size, k=arch.hidden_size, precision=precision,
                     weight_precision=weight_precision)  # fmt: skip
    time = core.time_s + proj.time_s
    return ComputeCost(
        time_s=time,
        code=np.where(core.time_s >= proj.time_s, core.code, proj.code),
        flops=core.flops + proj.flops,
        hbm_bytes=core.hbm_bytes + proj.hbm_bytes,
    )
