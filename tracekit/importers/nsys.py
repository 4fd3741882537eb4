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

import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tracekit.errors import InputFormatError, UsageError
from tracekit.importers._arch import unknown_arch
from tracekit.importers._markers import InferredLayers, infer_layers
from tracekit.importers._nsys_tables import (
    IS_INT,
    KERNEL_TABLE,
    MEM_KINDS,
    MEMCPY_TABLE,
    MEMSET_TABLE,
    ExportFile,
    Launches,
    by_process,
    connect,
    count_rows,
    kernel_name_column,
    memcpy_names,
    memset_names,
    read_launches,
    read_markers,
    sql_error,
    table_sql,
    time_origin,
    valid_times,
)
from tracekit.importers._summary import KernelSummary, merge, summarize_counts
from tracekit.importers.categories import KernelRules, load_rules, nccl_collective_from_name
from tracekit.importers.kineto import DEFAULT_LAYER_PATTERN, DEFAULT_STEP_PATTERN, compile_marker_pattern
from tracekit.schema import Manifest, ModelArch, ParallelLayout
from tracekit.trace import TraceWriter

RANK_BY = ("device", "process")
__all__ = ["MEM_KINDS", "RANK_BY", "NsysFileReport", "NsysOptions", "NsysReport", "import_nsys"]


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
            self.file = ExportFile(path, connect(path))
            f = self.file
            if not ({KERNEL_TABLE, MEMCPY_TABLE, MEMSET_TABLE} & f.tables):
                raise InputFormatError(
                    f"{path}: no {KERNEL_TABLE} table (the report holds no CUDA activity); profile with "
                    "nsys profile --trace=cuda,nvtx and export again"
                )
            self.origin = time_origin(f)
            self.markers = read_markers(f, step_rx, layer_rx, options.chunk_rows, self.skipped)
            needs_launch = self.markers.kind.size > 0
            self.launches = (
                read_launches(f, options.chunk_rows)
                if needs_launch
                else Launches(np.zeros(0, np.int64), np.zeros(0, np.int64))
            )
            self.rank_keys = self._rank_keys()
            self.devices = self._devices()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise sql_error(path, exc) from None
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
            q = table_sql(self.file, table)
            if q is None or col not in q[1]:
                continue
            expr = "deviceId" if col == "deviceId" else "globalPid >> 24"
            valid = valid_times(q[1])
            if col == "globalPid":
                valid += f" AND {IS_INT.format(c='globalPid')} AND globalPid >= 0"
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
            q = table_sql(f, table)
            if table not in f.tables:
                continue
            what = {KERNEL_TABLE: "kernel", MEMCPY_TABLE: "memcpy", MEMSET_TABLE: "memset"}[table]
            if q is None:
                n = count_rows(f, table, "1")
                if n:
                    self.skipped[f"{what} rows (the table lacks start/end/deviceId/streamId columns)"] += n
                continue
            cols = q[1]
            valid = valid_times(cols)
            if table == KERNEL_TABLE:
                valid += f" AND {IS_INT.format(c=kernel_name_column(cols))}"
            n = count_rows(f, table, f"NOT ({valid})")
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
            q = table_sql(f, table, where_extra)
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
                    codes = self._label_codes(*memcpy_names(a[:, 6], a[:, 7], a[:, 8]))
                else:
                    codes = self._label_codes(*memset_names(a[:, 6]))
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
        steps.append(by_process(reader.markers, 0, rows.proc, launch))
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
            step = by_process(reader.markers, 0, rows.proc, launch)
            layer = by_process(reader.markers, 1, rows.proc, launch)
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
                sizes = by_process(reader.markers, 2, rows.proc[comm], launch[comm])
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
        raise sql_error(reader.path, exc) from None
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
