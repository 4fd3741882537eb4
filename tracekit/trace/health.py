"""What a trace's status files and Parquet footers say, checked without decoding any data.

Each writer (rank) records in ``_shards/rank-NNNNN.json`` whether it closed, the trace id of its run,
and the rows and part files it wrote per table. These checks compare that record with the files on
disk (parts present, row counts from the footers, tables present, ranks of the manifest's world),
and each footer with the schema (version, table, column types, top-k) and, where the writer stored
column statistics, with the manifest's ranges (expert ids, layers) and the order of steps from part
to part. Time and memory grow with the number of files, never with a declared number such as the
world size. ``tracekit validate`` adds the checks that decode the data; every reading command runs
these and warns in one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.errors import SchemaVersionError, first_line
from tracekit.schema.tables import (
    META_TABLE_KEY,
    META_VERSION_KEY,
    TABLE_NAMES,
    check_version,
    same_type,
    table_spec,
    type_name,
)
from tracekit.trace import layout, store
from tracekit.trace.store import Location

if TYPE_CHECKING:
    from tracekit.trace.reader import Trace

#: Part files a tracekit writer names: r<rank>-p<index>.parquet.
PART_NAME = re.compile(r"^r(\d{5,})-p(\d{6,})\.parquet$")
#: Missing ranks listed by number in a message; the rest are counted.
SHOWN = 5


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
class Footer:
    """What one part file's footer says (None fields: the footer could not be read)."""

    path: Location
    table: str
    #: Writer rank and part index from the file name; None when the name is not a writer's.
    rank: int | None
    index: int | None
    rows: int | None = None
    #: Set when the file is readable and its footer matches the schema (data may still be damaged).
    sound: bool = False
    #: (min, max) per checked column, from column statistics, where the writer stored them.
    ranges: tuple[tuple[str, int, int], ...] = ()
    #: Whether the first data page carries a CRC32 checksum (None: could not tell).
    page_checksums: bool | None = None


def missing_ranks(world_size: int, present: Iterable[int]) -> tuple[int, list[int]]:
    """How many of ranks 0..world_size-1 are absent from ``present``, and the first few of them;
    O(len(present)) whatever the world size."""
    have = sorted({r for r in present if 0 <= r < world_size})
    count = world_size - len(have)
    first: list[int] = []
    expect = 0
    for r in [*have, world_size]:
        while expect < r and len(first) < SHOWN:
            first.append(expect)
            expect += 1
        if len(first) >= SHOWN:
            break
        expect = r + 1
    return count, first


def shard_problems(trace: Trace) -> list[Problem]:
    """The writers' statuses against each other and the manifest."""
    out: list[Problem] = []
    where = str(trace.path / layout.SHARDS)
    if not trace.shards:
        out.append(
            Problem(path=where, message="no shard status files: the writer never started", kind="incomplete")
        )
    tid = trace.manifest.trace_id
    world = trace.manifest.parallel.world_size
    for rank, s in sorted(trace.shards.items()):
        spath = str(layout.shard_status_path(trace.path, rank))
        if s.trace_id is not None and s.trace_id != tid:
            out.append(
                Problem(
                    path=spath,
                    message=f"written by another run (trace id {s.trace_id}, the manifest's is {tid}); "
                    "the trace mixes two runs: re-record it into an empty --out",
                )
            )
        if rank >= world:
            out.append(
                Problem(
                    path=spath,
                    message=f"rank {rank} is outside the manifest's world size {world}; "
                    "the manifest or the shard is from another run",
                )
            )
        if not s.complete:
            why = f" ({s.error})" if s.error else " (killed, crashed or still running)"
            out.append(
                Problem(
                    path=spath,
                    message=f"incomplete: rank {rank} did not close its shard{why}; "
                    "rows up to its last whole part file are readable",
                    kind="incomplete",
                )
            )
    count, first = missing_ranks(world, trace.shards)
    if trace.shards and count:
        listed = ", ".join(map(str, first)) + (
            f" and {count - len(first)} more" if count > len(first) else ""
        )
        out.append(
            Problem(
                path=where,
                message=f"incomplete: {count} of the world size {world} ranks wrote no shard (ranks {listed})",
                kind="incomplete",
            )
        )
    return out


