"""The fast path: one phase of a trace re-timed under many deployments, its routing read and
counted once and shared (docs/plan.md, "The fast path").

:class:`FastReplay` holds a trace, its phases' tokens and their routing in memory
(:class:`~tracekit.replay.workload.RoutingStream`), and the counted workloads of every expert layout
and batch it has met (:class:`~tracekit.replay.workload.Workloads`). :meth:`FastReplay.phase`
re-times one phase under a deployment with the replay's own stages: the setup, schedule, attention
load and KV check of :mod:`~tracekit.replay.setup` and :mod:`~tracekit.replay.schedule`, the
timing of :func:`tracekit.replay.timing.time_counted` on the counted workload, the attribution of
:mod:`~tracekit.replay.attribution`, and the summary of :func:`tracekit.replay.summary.phase_summary`.
Its figures are the replay's (``tests/replay/test_fast.py`` compares them deployment by deployment).

What it shares: the routing stream per (phase, KV length, placement ``from_step``); the counts per
(expert layout, tokens per expert group per step, steps), whatever the hardware, precision,
communication implementation, two-batch overlap or attention layout; the attention load per
(GPUs, batch). Deployments replayed as recorded (no re-batching) go through
:func:`tracekit.replay.replay`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracekit.cost.kernels import GroupedRows
from tracekit.hardware import comm_impl
from tracekit.replay.attribution import attribute, schedule_of
from tracekit.replay.deployment import Deployment
from tracekit.replay.engine import replay
from tracekit.replay.schedule import (
    AttentionLoad,
    PhaseTokens,
    Schedule,
    TokenIndex,
    WindowSequences,
    attention_load,
    default_batch,
    load_tokens,
    make_schedule,
    window_sequences,
)
from tracekit.replay.setup import ReplaySetup, check_kv, make_setup
from tracekit.replay.summary import PhaseSummary, phase_summary
from tracekit.replay.tables import Window, steps_frame
from tracekit.replay.timing import layer_shape, time_counted
from tracekit.replay.workload import MAX_STREAM_BYTES, Layout, RoutingStream, Workloads, load_stream
from tracekit.trace.reader import Trace, open_trace


@dataclass(frozen=True, kw_only=True, eq=False)
class _Tokens:
    """A phase's tokens for one (KV length, first step), their index and routing workloads."""

    tokens: dict[str, PhaseTokens]
    index: TokenIndex


@dataclass(frozen=True, kw_only=True, eq=False)
class _Scheduled:
    """The schedule and attention work of one phase at one (GPUs, batch, steps)."""

    schedule: Schedule
    load: AttentionLoad
    seqs: WindowSequences


