"""One palette for every plot tracekit draws: the HTML report's inline SVG and the PNG/SVG files.

Colours are matplotlib's ``tab10`` cycle (``C0`` ... ``C9``), so a plot that uses the default
cycle and one that asks here agree. Hardware presets and replay components have fixed colours, so
h200-sxm is the same blue in ``pareto.png``, the HTML Pareto plot and any later chart:
use :func:`hw_color` for a series per hardware preset and :func:`component_color` for a step-time
component. Heatmaps use :data:`SEQUENTIAL` (magnitudes) or :data:`DIVERGING` centred on 1
(ratios to a mean).
"""

from __future__ import annotations

import zlib

#: matplotlib's tab10, in order (``C0`` ... ``C9``).
PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
#: Fixed colours of the built-in hardware presets (indices into :data:`PALETTE`).
HW_INDEX: dict[str, int] = {
    "h200-sxm": 0,
    "gb200-nvl72": 1,
    "b200-hgx": 2,
    "gb300-nvl72": 3,
    "h100-sxm": 4,
    "h800-sxm": 5,
}
#: Fixed colours of the replay's step-time components.
COMPONENT_INDEX: dict[str, int] = {
    "attention": 0,
    "expert_gemm": 1,
    "dense": 2,
    "dispatch": 3,
    "combine": 4,
    "tp_comm": 5,
    "straggler": 6,
    "embedding": 7,
    "lm_head": 8,
    "attn_proj": 9,
    "fixed": 5,
    "contention": 6,
    "mtp": 4,
    "idle": 7,
}
#: Colour map of magnitudes (tokens, bytes): light to dark.
SEQUENTIAL = "viridis"
#: Colour map of ratios to a mean, centred on 1 (blue below, red above).
DIVERGING = "RdBu_r"
#: Background points (e.g. every sweep point behind its Pareto frontier).
BACKGROUND = "#bbbbbb"


def _by_name(name: str, start: int) -> str:
    """A stable colour for a name without a fixed one (not taken by the fixed ones where possible)."""
    free = PALETTE[start:] or PALETTE
    return free[zlib.crc32(name.encode("utf-8")) % len(free)]


def hw_color(name: str) -> str:
    """The colour of hardware preset ``name`` (a preset file's stem gets a stable spare colour)."""
    if name in HW_INDEX:
        return PALETTE[HW_INDEX[name]]
    return _by_name(name, len(HW_INDEX))


def component_color(name: str) -> str:
    """The colour of a step-time component (attention, expert_gemm, dispatch, ...)."""
    if name in COMPONENT_INDEX:
        return PALETTE[COMPONENT_INDEX[name]]
    return _by_name(name, 9)


def series_color(index: int) -> str:
    """The ``index``-th colour of the cycle (``C{index}``)."""
    return PALETTE[index % len(PALETTE)]
