"""A DuckDB catalog over traces and result directories: one view per table, Parquet read in place.

An *input* is either a trace directory (``manifest.json``; its tables become views through
:meth:`tracekit.trace.Trace.register`) or a result directory (``result.json`` from ``tracekit replay``
or ``sweep``, or any folder of Parquet files; each ``*.parquet`` file becomes a view named by its stem,
e.g. ``replay_steps``).

Every input ``NAME`` gets its own prefixed views (``NAME_routing``, ``NAME_replay_steps``). The
unprefixed view (``routing``) is the ``UNION ALL BY NAME`` of that table over every input that has it,
with a first column ``input`` holding the input's name. A view ``inputs`` lists the inputs (name,
position on the command line, kind, path, model, hardware of a replay, experts, top-k, EP size,
result.json). Nothing is copied: views read the Parquet files where they are, by absolute path, so
a database file written with ``database=`` opens in any DuckDB client.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tracekit.errors import UsageError, first_line
from tracekit.trace import open_trace, store
from tracekit.trace.duck import parquet_view
from tracekit.trace.layout import MANIFEST
from tracekit.trace.store import Location

#: File written by ``tracekit replay/sweep --out`` that marks a result directory.
RESULT_JSON = "result.json"
#: Names of the views the catalog makes itself (not tables of any input).
INPUTS_VIEW = "inputs"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, kw_only=True)
class CatalogInput:
    """One trace or result directory in a catalog."""

    #: Name used as view prefix (``NAME_table``) and as the value of the ``input`` column.
    name: str
    #: Absolute path of the directory (or Parquet file), or its URI (``s3://...``).
    path: Location
    #: ``trace`` for a trace; else the ``kind`` of result.json (``replay``, ``sweep``, ...), or
    #: ``parquet`` for a folder of Parquet files without result.json.
    kind: str
    #: Unprefixed table names this input provides, sorted.
    tables: tuple[str, ...]
    #: Facts for the ``inputs`` view: model name, experts, top-k, layers, EP size, source, trace id.
    facts: tuple[tuple[str, Any], ...] = ()

    def view(self, table: str) -> str:
        """Name of this input's own view of ``table``."""
        return f"{self.name}_{table}"


@dataclass(frozen=True, kw_only=True)
class ViewInfo:
    """One view of a catalog and its columns."""

    name: str
    #: ``(column, duckdb type)`` in order.
    columns: tuple[tuple[str, str], ...]
    #: Inputs the view reads.
    inputs: tuple[str, ...]


def _default_name(path: Location) -> str:
    stem = path.name[: -len(".parquet")] if path.name.endswith(".parquet") else path.name
    name = re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_").lower() or "input"
    return name if _NAME.match(name) else f"t_{name}"


