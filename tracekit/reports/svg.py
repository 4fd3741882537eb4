"""Small inline-SVG plots for the HTML report: heatmap, bars, stacked bars, scatter with lines.

Every label is escaped here, so callers may pass strings straight from a trace (kernel, model and
file names). Plots carry the class ``tk-plot`` and a ``<title>`` on each mark as its tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

#: Colours of series and stacked components, in order.
PALETTE = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip


def fmt(v: float | np.integer | np.floating | None) -> str:
    """A number with four significant digits (integers as they are)."""
    if v is None:
        return ""
    if isinstance(v, int | np.integer):
        return str(int(v))
    if math.isnan(float(v)):
        return ""
    return f"{float(v):.4g}"


def _open(width: float, height: float, label: str) -> str:
    return (
        f'<svg class="tk-plot" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{escape(label)}">'
    )


def _blues(t: float) -> str:
    """White (0) to dark blue (1)."""
    t = min(max(t, 0.0), 1.0)
    lo, hi = (247, 251, 255), (8, 48, 107)
    r, g, b = (round(a + (c - a) * t) for a, c in zip(lo, hi, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(
    values: np.ndarray,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    row_name: str,
    col_name: str,
    unit: str,
    notes: np.ndarray | None = None,
) -> str:
    """A heatmap of ``values[row, col]``; darker is larger. ``notes`` (same shape) go in tooltips."""
    rows, cols = values.shape
    cell_w = max(2.0, min(28.0, 960.0 / max(cols, 1)))
    cell_h = max(6.0, min(24.0, 480.0 / max(rows, 1)))
    left, top = 70.0, 34.0
    width = left + cols * cell_w + 20
    height = top + rows * cell_h + 40
    vmax = float(np.nanmax(values)) if values.size and np.isfinite(np.nanmax(values)) else 0.0
    out = [_open(width, height, title)]
    out.append(f'<text x="{left:.0f}" y="16" class="tk-title">{escape(title)}</text>')
    out.append(
        f'<text x="{left:.0f}" y="28" class="tk-note">darker = more; max {escape(fmt(vmax))} {escape(unit)}</text>'
    )
    out.append(f'<text x="{left - 4:.0f}" y="28" text-anchor="end" class="tk-axis">{escape(row_name)}</text>')
    for i in range(rows):
        y = top + i * cell_h
        out.append(
            f'<text x="{left - 4:.0f}" y="{y + cell_h * 0.8:.1f}" text-anchor="end" class="tk-axis">{escape(row_labels[i])}</text>'
        )
        for j in range(cols):
            v = float(values[i, j])
            note = f" ({notes[i, j]})" if notes is not None else ""
            tip = f"{row_name} {row_labels[i]}, {col_name} {col_labels[j]}: {fmt(v)} {unit}{note}"
            out.append(
                f'<rect x="{left + j * cell_w:.1f}" y="{y:.1f}" width="{cell_w:.1f}" height="{cell_h:.1f}" '
                f'fill="{_blues(v / vmax if vmax > 0 else 0.0)}"><title>{escape(tip)}</title></rect>'
            )
    step = max(1, math.ceil(24 / cell_w))  # a column label every ~24 px
    for j in range(0, cols, step):
        x = left + j * cell_w + cell_w / 2
        out.append(
            f'<text x="{x:.1f}" y="{top + rows * cell_h + 12:.1f}" text-anchor="middle" class="tk-axis">{escape(col_labels[j])}</text>'
        )
    out.append(
        f'<text x="{left + cols * cell_w / 2:.0f}" y="{height - 6:.0f}" text-anchor="middle" class="tk-axis">{escape(col_name)}</text>'
    )
    out.append("</svg>")
    return "".join(out)


def bars(
    labels: Sequence[str], values: Sequence[float], *, title: str, unit: str, mean_line: bool = True
) -> str:
    """Vertical bars, one per label, with a dashed line at the mean."""
    n = len(labels)
    bar_w = max(4.0, min(40.0, 900.0 / max(n, 1)))
    left, top, plot_h = 70.0, 30.0, 200.0
    width = left + n * bar_w + 30
    height = top + plot_h + 40
    vmax = max([float(v) for v in values] + [0.0])
    out = [
        _open(width, height, title),
        f'<text x="{left:.0f}" y="16" class="tk-title">{escape(title)}</text>',
    ]
    out.append(
        f'<text x="{left - 4:.0f}" y="{top + 8:.0f}" text-anchor="end" class="tk-axis">{escape(fmt(vmax))}</text>'
    )
    out.append(f'<text x="{left - 4:.0f}" y="{top + plot_h:.0f}" text-anchor="end" class="tk-axis">0</text>')
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * float(v) / vmax if vmax > 0 else 0.0
        x = left + i * bar_w
        out.append(
            f'<rect class="tk-bar" x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
            f'fill="{PALETTE[0]}"><title>{escape(f"{label}: {fmt(v)} {unit}")}</title></rect>'
        )
        if n <= 64 or i % math.ceil(n / 64) == 0:
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 12:.0f}" text-anchor="middle" class="tk-axis">{escape(label)}</text>'
            )
    if mean_line and n and vmax > 0:
        mean = float(np.mean(np.asarray(values, dtype=float)))
        y = top + plot_h - plot_h * mean / vmax
        out.append(
            f'<line x1="{left:.0f}" x2="{left + n * bar_w:.0f}" y1="{y:.1f}" y2="{y:.1f}" class="tk-mean">'
            f"<title>{escape(f'mean {fmt(mean)} {unit}')}</title></line>"
        )
    out.append(
        f'<text x="{left:.0f}" y="{height - 6:.0f}" class="tk-note">{escape(unit)}; dashed line: mean</text>'
    )
    out.append("</svg>")
    return "".join(out)


def stacked_bars(
    labels: Sequence[str], components: Sequence[str], values: np.ndarray, *, title: str, unit: str
) -> str:
    """Horizontal stacked bars: one bar per label, ``values[label, component]``, with a legend."""
    n = len(labels)
    bar_h, left, top, plot_w = 22.0, 220.0, 30.0, 640.0
    legend_h = 18.0 * math.ceil(len(components) / 5)
    width = left + plot_w + 120
    height = top + n * (bar_h + 6) + legend_h + 20
    totals = values.sum(axis=1) if values.size else np.zeros(0)
    vmax = float(totals.max()) if totals.size else 0.0
    out = [_open(width, height, title), f'<text x="10" y="16" class="tk-title">{escape(title)}</text>']
    for i, label in enumerate(labels):
        y = top + i * (bar_h + 6)
        out.append(
            f'<text x="{left - 6:.0f}" y="{y + bar_h * 0.7:.1f}" text-anchor="end" class="tk-axis">{escape(label)}</text>'
        )
        x = left
        for j, comp in enumerate(components):
            v = float(values[i, j])
            w = plot_w * v / vmax if vmax > 0 else 0.0
            if w <= 0:
                continue
            share = v / totals[i] if totals[i] > 0 else 0.0
            out.append(
                f'<rect class="tk-seg" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(f"{label}: {comp} {fmt(v)} {unit} ({share:.1%})")}</title></rect>'
            )
            x += w
        out.append(
            f'<text x="{x + 4:.1f}" y="{y + bar_h * 0.7:.1f}" class="tk-axis">{escape(fmt(float(totals[i])))} {escape(unit)}</text>'
        )
    ly = top + n * (bar_h + 6) + 8
    for j, comp in enumerate(components):
        lx = left + (j % 5) * 130
        yy = ly + (j // 5) * 18
        out.append(
            f'<rect x="{lx:.0f}" y="{yy:.0f}" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
        )
        out.append(f'<text x="{lx + 14:.0f}" y="{yy + 9:.0f}" class="tk-axis">{escape(comp)}</text>')
    out.append("</svg>")
    return "".join(out)


def scatter_lines(
    series: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[str]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    background: tuple[Sequence[float], Sequence[float]] | None = None,
) -> str:
    """Points joined by lines, one colour per series ``(name, xs, ys, tooltips)``; optional grey
    background points (e.g. every point of a sweep behind its Pareto frontier)."""
    left, top, plot_w, plot_h = 80.0, 30.0, 620.0, 320.0
    width, height = left + plot_w + 180, top + plot_h + 50
    xs_all = [float(x) for _, xs, _, _ in series for x in xs] + (
        list(map(float, background[0])) if background else []
    )
    ys_all = [float(y) for _, _, ys, _ in series for y in ys] + (
        list(map(float, background[1])) if background else []
    )
    xmax = max([*xs_all, 0.0]) * 1.05 or 1.0
    ymax = max([*ys_all, 0.0]) * 1.05 or 1.0

    def px(x: float) -> float:
        return left + plot_w * float(x) / xmax

    def py(y: float) -> float:
        return top + plot_h - plot_h * float(y) / ymax

    out = [
        _open(width, height, title),
        f'<text x="{left:.0f}" y="16" class="tk-title">{escape(title)}</text>',
    ]
    out.append(
        f'<rect x="{left:.0f}" y="{top:.0f}" width="{plot_w:.0f}" height="{plot_h:.0f}" class="tk-frame"/>'
    )
    for k in range(5):
        xv, yv = xmax * k / 4, ymax * k / 4
        out.append(
            f'<text x="{px(xv):.0f}" y="{top + plot_h + 14:.0f}" text-anchor="middle" class="tk-axis">{escape(fmt(xv))}</text>'
        )
        out.append(
            f'<text x="{left - 4:.0f}" y="{py(yv) + 4:.0f}" text-anchor="end" class="tk-axis">{escape(fmt(yv))}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 8:.0f}" text-anchor="middle" class="tk-axis">{escape(x_label)}</text>'
    )
    out.append(
        f'<text x="14" y="{top + plot_h / 2:.0f}" text-anchor="middle" class="tk-axis" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.0f})">{escape(y_label)}</text>'
    )
    if background:
        for x, y in zip(background[0], background[1], strict=True):
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" class="tk-bg"/>')
    for s, (name, xs, ys, tips) in enumerate(series):
        color = PALETTE[s % len(PALETTE)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y, tip in zip(xs, ys, tips, strict=True):
            out.append(
                f'<circle class="tk-point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{color}"><title>{escape(tip)}</title></circle>'
            )
        out.append(
            f'<rect x="{left + plot_w + 14:.0f}" y="{top + 6 + s * 18:.0f}" width="10" height="10" fill="{color}"/>'
        )
        out.append(
            f'<text x="{left + plot_w + 28:.0f}" y="{top + 15 + s * 18:.0f}" class="tk-axis">{escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
