"""Rendering results for people and for machines: ``--format table|csv|json|markdown``.

Every command that prints a result goes through :func:`render_rows` (a table of rows) or
:func:`render_fields` (one record: field, value), so the four formats behave the same everywhere.

For people (``table``, ``markdown``) numbers are shown, not stored:

- right-aligned, never folded across lines; integers exact, with thousands separators; other numbers
  with 4 significant digits and every integer digit (``2,009,720``, not ``2.00972e+06``), trailing
  zeros dropped; below 1e-4 or from 1e15 in scientific notation (``3.2e-07``);
- durations (columns named ``*_s``, ``*_ms``, ``*_us``, ``*_ns``, but not rates ``*_per_s``) in
  **milliseconds**, one unit for every time column of every command: ``26.80 ms``;
- bytes (``bytes``, ``bytes_*``, ``*_bytes``, ``*_bytes_*``) in one decimal unit per column (B, kB, MB,
  GB, TB), chosen by the column's largest value;
- shares (``share``, ``*_share``, ``*_frac``, ``*_fraction``) as percentages: ``12.3%``;
- lists of float32 values (gate weights) in the shortest text that reads back as the same float32.

For machines (``csv``, ``json``) values are as stored, in the units their names say; only float32
list elements are written in their shortest float32 text. The terminal table takes the terminal's
width (``COLUMNS`` if set); written to a pipe or a file it takes the width its content needs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click
import numpy as np

FORMATS = ("table", "csv", "json", "markdown")
#: Kinds of column :func:`column_kind` tells apart; callers may name them explicitly via ``kinds``.
KINDS = ("time", "bytes", "share", "number", "text")

_TIME_SCALE_TO_MS = {"_s": 1e3, "_ms": 1.0, "_us": 1e-3, "_ns": 1e-6}
_BYTE_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0))


def column_kind(name: str) -> str:
    """The display kind a column's name implies: ``time``, ``bytes``, ``share`` or ``number``."""
    n = name.lower()
    if n == "share" or n.endswith(("_share", "_frac", "_fraction")):
        return "share"
    if n.endswith(("_per_s", "_per_ms", "_per_us")):
        return "number"
    if n == "bytes" or n.startswith("bytes_") or n.endswith("_bytes") or "_bytes_" in n:
        return "bytes"
    if any(n.endswith(suffix) for suffix in _TIME_SCALE_TO_MS) and n not in _TIME_SCALE_TO_MS:
        return "time"
    return "number"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


def number(v: float | int) -> str:
    """A number for people: integers exact, others with 4 significant digits and all integer digits."""
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    x = float(v)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e15:
        return number(int(x))
    if abs(x) >= 1e15 or abs(x) < 1e-4:
        mantissa, _, exponent = f"{x:.3e}".partition("e")
        return (mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa) + "e" + exponent
    digits = math.floor(math.log10(abs(x))) + 1
    decimals = max(0, 4 - digits)
    text = f"{x:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def float32_text(v: float) -> str:
    """``v`` as the shortest text that reads back as the same float32, when ``v`` is a float32 value."""
    f32 = np.float32(v)
    if float(f32) == float(v) and np.isfinite(f32):
        return str(f32)
    return repr(float(v))


def _compact(v: Any) -> Any:
    """List elements that are float32 values as their shortest float32 value (for JSON)."""
    if isinstance(v, list | tuple):
        return [_compact(x) for x in v]
    if isinstance(v, float) and np.isfinite(v) and float(np.float32(v)) == v:
        return float(str(np.float32(v)))
    return v


def _list_text(v: Sequence[Any]) -> str:
    parts = []
    for x in v:
        if isinstance(x, float | np.floating):
            parts.append(float32_text(float(x)))
        elif isinstance(x, list | tuple):
            parts.append(_list_text(x))
        else:
            parts.append("null" if x is None else str(x))
    return "[" + ", ".join(parts) + "]"


def _plain(v: Any) -> str:
    """A value for CSV: as stored (full precision), lists as ``[a, b]``."""
    if v is None:
        return ""
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return _list_text(v)
    if isinstance(v, float | np.floating):
        return repr(float(v))
    return str(v)


def _byte_unit(values: Sequence[Any]) -> tuple[str, float]:
    peak = max((abs(float(v)) for v in values if _is_number(v) and math.isfinite(float(v))), default=0.0)
    for unit, scale in _BYTE_UNITS:
        if peak >= scale:
            return unit, scale
    return "B", 1.0


