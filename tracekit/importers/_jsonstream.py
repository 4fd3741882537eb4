"""Incremental reader of Chrome-trace JSON: one ``traceEvents`` element at a time, bounded memory.

A Kineto trace is one JSON object whose ``traceEvents`` array holds millions of small objects. This
reader never holds the whole document: it decodes the file as a text stream in chunks, walks the
top-level object key by key, and hands out the array's elements one by one with
``json.JSONDecoder.raw_decode`` (the C scanner), compacting its buffer as it goes. The other top-level
values (``distributedInfo``, ``baseTimeNanoseconds``, ...) are small and collected in ``metadata``.

Invalid UTF-8 bytes are kept as lone surrogates (``surrogateescape``) so one bad name does not stop
the import; :func:`clean_text` turns them into visible ``\\xNN`` escapes. A file that ends early
(truncated while being written) yields every complete element and records where it stopped in
``truncated``; a document that is malformed before its end raises :class:`InputFormatError`.
"""

from __future__ import annotations

import codecs
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tracekit.errors import InputFormatError

#: Characters read per refill.
CHUNK_CHARS = 1 << 20
#: A single JSON value (an event, or a top-level metadata value) larger than this is refused.
MAX_VALUE_CHARS = 64 << 20

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_NUMBER_TAIL = re.compile(r"[0-9.eE+\-]+")
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")


