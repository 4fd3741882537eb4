"""Import Nsight Systems SQLite exports (``nsys export --type sqlite REPORT.nsys-rep``).

Tables read (NVIDIA's documented export schema; columns checked by name, others ignored):

- ``CUPTI_ACTIVITY_KIND_KERNEL`` (start, end, deviceId, streamId, correlationId, globalPid,
  demangledName -> ``StringIds``) -> kernel rows;
- ``CUPTI_ACTIVITY_KIND_MEMCPY`` (copyKind, srcKind, dstKind) / ``CUPTI_ACTIVITY_KIND_MEMSET``
  (memKind) -> ``memcpy`` rows, named as Kineto names them (``Memcpy HtoD (Pageable -> Device)``);
- ``NVTX_EVENTS`` ranges (text or textId) matching the step / layer patterns -> markers; NCCL's own
  ranges (``ncclAllReduce`` ...) -> the message size of the NCCL kernel launched inside them, when
  the export holds the size (NCCL's ``Message size [bytes]`` payload as JSON, or an integer payload);
- ``CUPTI_ACTIVITY_KIND_RUNTIME`` (correlationId, start, globalTid) -> each kernel's launch time,
  which places it in the NVTX ranges of its process (NVTX ranges are host-side);
- ``TARGET_INFO_GPU`` -> device names for the manifest.

Ranks: one per GPU (``deviceId``) of each file, or one per process (``globalPid``) with
``rank_by="process"``; files follow each other in the order given. Times: int64 ns since the
earliest event of the file. The file is read in chunks of rows (``fetchmany``) and rows are written
as they come; memory holds the launch table as numpy arrays (16 bytes per launch, when there are NVTX
ranges), the markers, the distinct names, one chunk, and the writers' buffered part.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from tracekit.errors import InputFormatError, UsageError
from tracekit.importers._arch import unknown_arch
from tracekit.importers._markers import InferredLayers, assign_innermost, infer_layers
from tracekit.importers._summary import KernelSummary, merge, summarize_counts
from tracekit.importers.categories import KernelRules, load_rules, nccl_collective_from_name
from tracekit.importers.kineto import DEFAULT_LAYER_PATTERN, DEFAULT_STEP_PATTERN, compile_marker_pattern
from tracekit.schema import Manifest, ModelArch, ParallelLayout
from tracekit.trace import TraceWriter

RANK_BY = ("device", "process")
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
_INT = "typeof({c}) = 'integer'"


@dataclass(frozen=True, kw_only=True)
class NsysOptions:
    """How to read nsys exports."""

    #: Regular expression over NVTX range names; its first group is the step number.
    step_pattern: str = DEFAULT_STEP_PATTERN
    #: Regular expression over NVTX range names; its first group is the decoder layer number.
    layer_pattern: str = DEFAULT_LAYER_PATTERN
    #: One rank per GPU (device) or per process of each file.
    rank_by: str = "device"
    #: Rows fetched from SQLite at a time.
    chunk_rows: int = 200_000


@dataclass(frozen=True, kw_only=True)
class NsysFileReport:
    """What one nsys file gave."""

    path: Path
    #: Rank -> (device id or process id) it stands for.
    ranks: dict[int, int]
    rows: int
    #: Source table -> rows kept.
    rows_by_table: dict[str, int]
    #: Reason -> rows not imported because of it.
    skipped: dict[str, int]
    step_markers: int
    layer_markers: int
    #: NCCL kernels whose message size came from an NCCL NVTX range.
    nccl_sizes: int
    #: Device names from TARGET_INFO_GPU, by device id.
    devices: dict[int, str]
    #: Rank -> how layers were found when the file had no layer markers.
    layers_notes: dict[int, str]
    summary: KernelSummary = field(default_factory=KernelSummary)


@dataclass(frozen=True, kw_only=True)
class NsysReport:
    """What an nsys import wrote."""

    out: Path
    files: tuple[NsysFileReport, ...]
    rows: int
    manifest: Manifest = field(repr=False)
    summary: KernelSummary = field(default_factory=KernelSummary)


def _connect(path: Path) -> sqlite3.Connection:
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


def _sql_error(path: Path, exc: sqlite3.Error | UnicodeDecodeError) -> InputFormatError:
    return InputFormatError(
        f"{path}: SQLite cannot read it ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
        "export it again with nsys export --type sqlite"
    )


class _File:
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
            raise _sql_error(self.path, exc) from None


def _int_expr(col: str, cols: set[str], default: int = -1) -> str:
    if col not in cols:
        return str(default)
    return f"CASE WHEN {_INT.format(c=col)} THEN {col} ELSE {default} END"


def _valid_times(cols: set[str]) -> str:
    return (
        f"{_INT.format(c='start')} AND {_INT.format(c='end')} AND start >= 0 AND end >= start "
        f"AND end < {_MAX_NS} AND {_INT.format(c='deviceId')} AND deviceId >= 0 AND "
        f"{_INT.format(c='streamId')}"
    )


def _count(f: _File, table: str, where: str) -> int:
    return int(f.con.execute(f'SELECT count(*) FROM "{table}" WHERE {where}').fetchone()[0])


@dataclass
class _Markers:
    """Host-side ranges of one file, by process: steps, layers and NCCL calls."""

    proc: np.ndarray  # int64 process key per range
    start: np.ndarray
    end: np.ndarray
    kind: np.ndarray  # 0 step, 1 layer, 2 nccl
    value: np.ndarray  # step / layer number, or NCCL message bytes (-1 unknown)


def _nccl_bytes(json_text: Any, u64: Any, i64: Any) -> int:
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


def _read_markers(
    f: _File, step_rx: re.Pattern[str], layer_rx: re.Pattern[str], chunk: int, skipped: Counter[str]
) -> _Markers:
    out: dict[str, list[int]] = {"proc": [], "start": [], "end": [], "kind": [], "value": []}
    cols = f.columns(NVTX_TABLE)
    if not {"start", "end", "eventType"} <= cols:
        return _Markers(*(np.zeros(0, np.int64) for _ in range(5)))
    text = "text" if "text" in cols else "NULL"
    text_id = _int_expr("textId", cols)
    tid = _int_expr("globalTid", cols)
    extra = ", ".join(c if c in cols else "NULL" for c in ("jsonText", "uint64Value", "int64Value"))
    types = ",".join(str(t) for t in NVTX_RANGE_TYPES)
    sql = (
        f"SELECT start, end, {text}, {text_id}, {tid}, {extra} FROM {NVTX_TABLE} "
        f"WHERE eventType IN ({types}) AND {_INT.format(c='start')} AND {_INT.format(c='end')} "
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
                out["value"].append(_nccl_bytes(jtext, u64, i64))
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
    return _Markers(arr["proc"], arr["start"], arr["end"], arr["kind"], arr["value"])


@dataclass
class _Launches:
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


def _read_launches(f: _File, chunk: int) -> _Launches:
    cols = f.columns(RUNTIME_TABLE)
    if not {"start", "correlationId", "globalTid"} <= cols:
        return _Launches(np.zeros(0, np.int64), np.zeros(0, np.int64))
    sql = (
        f"SELECT (globalTid >> 24) * 4294967296 + correlationId, start FROM {RUNTIME_TABLE} WHERE "
        f"{_INT.format(c='start')} AND start >= 0 AND {_INT.format(c='correlationId')} AND "
        f"correlationId >= 0 AND correlationId < 4294967296 AND {_INT.format(c='globalTid')} "
        "AND globalTid >= 0 AND (globalTid >> 24) < 1073741824"
    )
    keys, starts = [], []
    for part in f.chunks(sql, (), chunk):
        a = np.asarray(part, dtype=np.int64).reshape(-1, 2)
        keys.append(a[:, 0])
        starts.append(a[:, 1])
    if not keys:
        return _Launches(np.zeros(0, np.int64), np.zeros(0, np.int64))
    key, start = np.concatenate(keys), np.concatenate(starts)
    order = np.lexsort((start, key))  # the earliest launch record of a key first
    key, start = key[order], start[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return _Launches(key[first], start[first])


def _by_process(markers: _Markers, kind: int, proc: np.ndarray, times: np.ndarray) -> np.ndarray:
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


def _origin(f: _File) -> int:
    """The earliest start of any event the import looks at (the file's time origin)."""
    best: int | None = None
    for table in (KERNEL_TABLE, MEMCPY_TABLE, MEMSET_TABLE, RUNTIME_TABLE, NVTX_TABLE):
        if not f.has(table, "start"):
            continue
        (v,) = f.con.execute(
            f"SELECT min(start) FROM {table} WHERE {_INT.format(c='start')} AND start >= 0"
        ).fetchone()
        if isinstance(v, int):
            best = v if best is None else min(best, v)
    return best or 0


@dataclass
class _Rows:
    """Kernel-table columns of one chunk of one table, before rank split."""

    start: np.ndarray
    end: np.ndarray
    device: np.ndarray
    stream: np.ndarray
    corr: np.ndarray
    proc: np.ndarray
    codes: np.ndarray  # int64 name code per row (index into the reader's name list)
    memcpy: bool


def _kernel_name_col(cols: set[str]) -> str:
    return "demangledName" if "demangledName" in cols else "shortName"


def _table_sql(f: _File, table: str, where_extra: str = "") -> tuple[str, set[str]] | None:
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
        _int_expr("correlationId", cols),
        f"CASE WHEN {_INT.format(c='globalPid')} AND globalPid >= 0 THEN globalPid >> 24 ELSE -1 END"
        if "globalPid" in cols
        else "-1",
    ]
    if table == KERNEL_TABLE:
        name = _kernel_name_col(cols)
        base.append(_int_expr(name, cols))
        valid = f"{_valid_times(cols)} AND {_INT.format(c=name)}"
    elif table == MEMCPY_TABLE:
        base += [_int_expr(c, cols) for c in ("copyKind", "srcKind", "dstKind")]
        valid = _valid_times(cols)
    else:
        base.append(_int_expr("memKind", cols))
        valid = _valid_times(cols)
    where = valid + (f" AND {where_extra}" if where_extra else "")
    return f'SELECT {", ".join(base)} FROM "{table}" WHERE {where}', cols


