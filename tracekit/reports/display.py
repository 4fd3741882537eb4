"""How numbers are shown to people, shared by the terminal tables and the HTML report.

- Integers exact, with thousands separators; other numbers with 4 significant digits and every
  integer digit (``2,009,720``, not ``2.00972e+06``), trailing zeros dropped; below 1e-4 or from
  1e15 in scientific notation (``3.2e-07``).
- Durations (columns named ``*_s``, ``*_ms``, ``*_us``, ``*_ns``, but not rates ``*_per_s``) in
  milliseconds, one unit for every time column: ``26.8 ms``.
- Bytes (``bytes``, ``bytes_*``, ``*_bytes``, ``*_bytes_*``) in one decimal unit per column (B, kB, MB,
  GB, TB), chosen by the column's largest value.
- Shares (``share``, ``*_share``, ``*_frac``, ``*_fraction``) as percentages: ``12.3%``.
- Lists of float32 values (gate weights) in the shortest text that reads back as the same float32.

docs/glossary.md documents these rules for users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Kinds of column :func:`column_kind` tells apart (``text``: shown as it is).
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


def is_number(v: Any) -> bool:
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


def compact(v: Any) -> Any:
    """List elements that are float32 values as their shortest float32 value (for JSON)."""
    if isinstance(v, list | tuple):
        return [compact(x) for x in v]
    if isinstance(v, float) and np.isfinite(v) and float(np.float32(v)) == v:
        return float(str(np.float32(v)))
    return v


def list_text(v: Sequence[Any]) -> str:
    parts = []
    for x in v:
        if isinstance(x, float | np.floating):
            parts.append(float32_text(float(x)))
        elif isinstance(x, list | tuple):
            parts.append(list_text(x))
        else:
            parts.append("null" if x is None else str(x))
    return "[" + ", ".join(parts) + "]"


def plain(v: Any) -> str:
    """A value for CSV: as stored (full precision), lists as ``[a, b]``."""
    if v is None:
        return ""
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return list_text(v)
    if isinstance(v, float | np.floating):
        return repr(float(v))
    return str(v)


def byte_unit(values: Sequence[Any]) -> tuple[str, float]:
    peak = max((abs(float(v)) for v in values if is_number(v) and math.isfinite(float(v))), default=0.0)
    for unit, scale in _BYTE_UNITS:
        if peak >= scale:
            return unit, scale
    return "B", 1.0


class ColumnDisplay:
    """How one column's values are shown to people."""

    def __init__(self, name: str, values: Sequence[Any], kind: str | None) -> None:
        self.kind = kind or column_kind(name)
        numbers = [v for v in values if v is not None]
        self.numeric = bool(numbers) and all(is_number(v) for v in numbers)
        if not self.numeric and self.kind != "text":
            self.kind = "text"
        self.time_scale = next(
            (s for suffix, s in _TIME_SCALE_TO_MS.items() if name.lower().endswith(suffix)), 1e3
        )
        self.byte_unit, self.byte_scale = byte_unit(numbers) if self.kind == "bytes" else ("B", 1.0)

    def text(self, v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool | np.bool_):
            return "true" if v else "false"
        if isinstance(v, list | tuple):
            return list_text(v)
        if not is_number(v) or self.kind == "text":
            return str(v)
        if self.kind == "time":
            return f"{number(float(v) * self.time_scale)} ms"
        if self.kind == "bytes":
            scaled = float(v) / self.byte_scale
            return f"{number(int(v) if self.byte_scale == 1 else scaled)} {self.byte_unit}"
        if self.kind == "share":
            return f"{float(v) * 100:.1f}%"
        return number(v)
