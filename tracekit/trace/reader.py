"""Open a trace lazily: polars LazyFrames and DuckDB views over its Parquet part files."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from tracekit.errors import NotATraceError, SchemaError, TraceWarning, UsageError
from tracekit.schema.manifest import Manifest
from tracekit.schema.tables import TABLE_NAMES, table_spec
from tracekit.trace import layout, store
from tracekit.trace.store import Location, RemotePath


@dataclass(frozen=True, kw_only=True)
class ShardStatus:
    """What one writer (rank) said about its shard."""

    rank: int
    complete: bool
    rows: dict[str, int]
    error: str | None = None
    #: Part files written per table (None in statuses that do not say).
    parts: dict[str, int] = field(default_factory=dict)
    #: Trace id of the writer's run (None in statuses that do not say).
    trace_id: str | None = None


#: Traces whose part files total at most this are validated in full (data included) when opened;
#: larger ones get the checks of statuses and footers, which need no decoding.
FULL_CHECK_BYTES = 32 * 1024**2
#: Largest manifest or status file read (they are a few kB; anything bigger is not one).
MAX_JSON_BYTES = 64 * 1024 * 1024


def read_json(path: Location, what: str) -> Any:
    """A small JSON file; damage (bad JSON, too deep, too big, unreadable) is a one-line SchemaError."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise SchemaError(
                f"{path}: {size} bytes, too big for a {what} (at most {MAX_JSON_BYTES}); it is damaged"
            )
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"{path}: not valid JSON ({exc}); the {what} is damaged") from None
    except RecursionError:
        raise SchemaError(f"{path}: not valid JSON (nested too deeply); the {what} is damaged") from None
    except OSError as exc:
        raise SchemaError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None


