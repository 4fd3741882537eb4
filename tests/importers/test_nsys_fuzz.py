"""Fuzz the nsys reader: exports whose activity rows hold any SQLite value (SQLite columns are not
typed: text, reals, NULLs and huge integers all fit), and corrupted files.

Invariants: the rows read are exactly those an independent predicate accepts, in table order, with
the names and durations written; a corrupted file gives rows or one InputFormatError, nothing else.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.importers.nsys_layout import NsysBuilder
from tracekit.errors import InputFormatError
from tracekit.importers.categories import load_rules
from tracekit.importers.kineto import DEFAULT_LAYER_PATTERN, DEFAULT_STEP_PATTERN
from tracekit.importers.nsys import MEM_KINDS, NsysOptions, _Reader

_DIR = Path(tempfile.mkdtemp(prefix="nsys-fuzz-"))
_RULES = load_rules()
_STEP, _LAYER = re.compile(DEFAULT_STEP_PATTERN), re.compile(DEFAULT_LAYER_PATTERN)

# nsys declares these columns NOT NULL; anything else SQLite stores goes
values = st.one_of(
    st.integers(min_value=-5, max_value=3_000),
    st.sampled_from([2**62, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=10),
    st.text(max_size=3),
    st.binary(max_size=2),
)
names = st.sampled_from([1, 2, 3, 77])  # 77 is not in StringIds
kernel_row = st.fixed_dictionaries(
    {"start": values, "end": values, "deviceId": values, "streamId": values, "demangledName": names}
)
memset_row = st.fixed_dictionaries(
    {
        "start": values,
        "end": values,
        "deviceId": values,
        "streamId": values,
        "memKind": st.one_of(values, st.none()),
    }
)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _valid(r: dict[str, Any]) -> bool:
    """Independent statement of which rows become kernel rows."""
    return (
        _int(r["start"])
        and _int(r["end"])
        and 0 <= r["start"] <= r["end"] < 2**62
        and _int(r["deviceId"])
        and r["deviceId"] >= 0
        and _int(r["streamId"])
    )


def _write(kernels: list[dict[str, Any]], memsets: list[dict[str, Any]]) -> Path:
    b = NsysBuilder()
    for text in ("void a(int)", "void b<int>(int)", "ncclDevKernel_AllReduce_Sum_f32_RING_LL()"):
        b.sid(text)
    path = b.write(_DIR / "f.sqlite")
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = OFF")
    con.execute("PRAGMA synchronous = OFF")
    for r in kernels:
        con.execute(
            "INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, end, deviceId, contextId, streamId, demangledName, "
            "shortName, registersPerThread, gridX, gridY, gridZ, blockX, blockY, blockZ, staticSharedMemory, "
            "dynamicSharedMemory, localMemoryPerThread, localMemoryTotal, gridId) "
            "VALUES (?, ?, ?, 1, ?, ?, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
            (r["start"], r["end"], r["deviceId"], r["streamId"], r["demangledName"]),
        )
    for r in memsets:
        con.execute(
            "INSERT INTO CUPTI_ACTIVITY_KIND_MEMSET (start, end, deviceId, contextId, streamId, value, bytes, "
            "memKind) VALUES (?, ?, ?, 1, ?, 0, 8, ?)",
            (r["start"], r["end"], r["deviceId"], r["streamId"], r["memKind"]),
        )
    con.commit()
    con.close()
    return path


def _stored(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    con = sqlite3.connect(path)
    try:
        k = con.execute(
            "SELECT start, end, deviceId, streamId, demangledName FROM CUPTI_ACTIVITY_KIND_KERNEL ORDER BY rowid"
        ).fetchall()
        m = con.execute(
            "SELECT start, end, deviceId, streamId, memKind FROM CUPTI_ACTIVITY_KIND_MEMSET ORDER BY rowid"
        ).fetchall()
    finally:
        con.close()
    keys = ("start", "end", "deviceId", "streamId")
    return (
        [dict(zip((*keys, "demangledName"), r, strict=True)) for r in k],
        [dict(zip((*keys, "memKind"), r, strict=True)) for r in m],
    )


def _read(path: Path) -> list[tuple[str, int]]:
    reader = _Reader(path, NsysOptions(chunk_rows=4), _STEP, _LAYER, _RULES)
    try:
        out = []
        for rows in reader.rows():
            out += [
                (reader.name_list[c], int(d)) for c, d in zip(rows.codes, rows.end - rows.start, strict=True)
            ]
        return out
    finally:
        reader.file.con.close()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernels=st.lists(kernel_row, max_size=7), memsets=st.lists(memset_row, max_size=3))
def test_rows_read_are_exactly_the_valid_ones(
    kernels: list[dict[str, Any]], memsets: list[dict[str, Any]]
) -> None:
    path = _write(kernels, memsets)
    kernels, memsets = _stored(path)  # as SQLite stored them (0.0 in an INTEGER column is 0)
    strings = {1: "void a(int)", 2: "void b<int>(int)", 3: "ncclDevKernel_AllReduce_Sum_f32_RING_LL()"}
    want = [
        (strings[r["demangledName"]], r["end"] - r["start"])
        for r in kernels
        if _valid(r) and r["demangledName"] in strings
    ]
    want += [
        (
            f"Memset ({MEM_KINDS.get(r['memKind'], '<unknown>') if _int(r['memKind']) else '<unknown>'})",
            r["end"] - r["start"],
        )
        for r in memsets
        if _valid(r)
    ]
    assert _read(path) == want


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kernels=st.lists(kernel_row, min_size=1, max_size=5),
    at=st.floats(min_value=0.0, max_value=1.0),
    junk=st.binary(min_size=1, max_size=64),
)
def test_corrupted_files_give_rows_or_one_error(
    kernels: list[dict[str, Any]], at: float, junk: bytes
) -> None:
    path = _write(kernels, [])
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * at)
    raw[i : i + len(junk)] = junk
    path.write_bytes(bytes(raw))
    try:
        got = _read(path)
    except InputFormatError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    except sqlite3.DatabaseError as exc:  # only when the damage is met while streaming rows
        raise AssertionError(f"raw SQLite error escaped: {exc}") from None
    for name, dur in got:
        assert isinstance(name, str) and dur >= 0
