"""Fuzz the streaming Kineto reader: generated, truncated and corrupted documents.

Invariants: a whole document gives exactly the events an independent predicate accepts; a truncated
one gives exactly the accepted events written completely before the cut; a corrupted one gives rows
or one InputFormatError, nothing else.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.errors import InputFormatError
from tracekit.importers._jsonstream import clean_text
from tracekit.importers.kineto import (
    DEFAULT_LAYER_PATTERN,
    DEFAULT_STEP_PATTERN,
    KinetoOptions,
    _collect,
    _FileReader,
)

_DIR = Path(tempfile.mkdtemp(prefix="kineto-fuzz-"))
_STEP = re.compile(DEFAULT_STEP_PATTERN)
_LAYER = re.compile(DEFAULT_LAYER_PATTERN)
_ROW_CATS = ("kernel", "gpu_memcpy", "gpu_memset")

names = st.one_of(
    st.sampled_from(
        ["fused_moe_kernel", "ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "Memcpy DtoD", "ProfilerStep#3"]
    ),
    st.text(max_size=12),
    st.integers(),
    st.none(),
)
numbers = st.one_of(
    st.floats(min_value=-10.0, max_value=1e9, allow_nan=False),
    st.integers(min_value=-10, max_value=10**9),
    st.sampled_from([math.nan, math.inf, True, "12", None]),
)
event = st.fixed_dictionaries(
    {},
    optional={
        "ph": st.sampled_from(["X", "X", "X", "M", "i", "s", "f", 3, None]),
        "cat": st.sampled_from(
            [
                *_ROW_CATS,
                "cpu_op",
                "user_annotation",
                "gpu_user_annotation",
                "cuda_runtime",
                "ac2g",
                "weird",
                7,
                None,
            ]
        ),
        "name": names,
        "ts": numbers,
        "dur": numbers,
        "args": st.one_of(
            st.none(),
            st.lists(st.integers(), max_size=2),
            st.fixed_dictionaries(
                {},
                optional={
                    "stream": st.integers(-5, 50),
                    "correlation": st.integers(0, 5),
                    "device": st.sampled_from([0, "x", 1.5]),
                },
            ),
        ),
        "pid": st.integers(0, 3),
    },
)
elements = st.lists(st.one_of(event, event, event, st.integers(), st.text(max_size=4)), max_size=8)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _accepted(e: Any) -> bool:
    """Independent statement of which elements become rows under --events gpu."""
    return (
        isinstance(e, dict)
        and e.get("ph") == "X"
        and e.get("cat") in _ROW_CATS
        and isinstance(e.get("name"), str)
        and _is_number(e.get("ts"))
        and _is_number(e.get("dur"))
        and e["dur"] >= 0
    )


def _read(path: Path) -> tuple[list[str], Any]:
    reader = _FileReader(path, 0, KinetoOptions(events="gpu"), _STEP, _LAYER)
    state = reader.read()
    cols = _collect(reader).columns
    return list(cols["name"]), state


def _text(items: list[Any]) -> tuple[str, list[int]]:
    text = '{"schemaVersion": 1, "traceEvents": ['
    ends = []
    for i, e in enumerate(items):
        text += ("" if i == 0 else ", ") + json.dumps(e)
        ends.append(len(text))
    return text + "]}", ends


@settings(max_examples=1200, deadline=None)
@given(items=elements, cut=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)))
def test_whole_and_truncated_documents(items: list[Any], cut: float | None) -> None:
    text, ends = _text(items)
    path = _DIR / "doc.json"
    if cut is None:
        path.write_text(text)
        complete = items
    else:
        at = int(len(text) * cut)
        path.write_text(text[:at])
        complete = [e for e, end in zip(items, ends, strict=True) if end <= at]
        if at < len('{"schemaVersion": 1, "traceEvents": ['):
            try:
                _read(path)
            except InputFormatError:
                return  # empty, or no traceEvents yet: refused
            return
    got, state = _read(path)
    expected = [clean_text(e["name"])[0] for e in complete if _accepted(e)]
    assert got == expected
    assert (state.truncated is None) == (cut is None or int(len(text) * cut) >= len(text))


@settings(max_examples=1800, deadline=None)
@given(
    items=elements,
    at=st.floats(min_value=0.0, max_value=1.0),
    junk=st.binary(min_size=1, max_size=4),
    mode=st.sampled_from(["insert", "replace", "delete"]),
)
def test_corrupted_documents_give_rows_or_one_error(
    items: list[Any], at: float, junk: bytes, mode: str
) -> None:
    raw = _text(items)[0].encode()
    i = int(len(raw) * at)
    if mode == "insert":
        raw = raw[:i] + junk + raw[i:]
    elif mode == "replace":
        raw = raw[:i] + junk + raw[i + len(junk) :]
    else:
        raw = raw[:i] + raw[i + len(junk) :]
    path = _DIR / "bad.json"
    path.write_bytes(raw)
    try:
        got, _ = _read(path)
    except InputFormatError as exc:
        assert "\n" not in str(exc)
        return
    for name in got:
        assert isinstance(name, str)
        name.encode("utf-8")  # storable
    assert np.all([isinstance(n, str) for n in got])
