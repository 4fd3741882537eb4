"""The tables of an Nsight Systems SQLite export, read in chunks: connection and validity checks
in SQL, the string table, NVTX markers, kernel launches, and Kineto-style memcpy names.

Used by :mod:`tracekit.importers.nsys`; see its docstring for what each table gives.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from tracekit.errors import InputFormatError, UsageError
from tracekit.importers._markers import assign_innermost

KERNEL_TABLE = "CUPTI_ACTIVITY_KIND_KERNEL"
MEMCPY_TABLE = "CUPTI_ACTIVITY_KIND_MEMCPY"
MEMSET_TABLE = "CUPTI_ACTIVITY_KIND_MEMSET"
RUNTIME_TABLE = "CUPTI_ACTIVITY_KIND_RUNTIME"
NVTX_TABLE = "NVTX_EVENTS"
#: NVTX event types that are ranges: push/pop and start/end, C and NVTXT flavours.
NVTX_RANGE_TYPES = (59, 60, 70, 71)
#: CUDA memcpy kinds (CUPTI / nsys ENUM_CUDA_MEMCPY_OPER ids) as Kineto spells them.
COPY_KINDS = {
    0: "<unknown>",
    1: "HtoD",
    2: "DtoH",
    3: "HtoA",
    4: "AtoH",
    5: "AtoA",
    6: "AtoD",
    7: "DtoA",
    8: "DtoD",
    9: "HtoH",
    10: "PtoP",
    11: "UVM HtoD",
    12: "UVM DtoH",
    13: "UVM DtoD",
}
#: nsys memory kinds (ENUM_CUDA_MEM_KIND ids; note: not CUPTI's numbering) as Kineto spells them.
MEM_KINDS = {
    0: "Pageable",
    1: "Pinned",
    2: "Device",
    3: "Array",
    4: "Managed",
    5: "Device Static",
    6: "Managed Static",
    7: "Unknown",
}
_NCCL_RANGE = re.compile(r"^nccl(AllReduce|AllGather|ReduceScatter|Broadcast|Reduce|Send|Recv|AllToAll)\b")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MAX_NS = 2**62
IS_INT = "typeof({c}) = 'integer'"


def connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise UsageError(f"{path}: no such file; give the .sqlite file written by nsys export --type sqlite")
    with path.open("rb") as fh:
        head = fh.read(16)
    if head != _SQLITE_MAGIC:
        hint = " (an .nsys-rep report: convert it first)" if path.suffix == ".nsys-rep" else ""
        raise InputFormatError(
            f"{path}: not an SQLite database{hint}; run nsys export --type sqlite REPORT.nsys-rep "
            "and import the .sqlite file"
        )
    con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    con.text_factory = lambda b: b.decode("utf-8", errors="backslashreplace")
    return con


def sql_error(path: Path, exc: sqlite3.Error | UnicodeDecodeError) -> InputFormatError:
    return InputFormatError(
        f"{path}: SQLite cannot read it ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
        "export it again with nsys export --type sqlite"
    )


class ExportFile:
    """One open export: its tables, columns and string table."""

    def __init__(self, path: Path, con: sqlite3.Connection) -> None:
        self.path = path
        self.con = con
        self.tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._columns: dict[str, set[str]] = {}
        self._strings: dict[int, str | None] = {}

    def columns(self, table: str) -> set[str]:
        if table not in self._columns:
            self._columns[table] = (
                {r[1] for r in self.con.execute(f'PRAGMA table_info("{table}")')}
                if table in self.tables
                else set()
            )
        return self._columns[table]

    def has(self, table: str, *cols: str) -> bool:
        return table in self.tables and set(cols) <= self.columns(table)

    def strings(self, ids: Sequence[int]) -> dict[int, str | None]:
        """StringIds values of ``ids`` (None where the id is missing), cached."""
        todo = [i for i in ids if i not in self._strings]
        for lo in range(0, len(todo), 500):
            part = todo[lo : lo + 500]
            for i in part:
                self._strings[i] = None
            if "StringIds" in self.tables:
                marks = ",".join("?" * len(part))
                for sid, value in self.con.execute(
                    f"SELECT id, value FROM StringIds WHERE id IN ({marks})", part
                ):
                    if isinstance(sid, int) and isinstance(value, str):
                        self._strings[sid] = value
        return {i: self._strings[i] for i in ids}

    def chunks(self, sql: str, params: Sequence[Any], rows: int) -> Iterator[list[tuple[Any, ...]]]:
        try:
            cur = self.con.execute(sql, params)
            while True:
                part = cur.fetchmany(rows)
                if not part:
                    return
                yield part
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise sql_error(self.path, exc) from None


def int_expr(col: str, cols: set[str], default: int = -1) -> str:
    if col not in cols:
        return str(default)
    return f"CASE WHEN {IS_INT.format(c=col)} THEN {col} ELSE {default} END"


def valid_times(cols: set[str]) -> str:
    return (
        f"{IS_INT.format(c='start')} AND {IS_INT.format(c='end')} AND start >= 0 AND end >= start "
        f"AND end < {_MAX_NS} AND {IS_INT.format(c='deviceId')} AND deviceId >= 0 AND "
        f"{IS_INT.format(c='streamId')}"
    )


def count_rows(f: ExportFile, table: str, where: str) -> int:
    return int(f.con.execute(f'SELECT count(*) FROM "{table}" WHERE {where}').fetchone()[0])


@dataclass
class Markers:
    """Host-side ranges of one file, by process: steps, layers and NCCL calls."""

    proc: np.ndarray  # int64 process key per range
    start: np.ndarray
    end: np.ndarray
    kind: np.ndarray  # 0 step, 1 layer, 2 nccl
    value: np.ndarray  # step / layer number, or NCCL message bytes (-1 unknown)


def nccl_bytes(json_text: Any, u64: Any, i64: Any) -> int:
    """The message size an NCCL NVTX range carries, -1 when the export holds none."""
    if isinstance(json_text, str) and json_text:
        try:
            doc = json.loads(json_text)
        except json.JSONDecodeError:
            doc = None
        stack = [doc]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                for k, v in item.items():
                    sized = isinstance(k, str) and "size" in k.lower() and "byte" in k.lower()
                    if sized and isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                        return v
                    stack.append(v)
            elif isinstance(item, list):
                stack.extend(item)
    for v in (u64, i64):
        if isinstance(v, int) and 0 <= v < 2**62:
            return v
    return -1


def read_markers(
    f: ExportFile, step_rx: re.Pattern[str], layer_rx: re.Pattern[str], chunk: int, skipped: Counter[str]
) -> Markers:
    out: dict[str, list[int]] = {"proc": [], "start": [], "end": [], "kind": [], "value": []}
    cols = f.columns(NVTX_TABLE)
    if not {"start", "end", "eventType"} <= cols:
        return Markers(*(np.zeros(0, np.int64) for _ in range(5)))
    text = "text" if "text" in cols else "NULL"
    text_id = int_expr("textId", cols)
    tid = int_expr("globalTid", cols)
    extra = ", ".join(c if c in cols else "NULL" for c in ("jsonText", "uint64Value", "int64Value"))
    types = ",".join(str(t) for t in NVTX_RANGE_TYPES)
    sql = (
        f"SELECT start, end, {text}, {text_id}, {tid}, {extra} FROM {NVTX_TABLE} "
        f"WHERE eventType IN ({types}) AND {IS_INT.format(c='start')} AND {IS_INT.format(c='end')} "
        "AND start >= 0 AND end >= start"
    )
    for part in f.chunks(sql, (), chunk):
        ids = sorted({r[3] for r in part if r[2] is None and r[3] >= 0})
        names = f.strings(ids) if ids else {}
        for start, end, txt, sid, gtid, jtext, u64, i64 in part:
            name = txt if isinstance(txt, str) else names.get(sid)
            if not isinstance(name, str):
                continue
            proc = gtid >> 24 if gtid >= 0 else -1
            if _NCCL_RANGE.match(name):
                out["proc"].append(proc)
                out["start"].append(start)
                out["end"].append(end)
                out["kind"].append(2)
                out["value"].append(nccl_bytes(jtext, u64, i64))
                continue
            for kind, rx in ((0, step_rx), (1, layer_rx)):
                m = rx.search(name)
                if not m:
                    continue
                digits = m.group(1)
                value = int(digits) if digits and digits.isdecimal() else -1
                if not 0 <= value < (2**31 if kind == 0 else 2**15):
                    skipped[f"{('step', 'layer')[kind]} range whose number is not a valid id"] += 1
                    continue
                out["proc"].append(proc)
                out["start"].append(start)
                out["end"].append(end)
                out["kind"].append(kind)
                out["value"].append(value)
    arr = {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
    return Markers(arr["proc"], arr["start"], arr["end"], arr["kind"], arr["value"])


@dataclass
class Launches:
    """Runtime API calls by (process, correlation id), sorted by key."""

    key: np.ndarray
    start: np.ndarray

    def times(self, proc: np.ndarray, corr: np.ndarray) -> np.ndarray:
        """Launch time of each (process, correlation id); -1 where unknown."""
        out = np.full(corr.shape, -1, dtype=np.int64)
        if self.key.size == 0 or corr.size == 0:
            return out
        ok = (corr >= 0) & (corr < 2**32) & (proc >= 0) & (proc < 2**30)
        key = proc * 2**32 + corr
        pos = np.clip(np.searchsorted(self.key, key), 0, self.key.size - 1)
        hit = ok & (self.key[pos] == key)
        out[hit] = self.start[pos[hit]]
        return out


def read_launches(f: ExportFile, chunk: int) -> Launches:
    cols = f.columns(RUNTIME_TABLE)
    if not {"start", "correlationId", "globalTid"} <= cols:
        return Launches(np.zeros(0, np.int64), np.zeros(0, np.int64))
    sql = (
        f"SELECT (globalTid >> 24) * 4294967296 + correlationId, start FROM {RUNTIME_TABLE} WHERE "
        f"{IS_INT.format(c='start')} AND start >= 0 AND {IS_INT.format(c='correlationId')} AND "
        f"correlationId >= 0 AND correlationId < 4294967296 AND {IS_INT.format(c='globalTid')} "
        "AND globalTid >= 0 AND (globalTid >> 24) < 1073741824"
    )
    keys, starts = [], []
    for part in f.chunks(sql, (), chunk):
        a = np.asarray(part, dtype=np.int64).reshape(-1, 2)
        keys.append(a[:, 0])
        starts.append(a[:, 1])
    if not keys:
        return Launches(np.zeros(0, np.int64), np.zeros(0, np.int64))
    key, start = np.concatenate(keys), np.concatenate(starts)
    order = np.lexsort((start, key))  # the earliest launch record of a key first
    key, start = key[order], start[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return Launches(key[first], start[first])


def by_process(markers: Markers, kind: int, proc: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Value of the innermost ``kind`` range of the same process holding each time (-1: none)."""
    out = np.full(times.shape, -1, dtype=np.int64)
    sel = markers.kind == kind
    if not sel.any():
        return out
    for p in np.unique(proc).tolist():
        rows = (proc == p) & (times >= 0)
        m = sel & (markers.proc == p)
        if rows.any() and m.any():
            out[rows] = assign_innermost(
                times[rows].astype(np.float64),
                markers.start[m].astype(np.float64),
                markers.end[m].astype(np.float64),
                markers.value[m],
            )
    return out