class FastReplay:
    """Re-times one trace under many deployments, sharing what they have in common (module docstring).

    Thread-safe: a search may evaluate deployments from several threads."""

    def __init__(self, trace: str | Path | Trace) -> None:
        self.trace = trace if isinstance(trace, Trace) else open_trace(trace)
        self._lock = threading.RLock()
        self._tokens: dict[tuple[object, ...], _Tokens] = {}
        self._streams: dict[tuple[str, float | None], RoutingStream] = {}
        self._workloads: dict[tuple[object, ...], Workloads] = {}
        self._scheduled: dict[tuple[object, ...], _Scheduled] = {}
        self._layouts: dict[tuple[object, ...], Layout] = {}

    # -- shared parts -------------------------------------------------------------------------------
    def _phase_tokens(self, dep: Deployment | None, min_step: int | None) -> _Tokens:
        """The trace's tokens as ``dep`` sees them (KV lengths, prefix hits; None: as recorded)."""
        kv_len, kv_mean, hit = (
            (None, None, None) if dep is None else (dep.kv_len, dep.kv_len_mean, dep.prefix_hit)
        )
        key = (kv_len, kv_mean, hit, min_step)
        with self._lock:
            got = self._tokens.get(key)
            if got is None:
                tokens, index = load_tokens(
                    self.trace, kv_len=kv_len, kv_len_mean=kv_mean, prefix_hit=hit, min_step=min_step
                )
                got = self._tokens[key] = _Tokens(tokens=tokens, index=index)
            return got

    def _stream(self, setup: ReplaySetup, phase: str) -> RoutingStream:
        """The phase's routing stream from its first replayed token (read once for the whole trace)."""
        with self._lock:
            full = self._streams.get((phase, setup.dep.prefix_hit))
            if full is None:
                whole = self._phase_tokens(setup.dep, None)
                arch = setup.trace_arch
                full = load_stream(
                    self.trace,
                    whole.index,
                    phase,
                    layers=tuple(arch.moe_layers),
                    top_k=arch.top_k,
                    num_experts=arch.num_experts,
                )
                self._streams[(phase, setup.dep.prefix_hit)] = full
            if setup.from_step is None:
                return full
            whole_tokens = self._phase_tokens(setup.dep, None).tokens[phase]
            start = int(np.searchsorted(whole_tokens.trace_step, setup.from_step, side="left"))
            return full.suffix(start)

    def workloads(self, setup: ReplaySetup, phase: str, tokens: PhaseTokens) -> Workloads:
        """The counted workloads of ``phase`` for the deployment's KV length and first step."""
        dep = setup.dep
        key = (phase, dep.kv_len, dep.kv_len_mean, dep.prefix_hit, setup.from_step)
        with self._lock:
            got = self._workloads.get(key)
            if got is None:
                got = Workloads(self._stream(setup, phase), tokens, top_k=setup.trace_arch.top_k)
                self._workloads[key] = got
            return got

    def layout(self, setup: ReplaySetup) -> Layout:
        """The deployment's expert layout (equal placements share one, and so their counts)."""
        dep = setup.dep
        if dep.placement is None:
            source: tuple[object, ...] = ("contiguous", dep.redundant)
        elif isinstance(dep.placement, str):
            source = ("file", str(Path(dep.placement).resolve()))
        else:
            source = ("memory", id(dep.placement))
        key = (*source, setup.ep_groups, setup.group_domain)
        with self._lock:
            got = self._layouts.get(key)
            if got is None:
                got = Layout(key=key, epochs=setup.epochs, groups=setup.ep_groups, domain=setup.group_domain)
                self._layouts[key] = got
            return got

    def _schedule(self, setup: ReplaySetup, phase: str, tokens: PhaseTokens, batch: int) -> _Scheduled:
        dep = setup.dep
        key = (
            phase,
            dep.kv_len,
            dep.kv_len_mean,
            dep.prefix_hit,
            setup.from_step,
            setup.num_ranks,
            batch,
            dep.steps,
            setup.distinct_windows,
        )
        with self._lock:
            got = self._scheduled.get(key)
        if got is None:
            schedule = make_schedule(
                tokens, num_ranks=setup.num_ranks, batch_per_gpu=batch, num_steps=dep.steps
            )
            got = _Scheduled(
                schedule=schedule,
                load=attention_load(tokens, schedule, setup.distinct_windows),
                seqs=window_sequences(tokens, schedule, 0, schedule.num_steps),
            )
            with self._lock:
                self._scheduled[key] = got
        return got

    def holds(self, phase: str = "decode") -> bool:
        """Whether ``phase``'s routing fits in the memory the fast path keeps (``MAX_STREAM_BYTES``)."""
        stream = self._phase_tokens(None, None).index.stream_flat.get(phase)
        model = self.trace.manifest.model
        n = 0 if stream is None else int(stream.size)
        return n * len(model.moe_layers) * model.top_k * 2 <= MAX_STREAM_BYTES

    def release(self) -> None:
        """Drop the counts kept per expert layout (the routing, tokens and schedules stay): a caller
        done with some layouts frees their memory (a sweep between its groups of points)."""
        with self._lock:
            for work in self._workloads.values():
                work.release()

    def has_phase(self, phase: str) -> bool:
        """Whether the trace holds tokens of ``phase``."""
        return phase in self._phase_tokens(None, None).tokens

    # -- a deployment --------------------------------------------------------------------------------
    def phase(self, dep: Deployment, phase: str = "decode", *, pool: str = "all") -> PhaseSummary:
        """The figures of ``phase`` under ``dep``: ``replay(trace, dep, phases=[phase]).phases[0]``
        (raises what the replay raises: a deployment that does not fit, a phase the trace lacks)."""
        setup = make_setup(self.trace, dep)
        toks = self._phase_tokens(dep, setup.from_step)
        ptok = toks.tokens.get(phase)
        given = dep.prefill_tokens_per_gpu if phase == "prefill" else dep.batch_per_gpu
        as_recorded = toks.index.ranks.size == setup.num_ranks and toks.index.ranks.max() < setup.num_ranks
        if (
            ptok is None
            or (given is None and as_recorded and dep.moe_tp == 1)
            or dep.verify_tokens(phase) > 1
        ):
            # a phase the trace lacks (the replay says so), the recorded steps kept as they are, or
            # MTP's draft passes (priced from the per-peer matrices): the full replay
            return replay(self.trace, dep, phases=[phase], pool=pool, collect_ranks=False).phases[0]
        batch = given if given is not None else default_batch(ptok)
        sched = self._schedule(setup, phase, ptok, batch)
        check_kv(setup, phase, sched.load.keys[None], sched.load.tokens)
        work = self.workloads(setup, phase, ptok)
        impl = dep.impl_for(phase)
        counted = work.window(
            self.layout(setup),
            batch=batch * dep.moe_tp,
            num_steps=sched.schedule.num_steps,
            deepep_normal=comm_impl(impl).dedup == "domain",
        )
        M = 2 if dep.tbo else 1
        rows = counted.grouped_rows(M)
        if dep.moe_tp > 1:  # every GPU of an expert group computes the group's tokens (its slice)
            rows = _repeat_rows(rows, dep.moe_tp)
        W = sched.schedule.num_steps
        cost = time_counted(
            setup,
            phase=phase,
            shape=layer_shape(setup, phase, sched.seqs, M, rows),
            routed=counted.routed_counts(impl),
            load=sched.load,
            seqs=sched.seqs,
            lo=0,
            hi=W,
        )
        att = attribute(
            cost,
            schedule=schedule_of(tbo=dep.tbo, sbo=dep.sbo, phase=phase),
            derate=setup.hw.comm_params(impl).overlap_derate,
        )
        window = Window(setup=setup, phase=phase, pool=pool, lo=0, hi=W, load=sched.load, cost=cost, att=att)
        steps = steps_frame(window)
        return phase_summary(setup, steps, phase=phase, pool=pool, tokens=ptok, schedule=sched.schedule)


def _repeat_rows(rows: GroupedRows, k: int) -> GroupedRows:
    """Each expert group's rows on its ``k`` GPUs ([..., G] -> [..., G * k])."""
    return GroupedRows(
        rows=np.repeat(rows.rows, k, axis=-1),
        active=np.repeat(rows.active, k, axis=-1),
        row_tiles={name: np.repeat(t, k, axis=-1) for name, t in rows.row_tiles.items()},
    )
