"""Gather per-step column chunks on the host and hand them to the trace writer in batches.

Converting columns to Arrow has a fixed cost per call; a step of a decode run holds few rows, so
the collector appends every ``max_steps`` steps (or sooner, once ``max_rows`` rows wait) instead of
four times per step. Memory stays bounded by those two limits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Columns = dict[str, Any]


class ColumnBatcher:
    """Per-table lists of column dicts; ``drain`` concatenates runs of chunks with the same columns."""

    def __init__(
        self, sink: Callable[[str, Columns], None], *, max_steps: int = 32, max_rows: int = 262_144
    ) -> None:
        self._sink = sink
        self._chunks: dict[str, list[Columns]] = {}
        self._steps = 0
        self._rows = 0
        self.max_steps = max_steps
        self.max_rows = max_rows

    def add(self, table: str, columns: Columns, rows: int) -> None:
        self._chunks.setdefault(table, []).append(columns)
        self._rows += rows

    def end_step(self) -> None:
        """Count a finished step; drains when a limit is reached."""
        self._steps += 1
        if self._steps >= self.max_steps or self._rows >= self.max_rows:
            self.drain()

    def drain(self) -> None:
        """Hand everything gathered to the sink, in order, table by table."""
        chunks, self._chunks = self._chunks, {}
        self._steps = self._rows = 0
        for table, parts in chunks.items():
            run: list[Columns] = []
            for part in parts:
                if run and part.keys() != run[0].keys():
                    self._sink(table, _concat(run))
                    run = []
                run.append(part)
            if run:
                self._sink(table, _concat(run))


def _concat(parts: list[Columns]) -> Columns:
    if len(parts) == 1:
        return parts[0]
    out: Columns = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if isinstance(values[0], np.ndarray):
            out[key] = np.concatenate(values)
        else:
            out[key] = [v for chunk in values for v in chunk]
    return out
