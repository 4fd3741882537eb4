"""The versioned table schemas, loaded from the data files under ``schemas/``.

The schema files are the single source of truth: one JSON file per table, each column with its Arrow
type, nullability, unit and meaning. The wheel ships them as ``tracekit/_schemas``; a source checkout
reads them from the repository's ``schemas/`` folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow as pa

from tracekit.errors import SchemaError, SchemaVersionError, UnknownNameError

SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = 1
#: Key under which the schema version is stamped into every Parquet file's metadata.
META_VERSION_KEY = b"tracekit.schema_version"
#: Key under which the table name is stamped into every Parquet file's metadata.
META_TABLE_KEY = b"tracekit.table"

_SCALARS: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
}
_LIST = re.compile(r"^list<(\w+)>$")
_FIXED = re.compile(r"^fixed_size_list<(\w+)>\[top_k\]$")


def schema_root() -> Path:
    """Folder holding ``v1/`` and later versions of the schema files."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_schemas", here.parent / "schemas"):
        if (candidate / f"v{SCHEMA_MAJOR}").is_dir():
            return candidate
    raise SchemaError(
        f"tracekit's schema files are missing (looked in {here / '_schemas'}); reinstall tracekit"
    )


@dataclass(frozen=True, kw_only=True)
class ColumnSpec:
    """One column of a table, as the schema file declares it."""

    name: str
    #: Type string from the schema file, e.g. ``int16`` or ``fixed_size_list<int16>[top_k]``.
    type: str
    nullable: bool
    #: Unit of the values (``ns``, ``bytes``, ``tokens``), or None for ids and labels.
    unit: str | None
    description: str

    def arrow_type(self, top_k: int | None = None) -> pa.DataType:
        """The Arrow type; fixed-size lists need the trace's ``top_k``."""
        if self.type in _SCALARS:
            return _SCALARS[self.type]
        if m := _LIST.match(self.type):
            return pa.list_(_SCALARS[m.group(1)])
        if m := _FIXED.match(self.type):
            if top_k is None or top_k < 1:
                raise SchemaError(f"column {self.name} needs the trace's top_k (got {top_k})")
            return pa.list_(_SCALARS[m.group(1)], top_k)
        raise SchemaError(f"schema file declares an unknown type {self.type!r} for {self.name}")


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    """One table of the trace format."""

    name: str
    version: str
    description: str
    columns: tuple[ColumnSpec, ...]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise UnknownNameError(f"column of table {self.name}", name, self.column_names)

    def arrow_schema(self, top_k: int | None = None) -> pa.Schema:
        """The Arrow schema, with the version and table name stamped into its metadata."""
        fields = [pa.field(c.name, c.arrow_type(top_k), nullable=c.nullable) for c in self.columns]
        return pa.schema(fields, metadata=stamp(self.name))

    @property
    def needs_top_k(self) -> bool:
        return any(_FIXED.match(c.type) for c in self.columns)


def type_name(t: pa.DataType) -> str:
    """A type in the schema files' notation (``int16``, ``list<int64>``, ``fixed_size_list<int16>[8]``)."""
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{type_name(t.value_type)}>[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{type_name(t.value_type)}>"
    for name, scalar in _SCALARS.items():
        if t == scalar:
            return name
    return str(t)


def same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Type equality that ignores the names of list item fields (writers differ: item, element)."""
    if pa.types.is_fixed_size_list(a) or pa.types.is_fixed_size_list(b):
        return (
            pa.types.is_fixed_size_list(a)
            and pa.types.is_fixed_size_list(b)
            and a.list_size == b.list_size
            and same_type(a.value_type, b.value_type)
        )
    if pa.types.is_list(a) or pa.types.is_list(b):
        return pa.types.is_list(a) and pa.types.is_list(b) and same_type(a.value_type, b.value_type)
    return a == b


def stamp(table: str) -> dict[bytes, bytes]:
    """Parquet key-value metadata every tracekit file carries."""
    return {META_VERSION_KEY: SCHEMA_VERSION.encode(), META_TABLE_KEY: table.encode()}


def check_version(version: str, where: str) -> None:
    """Refuse a schema version whose major number this tracekit does not know."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise SchemaVersionError(
            f"{where}: unreadable schema version {version!r} (expected MAJOR.MINOR such as "
            f"{SCHEMA_VERSION}); the file is damaged or not written by tracekit, re-record the trace"
        ) from None
    if major > SCHEMA_MAJOR:
        raise SchemaVersionError(
            f"{where}: written with trace schema {version}, newer than this tracekit reads "
            f"({SCHEMA_VERSION}); upgrade tracekit"
        )
    if major < 1:
        raise SchemaVersionError(
            f"{where}: unknown schema version {version!r} (this tracekit reads {SCHEMA_VERSION}); "
            "the file is damaged or not written by tracekit, re-record the trace"
        )


def _load_specs(folder: Path) -> dict[str, TableSpec]:
    specs: dict[str, TableSpec] = {}
    for path in sorted(folder.glob("*.json")):
        if path.stem == "manifest":
            continue
        raw = json.loads(path.read_text())
        specs[raw["table"]] = TableSpec(
            name=raw["table"],
            version=raw["version"],
            description=raw["description"],
            columns=tuple(ColumnSpec(**c) for c in raw["columns"]),
        )
    return specs


@cache
def table_specs() -> dict[str, TableSpec]:
    """Every table of the current schema version, keyed by name, in the schema's order."""
    specs = _load_specs(schema_root() / f"v{SCHEMA_MAJOR}")
    order = ["steps", "tokens", "routing", "expert_load", "placement", "comm", "kernels", "requests"]
    return {n: specs[n] for n in sorted(specs, key=lambda n: (order.index(n) if n in order else 99, n))}


def table_spec(name: str) -> TableSpec:
    specs = table_specs()
    if name not in specs:
        raise UnknownNameError("trace table", name, specs)
    return specs[name]


@cache
def result_specs() -> dict[str, TableSpec]:
    """Every table a replay, compare or sweep writes into a result directory (``schemas/v1/results/``),
    keyed by name."""
    specs = _load_specs(schema_root() / f"v{SCHEMA_MAJOR}" / "results")
    order = [
        "replay_run",
        "replay_steps",
        "replay_layers",
        "replay_ranks",
        "replay_peers",
        "replay_summary",
        "compare",
        "sweep_points",
        "sweep_pareto",
    ]
    return {n: specs[n] for n in sorted(specs, key=lambda n: (order.index(n) if n in order else 99, n))}


def result_spec(name: str) -> TableSpec:
    specs = result_specs()
    if name not in specs:
        raise UnknownNameError("result table", name, specs)
    return specs[name]


TABLE_NAMES: tuple[str, ...] = (
    "steps",
    "tokens",
    "routing",
    "expert_load",
    "placement",
    "comm",
    "kernels",
    "requests",
)