def read_footer(trace: Trace, table: str, f: Location) -> tuple[Footer, list[Problem]]:
    """Read one part file's footer and check it against the schema and the manifest."""
    m = PART_NAME.match(f.name)
    rank, index = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    probs: list[Problem] = []
    try:
        pf = store.parquet_file(f)
        meta = pf.metadata
        actual = pf.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as exc:
        probs.append(
            Problem(
                path=str(f),
                message=f"not a readable Parquet file (truncated or corrupted: {first_line(exc)}); "
                "delete it or re-record the trace",
            )
        )
        return Footer(path=f, table=table, rank=rank, index=index), probs
    kv = actual.metadata or {}
    version = kv.get(META_VERSION_KEY)
    if version is not None:
        try:
            check_version(version.decode(errors="replace"), str(f))
        except SchemaVersionError as exc:
            probs.append(Problem(path=str(f), message=str(exc).split(": ", 1)[1]))
            return Footer(path=f, table=table, rank=rank, index=index, rows=meta.num_rows), probs
    stamped = kv.get(META_TABLE_KEY)
    if stamped is not None and stamped.decode(errors="replace") != table:
        probs.append(
            Problem(
                path=str(f),
                message=f"holds table {stamped.decode(errors='replace')!r} but sits in {table}/; move it",
            )
        )
    spec = table_spec(table)
    for fld in trace.arrow_schema(table):
        idx = actual.get_field_index(fld.name)
        if idx < 0:
            if not spec.column(fld.name).nullable:
                probs.append(
                    Problem(path=str(f), message=f"missing required column {fld.name!r} of table {table}")
                )
            continue
        got = actual.field(idx).type
        if not same_type(got, fld.type):
            probs.append(
                Problem(
                    path=str(f),
                    message=f"column {fld.name!r} has type {type_name(got)}, expected {type_name(fld.type)} (schema v1)",
                )
            )
    ranges = _ranges(meta, table) if not probs else ()
    probs += _range_problems(trace, f, table, ranges)
    footer = Footer(
        path=f,
        table=table,
        rank=rank,
        index=index,
        rows=meta.num_rows,
        sound=not probs,
        ranges=ranges,
        page_checksums=_has_page_checksum(f, meta),
    )
    return footer, probs


#: Columns whose statistics are checked: table -> [(column path prefix, name in messages)].
_STAT_COLUMNS = {
    "routing": [("expert_ids.", "expert_ids"), ("layer", "layer"), ("step", "step")],
    "expert_load": [("expert", "expert"), ("layer", "layer"), ("step", "step")],
    "placement": [("expert", "expert"), ("layer", "layer")],
    "steps": [("step", "step")],
    "tokens": [("step", "step")],
}


def _ranges(meta: pq.FileMetaData, table: str) -> tuple[tuple[str, int, int], ...]:
    wanted = _STAT_COLUMNS.get(table)
    if not wanted or meta.num_row_groups == 0:
        return ()
    schema = meta.schema
    cols: dict[str, int] = {}
    for i in range(meta.num_columns):
        p = schema.column(i).path
        for prefix, name in wanted:
            if (p.startswith(prefix) if prefix.endswith(".") else p == prefix) and name not in cols:
                cols[name] = i
    out = []
    for name, i in cols.items():
        lo = hi = None
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(i).statistics
            if st is None or not st.has_min_max:
                lo = None
                break
            if not isinstance(st.min, int) or not isinstance(st.max, int):
                lo = None
                break
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
        if lo is not None and hi is not None:
            out.append((name, int(lo), int(hi)))
    return tuple(out)


def id_bounds(trace: Trace) -> dict[str, tuple[int, int]]:
    """Valid [low, high) of the checked integer columns, from the manifest."""
    model = trace.manifest.model
    return {
        "expert_ids": (0, model.num_experts),
        "expert": (0, model.num_experts),
        "layer": (0, model.num_layers),
        "step": (0, 2**31),
    }


def _range_problems(
    trace: Trace, f: Location, table: str, ranges: Iterable[tuple[str, int, int]]
) -> list[Problem]:
    bounds = id_bounds(trace)
    out = []
    for name, lo, hi in ranges:
        low, high = bounds[name]
        if lo < low or hi >= high:
            out.append(
                Problem(
                    path=str(f),
                    message=f"column {name!r} holds values {lo}..{hi}, outside {low}..{high - 1} "
                    f"(the manifest's {'experts' if 'expert' in name else 'layers' if name == 'layer' else 'steps'}); "
                    "the file is damaged or from another model",
                )
            )
    return out


def _has_page_checksum(f: Location, meta: pq.FileMetaData) -> bool | None:
    """Whether the first page of the first column chunk carries a CRC (Thrift PageHeader field 4)."""
    if meta.num_row_groups == 0 or meta.num_columns == 0:
        return None
    col = meta.row_group(0).column(0)
    offset = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    if offset is None:
        return None
    try:
        with f.open("rb") as fh:
            fh.seek(int(offset))
            head = fh.read(64)
    except OSError:
        return None
    return _thrift_has_field(head, 4)


def _thrift_has_field(buf: bytes, wanted: int) -> bool | None:
    """Walk the leading i32 fields of a Thrift compact struct; True when field ``wanted`` appears
    before any field past it (PageHeader: 1 type, 2 uncompressed size, 3 compressed size, 4 crc)."""
    pos, last = 0, 0
    while pos < len(buf):
        byte = buf[pos]
        pos += 1
        if byte == 0:
            return False
        delta, ftype = byte >> 4, byte & 0x0F
        if delta == 0:
            return None  # long-form field header: not what a PageHeader starts with
        fid = last + delta
        if fid == wanted:
            return True
        if fid > wanted:
            return False
        if ftype != 5:  # i32 (zigzag varint)
            return None
        while pos < len(buf) and buf[pos] & 0x80:
            pos += 1
        pos += 1
        last = fid
    return None


