"""Shared helpers of the collector tests: read a recorded trace back as numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl


@dataclass(frozen=True, kw_only=True)
class TraceArrays:
    steps: pl.DataFrame
    tokens: pl.DataFrame
    routing: pl.DataFrame
    expert_load: pl.DataFrame
    requests: pl.DataFrame | None

    def routing_of(self, step: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
        r = self.routing.filter((pl.col("step") == step) & (pl.col("layer") == layer)).sort("token_index")
        ids = np.stack(r["expert_ids"].to_list()).astype(np.int64) if r.height else np.zeros((0, 0), np.int64)
        w = np.stack(r["gate_weights"].to_list()).astype(np.float64) if r.height else np.zeros((0, 0))
        return ids, w


def read_trace(path: Path) -> TraceArrays:
    from tracekit import open_trace

    t = open_trace(path)
    return TraceArrays(
        steps=t.scan("steps").collect().sort("step"),
        tokens=t.scan("tokens").collect().sort("step", "token_index"),
        routing=t.scan("routing").collect(),
        expert_load=t.scan("expert_load").collect(),
        requests=t.scan("requests").collect().sort("request_id") if t.has("requests") else None,
    )
