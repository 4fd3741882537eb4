"""Measured kernel times as a timing source: look a kernel's time up by family, dtype and shape.

A :class:`MeasuredTable` holds rows of the measured table (``schemas/measured/v1``): written by
``tracekit bench`` on the user's GPUs, or converted from NVIDIA AIConfigurator's databases
(:meth:`MeasuredTable.from_aiconfigurator`, the ``aiconfigurator`` extra). :meth:`time_s` prices
arrays of shapes at once::

    table = MeasuredTable.load("h200.parquet")
    t = table.time_s("grouped_gemm", dtype="fp8", hidden_size=7168, ffn_size=2048,
                     num_experts=active_E, tokens_per_expert=tokens / active_E)  # ndarray, NaN: not covered

Lookup: the family's exact keys (families.json) must equal a measured row's; its interpolated keys
are interpolated one after another, outermost first, between the two nearest measured values
present for the outer keys' bracketing values (so ragged, non-rectangular grids work): the outer
keys linearly in log(time) against log(size), the innermost (size) key as the family's
``size_axis`` says: ``affine`` families (a latency plus a cost per unit of size: GEMMs along m,
decode attention along kv_len, collectives along message bytes) linearly in time against size,
exact for ``t = a + b * size``; ``power`` families (prefill attention, quadratic in seq_len) with a
monotone cubic in log(time) against log(size), exact for power laws. A shape outside the
measured range of any key, or whose bracketing neighbours are not all measured, gets NaN: the
caller prices it with the analytic model instead. Several libraries measured for one family and
dtype: unless ``library=`` picks one, a shape gets the fastest library that covers it (what an
engine's autotuner does). Duplicate measurements of one shape are reduced to their median. No
torch here: numpy and polars only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from tracekit.errors import UnknownNameError, UsageError
from tracekit.schema.measured import (
    canonical_dtype,
    conform,
    family_spec,
    family_specs,
    read_measured,
    write_measured,
)

__all__ = ["MeasuredTable"]

_F64 = np.ndarray


@dataclass(frozen=True, kw_only=True)
class _Level:
    """One interpolated key of a grid: its distinct (parent node, log value) children, sorted."""

    parent: np.ndarray  # int64 [C]: node id at the previous level
    logv: np.ndarray  # float64 [C]
    search_key: np.ndarray  # float64 [C]: parent + position of logv in (0, 1), sorted
    lo: float  # log-value range of the level (maps values into the key)
    span: float


class _Grid:
    """Lookup structure of one (family, dtype, library): a trie over exact keys, then one level per
    interpolated key; leaves hold log(median time)."""

    def __init__(
        self, rows: pl.DataFrame, exact: tuple[str, ...], interp: tuple[str, ...], size_axis: str
    ) -> None:
        keys = [*exact, *interp]
        agg = rows.group_by(keys).agg(pl.col("time_s").median()).sort(keys)
        self.exact = exact
        self.interp = interp
        n = agg.height
        # node ids: rows sharing the exact keys form the root nodes
        if exact:
            ex = agg.select(exact).with_row_index("_i")
            firsts = ex.unique(subset=list(exact), keep="first", maintain_order=True)
            self._root_keys = {
                tuple(float(v) for v in row[1:]): i for i, row in enumerate(firsts.iter_rows())
            }
            change = np.zeros(n, dtype=bool)
            change[0] = True
            for k in exact:
                v = agg[k].cast(pl.Float64).to_numpy()
                change[1:] |= v[1:] != v[:-1]
            node = np.cumsum(change) - 1
        else:
            self._root_keys = {(): 0}
            node = np.zeros(n, dtype=np.int64)
        self.levels: list[_Level] = []
        change = np.zeros(n, dtype=bool)
        change[0] = True
        if exact:
            for k in exact:
                v = agg[k].cast(pl.Float64).to_numpy()
                change[1:] |= v[1:] != v[:-1]
        for k in interp:
            logv = np.log(agg[k].cast(pl.Float64).to_numpy())
            change = change.copy()
            change[1:] |= logv[1:] != logv[:-1]
            idx = np.flatnonzero(change)
            parent = node[idx]
            lv = logv[idx]
            lo, hi = float(lv.min()), float(lv.max())
            span = max(hi - lo, 1e-12)
            key = parent + 0.25 + 0.5 * (lv - lo) / span
            self.levels.append(_Level(parent=parent, logv=lv, search_key=key, lo=lo, span=span))
            node = np.cumsum(change) - 1
        self.log_time = np.log(agg["time_s"].to_numpy())  # one leaf per row of agg
        self.affine = size_axis == "affine"
        if self.affine:
            self.time = np.exp(self.log_time)
            self.size = np.exp(self.levels[-1].logv)
        else:
            self.slope = _pchip_slopes(self.levels[-1], self.log_time)

    def lookup(self, exact_q: list[np.ndarray], interp_q: list[np.ndarray]) -> _F64:
        nq = interp_q[0].size if interp_q else (exact_q[0].size if exact_q else 0)
        out = np.full(nq, np.nan)
        if nq == 0:
            return out
        # root node per query (the distinct exact-key combinations are few: a dict per combination)
        if self.exact:
            stacked = np.stack([np.asarray(e, dtype=np.float64) for e in exact_q], axis=1)
            combos, inverse = np.unique(stacked, axis=0, return_inverse=True)
            ids = np.array([self._root_keys.get(tuple(float(x) for x in c), -1) for c in combos])
            root = ids[inverse.reshape(-1)]
        else:
            root = np.zeros(nq, dtype=np.int64)
        logq = []
        bad = root < 0
        for q in interp_q:
            qf = np.asarray(q, dtype=np.float64)
            bad |= ~(qf > 0) | ~np.isfinite(qf)
            with np.errstate(divide="ignore", invalid="ignore"):
                logq.append(np.log(np.where(qf > 0, qf, 1.0)))
        qi = np.flatnonzero(~bad)
        node = root[qi]
        w = np.ones(qi.size)
        last = len(self.levels) - 1
        for depth, (level, lq_all) in enumerate(zip(self.levels, logq, strict=True)):
            lq = lq_all[qi]
            u = np.clip(0.25 + 0.5 * (lq - level.lo) / level.span, 0.01, 0.99)
            pos = np.searchsorted(level.search_key, node + u, side="left")
            c = level.parent.size
            # node + u keeps ~16 digits in all: a query within rounding of a measured value may
            # land on the wrong side of it; one step in log space puts it back
            at = np.minimum(pos, c - 1)
            pos = pos + ((pos < c) & (level.parent[at] == node) & (level.logv[at] < lq))
            at = np.maximum(pos - 1, 0)
            pos = pos - ((pos > 0) & (level.parent[at] == node) & (level.logv[at] > lq))
            hi = np.minimum(pos, c - 1)
            lo = np.maximum(pos - 1, 0)
            hi_ok = (pos < c) & (level.parent[hi] == node)
            lo_ok = (pos > 0) & (level.parent[lo] == node)
            exact_hit = hi_ok & (level.logv[hi] == lq)
            between = ~exact_hit & hi_ok & lo_ok
            fail = ~(exact_hit | between)
            bad[qi[fail]] = True
            t = np.zeros(qi.size)
            gap = level.logv[hi] - level.logv[lo]
            np.divide(lq - level.logv[lo], gap, out=t, where=between & (gap > 0))
            t = np.clip(t, 0.0, 1.0)
            if depth == last:
                if self.affine:
                    # innermost key, affine family: linear in (size, time) between lo and hi
                    y = np.log(_affine(np.exp(lq), self.size, self.time, lo, hi, between))
                else:
                    # innermost key, power family: monotone cubic Hermite in (log size, log time)
                    y = _hermite(t, gap, self.log_time, self.slope, lo, hi)
                y = np.where(exact_hit, self.log_time[hi], y)
                keep = exact_hit | between
                total = np.bincount(qi[keep], weights=w[keep] * y[keep], minlength=nq)
                break
            one = exact_hit
            two = between
            qi = np.concatenate([qi[one], qi[two], qi[two]])
            node = np.concatenate([hi[one], lo[two], hi[two]])
            w = np.concatenate([w[one], w[two] * (1.0 - t[two]), w[two] * t[two]])
        ok = ~bad
        out[ok] = np.exp(total[ok])
        return out


def _pchip_slopes(level: _Level, y: np.ndarray) -> np.ndarray:
    """Slopes d(log time)/d(log size) at each leaf for monotone piecewise-cubic (PCHIP)
    interpolation along the innermost key, within each parent (Fritsch-Carlson: zero at a local
    extremum, else the weighted harmonic mean of the neighbouring secants; one-sided at the ends)."""
    x = level.logv
    n = x.size
    d = np.zeros(n)
    if n < 2:
        return d
    same = level.parent[1:] == level.parent[:-1]
    h = np.diff(x)
    delta = np.zeros(n - 1)
    np.divide(np.diff(y), h, out=delta, where=same & (h > 0))
    # ends of each parent's run: the one-sided secant
    left_ok = np.concatenate([[False], same])  # has a neighbour on the left
    right_ok = np.concatenate([same, [False]])
    d_left = np.concatenate([[0.0], delta])
    d_right = np.concatenate([delta, [0.0]])
    h_left = np.concatenate([[0.0], h])
    h_right = np.concatenate([h, [0.0]])
    inner = left_ok & right_ok
    d = np.where(left_ok & ~right_ok, d_left, d)
    d = np.where(right_ok & ~left_ok, d_right, d)
    w1 = 2 * h_right + h_left
    w2 = h_right + 2 * h_left
    same_sign = inner & (d_left * d_right > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        harm = (w1 + w2) / (w1 / d_left + w2 / d_right)
    return np.where(same_sign, harm, np.where(inner, 0.0, d))


def _affine(
    q: np.ndarray, x: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray, between: np.ndarray
) -> np.ndarray:
    """Time at size ``q`` on the straight line through (x[lo], y[lo]) and (x[hi], y[hi]); y[hi]
    where the query is not between two measured sizes (its value is then not used)."""
    gap = x[hi] - x[lo]
    s = np.ones(q.size)
    np.divide(q - x[lo], gap, out=s, where=between & (gap > 0))
    s = np.clip(s, 0.0, 1.0)
    return (1.0 - s) * y[lo] + s * y[hi]


def _hermite(
    t: np.ndarray, h: np.ndarray, y: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    t2 = t * t
    t3 = t2 * t
    return (
        (2 * t3 - 3 * t2 + 1) * y[lo]
        + (t3 - 2 * t2 + t) * h * d[lo]
        + (-2 * t3 + 3 * t2) * y[hi]
        + (t3 - t2) * h * d[hi]
    )


class MeasuredTable:
    """Measured kernel times, priced by shape with interpolation between measured shapes (see the
    module doc)."""

    def __init__(self, frame: pl.DataFrame, *, where: str = "measured table") -> None:
        self._frame = conform(frame, where=where)
        self._grids: dict[tuple[str, str, str], _Grid] = {}

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | os.PathLike[str] | pl.DataFrame) -> MeasuredTable:
        """A table from a Parquet file written by ``tracekit bench`` (or an import), or a frame."""
        if isinstance(source, pl.DataFrame):
            return cls(source)
        return cls(read_measured(source), where=str(source))

    @classmethod
    def from_aiconfigurator(
        cls,
        system: str = "h200_sxm",
        framework: str = "trtllm",
        version: str | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> MeasuredTable:
        """AIConfigurator's measured databases for ``system`` and ``framework`` (needs the
        ``aiconfigurator`` extra unless ``data_dir`` points at a copy of its ``systems/data``)."""
        from tracekit.importers.aiconfigurator import read_aiconfigurator

        frame = read_aiconfigurator(system=system, framework=framework, version=version, data_dir=data_dir)
        return cls(frame, where=f"aiconfigurator {system}/{framework}")

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as Parquet (schema version in the metadata)."""
        return write_measured(self._frame, path)

    # -- what is covered ------------------------------------------------------------------------
    @property
    def frame(self) -> pl.DataFrame:
        """The rows, one per measurement, with every column of the schema."""
        return self._frame

    def __len__(self) -> int:
        return self._frame.height

    def families(self) -> list[str]:
        """Families with at least one row, sorted."""
        return sorted(self._frame["family"].unique().to_list())

    def coverage(self, family: str) -> pl.DataFrame:
        """Per dtype and library of ``family``: rows, and the range (min, max) and number of distinct
        values of each shape key. Empty when the table has no row of the family."""
        spec = family_spec(family)
        part = self._frame.filter(pl.col("family") == family)
        aggs: list[pl.Expr] = [pl.len().alias("rows")]
        for k in spec.shape_keys:
            aggs += [
                pl.col(k).min().alias(f"{k}_min"),
                pl.col(k).max().alias(f"{k}_max"),
                pl.col(k).n_unique().alias(f"{k}_values"),
            ]
        return part.group_by("dtype", "library").agg(aggs).sort("dtype", "library")

    def select(self, **equal: Any) -> MeasuredTable:
        """The rows whose columns equal the given values (``device=``, ``library=``, ``source=``)."""
        bad = [k for k in equal if k not in self._frame.columns]
        if bad:
            raise UnknownNameError("measured-table column", bad[0], self._frame.columns)
        df = self._frame
        for k, v in equal.items():
            df = df.filter(pl.col(k) == v)
        return MeasuredTable(df)

    # -- pricing --------------------------------------------------------------------------------
    def time_s(
        self, family: str, *, dtype: str, library: str | None = None, **shape: ArrayLike
    ) -> np.ndarray:
        """Time in seconds of ``family`` at each shape (the keyword arguments: every shape key of
        the family, scalars or arrays broadcast together); NaN where the table does not cover it."""
        spec = family_spec(family)
        dt = canonical_dtype(dtype)
        unknown = sorted(set(shape) - set(spec.shape_keys))
        missing = [k for k in spec.shape_keys if k not in shape]
        if unknown or missing:
            raise UsageError(
                f"{family} is keyed by {', '.join(spec.shape_keys)}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                + (f"; missing: {', '.join(missing)}" if missing else "")
            )
        arrays = np.broadcast_arrays(*(np.asarray(shape[k], dtype=np.float64) for k in spec.shape_keys))
        out_shape = arrays[0].shape if arrays else ()
        flat = {k: a.reshape(-1) for k, a in zip(spec.shape_keys, arrays, strict=True)}
        part = self._frame.filter((pl.col("family") == family) & (pl.col("dtype") == dt))
        libraries = sorted(part["library"].unique().to_list())
        if library is not None:
            if library not in libraries and part.height:
                raise UnknownNameError(f"library measured for {family} {dt}", library, libraries)
            libraries = [library] if library in libraries else []
        best = np.full(int(np.prod(out_shape, dtype=np.int64)), np.nan)
        for lib in libraries:
            grid = self._grid(family, dt, lib, part)
            t = grid.lookup([flat[k] for k in spec.exact_keys], [flat[k] for k in spec.interpolated_keys])
            best = np.fmin(best, t)
        return best.reshape(out_shape)

    def _grid(self, family: str, dtype: str, library: str, part: pl.DataFrame) -> _Grid:
        key = (family, dtype, library)
        grid = self._grids.get(key)
        if grid is None:
            spec = family_spec(family)
            rows = part.filter(pl.col("library") == library)
            grid = self._grids[key] = _Grid(rows, spec.exact_keys, spec.interpolated_keys, spec.size_axis)
        return grid


