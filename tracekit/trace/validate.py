"""Check a trace against the schema: every problem becomes one line naming the file and the fix."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.errors import SchemaVersionError, TraceError, first_line
from tracekit.schema.tables import (
    META_TABLE_KEY,
    META_VERSION_KEY,
    TABLE_NAMES,
    check_version,
    same_type,
    table_spec,
    type_name,
)
from tracekit.trace import layout
from tracekit.trace.reader import Trace


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing wrong with a trace."""

    path: str
    message: str
    #: ``incomplete`` problems still leave a readable trace; ``invalid`` ones do not.
    kind: str = "invalid"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True, kw_only=True)
class ValidationResult:
    path: str
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def incomplete(self) -> bool:
        return any(p.kind == "incomplete" for p in self.problems)


def validate(path: str | os.PathLike[str]) -> ValidationResult:
    """Validate a trace directory. Raises only when ``path`` is not a trace at all."""
    root = Path(path)
    try:
        trace = Trace(root)
    except TraceError as exc:
        if "not a tracekit trace" in str(exc) or "no such file" in str(exc):
            raise
        return ValidationResult(path=str(root), problems=(Problem(path=str(root), message=str(exc)),))
    problems: list[Problem] = []
    problems += _check_shards(trace)
    for table in TABLE_NAMES:
        problems += _check_table(trace, table)
    return ValidationResult(path=str(root), problems=tuple(problems))


def _check_shards(trace: Trace) -> list[Problem]:
    out = []
    where = str(trace.path / layout.SHARDS)
    if not trace.shards:
        out.append(
            Problem(path=where, message="no shard status files: the writer never started", kind="incomplete")
        )
    for rank, s in sorted(trace.shards.items()):
        if s.complete:
            continue
        why = f" ({s.error})" if s.error else " (killed, crashed or still running)"
        out.append(
            Problem(
                path=str(layout.shard_status_path(trace.path, rank)),
                message=f"incomplete: rank {rank} did not close its shard{why}; "
                "rows up to its last whole part file are readable",
                kind="incomplete",
            )
        )
    expected = trace.manifest.parallel.world_size
    missing = sorted(set(range(expected)) - set(trace.shards))
    if trace.shards and missing:
        out.append(
            Problem(
                path=where,
                message=f"incomplete: ranks {missing} of world size {expected} wrote no shard",
                kind="incomplete",
            )
        )
    return out


def _check_table(trace: Trace, table: str) -> list[Problem]:
    out: list[Problem] = []
    folder = trace.path / table
    if not folder.is_dir():
        return out
    for tmp in sorted(folder.glob("." + layout.PART_GLOB + layout.TMP_SUFFIX)):
        out.append(
            Problem(
                path=str(tmp),
                message="incomplete: partial part file left by a writer that stopped mid-write; "
                "it is ignored when reading",
                kind="incomplete",
            )
        )
    spec = table_spec(table)
    expected = trace.arrow_schema(table)
    for f in trace.files(table, check=False):
        try:
            pf = pq.ParquetFile(f, page_checksum_verification=True)
        except (pa.ArrowException, OSError) as exc:
            out.append(
                Problem(
                    path=str(f),
                    message=f"not a readable Parquet file (truncated or corrupted: {first_line(exc)}); "
                    "delete it or re-record the trace",
                )
            )
            continue
        meta = pf.schema_arrow.metadata or {}
        version = meta.get(META_VERSION_KEY)
        if version is not None:
            try:
                check_version(version.decode(errors="replace"), str(f))
            except SchemaVersionError as exc:
                out.append(Problem(path=str(f), message=str(exc).split(": ", 1)[1]))
                continue
        stamped = meta.get(META_TABLE_KEY)
        if stamped is not None and stamped.decode(errors="replace") != table:
            out.append(
                Problem(
                    path=str(f),
                    message=f"holds table {stamped.decode(errors='replace')!r} but sits in {table}/; move it",
                )
            )
        actual = pf.schema_arrow
        required = []  # required columns of the right type: their nulls are counted below
        for fld in expected:
            idx = actual.get_field_index(fld.name)
            if idx < 0:
                if spec.column(fld.name).nullable:
                    continue
                out.append(
                    Problem(path=str(f), message=f"missing required column {fld.name!r} of table {table}")
                )
                continue
            got = actual.field(idx).type
            if not same_type(got, fld.type):
                out.append(
                    Problem(
                        path=str(f),
                        message=f"column {fld.name!r} has type {type_name(got)}, expected {type_name(fld.type)} (schema v1)",
                    )
                )
                continue
            if not fld.nullable:
                required.append(fld.name)
        try:
            nulls = _decode(pf, required)
        except (pa.ArrowException, OSError) as exc:
            out.append(
                Problem(
                    path=str(f),
                    message=f"damaged data inside the file ({first_line(exc)}); re-record the trace or "
                    "delete this part",
                )
            )
            continue
        out.extend(
            Problem(path=str(f), message=f"column {name!r} has {nulls[name]} null values but is required")
            for name in required
            if nulls[name]
        )
    return out


def _decode(pf: pq.ParquetFile, columns: list[str]) -> dict[str, int]:
    """Decode every page of the file (checking the page checksums a tracekit writer stores, so
    damage inside the file, which the footer cannot show, raises) and count the nulls of
    ``columns``."""
    nulls = dict.fromkeys(columns, 0)
    for batch in pf.iter_batches(batch_size=65_536, use_threads=False):
        for name in columns:
            nulls[name] += batch.column(name).null_count
    return nulls
