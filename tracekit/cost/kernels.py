"""Compute kernels as efficiency curves: what one kernel of a family costs at a given shape.

Each family's time is a small physical model whose parameters (a :class:`KernelCurve` per family
and compute class in the hardware preset, fitted by ``tracekit calibrate`` to published kernel
tables) say how close to the hardware's peaks the kernels of that family get:

- ``gemm`` (dense GEMM ``[m, k] x [k, n]``) and ``grouped_gemm`` (one GEMM over a rank's experts,
  tokens per expert given): the output is cut into tiles of ``bm`` rows (64 up to 128 rows and in
  the masked grouped layout, else 128) and 128 columns. Compute: the padded tiles' FLOPs at
  ``compute_eff x k / (k + half_k)`` of the class's peak (a short inner loop does not amortise its
  prologue), with wave quantisation over the SMs beyond one wave (a last, partial wave costs a
  whole one; below a wave the kernel splits its work to fill the SMs). Memory: every byte once at
  ``memory_eff x c / (c + half_tiles)`` of HBM bandwidth, ``c`` the CTAs that stream distinct weight
  tiles of 128 columns at once (few of them cannot saturate HBM). Time: ``fixed_s + max(compute,
  memory)``; more rows never cost less.
- ``mla_decode``, ``mla_prefill``, ``gqa_decode``, ``gqa_prefill`` (the attention core): ``fixed_s +
  per_seq_s x sequences + max(FLOPs / (peak x compute_eff), bytes / (hbm_bw x memory_eff))``;
  per-sequence work models split-KV scheduling and its combine.
- ``elementwise`` (norms, activation quantisation, RoPE and the KV write, SiLU-and-mul, residual
  adds, permutes): ``fixed_s + bytes / (hbm_bw x memory_eff)`` per kernel.

Curves are keyed by (family, compute class): ``bf16``, ``fp8``, ``fp4`` (the class of
:func:`tracekit.precision.compute_class`; ``any`` for elementwise). Every function takes numpy
arrays and broadcasts; a kernel with no work (zero rows) costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tracekit.cost.result import BOUNDS, F64, ComputeCost, pick_largest
from tracekit.errors import UsageError
from tracekit.hardware.curves import ATTENTION_FAMILIES, KernelCurve
from tracekit.precision import bytes_per_param, compute_class

#: Columns of an output tile.
TILE_N = 128


class _Hardware(Protocol):
    """The hardware fields the curves read (a HardwareSpec provides them)."""

    @property
    def hbm_bw(self) -> float: ...

    @property
    def num_sms(self) -> int: ...

    def peak_flops(self, precision: str) -> float: ...

    def kernel_curve(self, family: str, dtype: str) -> KernelCurve: ...


def _arr(x: ArrayLike) -> F64:
    return np.asarray(x, dtype=np.float64)


_LATENCY = BOUNDS.index("latency")


def _result(
    fixed: F64, terms: dict[str, F64], flops: F64, hbm: F64, active: NDArray[np.bool_]
) -> ComputeCost:
    """fixed + the largest term, and its bound (latency when the fixed part is larger); zero where
    there is no work. ``flops`` and ``hbm`` are kept as given when of the result's shape (the
    callers pass arrays they computed, or copies of their inputs)."""
    work, code = pick_largest(list(terms.values()), [BOUNDS.index(name) for name in terms])
    total = np.where(active, fixed + work, 0.0)
    shape = total.shape
    if code.shape != shape:
        code = np.broadcast_to(code, shape).copy()
    code[(fixed > work) | ~active] = _LATENCY
    return ComputeCost(
        time_s=total,
        code=code,
        flops=flops if flops.shape == shape else np.broadcast_to(flops, shape).copy(),
        hbm_bytes=hbm if hbm.shape == shape else np.broadcast_to(hbm, shape).copy(),
    )


def _waves(tiles: F64, sms: int) -> tuple[F64, F64]:
    """(waves, wave efficiency) of ``tiles`` CTAs on ``sms`` SMs."""
    waves = np.maximum(np.ceil(tiles / sms), 1.0)
    return waves, np.where(tiles > 0, tiles / (waves * sms), 1.0)


def _tiled(
    hw: _Hardware,
    curve: KernelCurve,
    *,
    row_tiles: F64,
    col_tiles: F64,
    bm: float | F64,
    n: ArrayLike,
    k: ArrayLike,
    precision: str,
) -> tuple[F64, F64]:
    """(compute time, streaming efficiency) of GEMM tiles: ``row_tiles`` tiles of ``bm`` rows
    (summed over experts for a grouped GEMM) by ``n`` columns; ``col_tiles`` the distinct weight
    tiles of 128 columns (summed over a grouped GEMM's active experts)."""
    sms = hw.num_sms
    n, k = _arr(n), _arr(k)
    tiles = row_tiles * np.ceil(n / TILE_N)
    # below one wave the kernel splits its work to fill the SMs; beyond, a partial wave costs a whole one
    _, wq = _waves(tiles, sms)
    wq = np.where(tiles < sms, 1.0, wq)
    k_eff = k / (k + curve.half_k) if curve.half_k > 0 else 1.0
    t_compute = 2.0 * row_tiles * bm * n * k / (hw.peak_flops(precision) * curve.compute_eff * k_eff) / wq
    # CTAs streaming distinct weight tiles at once (more rows re-read the same weights)
    ctas = np.minimum(col_tiles, sms)
    stream = np.where(ctas > 0, ctas / (ctas + curve.half_tiles), 1.0) if curve.half_tiles > 0 else 1.0
    return t_compute, curve.memory_eff * np.asarray(stream * k_eff, dtype=np.float64)


def gemm_time(
    hw: _Hardware,
    *,
    m: ArrayLike,
    n: ArrayLike,
    k: ArrayLike,
    precision: str = "bf16",
    weight_precision: str | None = None,
) -> ComputeCost:
    """A dense GEMM ``[m, k] x [k, n]``: inputs at ``precision``, weights at ``weight_precision``
    (default ``precision``), bf16 output."""
    rows, n, k = np.broadcast_arrays(_arr(m), _arr(n), _arr(k))
    curve = hw.kernel_curve("gemm", compute_class(precision))
    wb = bytes_per_param(weight_precision or precision)
    ab = bytes_per_param(precision)
    bm = np.where(rows <= 128, 64.0, 128.0)
    t_compute, eff = _tiled(
        hw,
        curve,
        row_tiles=np.ceil(rows / bm),
        col_tiles=np.ceil(n / TILE_N),
        bm=bm,
        n=n,
        k=k,
        precision=precision,
    )
    flops = 2.0 * rows * n * k
    hbm = n * k * wb + rows * k * ab + rows * n * 2.0
    terms = {"compute": t_compute, "memory": hbm / (hw.hbm_bw * eff)}
    return _result(np.full(rows.shape, curve.fixed_s), terms, flops, hbm, rows > 0)


#: Rows per tile of a grouped GEMM in each layout (module docstring).
GROUPED_TILE_ROWS = {"masked": 64, "contiguous": 128}


@dataclass(frozen=True, kw_only=True, eq=False)
class GroupedRows:
    """What a grouped GEMM's time depends on in the rows it is given, per rank (``[...]``): the
    rows, the experts with at least one row and, per layout, the row tiles. The planner's fast path
    counts these without ever building the ``[..., experts]`` array (``tracekit.replay.workload``)."""

    rows: F64
    active: F64
    #: Per layout (``masked``, ``contiguous``): the sum over experts of ceil(rows / tile rows).
    row_tiles: Mapping[str, F64]

    @classmethod
    def of(cls, tokens_per_expert: ArrayLike) -> GroupedRows:
        t = _arr(tokens_per_expert)
        if t.ndim == 0:
            t = t[None]
        return cls(
            rows=t.sum(axis=-1),
            active=(t > 0).sum(axis=-1).astype(np.float64),
            row_tiles={name: np.ceil(t / bm).sum(axis=-1) for name, bm in GROUPED_TILE_ROWS.items()},
        )


def grouped_gemm_time(
    hw: _Hardware,
    *,
    tokens_per_expert: ArrayLike | GroupedRows,
    n: ArrayLike,
    k: ArrayLike,
    precision: str = "bf16",
    weight_precision: str | None = None,
    layout: str = "masked",
) -> ComputeCost:
    """One grouped GEMM over a rank's experts: ``tokens_per_expert[..., E]`` rows per expert (or
    their :class:`GroupedRows` summary), each ``[rows, k] x [k, n]``; the weights of every expert
    with tokens are read once. ``layout``: ``masked`` (decode: 64-row tiles per expert) or
    ``contiguous`` (prefill: 128-row tiles)."""
    if layout not in GROUPED_TILE_ROWS:
        raise UsageError(f"grouped GEMM layout {layout!r}: valid: masked, contiguous")
    g = tokens_per_expert if isinstance(tokens_per_expert, GroupedRows) else GroupedRows.of(tokens_per_expert)
    curve = hw.kernel_curve("grouped_gemm", compute_class(precision))
    wb = bytes_per_param(weight_precision or precision)
    ab = bytes_per_param(precision)
    bm = float(GROUPED_TILE_ROWS[layout])
    rows = g.rows
    n, k = _arr(n), _arr(k)
    n_active = g.active
    row_tiles = g.row_tiles[layout]
    col_tiles = n_active * np.ceil(n / TILE_N)
    t_compute, eff = _tiled(
        hw, curve, row_tiles=row_tiles, col_tiles=col_tiles, bm=bm, n=n, k=k, precision=precision
    )
    flops = 2.0 * rows * n * k
    hbm = n_active * n * k * wb + rows * (k * ab + n * 2.0)
    terms = {"compute": t_compute, "memory": hbm / (hw.hbm_bw * eff)}
    return _result(np.full(rows.shape, curve.fixed_s), terms, flops, hbm, rows > 0)


def attention_time(
    hw: _Hardware,
    *,
    family: str,
    flops: ArrayLike,
    hbm_bytes: ArrayLike,
    sequences: ArrayLike,
    precision: str = "bf16",
) -> ComputeCost:
    """The attention core of one rank (``family``: one of :data:`ATTENTION_FAMILIES`): ``flops`` and
    ``hbm_bytes`` (KV read, Q and output) of ``sequences`` sequences, at ``precision``'s tensor cores."""
    if family not in ATTENTION_FAMILIES:
        raise UsageError(f"attention kernel family {family!r}: valid: {', '.join(ATTENTION_FAMILIES)}")
    f = _arr(flops)
    b = _arr(hbm_bytes)
    s = _arr(sequences)
    curve = hw.kernel_curve(family, compute_class(precision))
    terms = {
        "compute": f / (hw.peak_flops(precision) * curve.compute_eff),
        "memory": b / (hw.hbm_bw * curve.memory_eff),
    }
    fixed = curve.fixed_s + curve.per_seq_s * s
    return _result(np.broadcast_to(fixed, np.broadcast(f, b, s).shape), terms, f.copy(), b.copy(), s > 0)


def elementwise_time(hw: _Hardware, *, hbm_bytes: ArrayLike, kernels: ArrayLike = 1.0) -> ComputeCost:
    """``kernels`` memory-bound kernels moving ``hbm_bytes`` in all (read and written)."""
    b = _arr(hbm_bytes)
    count = _arr(kernels)
    curve = hw.kernel_curve("elementwise", "any")
    terms = {"memory": b / (hw.hbm_bw * curve.memory_eff)}
    fixed = np.broadcast_to(curve.fixed_s * count, np.broadcast(b, count).shape)
    return _result(fixed, terms, np.zeros_like(b), b.copy(), (b > 0) & (count > 0))
