"""Measured kernel databases as a timing source of the replay (``--timing measured|auto``).

A :class:`MeasuredTiming` answers the layer pricer's questions ("what does this GEMM, this rank's
routed experts, this attention core cost?") from a :class:`~tracekit.cost.measured.MeasuredTable`:
NaN where the table does not cover the shape, so the pricer falls back to the analytic curves
there. Where it comes from (:func:`resolve_timing`):

- ``--measured FILE``: a measured table written by ``tracekit bench`` (or ``bench import-aiconfigurator``);
- ``--measured aiconfigurator[:SYSTEM[/FRAMEWORK]]``: AIConfigurator's installed databases (the
  ``aiconfigurator`` extra); without SYSTEM, the preset's system from ``data/measured_systems.toml``.

Timing modes: ``analytic`` (the curves only), ``measured`` (a table is required: the run fails with
a one-line error when none is available), ``auto`` (measured when a table is available for the
preset, else analytic).

How each kernel is looked up (families of ``schemas/measured/v1/families.json``):

- dense GEMMs: ``gemm`` at (m, n, k); FP8 tries DeepGEMM's block-scaled tables (``fp8_block``)
  before per-tensor ``fp8``; FP4 ``nvfp4``;
- a rank's routed experts: ``grouped_gemm`` (gate-up GEMM, SwiGLU, down GEMM in one measurement)
  at the rank's active experts and their mean tokens, so imbalance between the experts of one rank
  is priced at the mean; the measurement replaces the two grouped GEMMs and the activation kernel;
- the attention core: ``mla_decode`` / ``gqa_decode`` at the rank's sequences and their mean KV
  length, ``mla_prefill`` / ``gqa_prefill`` at the mean prompt length of sequences without cached
  context (chunked prefill and sliding-window layers are priced analytically);
- the tensor-parallel all-reduce: ``all_reduce`` at (GPUs, message bytes).

Measured times are used as measured: a preset's ``[scale]`` multipliers apply to the analytic part
only. Small memory-bound kernels, launch gaps, dispatch and combine are always analytic (the
databases' all-to-all rows assume balanced routing; the replay's come from real routing).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from tracekit.cost.kernels import GroupedRows
from tracekit.errors import UsageError, param
from tracekit.precision import canonical

__all__ = [
    "TIMING_MODES",
    "MeasuredTiming",
    "aiconfigurator_system",
    "resolve_timing",
]

#: How a replay prices kernels.
TIMING_MODES = ("analytic", "measured", "auto")
SYSTEMS_FILE = Path(__file__).resolve().parent / "data" / "measured_systems.toml"
_AIC = "aiconfigurator"

#: Deployment formats -> measured-table dtypes to try, in order.
_GEMM_DTYPES: dict[str, tuple[str, ...]] = {
    "bf16": ("bf16",),
    "fp8": ("fp8_block", "fp8"),
    "nvfp4": ("nvfp4",),
    "fp4": ("nvfp4",),
    "mxfp4": ("w4a16_mxfp4",),
}
_KV_DTYPES: dict[str, tuple[str, ...]] = {"bf16": ("bf16",), "fp8": ("fp8",)}


@cache
def _systems() -> tuple[dict[str, Any], ...]:
    return tuple(tomllib.loads(SYSTEMS_FILE.read_text(encoding="utf-8"))["system"])


def aiconfigurator_system(gpu: str) -> tuple[str, str] | None:
    """(AIConfigurator system, framework) measured for a preset's ``gpu``, or None."""
    for row in _systems():
        if gpu.startswith(str(row["gpu_prefix"])):
            return str(row["aiconfigurator"]), str(row["framework"])
    return None


@cache
def _aiconfigurator_table(system: str, framework: str) -> Any:
    from tracekit.cost.measured import MeasuredTable

    return MeasuredTable.from_aiconfigurator(system=system, framework=framework)


@cache
def _file_table(path: str, mtime_ns: int) -> Any:
    from tracekit.cost.measured import MeasuredTable

    return MeasuredTable.load(path)


def _nan(shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape, np.nan)


