"""Import PyTorch profiler (Kineto) Chrome-trace JSON into the ``kernels`` table.

One file per rank, plain or gzip. The file is streamed (:mod:`._jsonstream`): each event is looked at
once and kept as a few numbers in compact numpy chunks, so memory grows with the number of kept
kernels (about 60 bytes each), never with the JSON text. Per file:

- GPU activity (``cat`` kernel, gpu_memcpy, gpu_memset) becomes kernel rows (``--events gpu``); CPU
  operators (``cat`` cpu_op) become rows with ``--events cpu``; ``all`` keeps both.
- Categories come from the kernel name (:mod:`.categories`).
- Collective metadata (``Collective name``, ``dtype``, ``In/Out msg nelems``, ``Group size``) is read
  from the kernel's own args, else from the ``record_param_comms`` CPU operator with the same
  ``External id``; an NCCL kernel without either gets its collective from its name only.
- User annotations (``user_annotation`` / ``gpu_user_annotation`` ranges, i.e. record_function)
  whose name matches the step or layer pattern become markers; each row takes the step and layer of
  the innermost marker containing it: GPU rows by their own start among GPU-side markers, or by their
  launch time (the ``cuda_runtime`` event with the same correlation id) among CPU-side markers when
  the trace has no GPU-side ones; CPU rows by their start among CPU-side markers.
- Times: Kineto's ``ts``/``dur`` are microseconds; rows get int64 nanoseconds since the earliest
  complete event of the same file.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tracekit.errors import InputFormatError, UsageError
from tracekit.importers._arch import unknown_arch
from tracekit.importers._jsonstream import StreamState, clean_text, iter_trace_events
from tracekit.importers._markers import InferredLayers, assign_innermost, infer_layers, launch_times
from tracekit.importers._summary import KernelSummary, merge, summarize
from tracekit.importers.categories import (
    MEMCPY_EVENT_CATS,
    KernelRules,
    load_rules,
    nccl_collective_from_name,
)
from tracekit.schema import Manifest, ModelArch, ParallelLayout
from tracekit.trace import TraceWriter

DEFAULT_STEP_PATTERN = r"^ProfilerStep#(\d+)$"
DEFAULT_LAYER_PATTERN = r"(?:^|[^A-Za-z0-9])layers?[._ #\-]?(\d+)(?:$|[^0-9])"
EVENT_KINDS = ("gpu", "cpu", "all")
RANK_SOURCES = ("filename", "order")

_GPU_CATS = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
_CPU_CATS = frozenset({"cpu_op"})
_ANNOTATION_CATS = {"user_annotation": False, "gpu_user_annotation": True}  # -> is GPU-side
_LAUNCH_CATS = frozenset({"cuda_runtime", "cuda_driver"})
_RANK_IN_NAME = re.compile(r"rank[-_.]?(\d+)", re.IGNORECASE)
_CHUNK = 1 << 16
_MAX_NS = 2.0**62

#: c10 ScalarType names (as the profiler writes them) -> (torch dtype name, bytes per element).
_DTYPES: dict[str, tuple[str, int]] = {
    "Float": ("float32", 4),
    "Double": ("float64", 8),
    "Half": ("float16", 2),
    "BFloat16": ("bfloat16", 2),
    "Int": ("int32", 4),
    "Long": ("int64", 8),
    "Short": ("int16", 2),
    "Char": ("int8", 1),
    "Byte": ("uint8", 1),
    "Bool": ("bool", 1),
    "Float8_e4m3fn": ("float8_e4m3fn", 1),
    "Float8_e5m2": ("float8_e5m2", 1),
    "Float8_e4m3fnuz": ("float8_e4m3fnuz", 1),
    "Float8_e5m2fnuz": ("float8_e5m2fnuz", 1),
    "ComplexFloat": ("complex64", 8),
    "ComplexDouble": ("complex128", 16),
}


@dataclass(frozen=True, kw_only=True)
class KinetoOptions:
    """How to read Kineto files."""

    #: Regular expression over annotation names; its first group is the step number.
    step_pattern: str = DEFAULT_STEP_PATTERN
    #: Regular expression over annotation names; its first group is the decoder layer number.
    layer_pattern: str = DEFAULT_LAYER_PATTERN
    #: Which events become rows: gpu (kernels, copies), cpu (CPU operators) or all.
    events: str = "gpu"
    #: How each file's rank is found: from a ``rank<N>`` in its name, or from the order given.
    rank_from: str = "filename"
    #: Regular expression over annotation names: when set, only rows inside a matching range are
    #: kept (GPU rows by their launch or their own start, as for layers): e.g. the forward chunks of
    #: a training profile (``\(F\)$``). None keeps every row.
    keep_pattern: str | None = None


@dataclass(frozen=True, kw_only=True)
class FileReport:
    """What one input file gave."""

    path: Path
    rank: int
    rows: int
    #: Reason -> number of events not imported because of it.
    skipped: dict[str, int]
    #: Events present but not row material (metadata, flows, CPU ops under --events gpu, ...), by kind.
    ignored: dict[str, int]
    step_markers: int
    layer_markers: int
    #: Names with bytes that are not UTF-8 (kept with \\xNN escapes).
    escaped_names: int
    truncated: str | None
    #: Kernel time by category and the unclassified names of this file.
    summary: KernelSummary = field(default_factory=KernelSummary)
    #: How layers were found when the file had no layer markers (None: it had markers).
    layers_note: str | None = None


@dataclass(frozen=True, kw_only=True)
class ImportReport:
    """What an import wrote."""

    out: Path
    files: tuple[FileReport, ...]
    rows: int
    manifest: Manifest = field(repr=False)
    #: Kernel time by category and the unclassified names, over all files.
    summary: KernelSummary = field(default_factory=KernelSummary)


def compile_marker_pattern(pattern: str, option: str) -> re.Pattern[str]:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{option} {pattern!r} is not a valid regular expression: {exc}") from None
    if rx.groups < 1:
        raise UsageError(f"{option} {pattern!r} needs one group capturing the number, e.g. 'layer_(\\d+)'")
    return rx


def ranks_for(files: Sequence[Path], rank_from: str) -> list[int]:
    """The rank of each input file."""
    if rank_from not in RANK_SOURCES:
        raise UsageError(f"--rank-from {rank_from!r}: valid values are {', '.join(RANK_SOURCES)}")
    if rank_from == "order":
        return list(range(len(files)))
    if len(files) == 1 and not _RANK_IN_NAME.search(files[0].name):
        return [0]
    ranks = []
    for f in files:
        found = _RANK_IN_NAME.findall(f.name)
        if not found:
            raise UsageError(
                f"{f}: cannot tell its rank from the file name (no 'rank<N>' in it); rename the files "
                "or pass --rank-from order to number them in the order given"
            )
        ranks.append(int(found[-1]))
    dup = [r for r, n in Counter(ranks).items() if n > 1]
    if dup:
        raise UsageError(f"two input files have rank {dup[0]} in their names; give one file per rank")
    if 0 not in ranks:
        raise UsageError(
            f"no input file is rank 0 (ranks {sorted(ranks)}); include rank 0 or pass --rank-from order"
        )
    return ranks


class _Chunks:
    """Column values appended one event at a time, stored as numpy chunks."""

    def __init__(self, dtypes: dict[str, Any]) -> None:
        self.dtypes = dtypes
        self.pending: dict[str, list[Any]] = {k: [] for k in dtypes}
        self.done: dict[str, list[np.ndarray]] = {k: [] for k in dtypes}
        self.n = 0

    def add(self, **values: Any) -> None:
        for k, v in values.items():
            self.pending[k].append(v)
        self.n += 1
        if len(self.pending["ts"]) >= _CHUNK:
            self._seal()

    def _seal(self) -> None:
        for k, vals in self.pending.items():
            self.done[k].append(np.asarray(vals, dtype=self.dtypes[k]))
            self.pending[k] = []

    def arrays(self) -> dict[str, np.ndarray]:
        self._seal()
        return {
            k: (np.concatenate(v) if v else np.zeros(0, dtype=self.dtypes[k])) for k, v in self.done.items()
        }


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _int_or(value: Any, default: int = -1) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else default
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**62:
        return int(value)
    return default


@dataclass
class _CommInfo:
    collective: str | None
    dtype: str | None
    message_bytes: int | None
    group_size: int | None


def _comm_info(args: dict[str, Any]) -> _CommInfo | None:
    coll = args.get("Collective name")
    if not isinstance(coll, str):
        return None
    raw_dtype = args.get("dtype")
    dtype, size = _DTYPES.get(raw_dtype, (None, 0)) if isinstance(raw_dtype, str) else (None, 0)
    if dtype is None and isinstance(raw_dtype, str) and raw_dtype:
        dtype = clean_text(raw_dtype)[0]
    nel = [_int_or(args.get(k)) for k in ("In msg nelems", "Out msg nelems")]
    nel = [n for n in nel if n >= 0]
    message_bytes = max(nel) * size if nel and size else None
    group = _int_or(args.get("Group size"))
    return _CommInfo(
        collective=clean_text(coll)[0],
        dtype=dtype,
        message_bytes=message_bytes,
        group_size=group if group > 0 else None,
    )


class _FileReader:
    """Reads one Kineto file into columns."""

    def __init__(
        self,
        path: Path,
        rank: int,
        options: KinetoOptions,
        step_rx: re.Pattern[str],
        layer_rx: re.Pattern[str],
        keep_rx: re.Pattern[str] | None = None,
    ) -> None:
        self.path = path
        self.rank = rank
        self.options = options
        self.step_rx = step_rx
        self.layer_rx = layer_rx
        self.keep_rx = keep_rx
        self.want_gpu = options.events in ("gpu", "all")
        self.want_cpu = options.events in ("cpu", "all")
        self.rows = _Chunks(
            {
                "ts": np.float64,
                "dur": np.float64,
                "name": np.int32,
                "gpu": np.bool_,
                "device": np.int64,
                "stream": np.int64,
                "corr": np.int64,
                "ext": np.int64,
            }
        )
        self.markers = _Chunks(
            {"ts": np.float64, "end": np.float64, "kind": np.int8, "value": np.int64, "gpu": np.bool_}
        )
        self.launch = _Chunks({"ts": np.float64, "corr": np.int64})
        self.names: dict[str, int] = {}
        self.name_list: list[str] = []
        self.escaped = 0
        self.row_comm: dict[int, _CommInfo] = {}
        self.ext_comm: dict[int, _CommInfo] = {}
        self.skipped: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.cpu_ops_seen = 0
        self.memcpy_names: set[int] = set()
        self.min_ts = math.inf

    def _name_id(self, name: str) -> int:
        code = self.names.get(name)
        if code is None:
            clean, escaped = clean_text(name)
            code = len(self.name_list)
            self.names[name] = code
            self.name_list.append(clean)
            if escaped:
                self.escaped += 1
        return code

    def read(self) -> StreamState:
        state = StreamState()
        for ev in iter_trace_events(self.path, state):
            self._event(ev)
        if not state.found_events:
            raise InputFormatError(
                f"{self.path}: no 'traceEvents' array; this is not a Chrome-trace JSON file "
                "(give the file written by torch.profiler's export_chrome_trace or tensorboard_trace_handler)"
            )
        if state.non_objects:
            self.skipped["traceEvents element that is not an object"] += state.non_objects
        return state

    def _event(self, ev: dict[str, Any]) -> None:
        ph = ev.get("ph")
        cat = ev.get("cat")
        if ph != "X":
            self.ignored[f"ph={ph!s}" if not isinstance(cat, str) else f"{cat} (ph={ph!s})"] += 1
            return
        kind_gpu = cat in _GPU_CATS
        kind_cpu = cat in _CPU_CATS
        is_annotation = cat in _ANNOTATION_CATS
        is_launch = cat in _LAUNCH_CATS
        if not isinstance(cat, str) or not (kind_gpu or kind_cpu or is_annotation or is_launch):
            self.ignored[str(cat) if isinstance(cat, str) else "event without a category"] += 1
            ts = _num(ev.get("ts"))
            if ts is not None:
                self.min_ts = min(self.min_ts, ts)
            return
        name = ev.get("name")
        ts = _num(ev.get("ts"))
        dur = _num(ev.get("dur"))
        if not isinstance(name, str) or ts is None or dur is None or dur < 0:
            what = "name" if not isinstance(name, str) else "ts" if ts is None else "dur"
            self.skipped[f"{cat} event with a missing or invalid {what}"] += 1
            return
        self.min_ts = min(self.min_ts, ts)
        args = ev.get("args")
        if not isinstance(args, dict):
            args = {}
        if is_launch:
            corr = _int_or(args.get("correlation"))
            if corr >= 0:
                self.launch.add(ts=ts, corr=corr)
            return
        if is_annotation:
            gpu_side = _ANNOTATION_CATS[cat]
            if self.keep_rx is not None and self.keep_rx.search(name):
                self.markers.add(ts=ts, end=ts + dur, kind=_KEEP, value=1, gpu=gpu_side)
            for kind, rx in ((0, self.step_rx), (1, self.layer_rx)):
                m = rx.search(name)
                if m:
                    text = m.group(1)
                    value = int(text) if text and text.isdecimal() else -1
                    if not 0 <= value < (2**31 if kind == 0 else 2**15):
                        self.skipped[
                            f"{('step', 'layer')[kind]} annotation whose number is not a valid id"
                        ] += 1
                        continue
                    self.markers.add(ts=ts, end=ts + dur, kind=kind, value=value, gpu=gpu_side)
            return
        if kind_cpu:
            self.cpu_ops_seen += 1
            info = _comm_info(args)
            ext = _int_or(args.get("External id"))
            if info is not None and ext >= 0:
                self.ext_comm[ext] = info
            if not self.want_cpu:
                self.ignored["cpu_op (not imported with --events gpu)"] += 1
                return
            self._row(name, ts, dur, args, gpu=False, info=info)
            return
        if not self.want_gpu:
            self.ignored[f"{cat} (not imported with --events cpu)"] += 1
            return
        self._row(name, ts, dur, args, gpu=True, info=_comm_info(args), cat=cat)

    def _row(
        self,
        name: str,
        ts: float,
        dur: float,
        args: dict[str, Any],
        *,
        gpu: bool,
        info: _CommInfo | None,
        cat: str = "",
    ) -> None:
        code = self._name_id(name)
        if info is not None:
            self.row_comm[self.rows.n] = info
        self.rows.add(
            ts=ts,
            dur=dur,
            name=code,
            gpu=gpu,
            device=_int_or(args.get("device")) if gpu else -1,
            stream=_int_or(args.get("stream")) if gpu else -1,
            corr=_int_or(args.get("correlation")),
            ext=_int_or(args.get("External id")),
        )
        if cat in MEMCPY_EVENT_CATS:
            self.memcpy_names.add(code)


@dataclass(frozen=True, kw_only=True)
class _Collected:
    """The kernels columns of one file, what they hold by category, and how layers were found."""

    columns: dict[str, Any]
    summary: KernelSummary
    #: Set when the file had no layer markers and layers were inferred (or could not be).
    inferred: InferredLayers | None


#: Marker kind of a --keep-pattern range (0: step, 1: layer).
_KEEP = 2


def _in_marked(reader: _FileReader, cols: dict[str, np.ndarray], kind: int) -> np.ndarray:
    """Per row, the value of the innermost marker of ``kind`` containing it (-1: none): GPU rows by
    their own start among GPU-side markers, else by their launch among CPU-side ones; CPU rows by
    their start among CPU-side markers."""
    marks = reader.markers.arrays()
    n = cols["ts"].size
    out = np.full(n, -1, dtype=np.int64)
    gpu = cols["gpu"]
    sel = marks["kind"] == kind
    gpu_m = sel & marks["gpu"]
    cpu_m = sel & ~marks["gpu"]
    if gpu_m.any():
        out[gpu] = assign_innermost(
            cols["ts"][gpu], marks["ts"][gpu_m], marks["end"][gpu_m], marks["value"][gpu_m]
        )
    elif cpu_m.any() and gpu.any():
        launch = reader.launch.arrays()
        times = launch_times(cols["corr"][gpu], launch["corr"], launch["ts"])
        out[gpu] = assign_innermost(times, marks["ts"][cpu_m], marks["end"][cpu_m], marks["value"][cpu_m])
    if cpu_m.any() and (~gpu).any():
        out[~gpu] = assign_innermost(
            cols["ts"][~gpu], marks["ts"][cpu_m], marks["end"][cpu_m], marks["value"][cpu_m]
        )
    return out


def _collect(
    reader: _FileReader, rules: KernelRules | None = None, arch: ModelArch | None = None
) -> _Collected:
    """Columns of the kernels table for one file."""
    rules = rules or load_rules()
    cols = reader.rows.arrays()
    t0 = reader.min_ts if math.isfinite(reader.min_ts) else 0.0
    start_f = (cols["ts"] - t0) * 1000.0
    dur_f = cols["dur"] * 1000.0
    fits = (np.abs(start_f) < _MAX_NS) & (dur_f < _MAX_NS) & np.isfinite(start_f) & np.isfinite(dur_f)
    if not fits.all():
        reader.skipped["event whose time does not fit int64 nanoseconds"] += int((~fits).sum())
    if reader.keep_rx is not None:
        inside = _in_marked(reader, cols, _KEEP) >= 0
        reader.ignored["rows outside the --keep-pattern ranges"] += int((fits & ~inside).sum())
        fits &= inside
    if not fits.all():
        cols = {k: v[fits] for k, v in cols.items()}
        kept = np.flatnonzero(fits)
        new_index = {int(old): i for i, old in enumerate(kept.tolist())}
        reader.row_comm = {new_index[i]: info for i, info in reader.row_comm.items() if i in new_index}
        start_f, dur_f = start_f[fits], dur_f[fits]
    n = cols["ts"].size
    start_ns = np.rint(start_f).astype(np.int64)
    dur_ns = np.rint(dur_f).astype(np.int64)
    names = np.array(reader.name_list, dtype=object)
    cat_of_name = np.array(
        [
            "memcpy" if i in reader.memcpy_names else rules.category_of(nm)
            for i, nm in enumerate(reader.name_list)
        ],
        dtype=object,
    )
    name_codes = cols["name"]

    marks = reader.markers.arrays()
    step = _in_marked(reader, cols, 0)
    layer = _in_marked(reader, cols, 1)

    inferred = None
    if n and not (marks["kind"] == 1).any():
        inferred = infer_layers(
            cols["ts"],
            name_codes,
            cols["stream"],
            cat_of_name[name_codes] != "memcpy",
            step,
            arch=arch,
        )
        layer = inferred.layer
        if not (marks["kind"] == 0).any() and inferred.steps_inferred:
            step = inferred.step
    category = cat_of_name[name_codes] if n else np.zeros(0, dtype=object)
    collective = np.full(n, None, dtype=object)
    dtype = np.full(n, None, dtype=object)
    message_bytes = np.full(n, -1, dtype=np.int64)
    group_size = np.full(n, -1, dtype=np.int64)
    comm_rows = np.flatnonzero(category == "collective") if n else np.zeros(0, dtype=np.int64)
    for i in comm_rows.tolist():  # collectives are a small share of kernels
        info = reader.row_comm.get(i) or reader.ext_comm.get(int(cols["ext"][i]))
        if info is None:
            collective[i] = nccl_collective_from_name(reader.name_list[name_codes[i]])
            continue
        collective[i], dtype[i] = info.collective, info.dtype
        if info.message_bytes is not None:
            message_bytes[i] = info.message_bytes
        if info.group_size is not None:
            group_size[i] = info.group_size

    def nullable(a: np.ndarray, dt: str) -> Any:
        import pyarrow as pa

        return pa.array(a, type=pa.type_for_alias(dt), mask=a < 0)

    columns = {
        "device": nullable(cols["device"], "int32"),
        "stream": nullable(cols["stream"], "int64"),
        "name": names[name_codes] if n else np.zeros(0, dtype=object),
        "category": category,
        "start_ns": start_ns,
        "duration_ns": dur_ns,
        "step": nullable(step, "int32"),
        "layer": nullable(layer, "int16"),
        "correlation": nullable(cols["corr"], "int64"),
        "collective": collective,
        "message_bytes": nullable(message_bytes, "int64"),
        "dtype": dtype,
        "group_size": nullable(group_size, "int32"),
    }
    summary = summarize(names, name_codes, cat_of_name, dur_ns)
    return _Collected(columns=columns, summary=summary, inferred=inferred)


def import_kineto(
    files: Sequence[str | Path],
    out: str | Path,
    *,
    model: ModelArch | None = None,
    options: KinetoOptions | None = None,
    overwrite: bool = False,
    rows_per_part: int = 500_000,
    on_file: Callable[[FileReport], None] | None = None,
    rules: KernelRules | None = None,
) -> ImportReport:
    """Import Kineto Chrome-trace files (one per rank) into a trace at ``out``.

    ``model``: the architecture that ran (``tracekit.models.get_model``); None records the explicit
    placeholder ``unknown`` (see docs/importers.md). ``on_file`` is called after each file.
    ``rules``: kernel classification rules (``load_rules(user_file)``; default the shipped ones).
    A file that keeps no row is refused (InputFormatError naming it).
    """
    options = options or KinetoOptions()
    rules = rules or load_rules()
    if options.events not in EVENT_KINDS:
        raise UsageError(f"--events {options.events!r}: valid values are {', '.join(EVENT_KINDS)}")
    paths = [Path(f) for f in files]
    if not paths:
        raise UsageError("no input files; give one Kineto JSON file per rank")
    for p in paths:
        if not p.is_file():
            raise UsageError(f"{p}: no such file; give the Kineto JSON (or .json.gz) written by the profiler")
    step_rx = compile_marker_pattern(options.step_pattern, "--step-pattern")
    layer_rx = compile_marker_pattern(options.layer_pattern, "--layer-pattern")
    keep_rx = None
    if options.keep_pattern is not None:
        try:
            keep_rx = re.compile(options.keep_pattern)
        except re.error as exc:
            raise UsageError(
                f"--keep-pattern {options.keep_pattern!r} is not a valid regular expression: {exc}"
            ) from None
    ranks = ranks_for(paths, options.rank_from)
    order = sorted(range(len(paths)), key=lambda i: ranks[i])
    arch = model or unknown_arch()
    detail: dict[str, Any] = {
        "importer": "kineto",
        "files": [str(paths[i]) for i in order],
        "ranks": [ranks[i] for i in order],
        "events": options.events,
        "step_pattern": options.step_pattern,
        "layer_pattern": options.layer_pattern,
        "keep_pattern": options.keep_pattern,
        "model_given": model is not None,
    }
    manifest = Manifest(
        model=arch,
        source="imported",
        source_detail=detail,
        parallel=ParallelLayout(world_size=max(ranks) + 1),
        clock="per rank: nanoseconds since the earliest complete event of that rank's Kineto file "
        "(Kineto ts/dur are microseconds); ranks are not aligned with each other",
        notes="" if model else "model unknown: imported without --model; kernels only, not re-timeable",
    )
    reports: list[FileReport] = []
    writer0: TraceWriter | None = None
    total = 0
    max_layer = -1
    try:
        for i in order:
            path, rank = paths[i], ranks[i]
            reader = _FileReader(path, rank, options, step_rx, layer_rx, keep_rx)
            state = reader.read()
            if reader.rows.n == 0 and options.events == "gpu" and reader.cpu_ops_seen:
                raise InputFormatError(
                    f"{path}: no GPU kernel events (a CPU-only profile with {reader.cpu_ops_seen} CPU "
                    "operators); pass --events cpu to import the CPU operators"
                )
            if reader.rows.n == 0:
                raise InputFormatError(f"{path}: no kernel rows kept ({_nothing_kept(reader)})")
            collected = _collect(reader, rules, model)
            columns = collected.columns
            n = len(columns["start_ns"])
            if n == 0:
                raise InputFormatError(f"{path}: no kernel rows kept ({_nothing_kept(reader)})")
            if n:
                layers = np.asarray(columns["layer"].fill_null(-1))
                max_layer = max(max_layer, int(layers.max()))
            writer = TraceWriter(out, manifest, rank=rank, rows_per_part=rows_per_part, overwrite=overwrite)
            for lo in range(0, n, rows_per_part):
                writer.append("kernels", {k: v[lo : lo + rows_per_part] for k, v in columns.items()})
            if rank == 0:
                writer.flush()
                writer0 = writer
            else:
                writer.close()
            report = FileReport(
                path=path,
                rank=rank,
                rows=n,
                skipped=dict(reader.skipped),
                ignored=dict(reader.ignored),
                step_markers=int((reader.markers.arrays()["kind"] == 0).sum()),
                layer_markers=int((reader.markers.arrays()["kind"] == 1).sum()),
                escaped_names=reader.escaped,
                truncated=state.truncated,
                summary=collected.summary,
                layers_note=collected.inferred.describe() if collected.inferred else None,
            )
            reports.append(report)
            total += n
            if on_file:
                on_file(report)
            del reader, columns, collected
        detail["skipped"] = {str(r.rank): r.skipped for r in reports if r.skipped}
        detail["truncated"] = {str(r.rank): r.truncated for r in reports if r.truncated}
        detail["layers_inferred"] = {str(r.rank): r.layers_note for r in reports if r.layers_note}
        if model is None and max_layer >= 0:
            manifest = manifest.replace(model=unknown_arch(num_layers=max_layer + 1))
        manifest = manifest.replace(source_detail=detail)
        assert writer0 is not None
        writer0.update_manifest(manifest)
        writer0.close()
        writer0 = None
    finally:
        if writer0 is not None:
            writer0.close(error="import failed")
    return ImportReport(
        out=Path(out),
        files=tuple(reports),
        rows=total,
        manifest=manifest,
        summary=merge(r.summary for r in reports),
    )


def _nothing_kept(reader: _FileReader) -> str:
    """Why a file gave no rows, in a few words."""
    parts = []
    if reader.skipped:
        parts.append(f"skipped {sum(reader.skipped.values())} broken events")
    wanted = {"gpu": "GPU kernel/memcpy/memset", "cpu": "CPU operator", "all": "GPU or CPU"}[
        reader.options.events
    ]
    seen = sum(reader.ignored.values())
    parts.append(f"no complete {wanted} events among {seen} other events")
    return "; ".join(parts) + "; check --events and that the profiler recorded activity"