class _Reader:
    """Reads one export into per-rank kernel-table chunks."""

    def __init__(
        self,
        path: Path,
        options: NsysOptions,
        step_rx: re.Pattern[str],
        layer_rx: re.Pattern[str],
        rules: KernelRules,
    ) -> None:
        self.path = path
        self.options = options
        self.rules = rules
        self.skipped: Counter[str] = Counter()
        try:
            self.file = _File(path, _connect(path))
            f = self.file
            if not ({KERNEL_TABLE, MEMCPY_TABLE, MEMSET_TABLE} & f.tables):
                raise InputFormatError(
                    f"{path}: no {KERNEL_TABLE} table (the report holds no CUDA activity); profile with "
                    "nsys profile --trace=cuda,nvtx and export again"
                )
            self.origin = _origin(f)
            self.markers = _read_markers(f, step_rx, layer_rx, options.chunk_rows, self.skipped)
            needs_launch = self.markers.kind.size > 0
            self.launches = (
                _read_launches(f, options.chunk_rows)
                if needs_launch
                else _Launches(np.zeros(0, np.int64), np.zeros(0, np.int64))
            )
            self.rank_keys = self._rank_keys()
            self.devices = self._devices()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise _sql_error(path, exc) from None
        self.names: dict[str, int] = {}
        self.name_list: list[str] = []
        #: Category of each name code.
        self.categories: list[str] = []
        #: StringIds id -> name code, for kernel names.
        self._sid_code: dict[int, int] = {}

    # -- ranks ------------------------------------------------------------------------------------
    def _rank_keys(self) -> list[int]:
        col = "deviceId" if self.options.rank_by == "device" else "globalPid"
        keys: set[int] = set()
        for table in (KERNEL_TABLE, MEMCPY_TABLE, MEMSET_TABLE):
            q = _table_sql(self.file, table)
            if q is None or col not in q[1]:
                continue
            expr = "deviceId" if col == "deviceId" else "globalPid >> 24"
            valid = _valid_times(q[1])
            if col == "globalPid":
                valid += f" AND {_INT.format(c='globalPid')} AND globalPid >= 0"
            for (k,) in self.file.con.execute(f'SELECT DISTINCT {expr} FROM "{table}" WHERE {valid}'):
                keys.add(int(k))
        return sorted(keys)

    def _devices(self) -> dict[int, str]:
        if not self.file.has("TARGET_INFO_GPU", "id", "name"):
            return {}
        out = {}
        for dev, name in self.file.con.execute("SELECT id, name FROM TARGET_INFO_GPU"):
            if isinstance(dev, int) and isinstance(name, str):
                out[dev] = name
        return out

    # -- rows -------------------------------------------------------------------------------------
    def _code(self, name: str, *, memcpy: bool) -> int:
        code = self.names.get(name)
        if code is None:
            code = len(self.name_list)
            self.names[name] = code
            self.name_list.append(name)
            self.categories.append("memcpy" if memcpy else self.rules.category_of(name))
        return code

    def _kernel_codes(self, ids: np.ndarray) -> np.ndarray:
        """Name codes of StringIds ids (-1 where the id is not in StringIds)."""
        uniq, inverse = np.unique(ids, return_inverse=True)
        todo = [int(u) for u in uniq.tolist() if int(u) not in self._sid_code]
        if todo:
            for sid, name in self.file.strings(todo).items():
                self._sid_code[sid] = -1 if name is None else self._code(name, memcpy=False)
        return np.array([self._sid_code[int(u)] for u in uniq.tolist()], dtype=np.int64)[inverse.reshape(-1)]

    def _label_codes(self, labels: list[str], inverse: np.ndarray) -> np.ndarray:
        table = np.array([self._code(str(x), memcpy=True) for x in labels], dtype=np.int64)
        return table[inverse.reshape(-1)]

    def count_invalid(self) -> None:
        """Rows of the activity tables that are not imported, by reason."""
        f = self.file
        for table in (KERNEL_TABLE, MEMCPY_TABLE, MEMSET_TABLE):
            q = _table_sql(f, table)
            if table not in f.tables:
                continue
            what = {KERNEL_TABLE: "kernel", MEMCPY_TABLE: "memcpy", MEMSET_TABLE: "memset"}[table]
            if q is None:
                n = _count(f, table, "1")
                if n:
                    self.skipped[f"{what} rows (the table lacks start/end/deviceId/streamId columns)"] += n
                continue
            cols = q[1]
            valid = _valid_times(cols)
            if table == KERNEL_TABLE:
                valid += f" AND {_INT.format(c=_kernel_name_col(cols))}"
            n = _count(f, table, f"NOT ({valid})")
            if n:
                self.skipped[f"{what} row with a missing or invalid start/end/device/stream/name"] += n

    def rows(
        self, where_extra: str = "", params: Sequence[Any] = (), *, count: bool = True
    ) -> Iterator[_Rows]:
        """Chunks of valid rows of the kernel, memcpy and memset tables (``count``: add the rows
        dropped here to ``skipped``; off for the extra pass that infers layers)."""
        f = self.file
        chunk = self.options.chunk_rows
        for table in (KERNEL_TABLE, MEMCPY_TABLE, MEMSET_TABLE):
            q = _table_sql(f, table, where_extra)
            if q is None or ("globalPid" in where_extra and "globalPid" not in q[1]):
                continue
            sql, _ = q
            for part in f.chunks(sql, params, chunk):
                a = np.asarray(part, dtype=np.int64)
                a = a.reshape(len(part), -1)
                if table == KERNEL_TABLE:
                    codes = self._kernel_codes(a[:, 6])
                    ok = codes >= 0
                    if not ok.all() and count:
                        self.skipped["kernel whose name id is not in StringIds"] += int((~ok).sum())
                    if not ok.all():
                        a, codes = a[ok], codes[ok]
                elif table == MEMCPY_TABLE:
                    codes = self._label_codes(*_memcpy_names(a[:, 6], a[:, 7], a[:, 8]))
                else:
                    codes = self._label_codes(*_memset_names(a[:, 6]))
                if a.shape[0] == 0:
                    continue
                yield _Rows(
                    start=a[:, 0] - self.origin,
                    end=a[:, 1] - self.origin,
                    device=a[:, 2],
                    stream=a[:, 3],
                    corr=a[:, 4],
                    proc=a[:, 5],
                    codes=codes,
                    memcpy=table != KERNEL_TABLE,
                )

    def rank_of(self, rows: _Rows) -> np.ndarray:
        """Local rank (index into ``rank_keys``) of each row; -1 for none."""
        keys = np.asarray(self.rank_keys, dtype=np.int64)
        by = rows.device if self.options.rank_by == "device" else rows.proc
        if keys.size == 0:
            return np.full(by.shape, -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(keys, by), 0, keys.size - 1)
        return np.where(keys[pos] == by, pos, -1)