def known_families() -> list[str]:
    """Every family name the measured table format knows (families.json), sorted."""
    return sorted(family_specs())


def holdout_errors(table: MeasuredTable, family: str, key: str | None = None) -> pl.DataFrame:
    """Leave-one-out check of the interpolation along ``key`` (default: the family's innermost
    interpolated key): every measured shape that has a measured neighbour on both sides along
    ``key`` (all other keys, dtype and library equal) is predicted from the table without it.

    Runs as two lookups (odd, then even positions along each slice held out, so a held-out
    shape's neighbours are always kept). Returns one row per held-out shape: dtype, library, the
    shape keys, ``measured_s``, ``predicted_s`` and ``error`` (predicted / measured - 1; NaN where
    the rest of the table does not cover the shape).
    """
    spec = family_spec(family)
    key = key or spec.interpolated_keys[-1]
    if key not in spec.interpolated_keys:
        raise UnknownNameError(f"interpolated key of {family}", key, spec.interpolated_keys)
    others = [k for k in spec.shape_keys if k != key]
    part = table.frame.filter(pl.col("family") == family)
    order = ["dtype", "library", *others, key]
    agg = part.group_by(order).agg(pl.col("time_s").median()).sort(order)
    slice_cols = ["dtype", "library", *others]
    agg = agg.with_columns(
        pl.int_range(pl.len()).over(slice_cols).alias("_pos"), pl.len().over(slice_cols).alias("_n")
    )
    interior = (pl.col("_pos") > 0) & (pl.col("_pos") < pl.col("_n") - 1)
    results = []
    for parity in (1, 0):
        held_mask = interior & (pl.col("_pos") % 2 == parity)
        held = agg.filter(held_mask)
        if held.is_empty():
            continue
        kept = agg.filter(~held_mask).with_columns(
            pl.lit(family).alias("family"),
            pl.lit("imported").alias("timing_source"),
            pl.lit("holdout").alias("device"),
            pl.lit("holdout").alias("source"),
        )
        rest = MeasuredTable(kept.drop("_pos", "_n"))
        for (dt, lib), grp in held.group_by(["dtype", "library"], maintain_order=True):
            pred = rest.time_s(
                family, dtype=str(dt), library=str(lib), **{k: grp[k].to_numpy() for k in spec.shape_keys}
            )
            results.append(grp.drop("_pos", "_n").with_columns(pl.Series("predicted_s", pred)))
    if not results:
        return pl.DataFrame()
    out = pl.concat(results).rename({"time_s": "measured_s"})
    return out.with_columns((pl.col("predicted_s") / pl.col("measured_s") - 1.0).alias("error")).sort(order)