class _Shown:
    """How one column's values are shown to people."""

    def __init__(self, name: str, values: Sequence[Any], kind: str | None) -> None:
        self.kind = kind or column_kind(name)
        numbers = [v for v in values if v is not None]
        self.numeric = bool(numbers) and all(_is_number(v) for v in numbers)
        if not self.numeric and self.kind != "text":
            self.kind = "text"
        self.time_scale = next(
            (s for suffix, s in _TIME_SCALE_TO_MS.items() if name.lower().endswith(suffix)), 1e3
        )
        self.byte_unit, self.byte_scale = _byte_unit(numbers) if self.kind == "bytes" else ("B", 1.0)

    def text(self, v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool | np.bool_):
            return "true" if v else "false"
        if isinstance(v, list | tuple):
            return _list_text(v)
        if not _is_number(v) or self.kind == "text":
            return str(v)
        if self.kind == "time":
            return f"{number(float(v) * self.time_scale)} ms"
        if self.kind == "bytes":
            scaled = float(v) / self.byte_scale
            return f"{number(int(v) if self.byte_scale == 1 else scaled)} {self.byte_unit}"
        if self.kind == "share":
            return f"{float(v) * 100:.1f}%"
        return number(v)


def _json_default(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _terminal_width() -> int | None:
    """The width to render at: ``COLUMNS``, else the terminal's; ``None`` when not a terminal."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        if sys.stdout.isatty():
            return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return None
    return None


def render_rows(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    fmt: str = "table",
    title: str | None = None,
    *,
    kinds: Mapping[str, str] | None = None,
) -> str:
    """Rows as text in one of :data:`FORMATS`; ``kinds`` overrides :func:`column_kind` per column."""
    if fmt == "json":
        records = [{c: _compact(v) for c, v in zip(columns, r, strict=True)} for r in rows]
        return json.dumps(records, default=_json_default, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_plain(v) for v in r])
        return buf.getvalue().rstrip("\n")
    if fmt not in ("table", "markdown"):
        raise click.BadParameter(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    shown = [_Shown(c, [r[i] for r in rows], (kinds or {}).get(c)) for i, c in enumerate(columns)]
    cells = [[s.text(v) for s, v in zip(shown, r, strict=True)] for r in rows]
    if fmt == "markdown":
        head = "| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |"
        rule = "|" + "|".join("---:" if s.numeric else "---" for s in shown) + "|"
        lines = [head, rule] + ["| " + " | ".join(t.replace("|", "\\|") for t in r) + " |" for r in cells]
        return "\n".join(([f"**{title}**", ""] if title else []) + lines)
    return _rich_table(columns, cells, [s.numeric for s in shown], title)


def _rich_table(
    columns: Sequence[str], cells: list[list[str]], numeric: list[bool], title: str | None
) -> str:
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, (c, is_num) in enumerate(zip(columns, numeric, strict=True)):
        if is_num:  # a number is never folded: the column is at least as wide as its widest cell
            widest = max((len(r[i]) for r in cells), default=1)
            table.add_column(c, justify="right", min_width=widest, overflow="fold")
        else:
            table.add_column(c, overflow="fold")
    for r in cells:
        table.add_row(*r)
    probe = Console(width=100_000, file=io.StringIO(), color_system=None)
    measured = Measurement.get(probe, probe.options, table)
    width = _terminal_width()
    if width is not None and measured.minimum > width:
        return _records(columns, cells, title, width)
    width = measured.maximum if width is None else min(width, measured.maximum)
    console = Console(width=max(width, 20), file=io.StringIO(), color_system=None, record=True)
    console.print(table)
    return "\n".join(line.rstrip() for line in console.export_text().rstrip("\n").splitlines())


def _records(columns: Sequence[str], cells: list[list[str]], title: str | None, width: int) -> str:
    """Rows too wide for the terminal even with wrapped text: one block of ``column  value`` per row."""
    pad = max(len(c) for c in columns)
    out = [title] if title else []
    for i, r in enumerate(cells):
        out.append(f"-- row {i + 1} " + "-" * max(0, min(width, 60) - 11 - len(str(i + 1))))
        out += [f"{c.ljust(pad)}  {v}".rstrip() for c, v in zip(columns, r, strict=True)]
    return "\n".join(out)


def render_fields(
    fields: Sequence[tuple[str, Any]],
    fmt: str = "table",
    title: str | None = None,
    *,
    kinds: Mapping[str, str] | None = None,
) -> str:
    """One record as ``field``/``value`` rows (table, csv, markdown) or a JSON object.

    ``kinds`` maps a field to its display kind (see :data:`KINDS`); by default a field's kind
    comes from its name as for columns.
    """
    if fmt == "json":
        return json.dumps({k: _compact(v) for k, v in fields}, default=_json_default, indent=2)
    if fmt == "csv":
        return render_rows(["field", "value"], [(k, v) for k, v in fields], "csv")
    shown = [_Shown(k, [v], (kinds or {}).get(k)) for k, v in fields]
    rows = [(k, s.text(v)) for (k, v), s in zip(fields, shown, strict=True)]
    return render_rows(["field", "value"], rows, fmt, title, kinds={"value": "text"})


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def format_option(default: str = "table") -> Any:
    """The ``--format`` option every result-printing command takes."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=default,
        show_default=True,
        help="Output format: a table for people (units, see docs/glossary.md), csv, json or markdown.",
    )


def human_bytes(n: float) -> str:
    """Bytes in one decimal unit (B, kB, MB, GB, TB)."""
    unit, scale = _byte_unit([n])
    return f"{number(int(n))} B" if scale == 1 else f"{number(n / scale)} {unit}"