def split_input(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain PATH -> (None, PATH)."""
    if store.is_uri(spec):
        return None, spec
    if "=" in spec and not Path(spec).exists():
        name, _, path = spec.partition("=")
        if not _NAME.match(name):
            raise UsageError(
                f"input name {name!r} (in {spec!r}) is not a valid view prefix; "
                "use letters, digits and underscores, not starting with a digit"
            )
        return name, path
    return None, spec


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _read_result_json(path: Location) -> dict[str, Any]:
    try:
        raw = json.loads((path / RESULT_JSON).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(
            f"{path / RESULT_JSON}: cannot be read as JSON ({exc}); the result is damaged"
        ) from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path / RESULT_JSON}: expected a JSON object; the result is damaged")
    return raw


def _describe(spec: str, name: str | None, path: Location) -> CatalogInput:
    """Classify ``path`` and list its tables (nothing is registered yet)."""
    if not path.exists():
        raise UsageError(f"{spec}: no such file or directory; give a trace or result directory")
    name = name or _default_name(path)
    apath = path.resolve()
    if path.is_dir() and (path / MANIFEST).is_file():
        trace = open_trace(path)
        m = trace.manifest
        facts: tuple[tuple[str, Any], ...] = (
            ("model", m.model.name),
            ("source", m.source),
            ("trace_id", m.trace_id),
            ("num_experts", m.model.num_experts),
            ("top_k", m.model.top_k),
            ("num_layers", m.model.num_layers),
            ("ep_size", m.parallel.ep_size),
            ("world_size", m.parallel.world_size),
        )
        from tracekit.schema.tables import TABLE_NAMES

        return CatalogInput(
            name=name, path=apath, kind="trace", tables=tuple(sorted(TABLE_NAMES)), facts=facts
        )
    if path.is_file() and path.suffix == ".parquet":
        return CatalogInput(name=name, path=apath, kind="parquet", tables=(_default_name(path),))
    if path.is_dir():
        parquet: list[Location] = sorted(  # type: ignore[type-var]
            p for p in store.children(path) if p.name.endswith(".parquet") and not p.name.startswith(".")
        )
        parquet = [p for p in parquet if p.is_file()]
        has_result = (path / RESULT_JSON).is_file()
        _refuse_partial(spec, path, parquet, has_result)
        if not parquet and not has_result:
            raise UsageError(
                f"{spec}: neither a trace ({MANIFEST}) nor a result directory ({RESULT_JSON} or *.parquet); "
                "give a directory written by tracekit record/import/synth or replay/sweep --out"
            )
        kind = "parquet"
        facts = ()
        if has_result:
            raw = _read_result_json(path)
            kind = str(raw.get("kind") or "result")
            found = raw.get("deployment")
            deployment: dict[str, Any] = found if isinstance(found, dict) else {}
            model = raw.get("model") or deployment.get("model")
            if isinstance(model, dict):
                model = model.get("name")
            hw = deployment.get("hw")
            facts = (
                ("model", model if isinstance(model, str) else None),
                ("hw", hw if isinstance(hw, str) else None),
                ("result_json", json.dumps(raw)),
            )
        tables = []
        for p in parquet:
            table = p.name[: -len(".parquet")]
            if not _NAME.match(table):
                raise UsageError(
                    f"{p}: the file name is not a valid view name; rename it "
                    "(letters, digits and underscores)"
                )
            tables.append(table)
        return CatalogInput(name=name, path=apath, kind=kind, tables=tuple(tables), facts=facts)
    raise UsageError(f"{spec}: not a directory or a .parquet file; give a trace or result directory")


#: Parquet files a tracekit writer puts next to its commit marker (written last): marker -> file prefixes.
_MARKED = {
    RESULT_JSON: ("replay_", "sweep_", "compare"),
    "stats.json": ("stats_",),
}


def _refuse_partial(spec: str, path: Location, parquet: list[Location], has_result: bool) -> None:
    """A folder of a tracekit writer's tables without its marker file is partial (killed mid-write)."""
    for marker, prefixes in _MARKED.items():
        if (path / marker).is_file():
            continue
        own = [p for p in parquet if p.name.startswith(prefixes)]
        if own:
            raise UsageError(
                f"{spec}: partial output: {own[0].name} is there but not {marker}, which its writer "
                "writes last (it was killed or is still running); write it again"
            )


def describe_inputs(specs: Sequence[str | os.PathLike[str]]) -> list[CatalogInput]:
    """Turn command-line inputs (``PATH`` or ``NAME=PATH``) into :class:`CatalogInput` values.

    Default names are the directory names made into identifiers (``my-trace`` -> ``my_trace``); a
    name used twice gets a numeric suffix (``out``, ``out_2``).
    """
    result: list[CatalogInput] = []
    used: set[str] = set()
    for raw in specs:
        spec = os.fspath(raw)
        name, path = split_input(spec)
        explicit = name is not None
        inp = _describe(spec, name, store.location(path))
        if inp.name.lower() in used:  # DuckDB names are case-insensitive
            if explicit:
                raise UsageError(f"input name {inp.name!r} is given twice; give each input its own NAME=PATH")
            n = 2
            while f"{inp.name}_{n}".lower() in used:
                n += 1
            inp = CatalogInput(
                name=f"{inp.name}_{n}", path=inp.path, kind=inp.kind, tables=inp.tables, facts=inp.facts
            )
        used.add(inp.name.lower())
        result.append(inp)
    return result


class Catalog:
    """Views over a set of inputs, registered on a DuckDB connection."""

    def __init__(self, inputs: Sequence[CatalogInput]) -> None:
        if not inputs:
            raise UsageError("no inputs given; give at least one trace or result directory")
        self.inputs = tuple(inputs)
        own = {inp.view(t).lower(): inp.name for inp in self.inputs for t in inp.tables}
        shared = {t.lower() for inp in self.inputs for t in inp.tables} | {INPUTS_VIEW}
        clash = sorted(set(own) & shared)
        if clash:
            raise UsageError(
                f"view name {clash[0]!r} would be both input {own[clash[0]]!r}'s own view and a shared view; "
                "give the inputs other names with NAME=PATH"
            )

    @classmethod
    def from_paths(cls, specs: Sequence[str | os.PathLike[str]]) -> Catalog:
        return cls(describe_inputs(specs))

    @property
    def tables(self) -> list[str]:
        """Unprefixed view names (one per table any input has), sorted."""
        return sorted({t for inp in self.inputs for t in inp.tables})

    def has(self, table: str) -> bool:
        return any(table in inp.tables for inp in self.inputs)

    def inputs_with(self, table: str) -> list[CatalogInput]:
        return [inp for inp in self.inputs if table in inp.tables]

    # -- registering ----------------------------------------------------------------------------
    def register(self, con: duckdb.DuckDBPyConnection, *, persistent: bool = False) -> list[str]:
        """Create every view on ``con``; returns their names (shared views first). ``persistent``:
        the views are kept in a database file (remote inputs then need DuckDB's own reader)."""
        own: list[str] = []
        for inp in self.inputs:
            own += self._register_input(con, inp, persistent)
        shared = [INPUTS_VIEW]
        con.execute(f'CREATE OR REPLACE VIEW "{INPUTS_VIEW}" AS {self._inputs_sql()}')
        for table in self.tables:
            con.execute(f'CREATE OR REPLACE VIEW "{table}" AS {self._union_sql(table)}')
            shared.append(table)
        return shared + own

    def _register_input(
        self, con: duckdb.DuckDBPyConnection, inp: CatalogInput, persistent: bool
    ) -> list[str]:
        if inp.kind == "trace":
            return open_trace(inp.path).register(con, prefix=f"{inp.name}_", persistent=persistent)
        names = []
        for table in inp.tables:
            file = inp.path if inp.path.is_file() else inp.path / f"{table}.parquet"
            parquet_view(con, inp.view(table), [file], persistent=persistent)
            names.append(inp.view(table))
        return names

    def _union_sql(self, table: str) -> str:
        # DuckDB reads Parquet fixed-size lists as lists, so traces with different top-k unify.
        parts = [
            f'SELECT {_sql_str(inp.name)} AS input, * FROM "{inp.view(table)}"'
            for inp in self.inputs_with(table)
        ]
        return " UNION ALL BY NAME ".join(parts)

    def _inputs_sql(self) -> str:
        keys = [
            "model",
            "hw",
            "source",
            "trace_id",
            "num_experts",
            "top_k",
            "num_layers",
            "ep_size",
            "world_size",
            "result_json",
        ]
        types = {
            "num_experts": "INTEGER",
            "top_k": "INTEGER",
            "num_layers": "INTEGER",
            "ep_size": "INTEGER",
            "world_size": "INTEGER",
        }
        rows = []
        for position, inp in enumerate(self.inputs, start=1):
            facts = dict(inp.facts)
            vals = [_sql_str(inp.name), str(position), _sql_str(inp.kind), _sql_str(str(inp.path))]
            for k in keys:
                v = facts.get(k)
                typ = types.get(k, "VARCHAR")
                vals.append(f"CAST({'NULL' if v is None else _sql_str(str(v))} AS {typ})")
            rows.append("(" + ", ".join(vals) + ")")
        cols = ", ".join(["input", "position", "kind", "path", *keys])
        return f"SELECT * FROM (VALUES {', '.join(rows)}) AS t({cols})"

    # -- connections ----------------------------------------------------------------------------
    def connect(
        self,
        database: str | os.PathLike[str] = ":memory:",
        *,
        memory_limit: str | None = None,
        threads: int | None = None,
        storage_version: str | None = None,
    ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with every view registered.

        ``memory_limit`` (e.g. ``"2GB"``) bounds DuckDB's memory; large aggregations then spill to
        a temporary directory instead of growing. ``storage_version`` (e.g. ``"v1.5.0"``) writes a new
        database file in that storage format, for older DuckDB releases to open.
        """
        config: dict[str, Any] = {}
        if storage_version:
            config["storage_compatibility_version"] = storage_version
        if memory_limit:
            try:
                duckdb.connect(config={"memory_limit": memory_limit}).close()
            except duckdb.Error as exc:
                raise UsageError(
                    f"--memory-limit {memory_limit!r}: {first_line(exc)}; give a size such as 2GB or 500MB"
                ) from None
            config["memory_limit"] = memory_limit
        if threads:
            config["threads"] = threads
        try:
            con = duckdb.connect(os.fspath(database), config=config)
        except duckdb.Error as exc:
            raise UsageError(
                f"cannot open DuckDB database {os.fspath(database)!r}: {first_line(exc)}"
            ) from None
        try:
            self.register(con, persistent=os.fspath(database) != ":memory:")
        except UsageError:
            con.close()
            raise
        except duckdb.Error as exc:
            con.close()
            raise UsageError(
                f"cannot create the views: {first_line(exc)}; check that the inputs are readable"
            ) from None
        return con

    def views(self, con: duckdb.DuckDBPyConnection) -> list[ViewInfo]:
        """Every view with its columns: shared views first, then each input's own, each sorted."""
        result = [
            ViewInfo(
                name=INPUTS_VIEW,
                columns=tuple(_columns(con, INPUTS_VIEW)),
                inputs=tuple(i.name for i in self.inputs),
            )
        ]
        for table in self.tables:
            result.append(
                ViewInfo(
                    name=table,
                    columns=tuple(_columns(con, table)),
                    inputs=tuple(i.name for i in self.inputs_with(table)),
                )
            )
        for inp in self.inputs:
            for table in inp.tables:
                result.append(
                    ViewInfo(
                        name=inp.view(table),
                        columns=tuple(_columns(con, inp.view(table))),
                        inputs=(inp.name,),
                    )
                )
        return result


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> list[tuple[str, str]]:
    rows = con.execute(f'DESCRIBE "{view}"').fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def connect(
    inputs: Iterable[str | os.PathLike[str]],
    database: str | os.PathLike[str] = ":memory:",
    *,
    memory_limit: str | None = None,
    threads: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB connection with views over ``inputs`` (paths or ``NAME=PATH``)."""
    return Catalog.from_paths(list(inputs)).connect(database, memory_limit=memory_limit, threads=threads)
