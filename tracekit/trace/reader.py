"""Open a trace lazily: polars LazyFrames and DuckDB views over its Parquet part files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from tracekit.errors import NotATraceError, SchemaError
from tracekit.schema.manifest import Manifest
from tracekit.schema.tables import TABLE_NAMES, table_spec
from tracekit.trace import layout


@dataclass(frozen=True, kw_only=True)
class ShardStatus:
    """What one writer (rank) said about its shard."""

    rank: int
    complete: bool
    rows: dict[str, int]
    error: str | None = None


class Trace:
    """A trace directory, opened lazily. Nothing is read but the manifest and shard status files."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        mpath = self.path / layout.MANIFEST
        if not self.path.exists():
            raise NotATraceError(f"{self.path}: no such file or directory; give a trace directory")
        if not self.path.is_dir() or not mpath.is_file():
            raise NotATraceError(
                f"{self.path}: not a tracekit trace (no {layout.MANIFEST}); "
                "give a directory written by tracekit record, import or synth"
            )
        try:
            raw = json.loads(mpath.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SchemaError(f"{mpath}: not valid JSON ({exc}); the manifest is damaged") from None
        self.manifest = Manifest.from_dict(raw, where=str(mpath))
        self.shards = self._read_shards()
        self._sound: set[Path] = set()

    def _read_shards(self) -> dict[int, ShardStatus]:
        shards: dict[int, ShardStatus] = {}
        for p in sorted((self.path / layout.SHARDS).glob("rank-*.json")):
            try:
                raw = json.loads(p.read_text())
                shards[int(raw["rank"])] = ShardStatus(
                    rank=int(raw["rank"]),
                    complete=bool(raw["complete"]),
                    rows={str(k): int(v) for k, v in raw.get("rows", {}).items()},
                    error=raw.get("error"),
                )
            except (ValueError, KeyError, TypeError, json.JSONDecodeError):
                raise SchemaError(f"{p}: damaged shard status file") from None
        return shards

    # -- what is there --------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """True when every rank's writer closed its shard (and at least one did)."""
        return bool(self.shards) and all(s.complete for s in self.shards.values())

    @property
    def ranks(self) -> list[int]:
        return sorted(self.shards)

    def files(self, table: str, *, check: bool = True) -> list[Path]:
        """Whole part files of ``table`` (temporary files of a killed writer are left out).

        With ``check`` (the default) each file's Parquet head and footer magic is checked once, so a
        truncated or overwritten part is reported by name here instead of failing deep inside a
        query; ``tracekit validate`` passes ``check=False`` to list every problem instead.
        """
        table_spec(table)
        found = sorted((self.path / table).glob(layout.PART_GLOB))
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
        return pl.scan_parquet([str(f) for f in files])

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """Read a (small) table whole into Arrow; prefer ``scan`` or ``duckdb`` for large ones."""
        import pyarrow.parquet as pq

        files = self.files(table)
        if not files:
            schema = self.arrow_schema(table)
            t = schema.empty_table()
            return t.select(columns) if columns else t
        return pa.concat_tables([pq.read_table(f, columns=columns) for f in files], promote_options="default")

    def view_sql(self, table: str) -> str:
        """A SELECT over the table's Parquet files, for a DuckDB view (typed even when empty)."""
        files = self.files(table)
        if not files:
            cols = ", ".join(
                f"CAST(NULL AS {duckdb_type(f.type)}) AS {f.name}" for f in self.arrow_schema(table)
            )
            return f"SELECT {cols} WHERE false"
        glob = str((self.path / table).resolve() / layout.PART_GLOB).replace("'", "''")
        return f"SELECT * FROM read_parquet('{glob}', union_by_name = true)"

    def register(
        self, con: duckdb.DuckDBPyConnection, prefix: str = "", *, all_tables: bool = True
    ) -> list[str]:
        """Create one view per table on ``con`` (``prefix + table``); returns the view names."""
        names = []
        for table in TABLE_NAMES:
            if not all_tables and not self.has(table):
                continue
            name = f"{prefix}{table}"
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


def _check_part(part: Path, trace_path: Path) -> None:
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


def open_trace(path: str | os.PathLike[str]) -> Trace:
    """Open a trace directory lazily."""
    return Trace(path)


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
