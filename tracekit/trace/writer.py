"""Streaming trace writer: bounded memory, one Parquet part file per flush, one shard per rank.

Rows are buffered per table and flushed as a part file once ``rows_per_part`` rows are buffered, so
memory stays bounded for runs of any length. Each part is written under a hidden temporary name and
renamed when whole; a writer killed mid-run therefore leaves every part it finished readable, and its
shard status file still says ``complete: false`` so ``validate`` reports the trace as incomplete.
With ``background=True`` the Parquet encoding and disk writes happen on a writer thread behind a small
bounded queue, off the caller's (model's) thread.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.errors import CollectorError, OutputBusyError, SchemaError, UsageError
from tracekit.schema.manifest import Manifest
from tracekit.schema.tables import TABLE_NAMES, TableSpec, table_spec
from tracekit.trace import layout, outputs, store
from tracekit.trace.convert import to_arrow
from tracekit.trace.store import Location, RemotePath

#: Default rows per part file. Routing rows are ~40 bytes at top-8, so 1M rows is ~40 MB buffered.
DEFAULT_ROWS_PER_PART: Mapping[str, int] = {
    "routing": 1_000_000,
    "tokens": 1_000_000,
    "expert_load": 1_000_000,
    "kernels": 500_000,
}
FALLBACK_ROWS_PER_PART = 100_000


def _write_json_atomic(path: Location, obj: Any) -> None:
    """Write JSON through a temporary sibling and a rename; the folder ``path`` sits in is created
    only inside an existing trace root (a writer whose staging copy was dropped writes nothing).
    On an object store the file is put in one request, which is atomic there."""
    if isinstance(path, RemotePath):
        path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        return
    if not path.parent.is_dir():
        if not path.parent.parent.is_dir():
            return
        path.parent.mkdir(exist_ok=True)
    tmp = layout.tmp_path(path)
    with open(tmp, "w") as fh:
        fh.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _is_trace(path: Location) -> bool:
    return (path / layout.MANIFEST).exists()


class TraceWriter:
    """Writes one rank's shard of a trace.

    Use as a context manager. Rank 0 writes ``manifest.json``; every rank passes the same manifest
    (the schema needs its ``top_k``). ``append(table, data)`` takes a dict of columns (numpy arrays,
    lists; 2-D arrays for the fixed-size list columns), an Arrow table or a polars DataFrame; a
    ``rank`` column is filled in when absent.

    ``path`` may be a URI (``s3://bucket/trace``): then every part file and status is put whole in
    one upload (an object appears only when complete, so a killed writer leaves whole parts only),
    and there is no lock (object stores have none): ``overwrite`` deletes an existing trace there first.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        manifest: Manifest,
        *,
        rank: int = 0,
        rows_per_part: int | Mapping[str, int] | None = None,
        background: bool = False,
        overwrite: bool = False,
        compression: str = "zstd",
    ) -> None:
        self.path: Location = store.location(path)
        self.manifest = manifest
        self.rank = rank
        self._compression = compression
        self._rows_per_part = dict(DEFAULT_ROWS_PER_PART)
        if isinstance(rows_per_part, int):
            self._rows_per_part = {t: rows_per_part for t in TABLE_NAMES}
        elif rows_per_part is not None:
            self._rows_per_part.update(rows_per_part)
        self._buffers: dict[str, list[pa.Table]] = {}
        self._buffered_rows: dict[str, int] = {}
        self._parts: dict[str, int] = {}
        self._rows: dict[str, int] = {}
        self._schemas: dict[str, tuple[TableSpec, pa.Schema]] = {}
        self._closed = False
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[Location, pa.Table] | None] | None = None
        self._thread: threading.Thread | None = None
        #: Where the files go: ``path`` itself, or a staging sibling while an existing trace is replaced.
        self.root: Location = self.path
        self._output: outputs.Output | None = None
        self._prepare(overwrite)
        if background:
            self._queue = queue.Queue(maxsize=4)
            self._thread = threading.Thread(target=self._drain, name=f"tracekit-writer-{rank}", daemon=True)
            self._thread.start()

    # -- set-up ---------------------------------------------------------------------------------
    def _prepare(self, overwrite: bool) -> None:
        if isinstance(self.path, RemotePath):
            self._prepare_remote(self.path, overwrite)
            return
        holder = outputs.current_holder(self.path)
        if holder is not None:
            joins = holder.token == os.environ.get(outputs.TOKEN_ENV) or (
                holder.pid == os.getpid() and holder.rank is not None and holder.rank != self.rank
            )
            if not joins:
                raise OutputBusyError(
                    f"--out {self.path}: {holder.describe()} is writing it now; wait for it to finish "
                    "or choose another --out"
                )
            self.root = Path(holder.target)
            assert isinstance(self.path, Path)  # a rank of the same run: write where its rank 0 writes
            layout.make_output_dir(self.root)
            if self.rank == 0:
                _write_json_atomic(self.root / layout.MANIFEST, self.manifest.to_dict())
        elif self.rank == 0:
            self._output = outputs.Output(
                self.path,
                kind="dir",
                force=overwrite,
                what="trace",
                is_ours=_is_trace,
                stage_new=False,
                rank=0,
            ).open()
            self.root = self._output.target
            try:
                _write_json_atomic(self.root / layout.MANIFEST, self.manifest.to_dict())
            except BaseException:
                self._output.close(ok=False)
                raise
        else:
            if self.path.exists() and not self.path.is_dir():
                raise UsageError(f"{self.path}: exists and is not a directory; choose another --out")
            layout.make_output_dir(self.path)
        self._started_at = time.time()
        self._write_status(complete=False)

    def _prepare_remote(self, path: RemotePath, overwrite: bool) -> None:
        """An object-store prefix: rank 0 refuses (or, with ``overwrite``, deletes) what is there."""
        if self.rank == 0:
            store.check_remote_output(path, force=overwrite, what="trace", is_ours=_is_trace)
            if overwrite:
                path.remove_tree()
            _write_json_atomic(path / layout.MANIFEST, self.manifest.to_dict())
        self._started_at = time.time()
        self._write_status(complete=False)

    def _write_status(self, *, complete: bool, error: str | None = None) -> None:
        status: dict[str, Any] = {
            "rank": self.rank,
            "trace_id": self.manifest.trace_id,
            "complete": complete,
            "rows": dict(self._rows),
            "parts": dict(self._parts),
            "started_at": self._started_at,
            "closed_at": time.time() if complete or error else None,
        }
        if error:
            status["error"] = error
        _write_json_atomic(layout.shard_status_path(self.root, self.rank), status)

    def _schema(self, table: str) -> tuple[TableSpec, pa.Schema]:
        if table not in self._schemas:
            spec = table_spec(table)
            top_k = self.manifest.model.top_k if spec.needs_top_k else None
            self._schemas[table] = (spec, spec.arrow_schema(top_k))
        return self._schemas[table]

    # -- writing --------------------------------------------------------------------------------
    def append(self, table: str, data: Any) -> None:
        """Buffer rows for ``table``; flushes a part file when enough rows are buffered."""
        if self._closed:
            raise UsageError(f"{self.path}: trace writer is closed; open a new one to write more")
        self._raise_background_error()
        spec, schema = self._schema(table)
        defaults = {"rank": self.rank} if "rank" in schema.names else {}
        chunk = to_arrow(spec, data, schema, defaults=defaults)
        if chunk.num_rows == 0:
            return
        self._buffers.setdefault(table, []).append(chunk)
        self._buffered_rows[table] = self._buffered_rows.get(table, 0) + chunk.num_rows
        if self._buffered_rows[table] >= self._rows_per_part.get(table, FALLBACK_ROWS_PER_PART):
            self.flush(table)

    def flush(self, table: str | None = None) -> None:
        """Write the buffered rows of one table (or all tables) as part files."""
        for name in [table] if table else list(self._buffers):
            chunks = self._buffers.pop(name, [])
            self._buffered_rows.pop(name, None)
            if not chunks:
                continue
            data = pa.concat_tables(chunks)
            index = self._parts.get(name, 0)
            self._parts[name] = index + 1
            self._rows[name] = self._rows.get(name, 0) + data.num_rows
            final = layout.part_path(self.root, name, self.rank, index)
            if self._queue is not None:
                self._raise_background_error()
                self._queue.put((final, data))
            else:
                self._write_part(final, data)

    def _write_part(self, final: Location, data: pa.Table) -> None:
        if isinstance(final, RemotePath):  # encoded in memory, then one upload: whole or absent
            store.write_parquet(
                data,
                final,
                compression=self._compression,
                row_group_size=max(1, data.num_rows),
                write_page_checksum=True,
            )
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = layout.tmp_path(final)
        pq.write_table(
            data,
            tmp,
            compression=self._compression,
            row_group_size=max(1, data.num_rows),
            write_page_checksum=True,  # readers that verify them catch damage inside the file
        )
        os.replace(tmp, final)

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._write_part(*item)
                except BaseException as exc:  # surfaced on the caller's thread
                    self._error = exc

    def _raise_background_error(self) -> None:
        if self._error is not None:
            if isinstance(self._error, OSError):
                raise outputs.os_error(self._error, f"{self.path}: writing a part file failed") from None
            raise CollectorError(f"{self.path}: writing a part file failed: {self._error}")

    # -- closing --------------------------------------------------------------------------------
    def close(self, error: str | None = None) -> None:
        """Flush everything and mark the shard complete (or failed, with ``error``)."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                self.flush()
            finally:
                if self._queue is not None and self._thread is not None:
                    self._queue.put(None)
                    self._thread.join()
            self._raise_background_error()
        except BaseException as exc:
            self._finish(error=error or f"{type(exc).__name__}: {exc}")
            raise
        self._finish(error=error)

    def _finish(self, error: str | None) -> None:
        """Write the shard status; rank 0 then commits (or drops) a staged replacement and unlocks."""
        try:
            self._write_status(complete=error is None, error=error)
        except BaseException:
            if self._output is not None:
                self._output.close(ok=False)
            raise
        if self._output is not None:
            self._output.close(ok=error is None)

    def update_manifest(self, manifest: Manifest) -> None:
        """Rewrite the manifest (rank 0 only), for facts known only at the end of a run."""
        if self.rank != 0:
            raise UsageError("only rank 0 writes the manifest")
        if manifest.model.top_k != self.manifest.model.top_k:
            raise SchemaError("the manifest's top_k cannot change after rows are written")
        self.manifest = manifest
        _write_json_atomic(self.root / layout.MANIFEST, manifest.to_dict())

    @property
    def rows_written(self) -> dict[str, int]:
        return dict(self._rows)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.close(error=f"{exc_type.__name__ if exc_type else 'error'}: {exc}")
