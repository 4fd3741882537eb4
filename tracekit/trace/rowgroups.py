"""Row groups of a table's part files, read in bounded batches with prefetching.

A reader lists every row group of a table with the (min, max) of chosen integer columns from the
Parquet statistics, selects the row groups whose range column (``step``) overlaps given ranges, and
decodes them batch by batch, verifying page checksums. :meth:`RowGroupReader.prefetch` decodes row
groups on a background thread for later :meth:`RowGroupReader.read` calls, and the last few row
groups read are kept, so a row group needed by two consecutive readers' windows is decoded once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.errors import TraceError, first_line
from tracekit.trace.store import parquet_file

#: Known (min, max) of integer columns of a row group, by column name (from Parquet statistics).
Bounds = dict[str, tuple[int, int]]
#: A row group: (file, index in the file).
RowGroup = tuple[str, int]


def min_max(a: np.ndarray) -> tuple[int, int]:
    """(min, max) of an integer array; (0, -1) when it is empty."""
    return (int(a.min()), int(a.max())) if a.size else (0, -1)


@dataclass(frozen=True, kw_only=True, eq=False)
class RowGroupReader:
    """The row groups of ``files`` (part files of table ``table``), decoded as ``columns``."""

    files: tuple[str, ...]
    #: Table name, for messages.
    table: str
    #: Columns decoded by :meth:`read`.
    columns: tuple[str, ...]
    #: Columns whose statistics :attr:`bounds` keeps (integer columns; a list column's element).
    stat_columns: tuple[str, ...]
    #: Column whose ranges select row groups (:meth:`row_groups_in`).
    range_column: str = "step"
    #: Rows per decoded batch.
    batch_rows: int = 32_768
    #: Row groups kept after :meth:`read` (besides those being prefetched).
    keep: int = 4
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _recent: dict[RowGroup, list[pa.RecordBatch]] = field(default_factory=dict, init=False, repr=False)
    #: Row groups handed to a prefetch thread, not yet taken by :meth:`read` (under the lock).
    _pending: dict[RowGroup, Future[list[pa.RecordBatch]]] = field(
        default_factory=dict, init=False, repr=False
    )
    #: Footers read by :attr:`bounds`, reused when decoding (a remote file's footer is a request).
    _footers: dict[str, pq.FileMetaData] = field(default_factory=dict, init=False, repr=False)

    @cached_property
    def bounds(self) -> dict[RowGroup, Bounds]:
        """(min, max) of the statistics columns of every row group (a column without statistics is
        left out: the caller scans it instead)."""
        wanted = set(self.stat_columns)
        out: dict[RowGroup, Bounds] = {}
        for f in self.files:
            md = parquet_file(f).metadata
            self._footers[f] = md
            # leaf columns by top-level name (a list column has one leaf, its element)
            leaves: dict[str, int | None] = {}
            for col in range(md.num_columns):
                name = md.schema.column(col).path.split(".")[0]
                if name in wanted:
                    leaves[name] = None if name in leaves else col  # more than one leaf: no bounds
            for i in range(md.num_row_groups):
                rg = md.row_group(i)
                b: Bounds = {}
                for name, leaf in leaves.items():
                    st = rg.column(leaf).statistics if leaf is not None else None
                    if st is not None and st.has_min_max:
                        b[name] = (int(st.min), int(st.max))
                out[(f, i)] = b
        return out

    @cached_property
    def row_groups(self) -> list[tuple[str, int, int, int]]:
        """Every row group: (file, index, min, max of the range column; unbounded without statistics)."""
        return [(f, i, *b.get(self.range_column, (-(2**31), 2**31))) for (f, i), b in self.bounds.items()]

    def row_groups_in(self, ranges: Sequence[tuple[int, int]]) -> list[RowGroup]:
        """The row groups whose range column overlaps one of the inclusive ``ranges`` (the caller
        drops the rows outside them)."""
        return [(f, i) for f, i, lo, hi in self.row_groups if any(lo <= b and hi >= a for a, b in ranges)]

    def _decode(self, item: RowGroup) -> list[pa.RecordBatch]:
        # decoded batch by batch: no whole-row-group columns to concatenate
        try:
            pf = parquet_file(item[0], page_checksum_verification=True, metadata=self._footers.get(item[0]))
            batches = pf.iter_batches(
                batch_size=self.batch_rows,
                row_groups=[item[1]],
                columns=list(self.columns),
                use_threads=False,
            )
            return list(batches)
        except (pa.ArrowException, OSError) as exc:
            raise TraceError(
                f"{item[0]}: {self.table} row group {item[1]} cannot be decoded ({first_line(exc)}); the "
                "file is damaged: run tracekit validate on the trace, then re-record it or remove the part"
            ) from None

    def read(self, item: RowGroup) -> list[pa.RecordBatch]:
        """The columns of one row group, in batches of at most ``batch_rows`` rows.

        A row group being prefetched is waited for; one queued for prefetch but not started is taken
        back and decoded here."""
        with self._lock:
            hit = self._recent.get(item)
            fut = self._pending.pop(item, None) if hit is None else None
            # not started yet: cancel it (the prefetch thread then skips it) and decode here
            wait = fut is not None and not fut.cancel()
        if hit is not None:
            return hit
        batches = fut.result() if wait and fut is not None else self._decode(item)
        with self._lock:
            self._recent[item] = batches
            while len(self._recent) > self.keep:
                self._recent.pop(next(iter(self._recent)))
        return batches

    def prefetch(self, items: Sequence[RowGroup]) -> None:
        """Decode ``items`` on a background thread, in order, for later :meth:`read` calls."""
        todo: list[tuple[RowGroup, Future[list[pa.RecordBatch]]]] = []
        with self._lock:
            for item in items:
                if item not in self._recent and item not in self._pending:
                    fut: Future[list[pa.RecordBatch]] = Future()
                    self._pending[item] = fut
                    todo.append((item, fut))
        if not todo:
            return

        def run() -> None:
            for item, fut in todo:
                with self._lock:  # read() cancels a future it takes back before this starts it
                    if not fut.set_running_or_notify_cancel():
                        continue
                try:
                    fut.set_result(self._decode(item))
                except BaseException as exc:  # handed to the read() that waits for it
                    fut.set_exception(exc)

        threading.Thread(target=run, name=f"tracekit-{self.table}-prefetch", daemon=True).start()