def _memcpy_names(kind: np.ndarray, src: np.ndarray, dst: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct memcpy labels (Kineto's spelling) and each row's index into them."""
    combos, inverse = np.unique(np.stack([kind, src, dst], axis=1), axis=0, return_inverse=True)
    labels = [
        f"Memcpy {COPY_KINDS.get(int(k), '<unknown>')} "
        f"({MEM_KINDS.get(int(s), '<unknown>')} -> {MEM_KINDS.get(int(d), '<unknown>')})"
        for k, s, d in combos.tolist()
    ]
    return labels, inverse


def _memset_names(kind: np.ndarray) -> tuple[list[str], np.ndarray]:
    uniq, inverse = np.unique(kind, return_inverse=True)
    return [f"Memset ({MEM_KINDS.get(int(k), '<unknown>')})" for k in uniq.tolist()], inverse


def _nullable(a: np.ndarray, dt: str) -> pa.Array:
    return pa.array(a, type=pa.type_for_alias(dt), mask=a < 0)


def import_nsys(
    files: Sequence[str | Path],
    out: str | Path,
    *,
    model: ModelArch | None = None,
    options: NsysOptions | None = None,
    rules: KernelRules | None = None,
    overwrite: bool = False,
    rows_per_part: int = 500_000,
    on_file: Callable[[NsysFileReport], None] | None = None,
) -> NsysReport:
    """Import nsys SQLite exports into a trace at ``out`` (kernels table, one rank per GPU).

    ``rows_per_part``: rows buffered before a part file is written, over all ranks together."""
    options = options or NsysOptions()
    if options.rank_by not in RANK_BY:
        raise UsageError(f"--rank-by {options.rank_by!r}: valid values are {', '.join(RANK_BY)}")
    if options.chunk_rows < 1:
        raise UsageError(f"chunk_rows {options.chunk_rows}: must be at least 1")
    paths = [Path(p) for p in files]
    if not paths:
        raise UsageError("no input files; give the .sqlite files written by nsys export --type sqlite")
    step_rx = compile_marker_pattern(options.step_pattern, "--step-pattern")
    layer_rx = compile_marker_pattern(options.layer_pattern, "--layer-pattern")
    rules = rules or load_rules()
    readers = []
    offset = 0
    for p in paths:  # open every file first: a bad one is refused before anything is written
        r = _Reader(p, options, step_rx, layer_rx, rules)
        if not r.rank_keys:
            r.count_invalid()
            why = f"; {sum(r.skipped.values())} rows invalid" if r.skipped else ""
            raise InputFormatError(
                f"{p}: no kernel, memcpy or memset rows kept{why}; profile with nsys profile "
                "--trace=cuda,nvtx and export the report again"
            )
        readers.append((r, offset))
        offset += len(r.rank_keys)
    world = offset
    arch = model or unknown_arch()
    detail: dict[str, Any] = {
        "importer": "nsys",
        "files": [str(p) for p in paths],
        "rank_by": options.rank_by,
        "step_pattern": options.step_pattern,
        "layer_pattern": options.layer_pattern,
        "model_given": model is not None,
    }
    manifest = Manifest(
        model=arch,
        source="imported",
        source_detail=detail,
        parallel=ParallelLayout(world_size=world),
        clock="per file: nanoseconds since the earliest event of that nsys export (its ranks share "
        "that clock); files are not aligned with each other",
        notes="" if model else "model unknown: imported without --model; kernels only, not re-timeable",
        hardware={
            "devices": sorted({n for r, _ in readers for n in r.devices.values()}),
        },
    )
    reports: list[NsysFileReport] = []
    writers: dict[int, TraceWriter] = {}
    # every rank buffers a part before writing it: share one part's worth of rows among the ranks
    rows_per_part = max(10_000, rows_per_part // max(1, world))
    total = 0
    max_layer = -1
    try:
        for reader, first_rank in readers:
            rep, file_max_layer = _import_file(
                reader, first_rank, manifest, out, overwrite, rows_per_part, writers, model
            )
            if rep.rows == 0:
                raise InputFormatError(
                    f"{reader.path}: no kernel, memcpy or memset rows kept ({_counts([rep])}); "
                    "profile with nsys profile --trace=cuda,nvtx and export the report again"
                )
            reports.append(rep)
            total += rep.rows
            max_layer = max(max_layer, file_max_layer)
            if on_file:
                on_file(rep)
        detail["skipped"] = {str(r.path): r.skipped for r in reports if r.skipped}
        detail["ranks"] = {str(r.path): {str(k): v for k, v in r.ranks.items()} for r in reports}
        detail["layers_inferred"] = {str(k): v for r in reports for k, v in r.layers_notes.items()}
        if model is None and max_layer >= 0:
            manifest = manifest.replace(model=unknown_arch(num_layers=max_layer + 1))
        manifest = manifest.replace(source_detail=detail)
        if 0 not in writers:  # rank 0 kept no row: it still holds the manifest
            writers[0] = TraceWriter(out, manifest, rank=0, overwrite=overwrite)
        writers[0].update_manifest(manifest)
        for rank in sorted(writers, reverse=True):
            writers.pop(rank).close()
    finally:
        for w in writers.values():
            w.close(error="import failed")
        for reader, _ in readers:
            reader.file.con.close()
    return NsysReport(
        out=Path(out),
        files=tuple(reports),
        rows=total,
        manifest=manifest,
        summary=merge(r.summary for r in reports),
    )


def _counts(reports: Sequence[NsysFileReport]) -> str:
    skipped = sum(sum(r.skipped.values()) for r in reports)
    return f"{skipped} rows skipped" if skipped else "the tables are empty"


def _infer(reader: _Reader, key: int, model: ModelArch | None) -> InferredLayers:
    """Layers of one rank from its kernels' repeating sequence (a pass over its kernel rows)."""
    col = "deviceId" if reader.options.rank_by == "device" else "(globalPid >> 24)"
    starts, codes, streams, steps = [], [], [], []
    for rows in reader.rows(f"{col} = ?", (key,), count=False):
        if rows.memcpy:
            continue
        starts.append(rows.start)
        codes.append(rows.codes)
        streams.append(rows.stream)
        launch = reader.launches.times(rows.proc, rows.corr)
        steps.append(_by_process(reader.markers, 0, rows.proc, launch))
    if not starts:
        empty = np.zeros(0, np.int64)
        return infer_layers(empty, empty, empty, np.zeros(0, bool), empty, arch=model)
    start = np.concatenate(starts)
    return infer_layers(
        start.astype(np.float64),
        np.concatenate(codes),
        np.concatenate(streams),
        np.ones(start.size, dtype=bool),
        np.concatenate(steps),
        arch=model,
    )


def _import_file(
    reader: _Reader,
    first_rank: int,
    manifest: Manifest,
    out: str | Path,
    overwrite: bool,
    rows_per_part: int,
    writers: dict[int, TraceWriter],
    model: ModelArch | None,
) -> tuple[NsysFileReport, int]:
    try:
        reader.count_invalid()
        has_layers = bool((reader.markers.kind == 1).any())
        has_steps = bool((reader.markers.kind == 0).any())
        inferred: dict[int, InferredLayers] = {}
        if not has_layers:
            for local, key in enumerate(reader.rank_keys):
                inferred[local] = _infer(reader, key, model)
        by_table: Counter[str] = Counter()
        nccl_sizes = 0
        rows_by_code = np.zeros(0, dtype=np.int64)
        time_by_code = np.zeros(0, dtype=np.float64)
        max_layer = -1
        for rows in reader.rows():
            local_rank = reader.rank_of(rows)
            launch = reader.launches.times(rows.proc, rows.corr)
            step = _by_process(reader.markers, 0, rows.proc, launch)
            layer = _by_process(reader.markers, 1, rows.proc, launch)
            codes = rows.codes
            names = np.array(reader.name_list, dtype=object)[codes]
            cats = np.array(reader.categories, dtype=object)[codes]
            for local, inf in inferred.items():
                sel = local_rank == local
                if sel.any():
                    lay, stp = inf.assign(rows.start[sel].astype(np.float64))
                    layer[sel] = lay
                    if not has_steps and inf.steps_inferred:
                        step[sel] = stp
            collective = np.full(rows.start.size, None, dtype=object)
            message_bytes = np.full(rows.start.size, -1, dtype=np.int64)
            comm = np.flatnonzero(cats == "collective")
            if comm.size:
                by_code = {
                    int(c): nccl_collective_from_name(reader.name_list[c]) for c in np.unique(codes[comm])
                }
                collective[comm] = [by_code[int(c)] for c in codes[comm]]
                sizes = _by_process(reader.markers, 2, rows.proc[comm], launch[comm])
                message_bytes[comm] = sizes
                nccl_sizes += int((sizes >= 0).sum())
            dur = rows.end - rows.start
            size = len(reader.name_list)
            rows_by_code = np.pad(rows_by_code, (0, size - rows_by_code.size))
            time_by_code = np.pad(time_by_code, (0, size - time_by_code.size))
            rows_by_code += np.bincount(codes, minlength=size)
            time_by_code += np.bincount(codes, weights=dur.astype(np.float64), minlength=size)
            by_table["memcpy" if rows.memcpy else "kernels"] += rows.start.size
            if (layer >= 0).any():
                max_layer = max(max_layer, int(layer.max()))
            for local in np.unique(local_rank).tolist():
                if local < 0:
                    continue
                sel = local_rank == local
                rank = first_rank + local
                w = writers.get(rank)
                if w is None:
                    w = TraceWriter(
                        out, manifest, rank=rank, rows_per_part=rows_per_part, overwrite=overwrite
                    )
                    writers[rank] = w
                w.append(
                    "kernels",
                    {
                        "device": _nullable(rows.device[sel], "int32"),
                        "stream": _nullable(rows.stream[sel], "int64"),
                        "name": names[sel],
                        "category": cats[sel],
                        "start_ns": rows.start[sel],
                        "duration_ns": dur[sel],
                        "step": _nullable(step[sel], "int32"),
                        "layer": _nullable(layer[sel], "int16"),
                        "correlation": _nullable(rows.corr[sel], "int64"),
                        "collective": collective[sel],
                        "message_bytes": _nullable(message_bytes[sel], "int64"),
                        "dtype": np.full(int(sel.sum()), None, dtype=object),
                        "group_size": _nullable(np.full(int(sel.sum()), -1, np.int64), "int32"),
                    },
                )
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise _sql_error(reader.path, exc) from None
    size = len(reader.name_list)
    rows_by_code = np.pad(rows_by_code, (0, size - rows_by_code.size))
    time_by_code = np.pad(time_by_code, (0, size - time_by_code.size))
    report = NsysFileReport(
        path=reader.path,
        ranks={first_rank + i: k for i, k in enumerate(reader.rank_keys)},
        rows=int(rows_by_code.sum()),
        rows_by_table=dict(by_table),
        skipped=dict(reader.skipped),
        step_markers=int((reader.markers.kind == 0).sum()),
        layer_markers=int((reader.markers.kind == 1).sum()),
        nccl_sizes=nccl_sizes,
        devices=reader.devices,
        layers_notes={first_rank + k: v.describe() for k, v in inferred.items()},
        summary=summarize_counts(
            np.array(reader.name_list, dtype=object),
            np.array(reader.categories, dtype=object),
            rows_by_code,
            time_by_code,
        ),
    )
    return report, max_layer