def clean_text(text: str) -> tuple[str, bool]:
    """``text`` with undecodable bytes (lone surrogates) written as ``\\xNN``; and whether any were."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        pass
    try:  # bytes of the file that were not UTF-8 (decoded with surrogateescape)
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates written as JSON escapes (\ud800)
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace"), True


class _TextSource:
    """Text of a plain or gzip file, chunk by chunk; a gzip stream cut short gives every byte
    decoded before the cut (``damage`` then says what happened)."""

    def __init__(self, path: Path) -> None:
        try:
            self.file: BinaryIO = path.open("rb")
        except OSError as exc:
            raise InputFormatError(f"{path}: cannot read ({exc.strerror}); check the path") from None
        magic = self.file.read(2)
        self.file.seek(0)
        self.inflate: Any = zlib.decompressobj(31) if magic == b"\x1f\x8b" else None
        self.text = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.done = False
        self.damage: str | None = None

    def _bytes(self, want: int) -> bytes:
        if self.inflate is None:
            return self.file.read(want)
        while True:
            data = self.inflate.unconsumed_tail or self.file.read(want)
            if not data:
                if not self.inflate.eof:
                    self.damage = "the gzip stream ends early"
                return b""
            try:
                out: bytes = self.inflate.decompress(data, 4 * want)
            except zlib.error as exc:
                self.damage = f"the gzip stream is corrupt ({exc})"
                return b""
            if self.inflate.eof and self.inflate.unused_data:  # another gzip member follows
                rest = self.inflate.unused_data
                self.inflate = zlib.decompressobj(31)
                out += self.inflate.decompress(rest, 4 * want)
            if out:
                return out

    def read(self, want: int) -> str:
        """Up to about ``want`` characters; '' at the end."""
        while not self.done:
            raw = self._bytes(want)
            if not raw:
                self.done = True
                return str(self.text.decode(b"", final=True))
            text = str(self.text.decode(raw))
            if text:
                return text
        return ""

    def close(self) -> None:
        self.file.close()


@dataclass
class StreamState:
    """What the reader learned besides the events."""

    #: Top-level keys other than ``traceEvents`` with their values.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Elements of the events array that were not JSON objects (skipped).
    non_objects: int = 0
    #: Where the document ended early, as a message; None when it was whole.
    truncated: str | None = None
    #: Whether a ``traceEvents`` array was found.
    found_events: bool = False


class _Buffer:
    def __init__(self, stream: _TextSource, path: Path) -> None:
        self.stream = stream
        self.path = path
        self.text = ""
        self.pos = 0
        self.eof = False
        self.consumed = 0  # characters dropped from the front, for error offsets

    def fill(self, want: int = CHUNK_CHARS) -> bool:
        """Read more text; False at end of file."""
        if self.eof:
            return False
        try:
            chunk = self.stream.read(want)
        except OSError as exc:
            raise InputFormatError(f"{self.path}: cannot read ({exc}); check the file") from None
        if not chunk:
            self.eof = True
            return False
        if self.pos > 0:
            self.consumed += self.pos
            self.text = self.text[self.pos :] + chunk
            self.pos = 0
        else:
            self.text += chunk
        return True

    def skip_ws(self) -> bool:
        """Move past whitespace; False when the file ends first."""
        while True:
            m = _WS.match(self.text, self.pos)
            assert m is not None
            self.pos = m.end()
            if self.pos < len(self.text):
                return True
            if not self.fill():
                return False

    def peek(self) -> str:
        return self.text[self.pos]

    def offset(self) -> int:
        return self.consumed + self.pos

    def decode_value(self) -> tuple[Any, bool]:
        """Decode one JSON value at the cursor. Returns (value, True), or (None, False) when the file
        ends inside the value (truncated). Raises InputFormatError when the value is malformed."""
        want = CHUNK_CHARS
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except RecursionError:
                raise InputFormatError(
                    f"{self.path}: a JSON value at character {self.offset()} is nested too deeply to read; "
                    "the file is not a profiler trace"
                ) from None
            except json.JSONDecodeError as exc:
                if _runs_to_end(self.text, exc):
                    if len(self.text) - self.pos > MAX_VALUE_CHARS:
                        raise InputFormatError(
                            f"{self.path}: a JSON value at character {self.offset()} is larger than "
                            f"{MAX_VALUE_CHARS >> 20} Mi characters or never closes; the file is malformed"
                        ) from None
                    if self.fill(want):
                        want = min(want * 2, MAX_VALUE_CHARS)
                        continue
                    return None, False
                raise InputFormatError(
                    f"{self.path}: malformed JSON at character {self.consumed + exc.pos}: {exc.msg}; "
                    "re-export the trace or repair the file"
                ) from None
            # A number at the very end of the buffer may continue in the next chunk.
            if end == len(self.text) and not self.eof and isinstance(value, int | float) and self.fill(want):
                continue
            self.pos = end
            return value, True


def _runs_to_end(text: str, exc: json.JSONDecodeError) -> bool:
    """Whether a decode error is explained by the text ending (more input could complete it)."""
    rest = text[exc.pos :].rstrip(" \t\n\r")
    if not rest:
        return True
    if exc.msg.startswith("Unterminated string"):
        return True
    if exc.msg.startswith("Invalid \\uXXXX escape"):
        return '"' not in rest
    if _NUMBER_TAIL.fullmatch(rest):
        return True
    if exc.msg.startswith("Expecting value"):
        return any(lit.startswith(rest) for lit in _LITERALS) or rest in ("-",)
    return False


def iter_trace_events(path: Path, state: StreamState) -> Iterator[dict[str, Any]]:
    """Yield each object of the ``traceEvents`` array of ``path`` (plain or gzip); fills ``state``.

    Accepts the JSON Object Format (``{"traceEvents": [...], ...}``) and the JSON Array Format (a
    bare array of events, which may lack its closing bracket).
    """
    stream = _TextSource(path)
    try:
        buf = _Buffer(stream, path)
        if not buf.skip_ws():
            raise InputFormatError(f"{path}: the file is empty; give a Chrome-trace JSON file")
        first = buf.peek()
        if first == "[":
            state.found_events = True
            yield from _iter_array(buf, state)
            _note_damage(stream, state)
            return
        if first != "{":
            raise InputFormatError(
                f"{path}: not a Chrome-trace JSON file (starts with {first!r}, expected '{{' or '['); "
                "give the file written by export_chrome_trace or the profiler's trace handler"
            )
        buf.pos += 1
        yield from _iter_object(buf, state)
        _note_damage(stream, state)
    finally:
        stream.close()


def _note_damage(stream: _TextSource, state: StreamState) -> None:
    if stream.damage:
        state.truncated = f"{stream.damage}; {state.truncated}" if state.truncated else stream.damage


def _iter_object(buf: _Buffer, state: StreamState) -> Iterator[dict[str, Any]]:
    expect_key = True
    while True:
        if not buf.skip_ws():
            state.truncated = (
                state.truncated or f"the file ends inside the top-level object (character {buf.offset()})"
            )
            return
        ch = buf.peek()
        if ch == "}":
            buf.pos += 1
            return
        if ch == ",":
            if expect_key:
                _malformed(buf, "unexpected ','")
            buf.pos += 1
            expect_key = True
            continue
        if not expect_key:
            _malformed(buf, "expected ',' or '}' between top-level keys")
        if ch != '"':
            _malformed(buf, "expected a key string")
        key, ok = buf.decode_value()
        if not ok:
            state.truncated = f"the file ends inside a top-level key (character {buf.offset()})"
            return
        if not buf.skip_ws():
            state.truncated = f"the file ends after the key {key!r}"
            return
        if buf.peek() != ":":
            _malformed(buf, f"expected ':' after the key {key!r}")
        buf.pos += 1
        if not buf.skip_ws():
            state.truncated = f"the file ends after the key {key!r}"
            return
        if key == "traceEvents" and buf.peek() == "[":
            state.found_events = True
            yield from _iter_array(buf, state)
            if state.truncated:
                return
        else:
            value, ok = buf.decode_value()
            if not ok:
                state.truncated = f"the file ends inside the value of {key!r}"
                return
            state.metadata[key] = value
        expect_key = False


def _iter_array(buf: _Buffer, state: StreamState) -> Iterator[dict[str, Any]]:
    buf.pos += 1  # '['
    index = 0
    expect_value = True
    while True:
        if not buf.skip_ws():
            state.truncated = f"the file ends inside traceEvents after {index} elements"
            return
        ch = buf.peek()
        if ch == "]":
            buf.pos += 1
            return
        if ch == ",":
            if expect_value:
                _malformed(buf, f"unexpected ',' in traceEvents after element {index}")
            buf.pos += 1
            expect_value = True
            continue
        if not expect_value:
            _malformed(buf, f"expected ',' or ']' after traceEvents element {index}")
        value, ok = buf.decode_value()
        if not ok:
            state.truncated = f"the file ends inside traceEvents element {index}"
            return
        index += 1
        expect_value = False
        if isinstance(value, dict):
            yield value
        else:
            state.non_objects += 1


def _malformed(buf: _Buffer, what: str) -> None:
    raise InputFormatError(
        f"{buf.path}: malformed JSON at character {buf.offset()}: {what}; re-export the trace or repair the file"
    )
