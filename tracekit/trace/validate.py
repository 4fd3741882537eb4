"""Check a trace: every problem becomes one line naming the file and the fix.

First what needs no decoding (:mod:`tracekit.trace.health`: the writers' statuses against the files,
footers against the schema); then every page of every sound part file is decoded once, checking the
page checksums a tracekit writer stores, the nulls of required columns, and the data's own
invariants: ids within the manifest's ranges, finite gate weights, no duplicated keys (rows of the steps table must come in step order per rank; in the other tables
duplicates are looked for while rows come in step order, as every tracekit writer writes them).
Memory is bounded by one batch plus one step's keys per rank; time grows with
the files, never with a declared number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from tracekit.errors import TraceError, first_line
from tracekit.schema.tables import TABLE_NAMES
from tracekit.trace import store
from tracekit.trace.health import Footer, Problem, id_bounds, quick_check
from tracekit.trace.reader import Trace
from tracekit.trace.store import Location, RemotePath

__all__ = ["Problem", "ValidationResult", "validate"]

#: Rows decoded per batch.
BATCH_ROWS = 262_144
#: Key columns besides rank and step, per table; steps must strictly increase in ``steps``.
_KEYS: dict[str, tuple[str, ...]] = {
    "steps": (),
    "tokens": ("token_index",),
    "routing": ("layer", "token_index"),
    "expert_load": ("layer", "expert"),
}


@dataclass(frozen=True, kw_only=True)
class ValidationResult:
    path: str
    problems: tuple[Problem, ...]
    #: Notes that are not problems (e.g. files without page checksums).
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def incomplete(self) -> bool:
        return any(p.kind == "incomplete" for p in self.problems)


def validate(path: str | os.PathLike[str] | RemotePath) -> ValidationResult:
    """Validate a trace (a directory or a URI). Raises only when ``path`` is not a trace at all (or
    its remote store cannot be reached)."""
    root = store.location(path)
    try:
        trace = Trace(root, warn=False)
    except TraceError as exc:
        if "not a tracekit trace" in str(exc) or "no such file" in str(exc):
            raise
        return ValidationResult(path=str(root), problems=(Problem(path=str(root), message=str(exc)),))
    problems, footers = quick_check(trace)
    unchecked = 0
    total = 0
    for table in TABLE_NAMES:
        inv = _Invariants(trace, table)
        for ft in footers.get(table, []):
            total += 1
            if ft.page_checksums is False:
                unchecked += 1
            if not ft.sound:
                continue
            problems += _decode(trace, ft, inv)
    notes = []
    if unchecked:
        notes.append(
            f"{unchecked} of {total} part files have no page checksums, so damage inside their pages "
            "that still decodes cannot be detected (files written by tracekit since page checksums were "
            "added carry them)"
        )
    return ValidationResult(path=str(root), problems=tuple(problems), notes=tuple(notes))


def _decode(trace: Trace, ft: Footer, inv: _Invariants) -> list[Problem]:
    """Decode every page of one file (checking page checksums where stored), counting the nulls of
    required columns and feeding the invariant checks."""
    expected = trace.arrow_schema(ft.table)
    out: list[Problem] = []
    try:
        pf = store.parquet_file(ft.path, page_checksum_verification=True)
        names = set(pf.schema_arrow.names)
        required = [f.name for f in expected if not f.nullable and f.name in names]
        nulls = dict.fromkeys(required, 0)
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
            for name in required:
                nulls[name] += batch.column(name).null_count
            if not inv.failed:
                problem = inv.feed(batch, ft.path)
                if problem is not None:
                    out.append(problem)
    except (pa.ArrowException, OSError, ValueError) as exc:
        return [
            Problem(
                path=str(ft.path),
                message=f"damaged data inside the file ({first_line(exc)}); re-record the trace or "
                "delete this part",
            )
        ]
    out += [
        Problem(path=str(ft.path), message=f"column {name!r} has {nulls[name]} null values but is required")
        for name in required
        if nulls[name]
    ]
    return out


@dataclass
class _Carry:
    """Per rank: the last step seen and the keys of that step so far."""

    step: int
    keys: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))


class _Invariants:
    """Streaming checks of one table's data over its files in writer order; stops at the first problem."""

    def __init__(self, trace: Trace, table: str) -> None:
        self.trace = trace
        self.table = table
        self.failed = False
        self.bounds = id_bounds(trace)
        model = trace.manifest.model
        self.moe_layers = np.asarray(sorted(model.moe_layers), dtype=np.int64)
        self.carry: dict[int, _Carry] = {}
        self.unordered: set[int] = set()

    def _fail(self, path: Location, message: str) -> Problem:
        self.failed = True
        return Problem(path=str(path), message=message)

    def feed(self, batch: pa.RecordBatch, path: Location) -> Problem | None:
        t = self.table
        if t in ("routing", "expert_load", "placement"):
            col = "expert_ids" if t == "routing" else "expert"
            if col in batch.schema.names:
                arr = batch.column(col)
                values = arr.flatten() if t == "routing" else arr
                problem = self._range(values, col, path)
                if problem:
                    return problem
            if "layer" in batch.schema.names:
                problem = self._range(batch.column("layer"), "layer", path)
                if problem:
                    return problem
                if t != "placement" and self.moe_layers.size:
                    layers = _ints(batch.column("layer"))
                    bad = ~np.isin(layers, self.moe_layers)
                    if bad.any():
                        return self._fail(
                            path,
                            f"column 'layer' holds layer {int(layers[bad][0])}, which is not an MoE layer of "
                            f"the manifest's model ({_short(self.moe_layers)}); the file is from another model",
                        )
        if t == "routing" and "gate_weights" in batch.schema.names:
            w = batch.column("gate_weights").flatten()
            w = w.drop_null() if w.null_count else w
            if len(w) and not bool(pc.all(pc.is_finite(w)).as_py()):
                return self._fail(path, "column 'gate_weights' holds NaN or infinite values")
        if t in _KEYS and {"rank", "step", *_KEYS[t]} <= set(batch.schema.names):
            return self._keys(batch, path)
        return None

    def _range(self, values: pa.Array, name: str, path: Location) -> Problem | None:
        if len(values) == 0 or values.null_count == len(values):
            return None
        mm = pc.min_max(values)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        low, high = self.bounds[name]
        if lo < low or hi >= high:
            what = "experts" if "expert" in name else "layers"
            return self._fail(
                path,
                f"column {name!r} holds values {lo}..{hi}, outside {low}..{high - 1} (the manifest's {what}); "
                "the file is damaged or from another model",
            )
        return None

    def _keys(self, batch: pa.RecordBatch, path: Location) -> Problem | None:
        rank = _ints(batch.column("rank"))
        step = _ints(batch.column("step"))
        if step.size and step.min() < 0:
            return self._fail(path, f"column 'step' holds negative step {int(step.min())}")
        extra = [_ints(batch.column(c)) for c in _KEYS[self.table]]
        key = np.zeros(rank.size, dtype=np.uint64)
        for values in extra:  # each key column fits 32 bits after the offset
            key = (key << np.uint64(32)) | (values + 2**31).astype(np.uint64)
        strict = self.table == "steps"
        order = np.argsort(rank, kind="stable")
        cuts = np.flatnonzero(np.diff(rank[order])) + 1
        for seg in np.split(order, cuts):
            if seg.size == 0:
                continue
            r = int(rank[seg[0]])
            if r in self.unordered:
                continue
            s, k = step[seg], key[seg]
            prev = self.carry.get(r)
            d = np.diff(s)
            back = (d < 0).any() or (prev is not None and s[0] < prev.step)
            if back and not strict:
                # rows of a table other than steps may come in any order; duplicates are looked for
                # only while they come in step order (as every tracekit writer writes them)
                self.unordered.add(r)
                self.carry.pop(r, None)
                continue
            if back:
                return self._fail(
                    path,
                    f"steps of rank {r} go backwards (step {_first_back(s, prev)} after a later one); "
                    "rows are out of order or the file is from another run",
                )
            if strict and ((d == 0).any() or (prev is not None and s[0] == prev.step)):
                dup = int(s[np.flatnonzero(d == 0)[0]]) if (d == 0).any() else int(s[0])
                return self._fail(
                    path, f"step {dup} of rank {r} appears twice; the steps table is duplicated"
                )
            if not strict:
                if prev is not None:
                    same = s == prev.step
                    if same.any() and np.isin(k[same], prev.keys).any():
                        return self._dup(path, r, prev.step)
                idx = np.lexsort((k, s))
                ss, kk = s[idx], k[idx]
                eq = (ss[1:] == ss[:-1]) & (kk[1:] == kk[:-1])
                if eq.any():
                    return self._dup(path, r, int(ss[1:][eq][0]))
            last = int(s[-1])
            tail = k[s == last]
            if prev is not None and prev.step == last:
                tail = np.concatenate([prev.keys, tail])
            self.carry[r] = _Carry(step=last, keys=tail)
        return None

    def _dup(self, path: Location, rank: int, step: int) -> Problem:
        cols = ", ".join(_KEYS[self.table])
        return self._fail(
            path,
            f"rows repeat in step {step} of rank {rank} (same {cols}); the data is duplicated "
            "(a part file copied or written twice)",
        )


def _ints(arr: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.int64]:
    if arr.null_count:
        arr = arr.fill_null(0)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)


def _first_back(s: npt.NDArray[np.int64], prev: _Carry | None) -> int:
    if prev is not None and s[0] < prev.step:
        return int(s[0])
    return int(s[1:][np.diff(s) < 0][0])


def _short(layers: npt.NDArray[np.int64]) -> str:
    vals = [int(x) for x in layers[:8]]
    return ", ".join(map(str, vals)) + (", ..." if layers.size > 8 else "")