def file_problems(trace: Trace, footers: dict[str, list[Footer]]) -> list[Problem]:
    """Part files against the writers' statuses: names, ranks, part counts, rows, tables, step order."""
    out: list[Problem] = []
    for table in TABLE_NAMES:
        folder = trace.path / table
        by_rank: dict[int, list[Footer]] = {}
        for ft in footers.get(table, []):
            if ft.rank is None:
                out.append(
                    Problem(
                        path=str(ft.path),
                        message="not a part file of a tracekit writer (expected rNNNNN-pNNNNNN.parquet); "
                        "it is read with the table: move it out of the trace",
                    )
                )
                continue
            by_rank.setdefault(ft.rank, []).append(ft)
        for rank, fts in sorted(by_rank.items()):
            if rank not in trace.shards:
                out.append(
                    Problem(
                        path=str(fts[0].path),
                        message=f"part file of rank {rank}, which has no shard status; "
                        "it is from another run or its writer never started: delete it",
                    )
                )
        for rank, s in sorted(trace.shards.items()):
            fts = sorted(by_rank.get(rank, []), key=lambda x: x.index or 0)
            parts = s.parts.get(table)
            rows = s.rows.get(table)
            if s.complete and parts is not None:
                indices = [ft.index for ft in fts]
                if indices != list(range(parts)):
                    if not fts and parts:
                        msg = f"missing: rank {rank}'s status records {parts} part file(s) and {rows} rows of {table}, none is here"
                        where = str(folder)
                    else:
                        msg = (
                            f"rank {rank}'s status records {parts} part file(s) of {table}, "
                            f"the folder holds {len(fts)} (indices {_span(indices)}); part files are missing or from another run"
                        )
                        where = str(folder)
                    out.append(Problem(path=where, message=msg))
                    continue
            if s.complete and rows is not None and all(ft.rows is not None for ft in fts):
                found = sum(ft.rows or 0 for ft in fts)
                if found != rows:
                    out.append(
                        Problem(
                            path=str(folder),
                            message=f"rank {rank}'s status records {rows} rows of {table}, its part files hold {found}; "
                            "a part file was replaced or truncated",
                        )
                    )
                    continue
            if s.complete and parts is None and fts and s.parts:
                out.append(
                    Problem(
                        path=str(fts[0].path),
                        message=f"rank {rank}'s status records no {table} rows, but it has part files; "
                        "they are from another run: delete them",
                    )
                )
            out += _part_order(table, fts)
    return out


def _span(indices: list[int | None]) -> str:
    vals = [i for i in indices if i is not None]
    if not vals:
        return "none"
    return f"{min(vals)}..{max(vals)}"


def _part_order(table: str, fts: list[Footer]) -> list[Problem]:
    """Steps go forward from one part file of a writer to the next (from the column statistics)."""
    if table != "steps":
        return []
    prev: tuple[Footer, int] | None = None
    strict = True
    for ft in fts:
        r = {name: (lo, hi) for name, lo, hi in ft.ranges}
        if "step" not in r:
            prev = None
            continue
        lo, hi = r["step"]
        if prev is not None and (lo < prev[1] or (strict and lo == prev[1])):
            return [
                Problem(
                    path=str(ft.path),
                    message=f"steps go backwards: this part starts at step {lo}, the previous part of its "
                    f"writer ({prev[0].path.name}) reaches step {prev[1]}; the parts are out of order or duplicated",
                )
            ]
        prev = (ft, hi)
    return []


def tmp_problems(trace: Trace) -> list[Problem]:
    """Partial part files left by a writer that stopped mid-write."""
    out = []
    for table in TABLE_NAMES:
        folder = trace.path / table
        try:
            names = sorted(
                n
                for n in _listdir(folder)
                if n.startswith(".") and n.endswith(".parquet" + layout.TMP_SUFFIX)
            )
        except OSError:
            continue
        out += [
            Problem(
                path=str(folder / n),
                message="incomplete: partial part file left by a writer that stopped mid-write; "
                "it is ignored when reading",
                kind="incomplete",
            )
            for n in names
        ]
    return out


def _listdir(folder: Location) -> list[str]:
    if store.is_remote(folder):  # whole objects only: an upload appears when it completes
        return []
    return store.listdir(folder) if folder.is_dir() else []


def quick_check(trace: Trace) -> tuple[list[Problem], dict[str, list[Footer]]]:
    """Every check that needs no data decoding; also returns each table's footers."""
    problems = shard_problems(trace) + tmp_problems(trace)
    footers: dict[str, list[Footer]] = {}
    for table in TABLE_NAMES:
        for f in trace.files(table, check=False):
            ft, probs = read_footer(trace, table, f)
            footers.setdefault(table, []).append(ft)
            problems += probs
    problems += file_problems(trace, footers)
    return problems, footers


def summary_line(path: Any, problems: list[Problem]) -> str:
    """One line for a reading command's warning."""
    first = problems[0]
    more = f"; {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
    kind = "incomplete" if all(p.kind == "incomplete" for p in problems) else "invalid"
    return f"trace {path} is {kind}: {first}{more}; tracekit validate {path} lists every problem"
