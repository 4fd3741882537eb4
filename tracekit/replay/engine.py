"""The replay engine: re-time a trace's real routing on a hardware model under a deployment.

The replay runs in stages, each a module of its own (docs/replay.md, "Stages"):

1. :mod:`~tracekit.replay.setup`: hardware, target model, placement epochs, memory plan;
2. :mod:`~tracekit.replay.schedule`: each token's replayed step and rank, the attention load;
3. :mod:`~tracekit.replay.counts`: the routing of a window of steps counted under the placement;
4. :mod:`~tracekit.replay.timing`: every component priced per (step, layer, rank);
5. :mod:`~tracekit.replay.attribution`: layer and step times, straggler, exposed communication;
6. :mod:`~tracekit.replay.tables` and :mod:`~tracekit.replay.summary`: the output tables.

This module only orchestrates them: phase by phase, window by window, with the next window's
routing counted on a helper thread while the current one is timed, or, given a distributed
``backend``, windows counted as tasks on its workers (:mod:`~tracekit.replay.windows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from tracekit.errors import UsageError, param
from tracekit.replay.attribution import attribute, schedule_of
from tracekit.replay.counts import RoutingSource, prefetch_window, window_size
from tracekit.replay.deployment import Deployment
from tracekit.replay.mtp import with_draft
from tracekit.replay.schedule import (
    AttentionLoad,
    PhaseTokens,
    Schedule,
    TokenIndex,
    attention_load,
    default_batch,
    load_tokens,
    make_schedule,
    window_sequences,
)
from tracekit.replay.setup import ReplaySetup, check_kv, make_setup
from tracekit.replay.summary import (
    PhaseSummary,
    ReplaySummary,
    RunInfo,
    attach_measured,
    make_summary,
    phase_summary,
    run_frame,
    run_steps,
    summary_frame,
)
from tracekit.replay.tables import (
    Window,
    layers_frame,
    peers_frame,
    ranks_frame,
    sources_frame,
    sources_table,
    steps_frame,
)
from tracekit.replay.timing import time_window
from tracekit.replay.windows import WindowJob, count_windows
from tracekit.schema import ModelArch
from tracekit.trace.reader import Trace, open_trace
from tracekit.trace.store import RemotePath

if TYPE_CHECKING:
    from tracekit.backends import Backend

#: ``progress(phase, steps_done, steps_total)``, called before each window of replayed steps.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, kw_only=True, eq=False)
class ReplayResult:
    """Every table of one replay (polars DataFrames) and its summary."""

    deployment: Deployment
    trace_path: str
    #: The model the trace was re-timed as.
    target: ModelArch
    run: pl.DataFrame
    steps: pl.DataFrame
    layers: pl.DataFrame
    ranks: pl.DataFrame
    peers: pl.DataFrame
    summary_table: pl.DataFrame
    #: The decode figures (prefill's when the trace has no decode steps).
    summary: ReplaySummary
    #: Per phase replayed, its figures (a row of ``summary_table`` each).
    phases: tuple[PhaseSummary, ...] = ()
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    #: The prefill pool's deployment of a disaggregated replay (``deployment`` is then the decode pool's).
    prefill_deployment: Deployment | None = None

    def all_tables(self) -> dict[str, pl.DataFrame]:
        return {
            "replay_run": self.run,
            "replay_steps": self.steps,
            "replay_layers": self.layers,
            "replay_ranks": self.ranks,
            "replay_peers": self.peers,
            "replay_summary": self.summary_table,
            **self.tables,
        }


@dataclass(frozen=True, kw_only=True, eq=False)
class _Phase:
    """What one phase's windows share."""

    setup: ReplaySetup
    name: str
    pool: str
    tokens: PhaseTokens
    index: TokenIndex
    schedule: Schedule
    #: Where the routing is counted: ``schedule`` itself, or under MoE TP the same tokens on the
    #: expert groups (``moe_tp`` consecutive GPUs' tokens are one group's).
    count_schedule: Schedule
    load: AttentionLoad
    source: RoutingSource
    window_steps: int

    @property
    def job(self) -> WindowJob:
        """What counting a window of this phase needs (shipped to a backend's workers)."""
        return WindowJob(
            source=self.source,
            index=self.index,
            tokens=self.tokens,
            schedule=self.count_schedule,
            epochs=tuple(self.setup.epochs),
            window_steps=self.window_steps,
            ranks_per_node=self.setup.group_domain,
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class _PhaseOut:
    steps: pl.DataFrame
    layers: pl.DataFrame
    ranks: pl.DataFrame | None
    peers: pl.DataFrame
    sources: pl.DataFrame


def replay(
    trace: str | Path | RemotePath | Trace,
    deployment: Deployment,
    *,
    phases: Iterable[str] | None = None,
    pool: str = "all",
    collect_ranks: bool = True,
    progress: Progress | None = None,
    backend: Backend | None = None,
) -> ReplayResult:
    """Re-time ``trace`` under ``deployment``; see docs/replay.md for the model and the tables.
    ``backend``: where windows of steps are counted (default: here; ``tracekit.backends``)."""
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    setup = make_setup(tr, deployment)
    dep = setup.dep
    tokens, index = load_tokens(
        tr,
        kv_len=dep.kv_len,
        kv_len_mean=dep.kv_len_mean,
        prefix_hit=dep.prefix_hit,
        min_step=setup.from_step,
    )
    wanted = _phases_to_replay(setup, tokens, phases)
    source = RoutingSource(trace=tr, layers=tuple(setup.trace_arch.moe_layers), top_k=setup.trace_arch.top_k)
    as_recorded_ok = index.ranks.size == setup.num_ranks and index.ranks.max() < setup.num_ranks
    outs: list[_PhaseOut] = []
    figures: list[PhaseSummary] = []
    batch: dict[str, int | None] = {}
    rebatched, reuse, num_steps = False, 1.0, 0
    replayed: list[np.ndarray] = []
    for name in wanted:
        ptok = tokens[name]
        given = dep.prefill_tokens_per_gpu if name == "prefill" else dep.batch_per_gpu
        per_gpu = given if given is not None or (as_recorded_ok and dep.moe_tp == 1) else default_batch(ptok)
        schedule = make_schedule(ptok, num_ranks=setup.num_ranks, batch_per_gpu=per_gpu, num_steps=dep.steps)
        phase = _start_phase(setup, name, pool, ptok, index, schedule, source, backend)
        out = _replay_phase(phase, collect_ranks=collect_ranks, progress=progress, backend=backend)
        if progress is not None:
            progress(name, schedule.num_steps, schedule.num_steps)
        outs.append(out)
        figures.append(phase_summary(setup, out.steps, phase=name, pool=pool, tokens=ptok, schedule=schedule))
        rebatched = rebatched or schedule.rebatched
        reuse = max(reuse, schedule.token_reuse)
        batch[name] = schedule.batch_per_gpu
        num_steps += schedule.num_steps
        replayed.append(np.unique(ptok.trace_step[schedule.tokens[0]]))
    steps_used = run_steps(setup, np.unique(np.concatenate(replayed)))
    info = RunInfo(rebatched=rebatched, token_reuse=reuse, batch=batch, num_steps=num_steps)
    ranks = [o.ranks for o in outs if o.ranks is not None]
    return ReplayResult(
        deployment=dep,
        trace_path=str(tr.path),
        target=setup.arch,
        run=run_frame(setup, info, steps_used, str(tr.path)),
        steps=pl.concat([o.steps for o in outs]),
        layers=pl.concat([o.layers for o in outs]),
        ranks=pl.concat(ranks) if ranks else pl.DataFrame(),
        peers=pl.concat([o.peers for o in outs]),
        summary_table=summary_frame(figures),
        summary=make_summary(figures, steps_used),
        phases=tuple(figures),
        tables={"replay_sources": pl.concat([o.sources for o in outs])},
    )


def _phases_to_replay(
    setup: ReplaySetup, tokens: dict[str, PhaseTokens], phases: Iterable[str] | None
) -> tuple[str, ...]:
    asked = tuple(phases) if phases is not None else tuple(tokens)
    wanted = tuple(p for p in ("prefill", "decode") if p in asked and p in tokens)
    if wanted:
        return wanted
    have = ", ".join(tokens) or "none"
    path = setup.trace.path
    if setup.from_step:
        raise UsageError(
            f"{path}: no {'/'.join(phases or [])} tokens at or after trace step {setup.from_step}, where "
            f"{param('placement')} {setup.dep.placement_label} comes into force (the steps before it are "
            f"the ones it was computed from and are not replayed); phases left to replay: {have}"
        )
    raise UsageError(f"{path}: no {'/'.join(phases or [])} tokens to replay (the trace has: {have})")


def _start_phase(
    setup: ReplaySetup,
    name: str,
    pool: str,
    tokens: PhaseTokens,
    index: TokenIndex,
    schedule: Schedule,
    source: RoutingSource,
    backend: Backend | None = None,
) -> _Phase:
    """The phase's fixed parts; its first window's routing starts decoding in the background while
    the attention load is summed (when windows are counted here)."""
    counted = schedule
    if setup.dep.moe_tp > 1 and schedule.batch_per_gpu is not None:
        counted = make_schedule(
            tokens,
            num_ranks=setup.ep_groups,
            batch_per_gpu=schedule.batch_per_gpu * setup.dep.moe_tp,
            num_steps=schedule.num_steps,
        )
    rows_per_step = len(source.layers) * schedule.tokens[0].size / max(1, schedule.num_steps)
    wsize = window_size(
        len(source.layers), setup.ep_groups, setup.placement.num_slots, setup.group_domain, rows_per_step
    )
    if backend is None or backend.local:
        prefetch_window(source, tokens, counted, step_lo=0, step_hi=min(schedule.num_steps, wsize))
    load = attention_load(tokens, schedule, setup.distinct_windows)
    check_kv(setup, name, load.keys[None], load.tokens)
    return _Phase(
        setup=setup,
        name=name,
        pool=pool,
        tokens=tokens,
        index=index,
        schedule=schedule,
        count_schedule=counted,
        load=load,
        source=source,
        window_steps=wsize,
    )


def _replay_phase(
    ph: _Phase, *, collect_ranks: bool, progress: Progress | None, backend: Backend | None = None
) -> _PhaseOut:
    """Every window of a phase: counted (one ahead on a helper thread, or as a backend's tasks),
    timed, attributed, tabled."""
    setup, total = ph.setup, ph.schedule.num_steps
    L, R = len(ph.source.layers), setup.num_ranks
    peer_tokens = np.zeros((L, R, R))
    steps, layers, ranks, sources = [], [], [], []
    starts = list(range(0, total, ph.window_steps))
    for lo, counts in zip(starts, count_windows(ph.job, starts, backend), strict=True):
        hi = min(total, lo + ph.window_steps)
        if progress is not None:
            progress(ph.name, lo, total)
        seqs = window_sequences(ph.tokens, ph.schedule, lo, hi)
        cost = time_window(setup, phase=ph.name, counts=counts, load=ph.load, seqs=seqs, lo=lo, hi=hi)
        cost = with_draft(setup, cost, phase=ph.name, counts=counts, load=ph.load, seqs=seqs, lo=lo, hi=hi)
        if cost.routed.peer_tokens is not None:
            peer_tokens += cost.routed.peer_tokens.sum(axis=0)
        w = Window(
            setup=setup,
            phase=ph.name,
            pool=ph.pool,
            lo=lo,
            hi=hi,
            load=ph.load,
            cost=cost,
            att=attribute(
                cost,
                schedule=schedule_of(tbo=setup.dep.tbo, sbo=setup.dep.sbo, phase=ph.name),
                derate=setup.hw.comm_params(setup.dep.impl_for(ph.name)).overlap_derate,
            ),
        )
        steps.append(steps_frame(w))
        sources.append(sources_frame(w))
        layers.append(layers_frame(w))
        if collect_ranks:
            ranks.append(ranks_frame(w))
    return _PhaseOut(
        steps=attach_measured(setup, pl.concat(steps), ph.schedule),
        layers=pl.concat(layers),
        ranks=pl.concat(ranks) if ranks else None,
        peers=peers_frame(setup, peer_tokens, ph.pool, ph.name),
        sources=sources_table(sources, setup),
    )
