"""The equal-interactivity search and the sweep of ``tracekit.replay.compare`` / ``tracekit.replay.sweep``
on the fast path: the same deployments tried in the same order, each re-timed by
:class:`~tracekit.replay.fast.FastReplay` from counts shared between them (and between systems)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from tracekit.errors import TracekitError
from tracekit.plan.search import Progress
from tracekit.replay.compare import SystemResult, interactivity_space
from tracekit.replay.deployment import Deployment, Precision
from tracekit.replay.fast import FastReplay
from tracekit.replay.summary import PhaseSummary
from tracekit.replay.sweep import POINT_COLUMNS, point_row


def at_interactivity_fast(
    fast: FastReplay,
    base: Deployment,
    *,
    tokens_per_s_per_user: float,
    precisions: Sequence[Precision] | None = None,
    eps: Sequence[int] | None = None,
    batches: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> tuple[SystemResult, PhaseSummary | None]:
    """:func:`tracekit.replay.compare.at_interactivity` on the fast path: the deployment of
    ``base.hw`` with the most decode tokens/s per GPU at ``tokens_per_s_per_user`` or more, and its
    decode figures (the search's ``summary`` is left None: the fast path gives phase figures)."""
    space = interactivity_space(
        fast.trace,
        base,
        tokens_per_s_per_user=tokens_per_s_per_user,
        precisions=precisions,
        eps=eps,
        batches=batches,
    )
    best: tuple[float, Deployment, PhaseSummary] | None = None
    tried = 0
    for prec, ep in space.chains:
        for batch in space.batches:
            dep = base.replace(ep=ep, batch_per_gpu=batch, precision=prec)
            try:
                s: PhaseSummary | None = fast.phase(dep)
            except TracekitError:
                s = None
            tried += 1
            if progress is not None:
                progress(space.hw, tried, tried)
            if s is None or (s.tokens_per_s_per_user or 0.0) < tokens_per_s_per_user:
                break  # larger batches are only slower per user
            if best is None or s.tokens_per_s_per_gpu > best[0]:
                best = (s.tokens_per_s_per_gpu, dep, s)
    if best is None:
        note = space.none_reached(tokens_per_s_per_user, tried)
        return SystemResult(hw=space.hw, deployment=None, summary=None, note=note), None
    return SystemResult(hw=space.hw, deployment=best[1], summary=None), best[2]


def sweep_fast(
    fast: FastReplay, points: Sequence[Deployment], *, progress: Progress | None = None
) -> pl.DataFrame:
    """:func:`tracekit.replay.sweep.run_sweep` on the fast path (one process): one row per point."""
    rows = []
    for i, dep in enumerate(points):
        rows.append(point_row(dep, fast.phase))
        if progress is not None:
            progress("sweep", i + 1, len(points))
    return pl.DataFrame(rows, schema=POINT_COLUMNS)
