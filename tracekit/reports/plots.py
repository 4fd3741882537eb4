"""The HTML report's plots, drawn by matplotlib and inlined as SVG (no network, no script).

Text stays text (``svg.fonttype = none``), so a browser renders the labels with its own fonts and
a test can measure them; mathtext is off, so a ``$`` in an input name is printed as it is, and
matplotlib escapes every string it writes. Colours come from :mod:`tracekit.reports.palette`.
Each function returns one ``<svg class="tk-plot" ...>`` element; heatmaps carry a colour bar.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tracekit.reports import palette

#: Width of every figure, inches (matplotlib writes SVG in points: 72 per inch, ~1.33 px each).
FIG_W = 11.0
#: Font size of tick labels, points; tick labels are thinned to keep this much room each.
TICK_PT = 8.0
_STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "tracekit",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "xtick.labelsize": TICK_PT,
    "ytick.labelsize": TICK_PT,
    "axes.prop_cycle": None,  # set below from the palette
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style() -> dict[str, Any]:
    from cycler import cycler

    return {**_STYLE, "axes.prop_cycle": cycler(color=list(palette.PALETTE))}


def _svg(fig: Any, label: str) -> str:
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    start = text.index("<svg")
    svg = text[start:]
    svg = svg.replace("<svg ", '<svg class="tk-plot" role="img" ', 1)
    # matplotlib's metadata block names the tool and a date: not part of the report
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    return f'<figure class="tk-figure" aria-label="{_attr(label)}">{svg}</figure>'


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _tick_step(n: int, length_in: float, font_pt: float = TICK_PT) -> int:
    """Every how many ticks a label goes so that labels ``font_pt`` high keep 1.5x that apart."""
    if n <= 1:
        return 1
    per_tick_pt = length_in * 72.0 / n
    return max(1, math.ceil(font_pt * 1.5 / per_tick_pt))


def heatmap(
    values: np.ndarray,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    row_name: str,
    col_name: str,
    scale_label: str,
    diverging_at: float | None = None,
    annotate: str | None = None,
    min_height_in: float = 2.5,
    square: bool = False,
) -> str:
    """``values[row, col]`` as coloured cells with a colour bar labelled ``scale_label``.

    ``diverging_at``: centre a diverging map on this value (ratios to a mean: 1). ``annotate``: a
    format (e.g. ``"{:.2f}"``) to print each cell's value in it, used when cells are few.
    """
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    rows, cols = values.shape
    with plt.rc_context(_style()):
        if square:
            side = min(9.0, max(4.5, 0.45 * max(rows, cols) + 2.0))
            fig_w, plot_h = side + 1.5, side
        else:
            fig_w, plot_h = FIG_W, min(9.0, max(min_height_in, 0.16 * rows + 1.0))
        fig, ax = plt.subplots(figsize=(fig_w, plot_h + 1.0))
        finite = values[np.isfinite(values)]
        if diverging_at is not None:
            # ratios to a mean: 0 (no load) is the darkest blue, the mean white, the largest the darkest red
            hi = float(finite.max()) if finite.size else diverging_at
            norm = TwoSlopeNorm(vmin=0.0, vcenter=diverging_at, vmax=max(hi, diverging_at * 1.01))
            image = ax.imshow(
                values, aspect="auto", cmap=palette.DIVERGING, norm=norm, interpolation="nearest"
            )
        else:
            image = ax.imshow(values, aspect="auto", cmap=palette.SEQUENTIAL, interpolation="nearest")
        bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
        bar.set_label(scale_label)
        ystep = _tick_step(rows, plot_h * 0.8)
        xstep = _tick_step(
            cols, (fig_w - 1.5) * 0.85, TICK_PT * max(1, max((len(c) for c in col_labels), default=1)) / 2
        )
        ax.set_yticks(range(0, rows, ystep), [row_labels[i] for i in range(0, rows, ystep)])
        ax.set_xticks(range(0, cols, xstep), [col_labels[i] for i in range(0, cols, xstep)])
        ax.set_ylabel(row_name)
        ax.set_xlabel(col_name)
        ax.set_title(title, loc="left")
        if annotate and rows * cols <= 256:
            cmap = image.cmap
            for i in range(rows):
                for j in range(cols):
                    v = values[i, j]
                    if not np.isfinite(v):
                        continue
                    r, g, b, _ = cmap(image.norm(v))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(j, i, annotate.format(v), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")  # fmt: skip
        return _svg(fig, title)


def stacked_barh(
    labels: Sequence[str], components: Sequence[str], values: np.ndarray, *, title: str, unit: str
) -> str:
    """One horizontal bar per label, ``values[label, component]`` stacked, with a legend and totals."""
    plt = _plt()
    n = len(labels)
    with plt.rc_context(_style()):
        fig, ax = plt.subplots(figsize=(FIG_W, 1.2 + 0.42 * max(n, 1)))
        left = np.zeros(n)
        for j, comp in enumerate(components):
            ax.barh(range(n), values[:, j], left=left, color=palette.component_color(comp), label=comp)
            left += values[:, j]
        for i, total in enumerate(left):
            ax.text(total, i, f"  {total:.3g} {unit}", va="center", fontsize=8)
        ax.set_yticks(range(n), list(labels))
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.set_xlim(0, float(left.max()) * 1.15 if n and left.max() > 0 else 1.0)
        ax.set_title(title, loc="left")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        return _svg(fig, title)


def pareto(
    series: Sequence[tuple[str, str, Sequence[float], Sequence[float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    background: tuple[Sequence[float], Sequence[float]] | None = None,
) -> str:
    """Frontiers ``(label, hw, xs, ys)``, each in its hardware's colour, over grey background points."""
    plt = _plt()
    with plt.rc_context(_style()):
        fig, ax = plt.subplots(figsize=(8.0, 4.8))
        if background is not None and len(background[0]):
            ax.scatter(background[0], background[1], s=10, color=palette.BACKGROUND, alpha=0.6,
                       label="every point that fits")  # fmt: skip
        for label, hw, xs, ys in series:
            ax.plot(xs, ys, marker="o", color=palette.hw_color(hw), label=label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.set_title(title, loc="left")
        if series:
            ax.legend(fontsize=8)
        return _svg(fig, title)


def rank_timeline(
    ranks: Sequence[int],
    bars: Sequence[tuple[int, float, float, str]],
    *,
    title: str,
    kinds: Sequence[str],
) -> str:
    """One lane per rank; ``bars`` are ``(rank, start_ms, duration_ms, kind)``, coloured by kind."""
    plt = _plt()
    lane = {r: i for i, r in enumerate(ranks)}
    with plt.rc_context(_style()):
        fig, ax = plt.subplots(figsize=(FIG_W, 1.3 + 0.35 * max(len(ranks), 1)))
        for k, kind in enumerate(kinds):
            spans = [(s, d) for r, s, d, kd in bars if kd == kind]
            for r in ranks:
                mine = [(s, d) for rr, s, d, kd in bars if kd == kind and rr == r]
                if mine:
                    ax.broken_barh(mine, (lane[r] - 0.4, 0.8), facecolors=palette.series_color(k),
                                   edgecolors="white", linewidth=0.5)  # fmt: skip
            if spans:
                ax.plot([], [], color=palette.series_color(k), linewidth=6, label=kind)
        step = _tick_step(len(ranks), 0.35 * len(ranks))
        ax.set_yticks(range(0, len(ranks), step), [f"rank {r}" for r in list(ranks)[::step]])
        ax.invert_yaxis()
        ax.set_xlabel("time since the trace's start (ms)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(title, loc="left")
        ax.legend(fontsize=8, loc="upper right")
        return _svg(fig, title)
