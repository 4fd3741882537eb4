"""Expert loads for placement: from a trace (per step) or from a load-statistics file (per layer).

A trace gives ``StepLoads`` (tokens per step, layer and logical expert, summed over source ranks),
read with DuckDB from its ``expert_load`` table (or, when a source recorded none, counted from
``routing``). A loads file (CSV or Parquet, what SGLang or vLLM load statistics give) has one row per
layer and one column per logical expert, plus an optional integer ``layer`` column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tracekit.errors import InputFormatError, TraceError, UsageError

if TYPE_CHECKING:
    from tracekit.backends import Backend


@dataclass(frozen=True, kw_only=True, eq=False)
class StepLoads:
    """Tokens per step, MoE layer and logical expert."""

    #: int64 [T]: step ids, ascending.
    steps: np.ndarray
    #: Decoder layer ids of the MoE layers, ascending.
    layers: tuple[int, ...]
    #: float64 [T, len(layers), num_experts].
    loads: np.ndarray

    @property
    def num_experts(self) -> int:
        return int(self.loads.shape[2])

    def window(self, first_step: int, end_step: int | None = None) -> StepLoads:
        """Steps with ``first_step <= step < end_step``."""
        sel = self.steps >= first_step
        if end_step is not None:
            sel &= self.steps < end_step
        return StepLoads(steps=self.steps[sel], layers=self.layers, loads=self.loads[sel])

    def total(self) -> np.ndarray:
        """float64 [layers, experts]: loads summed over the steps."""
        return self.loads.sum(axis=0)


def trace_loads(path: str | os.PathLike[str], *, backend: Backend | None = None) -> StepLoads:
    """Per-step expert loads of a trace (a directory or a URI); ``backend``: where they are counted."""
    from tracekit.trace import open_trace
    from tracekit.trace.loads import expert_loads, load_table

    trace = open_trace(path)
    num_experts = trace.manifest.model.num_experts
    if load_table(trace) is None:
        raise TraceError(
            f"{path}: the trace has neither expert_load nor routing rows; placement needs expert loads "
            "(record or import a trace with routing, or use --loads FILE)"
        )
    got = expert_loads(trace, backend=backend)
    step, layer, expert, n = (got.column(c).to_numpy() for c in ("step", "layer", "expert", "n"))
    if step.size == 0:
        raise TraceError(
            f"{path}: no expert loads in the trace; placement needs at least one step of routing"
        )
    expert = expert.astype(np.int64)
    if expert.min() < 0 or expert.max() >= num_experts:
        raise TraceError(
            f"{path}: expert ids {int(expert.min())}..{int(expert.max())} outside the manifest's "
            f"0..{num_experts - 1}; the trace is inconsistent (run tracekit validate)"
        )
    steps = np.unique(step.astype(np.int64))
    layers = np.unique(layer.astype(np.int64))
    loads = np.zeros((steps.size, layers.size, num_experts), dtype=np.float64)
    np.add.at(
        loads, (np.searchsorted(steps, step), np.searchsorted(layers, layer), expert), n.astype(np.float64)
    )
    return StepLoads(steps=steps, layers=tuple(int(x) for x in layers), loads=loads)


def read_loads_file(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.ndarray]:
    """(layer ids, float64 loads [layers, experts]) from a CSV or Parquet file."""
    import polars as pl

    src = Path(path)
    if not src.is_file():
        raise UsageError(f"{src}: no such loads file; give a CSV or Parquet file, one row per layer")
    try:
        if src.suffix.lower() in (".parquet", ".pq"):
            df = pl.read_parquet(src)
        else:
            df = pl.read_csv(src, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputFormatError(f"{src}: cannot read loads ({exc}); give a CSV or Parquet file") from None
    if df.height == 0:
        raise InputFormatError(f"{src}: no rows; give one row per layer and one column per expert")
    layer_ids: tuple[int, ...]
    if "layer" in df.columns:
        layer_ids = tuple(int(x) for x in df.get_column("layer").to_list())
        df = df.drop("layer")
    else:
        layer_ids = tuple(range(df.height))
    bad = [c for c, t in df.schema.items() if not t.is_numeric()]
    if bad:
        raise InputFormatError(
            f"{src}: column(s) {', '.join(bad[:5])} are not numeric; every column but an optional "
            "'layer' must hold one expert's load"
        )
    if df.width == 0:
        raise InputFormatError(f"{src}: no expert columns")
    arr = df.to_numpy().astype(np.float64)
    if not np.isfinite(arr).all() or arr.min() < 0:
        raise InputFormatError(
            f"{src}: loads must be finite, non-negative numbers (found empty or negative cells)"
        )
    if len(set(layer_ids)) != len(layer_ids):
        raise InputFormatError(f"{src}: the layer column repeats a layer")
    return layer_ids, arr
