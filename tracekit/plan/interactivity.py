"""The equal-interactivity search and the sweep of ``tracekit.replay.compare`` / ``tracekit.replay.sweep``
on the fast path: the same deployments tried in the same order, each re-timed by
:class:`~tracekit.replay.fast.FastReplay` from counts shared between them (and between systems)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import polars as pl

from tracekit.errors import TracekitError, UsageError, param
from tracekit.hardware import get_hardware
from tracekit.plan.search import Progress
from tracekit.replay.compare import BATCH_CANDIDATES, EP_CANDIDATES, SystemResult, fits
from tracekit.replay.deployment import Deployment, Precision
from tracekit.replay.fast import FastReplay
from tracekit.replay.setup import target_model
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
    if tokens_per_s_per_user <= 0:
        raise UsageError(
            f"{param('tokens_per_s_per_user', '--at-interactivity')} must be > 0 tokens/s per user, got "
            f"{tokens_per_s_per_user}"
        )
    arch = target_model(fast.trace, base.model)
    hw = get_hardware(base.hw, base.hw_overrides or None)
    ep_list = (
        list(eps)
        if eps
        else [base.ep]
        if base.ep
        else [e for e in EP_CANDIDATES if e <= max(hw.scaleup_size, 64)]
    )
    batch_list = sorted(batches) if batches else list(BATCH_CANDIDATES)
    prec_list = list(precisions) if precisions else [base.precision]
    best: tuple[float, Deployment, PhaseSummary] | None = None
    tried = 0
    for prec in prec_list:
        for ep in ep_list:
            if ep % base.tp or not fits(arch, replace(base, precision=prec), ep):
                continue
            for batch in batch_list:
                dep = base.replace(ep=ep, batch_per_gpu=batch, precision=prec)
                try:
                    s: PhaseSummary | None = fast.phase(dep)
                except TracekitError:
                    s = None
                tried += 1
                if progress is not None:
                    progress(hw.name, tried, tried)
                if s is None or (s.tokens_per_s_per_user or 0.0) < tokens_per_s_per_user:
                    break  # larger batches are only slower per user
                if best is None or s.tokens_per_s_per_gpu > best[0]:
                    best = (s.tokens_per_s_per_gpu, dep, s)
    if best is None:
        note = (
            f"{hw.name} cannot reach {tokens_per_s_per_user:g} tokens/s per user with any of the {tried} "
            f"deployments tried (EP {ep_list}, batch {batch_list[0]}..{batch_list[-1]})"
        )
        return SystemResult(hw=hw.name, deployment=None, summary=None, note=note), None
    return SystemResult(hw=hw.name, deployment=best[1], summary=None), best[2]


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
