"""What an import kept, by category, and the kernels no rule recognised (top names by time)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from tracekit.importers.categories import UNCLASSIFIED

#: Names listed by the report printed after an import.
TOP_UNCLASSIFIED = 10


@dataclass(frozen=True, kw_only=True)
class NameTime:
    """One kernel name: launches and summed duration."""

    name: str
    kernels: int
    time_ns: int


@dataclass(frozen=True, kw_only=True)
class KernelSummary:
    """Kernel time per category and the unclassified names of an import."""

    #: Category -> summed duration, ns.
    time_ns_by_category: dict[str, int] = field(default_factory=dict)
    #: Category -> rows.
    rows_by_category: dict[str, int] = field(default_factory=dict)
    #: Names in category ``other``, longest summed time first (ties by name).
    unclassified: tuple[NameTime, ...] = ()

    @property
    def total_ns(self) -> int:
        return sum(self.time_ns_by_category.values())

    @property
    def unclassified_ns(self) -> int:
        return self.time_ns_by_category.get(UNCLASSIFIED, 0)

    def lines(self, top: int = TOP_UNCLASSIFIED) -> list[str]:
        """The unclassified-kernels report: a headline and the top names by time."""
        if not self.unclassified:
            return ["unclassified kernels: none (every kernel matched a rule)"]
        share = self.unclassified_ns / self.total_ns if self.total_ns else 0.0
        out = [
            f"unclassified kernels: {len(self.unclassified)} name(s), "
            f"{sum(n.kernels for n in self.unclassified)} launches, {share:.1%} of kernel time "
            f"(category '{UNCLASSIFIED}'); top by time (add rules with --rules FILE, docs/importers.md):"
        ]
        for n in self.unclassified[:top]:
            shown = n.name if len(n.name) <= 120 else n.name[:117] + "..."
            out.append(f"  {n.time_ns / 1e6:10.3f} ms  {n.kernels:>7}x  {shown}")
        if len(self.unclassified) > top:
            out.append(f"  ... {len(self.unclassified) - top} more (tracekit report unclassified-kernels)")
        return out


def summarize(
    names: np.ndarray, codes: np.ndarray, categories: np.ndarray, duration_ns: np.ndarray
) -> KernelSummary:
    """Summary of rows given as name codes into ``names`` (one entry per distinct name) with the
    category of each name (``categories[code]``) and each row's duration."""
    if codes.size == 0:
        return KernelSummary()
    time_by_code = np.bincount(codes, weights=duration_ns.astype(np.float64), minlength=len(names))
    rows_by_code = np.bincount(codes, minlength=len(names))
    return summarize_counts(names, categories, rows_by_code, time_by_code)


def summarize_counts(
    names: np.ndarray, categories: np.ndarray, rows_by_code: np.ndarray, time_by_code: np.ndarray
) -> KernelSummary:
    """Summary from per-name row counts and summed durations (ns), ``names[i]`` of category
    ``categories[i]``."""
    by_cat: dict[str, int] = {}
    rows_cat: dict[str, int] = {}
    seen = rows_by_code > 0
    for cat in np.unique(categories[seen]).tolist():
        sel = (categories == cat) & seen
        by_cat[cat] = round(time_by_code[sel].sum())
        rows_cat[cat] = int(rows_by_code[sel].sum())
    other = np.flatnonzero((categories == UNCLASSIFIED) & seen)
    unclassified = tuple(
        NameTime(name=str(names[i]), kernels=int(rows_by_code[i]), time_ns=round(time_by_code[i]))
        for i in other.tolist()
    )
    return KernelSummary(
        time_ns_by_category=by_cat, rows_by_category=rows_cat, unclassified=_ordered(unclassified)
    )


def _ordered(items: Iterable[NameTime]) -> tuple[NameTime, ...]:
    return tuple(sorted(items, key=lambda n: (-n.time_ns, n.name)))


def merge(parts: Iterable[KernelSummary]) -> KernelSummary:
    """One summary of several files'."""
    time_cat: dict[str, int] = {}
    rows_cat: dict[str, int] = {}
    names: dict[str, list[int]] = {}
    for p in parts:
        for k, v in p.time_ns_by_category.items():
            time_cat[k] = time_cat.get(k, 0) + v
        for k, v in p.rows_by_category.items():
            rows_cat[k] = rows_cat.get(k, 0) + v
        for n in p.unclassified:
            acc = names.setdefault(n.name, [0, 0])
            acc[0] += n.kernels
            acc[1] += n.time_ns
    return KernelSummary(
        time_ns_by_category=time_cat,
        rows_by_category=rows_cat,
        unclassified=_ordered(NameTime(name=k, kernels=v[0], time_ns=v[1]) for k, v in names.items()),
    )
