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
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from tracekit.reports.display import (
    KINDS,
    ColumnDisplay,
    byte_unit,
    column_kind,
    compact,
    float32_text,
    number,
    plain,
)

FORMATS = ("table", "csv", "json", "markdown")
__all__ = ["FORMATS", "KINDS", "column_kind", "float32_text", "number", "render_fields", "render_rows"]


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
        records = [{c: compact(v) for c, v in zip(columns, r, strict=True)} for r in rows]
        return json.dumps(records, default=_json_default, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([plain(v) for v in r])
        return buf.getvalue().rstrip("\n")
    if fmt not in ("table", "markdown"):
        raise click.BadParameter(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    shown = [ColumnDisplay(c, [r[i] for r in rows], (kinds or {}).get(c)) for i, c in enumerate(columns)]
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
        return json.dumps({k: compact(v) for k, v in fields}, default=_json_default, indent=2)
    if fmt == "csv":
        return render_rows(["field", "value"], [(k, v) for k, v in fields], "csv")
    shown = [ColumnDisplay(k, [v], (kinds or {}).get(k)) for k, v in fields]
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
    unit, scale = byte_unit([n])
    return f"{number(int(n))} B" if scale == 1 else f"{number(n / scale)} {unit}"