def time_origin(f: ExportFile) -> int:
    """The earliest start of any event the import looks at (the file's time origin)."""
    best: int | None = None
    for table in (KERNEL_TABLE, MEMCPY_TABLE, MEMSET_TABLE, RUNTIME_TABLE, NVTX_TABLE):
        if not f.has(table, "start"):
            continue
        (v,) = f.con.execute(
            f"SELECT min(start) FROM {table} WHERE {IS_INT.format(c='start')} AND start >= 0"
        ).fetchone()
        if isinstance(v, int):
            best = v if best is None else min(best, v)
    return best or 0


def kernel_name_column(cols: set[str]) -> str:
    return "demangledName" if "demangledName" in cols else "shortName"


def table_sql(f: ExportFile, table: str, where_extra: str = "") -> tuple[str, set[str]] | None:
    cols = f.columns(table)
    need = {"start", "end", "deviceId", "streamId"}
    if table == KERNEL_TABLE and not ({"demangledName", "shortName"} & cols):
        return None
    if not need <= cols:
        return None
    base = [
        "start",
        "end",
        "deviceId",
        "streamId",
        int_expr("correlationId", cols),
        f"CASE WHEN {IS_INT.format(c='globalPid')} AND globalPid >= 0 THEN globalPid >> 24 ELSE -1 END"
        if "globalPid" in cols
        else "-1",
    ]
    if table == KERNEL_TABLE:
        name = kernel_name_column(cols)
        base.append(int_expr(name, cols))
        valid = f"{valid_times(cols)} AND {IS_INT.format(c=name)}"
    elif table == MEMCPY_TABLE:
        base += [int_expr(c, cols) for c in ("copyKind", "srcKind", "dstKind")]
        valid = valid_times(cols)
    else:
        base.append(int_expr("memKind", cols))
        valid = valid_times(cols)
    where = valid + (f" AND {where_extra}" if where_extra else "")
    return f'SELECT {", ".join(base)} FROM "{table}" WHERE {where}', cols


def memcpy_names(kind: np.ndarray, src: np.ndarray, dst: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct memcpy labels (Kineto's spelling) and each row's index into them."""
    combos, inverse = np.unique(np.stack([kind, src, dst], axis=1), axis=0, return_inverse=True)
    labels = [
        f"Memcpy {COPY_KINDS.get(int(k), '<unknown>')} "
        f"({MEM_KINDS.get(int(s), '<unknown>')} -> {MEM_KINDS.get(int(d), '<unknown>')})"
        for k, s, d in combos.tolist()
    ]
    return labels, inverse


def memset_names(kind: np.ndarray) -> tuple[list[str], np.ndarray]:
    uniq, inverse = np.unique(kind, return_inverse=True)
    return [f"Memset ({MEM_KINDS.get(int(k), '<unknown>')})" for k in uniq.tolist()], inverse
