"""Broken Kineto files: imported where possible with counts of what was skipped, or refused in one
line; never a traceback, never a silently wrong row."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.importers.kineto_layout import KinetoBuilder
from tracekit.cli.main import cli
from tracekit.trace import open_trace


def _run(path: Path, out: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["import", "kineto", str(path), "--out", str(out), *extra])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    return res.exit_code, res.output


def _kernels(n: int) -> list[dict]:
    b = KinetoBuilder()
    for i in range(n):
        b.kernel(f"fused_moe_kernel_{i}", 10.0 * i, 2.0)
    return b.events


def _document_text(events: list[dict]) -> tuple[str, list[int]]:
    """Kineto-like text and the end offset of each event."""
    head = '{"schemaVersion": 1, "traceEvents": ['
    text, ends = head, []
    for i, ev in enumerate(events):
        text += ("" if i == 0 else ", ") + json.dumps(ev)
        ends.append(len(text))
    return text + '], "traceName": "x"}', ends


@pytest.mark.parametrize("keep", [0, 1, 3, 5])
@pytest.mark.parametrize("where", ["inside_event", "after_comma"])
def test_truncated_file_keeps_complete_events(tmp_path: Path, keep: int, where: str) -> None:
    events = _kernels(6)
    text, ends = _document_text(events)
    cut = ends[keep] - 7 if where == "inside_event" else (ends[keep - 1] + 1 if keep else ends[0] - 3)
    path = tmp_path / "t.json"
    path.write_text(text[:cut])
    code, out = _run(path, tmp_path / "o")
    if keep == 0:  # nothing complete before the cut: an import that keeps nothing is refused
        assert code == 2 and out.count("\n") == 1, out
        assert str(path) in out and "no kernel rows kept" in out
        return
    assert code == 0, out
    assert "truncated" in out
    df = open_trace(tmp_path / "o").scan("kernels").collect()
    assert df["name"].to_list() == [e["name"] for e in events[:keep]]


def test_truncated_gzip_keeps_what_was_decoded(tmp_path: Path) -> None:
    events = _kernels(2000)
    text, _ = _document_text(events)
    data = gzip.compress(text.encode())
    path = tmp_path / "t.json.gz"
    path.write_bytes(data[: len(data) // 2])
    code, out = _run(path, tmp_path / "o")
    assert code == 0, out
    assert "truncated" in out
    names = open_trace(tmp_path / "o").scan("kernels").collect()["name"].to_list()
    assert 0 < len(names) < 2000
    assert names == [e["name"] for e in events[: len(names)]]  # a prefix, in order, nothing invented


def test_events_missing_fields_are_counted(tmp_path: Path) -> None:
    b = KinetoBuilder()
    b.kernel("ok_kernel", 0.0, 1.0)
    b.kernel("no_dur", 5.0, 1.0)
    b.kernel("bad_ts", 7.0, 1.0)
    b.kernel("negative", 9.0, 1.0)
    b.events[1].pop("dur")
    b.events[2]["ts"] = "soon"
    b.events[3]["dur"] = -4
    b.events.append({"ph": "X", "cat": "kernel", "ts": 3.0, "dur": 1.0})  # no name
    path = b.write(tmp_path / "t.json")
    code, out = _run(path, tmp_path / "o")
    assert code == 0, out
    assert "skipped 4 events" in out
    df = open_trace(tmp_path / "o").scan("kernels").collect()
    assert df["name"].to_list() == ["ok_kernel"]


def test_unknown_event_types_are_listed_not_imported(tmp_path: Path) -> None:
    b = KinetoBuilder()
    b.kernel("k", 0.0, 1.0)
    b.events += [
        {"ph": "C", "name": "counter", "pid": 0, "ts": 1.0, "args": {"v": 3}},
        {"ph": "X", "cat": "python_function", "name": "f", "pid": 1, "tid": 1, "ts": 1.0, "dur": 1.0},
        {"ph": "X", "cat": "brand_new_kind", "name": "g", "pid": 1, "tid": 1, "ts": 1.0, "dur": 1.0},
        {"ph": "X", "name": "no_cat", "ts": 1.0, "dur": 1.0},
        [1, 2, 3],
        "text",
    ]
    path = b.write(tmp_path / "t.json")
    code, out = _run(path, tmp_path / "o")
    assert code == 0, out
    assert "python_function" in out and "brand_new_kind" in out and "ph=C" in out
    assert "2 traceEvents element that is not an object" in out
    assert open_trace(tmp_path / "o").scan("kernels").collect()["name"].to_list() == ["k"]


def test_non_utf8_names_are_escaped(tmp_path: Path) -> None:
    b = KinetoBuilder()
    b.kernel("PLACEHOLDER", 0.0, 1.0)
    b.kernel("fine", 2.0, 1.0)
    raw = json.dumps(b.document()).encode().replace(b"PLACEHOLDER", b"gemm_\xff\xfe_kernel")
    path = tmp_path / "t.json"
    path.write_bytes(raw)
    code, out = _run(path, tmp_path / "o")
    assert code == 0, out
    assert "1 names had non-UTF-8 bytes" in out
    names = open_trace(tmp_path / "o").scan("kernels").collect().sort("start_ns")["name"].to_list()
    assert names == ["gemm_\\xff\\xfe_kernel", "fine"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"hello", "not a Chrome-trace JSON"),
        (b"42", "not a Chrome-trace JSON"),
        (b'{"schemaVersion": 1}', "no 'traceEvents'"),
        (b'{"traceEvents": [{"ph": "X"} {"ph": "X"}]}', "malformed JSON"),
        (
            b'{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "dur": tru}]}',
            "malformed JSON",
        ),
        (b'{"traceEvents": [,]}', "malformed JSON"),
        (b'{"traceEvents": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", "nested too deeply"),
    ],
)
def test_refused_in_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(content)
    code, out = _run(path, tmp_path / "o")
    assert code == 2
    assert message in out
    assert out.count("\n") == 1 and "Traceback" not in out


def test_array_format_without_closing_bracket(tmp_path: Path) -> None:
    events = _kernels(3)
    path = tmp_path / "t.json"
    path.write_text("[" + ",\n".join(json.dumps(e) for e in events) + ",\n")
    code, out = _run(path, tmp_path / "o")
    assert code == 0, out
    assert open_trace(tmp_path / "o").scan("kernels").collect()["name"].to_list() == [
        e["name"] for e in events
    ]


def test_times_beyond_int64_are_skipped_not_wrapped(tmp_path: Path) -> None:
    b = KinetoBuilder()
    b.kernel("normal", 0.0, 1.0)
    b.kernel("absurd", 1e300, 1.0)
    path = b.write(tmp_path / "t.json")
    code, out = _run(path, tmp_path / "o")
    assert code == 0, out
    assert "does not fit int64" in out
    assert open_trace(tmp_path / "o").scan("kernels").collect()["name"].to_list() == ["normal"]


def test_missing_file_and_rank_names(tmp_path: Path) -> None:
    code, out = _run(tmp_path / "nope.json", tmp_path / "o")
    assert code == 2 and "no such file" in out
    a = KinetoBuilder().write(tmp_path / "a.json")
    b = KinetoBuilder().write(tmp_path / "b.json")
    res = CliRunner().invoke(cli, ["import", "kineto", str(a), str(b), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--rank-from order" in res.output