@dataclass(frozen=True, kw_only=True, eq=False)
class MeasuredTiming:
    """Kernel times looked up in a measured table (NaN: not covered; see the module docstring)."""

    #: The table (a :class:`tracekit.cost.measured.MeasuredTable`).
    table: Any
    #: Where it came from, as results name it (``aiconfigurator h200_sxm/sglang``, a file path).
    label: str
    #: Families with rows in the table.
    families: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, table: Any, label: str) -> MeasuredTiming:
        return cls(table=table, label=label, families=frozenset(table.families()))

    def _first(self, family: str, dtypes: tuple[str, ...], shape: tuple[int, ...], **keys: Any) -> np.ndarray:
        """The first dtype's time that covers each shape (NaN where none does)."""
        out = _nan(shape)
        if family not in self.families:
            return out
        for dt in dtypes:
            missing = ~np.isfinite(out)
            if not missing.any():
                break
            t = np.broadcast_to(self.table.time_s(family, dtype=dt, **keys), shape)
            out = np.where(missing, t, out)
        return out

    def gemm(self, m: np.ndarray, n: float, k: float, precision: str) -> np.ndarray:
        """Time of a dense GEMM ``[m, k] x [k, n]`` at each ``m``."""
        m = np.asarray(m, dtype=np.float64)
        dtypes = _GEMM_DTYPES.get(canonical(precision), ())
        return self._first("gemm", dtypes, m.shape, m=m, n=float(n), k=float(k))

    def experts(
        self, tokens_per_slot: np.ndarray | GroupedRows, hidden: int, ffn: float, precision: str
    ) -> np.ndarray:
        """[...]: a rank's routed-expert FFN from ``tokens_per_slot[..., S]`` (or their summary)."""
        g = tokens_per_slot if isinstance(tokens_per_slot, GroupedRows) else GroupedRows.of(tokens_per_slot)
        active, rows = g.active, g.rows
        per = np.divide(rows, active, out=np.zeros_like(rows), where=active > 0)
        dtypes = _GEMM_DTYPES.get(canonical(precision), ())
        return self._first(
            "grouped_gemm",
            dtypes,
            rows.shape,
            hidden_size=float(hidden),
            ffn_size=float(ffn),
            num_experts=active,
            tokens_per_expert=per,
        )

    def attention(
        self,
        family: str,
        arch: Any,
        *,
        new_tokens: np.ndarray,
        context_tokens: np.ndarray,
        tp: int,
        kv_precision: str,
        core_precision: str,
        window: int | None,
    ) -> np.ndarray:
        """[...] the attention core of the sequences ``new_tokens[..., P]`` / ``context_tokens[..., P]``."""
        q = np.asarray(new_tokens, dtype=np.float64)
        c = np.asarray(context_tokens, dtype=np.float64)
        live = q > 0
        seqs = live.sum(axis=-1).astype(np.float64)
        shape = seqs.shape
        if window is not None or family not in self.families:
            return _nan(shape)
        a = arch.attention
        heads = a.num_heads / tp
        if family.endswith("decode"):
            keys = np.where(live, q + c, 0.0).sum(axis=-1)
            kv_len = np.divide(keys, seqs, out=np.zeros(shape), where=seqs > 0)
            dtypes = _KV_DTYPES.get(canonical(kv_precision), ())
            length = {"kv_len": kv_len}
        else:
            fresh = ~(live & (c > 0)).any(axis=-1)  # no cached context: what the tables measured
            seq_len = np.divide(q.sum(axis=-1), seqs, out=np.zeros(shape), where=seqs > 0)
            seq_len = np.where(fresh, seq_len, np.nan)
            dtypes = _KV_DTYPES.get(canonical(core_precision), ())
            length = {"seq_len": seq_len}
        if family.startswith("mla"):
            dims: dict[str, Any] = {
                "kv_lora_rank": float(a.kv_lora_rank or 0),
                "qk_rope_head_dim": float(a.qk_rope_head_dim or 0),
            }
            if family == "mla_prefill":
                dims = {
                    "qk_nope_head_dim": float(a.qk_nope_head_dim or 0),
                    "qk_rope_head_dim": float(a.qk_rope_head_dim or 0),
                    "v_head_dim": float(a.v_head_dim or 0),
                }
        else:
            dims = {"head_dim": float(a.head_dim), "num_kv_heads": max(1.0, a.num_kv_heads / tp)}
        return self._first(family, dtypes, shape, num_heads=heads, batch_size=seqs, **dims, **length)

    def all_reduce(self, nbytes: np.ndarray, ranks: int) -> np.ndarray:
        """Time of a bf16 all-reduce of ``nbytes`` over ``ranks`` GPUs."""
        b = np.asarray(nbytes, dtype=np.float64)
        return self._first("all_reduce", ("bf16", "fp16"), b.shape, num_gpus=float(ranks), message_bytes=b)


def _parse_aiconfigurator(spec: str, gpu: str, hw_name: str) -> tuple[str, str]:
    rest = spec[len(_AIC) :].lstrip(":")
    if not rest:
        found = aiconfigurator_system(gpu)
        if found is None:
            raise UsageError(
                f"{param('measured')} {spec}: AIConfigurator has no database for {hw_name} ({gpu or 'GPU unknown'}); "
                f"name one, e.g. {param('measured')} aiconfigurator:h100_sxm/sglang"
            )
        return found
    system, _, framework = rest.partition("/")
    return system, framework or "sglang"


def resolve_timing(mode: str, measured: str | None, *, gpu: str, hw_name: str) -> MeasuredTiming | None:
    """The measured source of a replay under timing ``mode`` (None: price analytically).

    ``measured``: a measured-table file, ``aiconfigurator[:SYSTEM[/FRAMEWORK]]``, or None (the
    preset's AIConfigurator database). ``measured`` mode refuses to run without a table; ``auto``
    falls back to the analytic model when no table is available for the preset.
    """
    if mode not in TIMING_MODES:
        raise UsageError(f"{param('timing')} {mode!r}: valid: {', '.join(TIMING_MODES)}")
    if mode == "analytic":
        if measured is not None:
            raise UsageError(
                f"{param('measured')} {measured} is only used with {param('timing')} measured or auto; add one"
            )
        return None
    spec = measured
    if spec is None:
        found = aiconfigurator_system(gpu)
        if found is None:
            if mode == "auto":
                return None
            raise UsageError(
                f"{param('timing')} measured: no measured database is known for {hw_name} ({gpu or 'GPU unknown'}); "
                f"give one with {param('measured')} FILE or {param('measured')} aiconfigurator:SYSTEM/FRAMEWORK"
            )
        spec = f"{_AIC}:{found[0]}/{found[1]}"
    if spec == _AIC or spec.startswith(_AIC + ":"):
        system, framework = _parse_aiconfigurator(spec, gpu, hw_name)
        if mode == "auto":
            import importlib.util

            if importlib.util.find_spec("aiconfigurator_core") is None:
                return None
        table = _aiconfigurator_table(system, framework)
        return MeasuredTiming.of(table, f"aiconfigurator {system}/{framework}")
    path = Path(spec)
    if not path.is_file():
        raise UsageError(
            f"{param('measured')} {spec}: no such file; give a measured table (tracekit bench) or "
            "aiconfigurator[:SYSTEM/FRAMEWORK]"
        )
    return MeasuredTiming.of(_file_table(str(path.resolve()), os.stat(path).st_mtime_ns), str(path))