def _counts(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    out = {}
    for k, v in raw.items():
        if k not in TABLE_NAMES or not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise TypeError(f"bad count {k!r}: {v!r}")
        out[k] = v
    return out


def parse_status(p: Location, raw: Any) -> ShardStatus:
    """A shard status from its JSON, with every field's JSON type checked (``"false"`` is not a bool)."""
    if not isinstance(raw, dict):
        raise SchemaError(f"{p}: damaged shard status file (not a JSON object); re-record the trace")
    rank, complete = raw.get("rank"), raw.get("complete")
    problem = None
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        problem = f"rank {rank!r} is not a rank number"
    elif p.name != f"rank-{rank:05d}.json":
        problem = f"says rank {rank}, its file name another"
    elif not isinstance(complete, bool):
        problem = f"complete is {complete!r}, not true or false"
    elif not isinstance(raw.get("trace_id", ""), str):
        problem = "trace_id is not a string"
    elif raw.get("error") is not None and not isinstance(raw.get("error"), str):
        problem = "error is not a string"
    if problem is None:
        try:
            rows = _counts(raw.get("rows", {}))
            parts = _counts(raw.get("parts", {}))
        except TypeError as exc:
            problem = f"rows or parts are not counts per table ({exc})"
    if problem is not None:
        raise SchemaError(f"{p}: damaged shard status file ({problem}); re-record the trace")
    assert isinstance(rank, int) and isinstance(complete, bool)
    return ShardStatus(
        rank=rank,
        complete=complete,
        rows=rows,
        parts=parts,
        error=raw.get("error"),
        trace_id=raw.get("trace_id"),
    )


class Trace:
    """A trace directory, opened lazily. Nothing is read but the manifest and shard status files.

    With ``warn`` (the default) the trace is checked once per process and state of its files: in
    full (:func:`tracekit.trace.validate`) up to ``FULL_CHECK_BYTES`` of part files, else its
    statuses and Parquet footers (:func:`tracekit.trace.health.quick_check`); anything incomplete or
    invalid becomes one :class:`~tracekit.errors.TraceWarning`.
    """

    def __init__(self, path: str | os.PathLike[str] | RemotePath, *, warn: bool = True) -> None:
        #: A local path, or a :class:`~tracekit.trace.store.RemotePath` (``s3://...``).
        self.path: Location = store.location(path)
        mpath = self.path / layout.MANIFEST
        if not self.path.exists():
            raise NotATraceError(f"{self.path}: no such file or directory; give a trace directory")
        if not self.path.is_dir() or not mpath.is_file():
            raise NotATraceError(
                f"{self.path}: not a tracekit trace (no {layout.MANIFEST}); "
                "give a directory written by tracekit record, import or synth"
            )
        raw = read_json(mpath, "manifest")
        self.manifest = Manifest.from_dict(raw, where=str(mpath))
        self.shards = self._read_shards()
        self._sound: set[Location] = set()
        if warn:
            self._warn()

    def _read_shards(self) -> dict[int, ShardStatus]:
        shards: dict[int, ShardStatus] = {}
        folder = self.path / layout.SHARDS
        names = sorted(store.listdir(folder)) if self.remote or folder.is_dir() else []
        for name in names:
            if not (name.startswith("rank-") and name.endswith(".json")):
                continue
            p = folder / name
            status = parse_status(p, read_json(p, "shard status file"))
            shards[status.rank] = status
        return shards

    def _warn(self) -> None:
        from tracekit.trace.health import quick_check, summary_line

        key = _signature(self.path)
        if key not in _CHECKED:
            size = sum(p.stat().st_size for t in TABLE_NAMES for p in self.files(t, check=False))
            if size <= FULL_CHECK_BYTES:  # small: every check validate makes, data included
                from tracekit.trace.validate import validate

                problems = list(validate(self.path).problems)
            else:
                problems, _ = quick_check(self)
            _CHECKED[key] = summary_line(self.path, problems) if problems else ""
        if _CHECKED[key]:
            warnings.warn(TraceWarning(_CHECKED[key]), stacklevel=3)

    # -- what is there --------------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        """True when the trace lives on a remote filesystem (``s3://...``)."""
        return isinstance(self.path, RemotePath)

    @property
    def complete(self) -> bool:
        """True when every rank's writer closed its shard (and at least one did)."""
        return bool(self.shards) and all(s.complete for s in self.shards.values())

    @property
    def ranks(self) -> list[int]:
        return sorted(self.shards)

    def files(self, table: str, *, check: bool = True) -> list[Location]:
        """Whole part files of ``table`` (temporary files of a killed writer are left out).

        With ``check`` (the default) each file's Parquet head and footer magic is checked once, so a
        truncated or overwritten part is reported by name here instead of failing deep inside a
        query; ``tracekit validate`` passes ``check=False`` to list every problem instead.
        """
        table_spec(table)
        folder = self.path / table
        try:
            entries = store.children(folder) if self.remote or folder.is_dir() else []
        except OSError as exc:
            raise SchemaError(f"{folder}: cannot be listed ({exc.strerror}); check its permissions") from None
        found: list[Location] = sorted(  # type: ignore[type-var]
            e for e in entries if e.name.endswith(".parquet") and not e.name.startswith(".")
        )
        if check:
            for f in found:
                if f not in self._sound:
                    _check_part(f, self.path)
                    self._sound.add(f)
        return found

    def has(self, table: str) -> bool:
        return bool(self.files(table))

    @property
    def tables(self) -> list[str]:
        return [t for t in TABLE_NAMES if self.has(t)]

    def arrow_schema(self, table: str) -> pa.Schema:
        spec = table_spec(table)
        return spec.arrow_schema(self.manifest.model.top_k if spec.needs_top_k else None)

    def size_bytes(self, table: str | None = None) -> int:
        if table is not None:
            return sum(p.stat().st_size for p in self.files(table))
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    # -- reading --------------------------------------------------------------------------------
    def scan(self, table: str) -> pl.LazyFrame:
        """A polars LazyFrame over ``table``; empty (with the schema's columns) if it has no rows."""
        files = self.files(table)
        if not files:
            return pl.LazyFrame(pl.from_arrow(self.arrow_schema(table).empty_table()))
        if self.remote:
            return pl.scan_pyarrow_dataset(self.dataset(table))
        return pl.scan_parquet([str(f) for f in files], glob=False)

    def dataset(self, table: str) -> Any:
        """A ``pyarrow.dataset.Dataset`` over the table's part files (local or remote)."""
        import pyarrow.dataset as ds

        paths, fs = store.dataset_paths(self.files(table))
        return ds.dataset(paths, filesystem=fs, format="parquet", schema=self.arrow_schema(table))

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """Read a (small) table whole into Arrow; prefer ``scan`` or ``duckdb`` for large ones."""
        files = self.files(table)
        if not files:
            schema = self.arrow_schema(table)
            t = schema.empty_table()
            return t.select(columns) if columns else t
        return pa.concat_tables(
            [store.read_table(f, columns=columns) for f in files], promote_options="default"
        )

    def view_sql(self, table: str) -> str:
        """A SELECT over the table's Parquet files, for a DuckDB view (typed even when empty)."""
        files = self.files(table)
        if not files:
            cols = ", ".join(
                f"CAST(NULL AS {duckdb_type(f.type)}) AS {f.name}" for f in self.arrow_schema(table)
            )
            return f"SELECT {cols} WHERE false"
        return f"SELECT * FROM read_parquet({parquet_list(files)}, union_by_name = true)"

    def register(
        self,
        con: duckdb.DuckDBPyConnection,
        prefix: str = "",
        *,
        all_tables: bool = True,
        persistent: bool = False,
    ) -> list[str]:
        """Create one view per table on ``con`` (``prefix + table``); returns the view names.

        A remote trace's views read its files through DuckDB's httpfs extension when it is installed
        (S3), else through Arrow datasets registered on ``con`` (then the views live only as long as
        the connection; ``persistent``, views kept in a database file, refuses that)."""
        from tracekit.trace.duck import needs_httpfs, remote_reader

        arrow = self.remote and not remote_reader(con, self.path)
        if arrow and persistent:
            raise needs_httpfs(self.path)
        names = []
        for table in TABLE_NAMES:
            if not all_tables and not self.has(table):
                continue
            name = f"{prefix}{table}"
            if arrow and self.has(table):
                hidden = f"__tracekit_arrow_{name}"
                con.register(hidden, self.dataset(table))
                con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "{hidden}"')
            else:
                con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {self.view_sql(table)}')
            names.append(name)
        return names

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with a view per table."""
        con = duckdb.connect()
        self.register(con)
        return con

    def summary(self) -> dict[str, Any]:
        """Facts for ``tracekit info``, from metadata and cheap aggregate queries."""
        from tracekit.trace.summary import summarize

        return summarize(self)

    def __repr__(self) -> str:
        return f"Trace({str(self.path)!r}, model={self.manifest.model.name!r}, tables={self.tables})"


_MAGIC = b"PAR1"


def _check_part(part: Location, trace_path: Location) -> None:
    """Raise SchemaError naming ``part`` unless it starts and ends with the Parquet magic bytes."""
    try:
        size = part.stat().st_size
        with part.open("rb") as fh:
            head = fh.read(4)
            fh.seek(max(size - 4, 0))
            tail = fh.read(4)
    except OSError as exc:
        raise SchemaError(
            f"{part}: cannot be read ({exc.strerror}); check its permissions or re-record the trace"
        ) from None
    if size < 12 or head != _MAGIC or tail != _MAGIC:
        raise SchemaError(
            f"{part}: not a readable Parquet file (truncated or corrupted); run tracekit validate "
            f"{trace_path} to list every damaged part, then delete it or re-record the trace"
        )


def open_trace(path: str | os.PathLike[str] | RemotePath, *, warn: bool = True) -> Trace:
    """Open a trace lazily: a directory, or a URI such as ``s3://bucket/trace`` (``warn``: a
    TraceWarning when it is incomplete or invalid)."""
    return Trace(path, warn=warn)


#: Quick checks already made in this process: signature of the trace's files -> warning ("" if none).
_CHECKED: dict[tuple[Any, ...], str] = {}


def _signature(path: Location) -> tuple[Any, ...]:
    """Changes whenever a file of the trace is added, removed, renamed or rewritten in place."""
    if isinstance(path, RemotePath):  # one listing of every object below the trace
        return (str(path), *sorted((p.path, p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob()))
    sig: list[Any] = [str(path.resolve())]
    for sub in ("", layout.SHARDS, *TABLE_NAMES):
        p = path / sub
        try:
            st = p.stat()
            sig.append((sub, st.st_mtime_ns, st.st_ino))
            if sub:
                for n in sorted(os.listdir(p)):
                    q = (p / n).stat()
                    sig.append((n, q.st_mtime_ns, q.st_size, q.st_ino))
        except OSError:
            sig.append((sub, None))
    return tuple(sig)


#: Characters DuckDB's file reader treats as a pattern (each is matched literally inside [...]).
_GLOB_CHARS = "*?["


def literal_path(path: str | os.PathLike[str] | RemotePath) -> str:
    """``path`` as a pattern that DuckDB's Parquet reader matches literally (glob characters in
    brackets), so a folder named ``a[1]`` or ``star*`` never reads its neighbours."""
    text = str(path) if isinstance(path, RemotePath) else os.fspath(Path(path).resolve())
    if "\\" in text and any(c in text for c in _GLOB_CHARS):
        raise UsageError(
            f"{text}: the path holds both a backslash and one of {_GLOB_CHARS}, which DuckDB cannot read "
            "literally; rename the folder"
        )
    return "".join(f"[{c}]" if c in _GLOB_CHARS else c for c in text)


def parquet_list(files: list[Location]) -> str:
    """A DuckDB list literal of Parquet files, each matched literally."""
    return "[" + ", ".join("'" + literal_path(f).replace("'", "''") + "'" for f in files) + "]"


_DUCK = {
    pa.bool_(): "BOOLEAN",
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float16(): "FLOAT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
}


def duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(t):
        return f"{duckdb_type(t.value_type)}[{t.list_size}]"
    if pa.types.is_list(t):
        return f"{duckdb_type(t.value_type)}[]"
    return _DUCK[t]
