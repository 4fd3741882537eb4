"""Sweep a grid of deployments over processes; Pareto frontier of tokens/s per GPU against tokens/s
per user; a plot of it (matplotlib, Agg backend, imported only here and only when plotting)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from tracekit.errors import MissingDependencyError, TracekitError, UsageError
from tracekit.hardware import comm_impl
from tracekit.replay.deployment import Deployment, Precision
from tracekit.replay.engine import replay
from tracekit.replay.fast import FastReplay
from tracekit.replay.results import prepare_dir, write_tables
from tracekit.replay.summary import PhaseSummary, ReplaySummary
from tracekit.trace import open_trace, store
from tracekit.trace.store import Location, RemotePath, absolute

if TYPE_CHECKING:
    from tracekit.backends import Backend

POINT_COLUMNS = {
    "hw": pl.String,
    "ep": pl.Int32,
    "tp": pl.Int32,
    "batch_per_gpu": pl.Int32,
    "precision_experts": pl.String,
    "precision": pl.String,
    "impl": pl.String,
    "tbo": pl.Boolean,
    "num_gpus": pl.Int32,
    "tokens_per_s_per_gpu": pl.Float64,
    "tokens_per_s_per_user": pl.Float64,
    "step_time_s": pl.Float64,
    "max_batch_per_gpu": pl.Int64,
    "bound": pl.String,
    "fits": pl.Boolean,
    "error": pl.String,
}


def grid(
    base: Deployment,
    *,
    hws: Sequence[str],
    eps: Sequence[int | None],
    batches: Sequence[int | None],
    precisions: Sequence[Precision],
    tbos: Sequence[bool] = (False,),
    impls: Sequence[str | None] = (None,),
) -> list[Deployment]:
    """Every combination, as deployments derived from ``base``."""
    return [
        base.replace(hw=hw, ep=ep, batch_per_gpu=b, precision=p, tbo=t, impl=i)
        for hw, ep, b, p, t, i in itertools.product(hws, eps, batches, precisions, tbos, impls)
    ]


def point_row(dep: Deployment, price: Callable[[Deployment], PhaseSummary | ReplaySummary]) -> dict[str, Any]:
    """One row of ``sweep_points``: ``dep``'s grid keys and ``price(dep)``'s decode figures (the
    full replay's or the planner's fast path), or why it was not replayed."""
    row: dict[str, Any] = {
        "hw": dep.hw,
        "ep": dep.ep,
        "tp": dep.tp,
        "batch_per_gpu": dep.batch_per_gpu,
        "precision_experts": dep.precision.experts,
        "precision": dep.precision.label(),
        "impl": dep.impl or "auto",
        "tbo": dep.tbo,
    }
    try:
        s = price(dep)
    except TracekitError as exc:
        return {**row, "fits": False, "error": " ".join(str(exc).split())}
    return {
        **row,
        "num_gpus": s.num_gpus,
        "tokens_per_s_per_gpu": s.tokens_per_s_per_gpu,
        "tokens_per_s_per_user": s.tokens_per_s_per_user,
        "step_time_s": s.step_time_s,
        "max_batch_per_gpu": s.max_batch_per_gpu,
        "bound": s.bound,
        "fits": True,
        "error": None,
    }


def _point(args: tuple[str, Deployment]) -> dict[str, Any]:
    trace, dep = args
    return point_row(dep, lambda d: replay(trace, d, phases=["decode"], collect_ranks=False).summary)


#: A worker process's fast paths, one per trace (kept between the tasks of one sweep's pool).
_FAST: dict[str, FastReplay] = {}


def _fast_points(args: tuple[str, Sequence[Deployment]]) -> list[dict[str, Any]]:
    """The rows of a group of points on the fast path of this worker (the routing read once per
    worker; the group's counts dropped after it)."""
    trace, deps = args
    fast = _FAST.get(trace)
    if fast is None:  # the parent process checked the trace (and warned) when it opened it
        fast = _FAST[trace] = FastReplay(open_trace(trace, warn=False))
    rows = [point_row(d, fast.phase) for d in deps]
    fast.release()  # the next group counts other layouts: this one's memory is reused for them
    return rows


def _groups(points: Sequence[Deployment]) -> list[list[int]]:
    """Indices of ``points`` grouped by what their counts share (system, EP degree, redundant
    experts and placement), each group in the order given but for the points of DeepEP normal first
    (their windows count the domain loads with the rest, once, for the group's other points); the
    groups likely to cost most first (more points, more GPUs, replicated experts: counted per
    schedule), so that a pool's workers finish together."""
    out: dict[tuple[object, ...], list[int]] = {}
    for i, d in enumerate(points):
        out.setdefault((d.hw, d.ep, d.redundant, str(d.placement)), []).append(i)
    for idx in out.values():
        idx.sort(key=lambda i: comm_impl(points[i].impl_for("decode")).dedup != "domain")

    def cost(idx: list[int]) -> int:
        d = points[idx[0]]
        return len(idx) * (d.ep or 1) * (4 if d.redundant or d.placement is not None else 1)

    return sorted(out.values(), key=cost, reverse=True)


def sweep_fast(
    fast: FastReplay,
    points: Sequence[Deployment],
    *,
    jobs: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> pl.DataFrame:
    """Every point re-timed on the fast path (``fast``: the trace's routing read and counted once per
    expert layout and batch, shared by the points): the rows of the full replay's sweep. Here, or
    over ``jobs`` processes, each opening the trace itself and given whole groups of points that
    share counts (:func:`_groups`); one row per point in the order of ``points``. Each group's counts
    are dropped when it is done (:meth:`FastReplay.release`, ``fast``'s too in one process)."""
    groups = _groups(points)
    jobs = min(jobs or os.cpu_count() or 1, len(groups))
    rows: list[dict[str, Any] | None] = [None] * len(points)
    done = 0
    if jobs <= 1:
        for idx in groups:
            for i in idx:
                rows[i] = point_row(points[i], fast.phase)
                done += 1
                if progress is not None:
                    progress("sweep", done, len(points))
            fast.release()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {
                pool.submit(_fast_points, (str(fast.trace.path), [points[i] for i in idx])): idx
                for idx in groups
            }
            for fut in as_completed(futures):
                idx = futures[fut]
                for i, row in zip(idx, fut.result(), strict=True):
                    rows[i] = row
                done += len(idx)
                if progress is not None:
                    progress("sweep", done, len(points))
    return pl.DataFrame(rows, schema=POINT_COLUMNS)


def run_sweep(
    trace: str | Path | RemotePath,
    points: Sequence[Deployment],
    *,
    jobs: int | None = None,
    backend: Backend | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    fast: bool = True,
) -> pl.DataFrame:
    """Replay every point (decode), in parallel over ``jobs`` processes, or one task per point on a
    distributed ``backend`` (``tracekit.backends``); one row per point, in the order of ``points``.
    Here, points go through the fast path (:func:`sweep_fast`, the same figures) unless ``fast`` is
    False or the trace's routing is too large to hold in memory; ``progress(what, done, total)`` is
    called as points finish (here; a backend shows its own)."""
    if backend is not None and not backend.local:
        if jobs is not None:
            raise UsageError(
                "--jobs sizes the local process pool; with --backend ray the cluster's CPUs run the points"
            )
        work = [(absolute(trace), d) for d in points]
        return pl.DataFrame(backend.map(_point, work, label="deployments"), schema=POINT_COLUMNS)
    if fast and not isinstance(trace, RemotePath):
        here = FastReplay(trace)
        if here.holds():
            return sweep_fast(here, points, jobs=jobs, progress=progress)
    jobs = jobs or min(len(points), os.cpu_count() or 1)
    work = [(str(trace), d) for d in points]
    rows: list[dict[str, Any]] = []
    if jobs <= 1 or len(points) <= 1:
        results: Iterable[dict[str, Any]] = map(_point, work)
        for row in results:
            rows.append(row)
            if progress is not None:
                progress("sweep", len(rows), len(work))
    else:
        # spawn: forking a process that already runs polars / DuckDB thread pools can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            for row in pool.map(_point, work):
                rows.append(row)
                if progress is not None:
                    progress("sweep", len(rows), len(work))
    return pl.DataFrame(rows, schema=POINT_COLUMNS)


def pareto(points: pl.DataFrame) -> pl.DataFrame:
    """Per hw, the points no other point of the same hw beats on both tokens/s per GPU and per user."""
    ok = points.filter(pl.col("fits") & pl.col("tokens_per_s_per_user").is_not_null())
    keep = []
    for _hw, part in ok.group_by("hw", maintain_order=True):
        x = part["tokens_per_s_per_user"].to_numpy()
        y = part["tokens_per_s_per_gpu"].to_numpy()
        # dominated: another point at least as good on both and better on one
        ge = (x[None, :] >= x[:, None]) & (y[None, :] >= y[:, None])
        gt = (x[None, :] > x[:, None]) | (y[None, :] > y[:, None])
        dominated = (ge & gt).any(axis=1)
        keep.append(part.filter(pl.Series(~dominated)))
    if not keep:
        return ok.clear()
    return pl.concat(keep).sort(["hw", "tokens_per_s_per_user"])


def plot_pareto(points: pl.DataFrame, front: pl.DataFrame, out: Path) -> list[Path]:
    """PNG and SVG of every point and each hw's frontier."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("matplotlib", "plot", "plotting the sweep") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = points.filter(pl.col("fits"))
    for i, (key, part) in enumerate(ok.group_by("hw", maintain_order=True)):
        hw = str(key[0])
        color = f"C{i}"
        ax.scatter(part["tokens_per_s_per_user"], part["tokens_per_s_per_gpu"], s=12, alpha=0.35, color=color)
        f = front.filter(pl.col("hw") == hw).sort("tokens_per_s_per_user")
        ax.plot(f["tokens_per_s_per_user"], f["tokens_per_s_per_gpu"], marker="o", color=color, label=hw)
    ax.set_xlabel("tokens/s per user")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title("Pareto frontier (decode)")
    ax.grid(True, alpha=0.3)
    if len(ok):
        ax.legend()
    paths = [out / "pareto.png", out / "pareto.svg"]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


def write_sweep(
    out: str | Path, trace: str | Path, points: pl.DataFrame, *, overwrite: bool = False, plot: bool = True
) -> Location:
    """``sweep_points.parquet``, ``sweep_pareto.parquet``, ``result.json`` and the plot."""
    path = prepare_dir(out, overwrite=overwrite)
    front = pareto(points)
    best = front.sort("tokens_per_s_per_gpu", descending=True).head(1)
    meta = {
        "kind": "sweep",
        "trace": str(trace),
        "points": points.height,
        "fits": int(points["fits"].sum()),
        "pareto_points": front.height,
        "best": best.to_dicts()[0] if best.height else None,
    }
    if plot:  # before result.json, which marks the result complete
        plot_pareto(points, front, path)
    write_tables(path, {"sweep_points": points, "sweep_pareto": front}, meta)
    return store.location(out)
