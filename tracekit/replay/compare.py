"""Compare systems on the same trace: each with its own sensible deployment, or each at its best
deployment for a given interactivity (tokens/s per user), the way vendors state "N times faster"."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from tracekit.errors import DeploymentError, TracekitError, UsageError, param
from tracekit.hardware import get_hardware
from tracekit.replay.deployment import Deployment, Precision
from tracekit.replay.engine import replay
from tracekit.replay.fast import FastReplay
from tracekit.replay.memory import memory_plan
from tracekit.replay.results import prepare_dir, write_tables
from tracekit.replay.setup import target_model
from tracekit.replay.summary import PhaseSummary, ReplaySummary
from tracekit.replay.uncertainty import ratio_band
from tracekit.schema import ModelArch
from tracekit.trace.reader import Trace, open_trace
from tracekit.trace.store import RemotePath, absolute, location

if TYPE_CHECKING:
    from tracekit.backends import Backend

#: A trace for a task: the opened trace here, its address on a distributed backend's workers.
_TaskTrace = Trace | str

#: EP degrees the interactivity search tries (those that fit and tile the experts).
EP_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 72, 128, 256)
#: Batches per GPU the interactivity search tries.
BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Largest EP the default deployment grows to when the model does not fit.
MAX_DEFAULT_EP = 256


def fits(arch: ModelArch, dep: Deployment, ep: int) -> bool:
    """Whether ``arch``'s weights fit on ``dep``'s GPUs at EP degree ``ep`` (contiguous placement)."""
    hw = get_hardware(dep.hw, dep.hw_overrides or None)
    slots = arch.num_experts + dep.redundant
    slots += (-slots) % ep
    plan = memory_plan(arch, dep.precision, hbm_bytes=hw.hbm_bytes, slots_per_rank=slots // ep, tp=dep.tp)
    return plan.free_bytes > 0


def default_deployment(trace: str | Path | Trace, base: Deployment) -> Deployment:
    """``base`` with a sensible EP degree when it has none: the largest power of two that fits in
    one scale-up domain (8 on HGX, 64 on NVL72), doubled until the model's weights fit."""
    if base.ep is not None:
        return base
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    arch = target_model(tr, base.model)
    hw = get_hardware(base.hw, base.hw_overrides or None)
    ep = 1
    while ep * 2 <= hw.scaleup_size:
        ep *= 2
    ep = max(ep, base.tp)
    while not fits(arch, base, ep):
        if ep >= MAX_DEFAULT_EP:
            raise DeploymentError(
                f"{arch.name} does not fit on {hw.name} even at {param('ep')} {ep}; choose a smaller "
                f"{param('precision')} (e.g. experts=fp4) or larger GPUs"
            )
        ep *= 2
    return base.replace(ep=ep)


@dataclass(frozen=True, kw_only=True)
class SystemResult:
    """One system of a comparison: its deployment and summary (or why it has none)."""

    hw: str
    deployment: Deployment | None
    summary: ReplaySummary | None
    note: str = ""

    @property
    def tokens_per_s_per_gpu(self) -> float | None:
        return None if self.summary is None else self.summary.tokens_per_s_per_gpu


@dataclass(frozen=True, kw_only=True)
class CompareResult:
    """Systems side by side on one trace, and each one's throughput against the first's."""

    trace: str
    #: The interactivity each system's deployment was searched for (None: each system's default).
    at_interactivity: float | None
    systems: tuple[SystemResult, ...]

    def ratio_of(self, system: SystemResult) -> float | None:
        """Output tokens/s per GPU of ``system`` over the first system's (None when either has none)."""
        ref = self.systems[0].tokens_per_s_per_gpu
        tps = system.tokens_per_s_per_gpu
        return tps / ref if (tps is not None and ref) else None

    def ratio_band_of(self, system: SystemResult) -> tuple[float, float] | None:
        """p10 and p90 of :meth:`ratio_of` over the fitted parameters' spread, fits shared by both
        systems drawn once (:mod:`tracekit.replay.uncertainty`)."""
        ref, s = self.systems[0].summary, system.summary
        if ref is None or s is None or self.ratio_of(system) is None:
            return None
        return ratio_band(
            (s.tokens_per_s_per_gpu, s.breakdown, s.main.spreads),
            (ref.tokens_per_s_per_gpu, ref.breakdown, ref.main.spreads),
        )

    @property
    def ratio(self) -> float | None:
        """The last system against the first (None with one system)."""
        return self.ratio_of(self.systems[-1]) if len(self.systems) > 1 else None

    def system_dicts(self) -> list[dict[str, Any]]:
        """One plain record per system: figures, deployment (as a dict), ratio and note."""
        out = []
        for r in self.systems:
            s = r.summary
            d = r.deployment
            out.append(
                {
                    "hw": r.hw,
                    "tokens_per_s_per_gpu": s.tokens_per_s_per_gpu if s else None,
                    "tokens_per_s_per_user": s.tokens_per_s_per_user if s else None,
                    "tpot_s": s.tpot_s if s else None,
                    "ttft_s": s.ttft_s if s else None,
                    "step_time_s": s.step_time_s if s else None,
                    "bound": s.bound if s else None,
                    "max_batch_per_gpu": s.max_batch_per_gpu if s else None,
                    "deployment": (
                        {**d.to_dict(), "batch_per_gpu": s.batch_per_gpu if s else None} if d else None
                    ),
                    "ratio": self.ratio_of(r),
                    "ratio_p10": (band := self.ratio_band_of(r)) and band[0],
                    "ratio_p90": band and band[1],
                    "tokens_per_s_per_gpu_p10": s.tokens_per_s_per_gpu_band[0] if s else None,
                    "tokens_per_s_per_gpu_p90": s.tokens_per_s_per_gpu_band[1] if s else None,
                    "note": r.note or None,
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """What ``compare --json`` prints and ``result.json`` stores."""
        return {
            "kind": "compare",
            "trace": self.trace,
            "at_interactivity": self.at_interactivity,
            "systems": self.system_dicts(),
            "ratio": self.ratio,
        }

    def table(self) -> pl.DataFrame:
        """``compare.parquet``: one row per system, its figures and deployment columns."""
        rows = []
        for rec, r in zip(self.system_dicts(), self.systems, strict=True):
            d = r.deployment
            rows.append(
                {k: v for k, v in rec.items() if k != "deployment"}
                | {
                    "ep": d.ep if d else None,
                    "tp": d.tp if d else None,
                    "batch_per_gpu": d.batch_per_gpu if d else None,
                    "precision_experts": d.precision.experts if d else None,
                    "impl": (d.impl or "auto") if d else None,
                    "tbo": d.tbo if d else None,
                }
            )
        return pl.DataFrame(rows)


def write_compare(result: CompareResult, out: str | Path, *, overwrite: bool = False) -> Path | RemotePath:
    """A result directory (or URI): ``compare.parquet`` and ``result.json``."""
    path = prepare_dir(out, overwrite=overwrite)
    write_tables(path, {"compare": result.table()}, result.to_dict())
    return location(out)


def _for_tasks(tr: Trace, backend: Backend | None) -> _TaskTrace:
    return tr if backend is None or backend.local else absolute(tr.path)


def _system(job: tuple[_TaskTrace, Deployment]) -> SystemResult:
    trace, dep = job
    res = replay(trace, dep, collect_ranks=False)
    return SystemResult(hw=dep.hw, deployment=dep, summary=res.summary)


def compare(
    trace: str | Path | RemotePath | Trace, systems: Sequence[Deployment], *, backend: Backend | None = None
) -> CompareResult:
    """Replay ``trace`` on each system (EP chosen by :func:`default_deployment` when unset); on a
    distributed ``backend`` each system is a task."""
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    jobs = [(_for_tasks(tr, backend), default_deployment(tr, base)) for base in systems]
    out = backend.map(_system, jobs, label="systems") if backend is not None else [_system(j) for j in jobs]
    return CompareResult(trace=str(trace), at_interactivity=None, systems=tuple(out))


def _decode_point(tr: _TaskTrace, dep: Deployment) -> ReplaySummary | None:
    try:
        res = replay(tr, dep, phases=["decode"], collect_ranks=False)
    except DeploymentError:
        return None
    return res.summary


@dataclass(frozen=True, kw_only=True)
class _Chain:
    """One (precision, EP) of the interactivity search: batches tried in increasing order until one
    misses the target (larger ones are only slower per user)."""

    trace: _TaskTrace
    base: Deployment
    batches: tuple[int, ...]
    target: float


def _search_chain(chain: _Chain) -> tuple[int, tuple[float, Deployment, ReplaySummary] | None]:
    """(deployments tried, the best of them that reaches the target)."""
    best: tuple[float, Deployment, ReplaySummary] | None = None
    tried = 0
    for batch in chain.batches:
        dep = chain.base.replace(batch_per_gpu=batch)
        try:
            s = _decode_point(chain.trace, dep)
        except TracekitError:
            s = None
        tried += 1
        if s is None or (s.tokens_per_s_per_user or 0.0) < chain.target:
            break  # larger batches are only slower per user
        tps = float(s.tokens_per_s_per_gpu)
        if best is None or tps > best[0]:
            best = (tps, dep, s)
    return tried, best


@dataclass(frozen=True, kw_only=True)
class InteractivitySpace:
    """What an equal-interactivity search of one system tries, in search order: each (precision, EP)
    that fits, with its batches ascending (the full replay's and the planner's fast path's search)."""

    hw: str
    eps: tuple[int, ...]
    batches: tuple[int, ...]
    chains: tuple[tuple[Precision, int], ...]

    def none_reached(self, tokens_per_s_per_user: float, tried: int) -> str:
        return (
            f"{self.hw} cannot reach {tokens_per_s_per_user:g} tokens/s per user with any of the {tried} "
            f"deployments tried (EP {list(self.eps)}, batch {self.batches[0]}..{self.batches[-1]})"
        )


def interactivity_space(
    trace: Trace,
    base: Deployment,
    *,
    tokens_per_s_per_user: float,
    precisions: Sequence[Precision] | None = None,
    eps: Sequence[int] | None = None,
    batches: Sequence[int] | None = None,
) -> InteractivitySpace:
    """The candidates of :func:`at_interactivity` (EP degrees up to the scale-up domain or 64, the
    batch ladder, the given precisions), after checking the target."""
    if tokens_per_s_per_user <= 0:
        raise UsageError(
            f"{param('tokens_per_s_per_user', '--at-interactivity')} must be > 0 tokens/s per user, got "
            f"{tokens_per_s_per_user}"
        )
    arch = target_model(trace, base.model)
    hw = get_hardware(base.hw, base.hw_overrides or None)
    ep_list = (
        list(eps)
        if eps
        else [base.ep]
        if base.ep
        else [e for e in EP_CANDIDATES if e <= max(hw.scaleup_size, 64)]
    )
    prec_list = list(precisions) if precisions else [base.precision]
    return InteractivitySpace(
        hw=hw.name,
        eps=tuple(ep_list),
        batches=tuple(sorted(batches) if batches else BATCH_CANDIDATES),
        chains=tuple(
            (prec, ep)
            for prec in prec_list
            for ep in ep_list
            if not (ep % base.tp or not fits(arch, replace(base, precision=prec), ep))
        ),
    )


def at_interactivity(
    trace: str | Path | RemotePath | Trace,
    base: Deployment,
    *,
    tokens_per_s_per_user: float,
    precisions: Sequence[Precision] | None = None,
    eps: Sequence[int] | None = None,
    batches: Sequence[int] | None = None,
    backend: Backend | None = None,
) -> SystemResult:
    """The deployment of ``base.hw`` with the most decode tokens/s per GPU that still gives at least
    ``tokens_per_s_per_user``: searched over EP degrees, batches per GPU and ``precisions`` (on a
    distributed ``backend``, each precision and EP degree is a task)."""
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    space = interactivity_space(
        tr, base, tokens_per_s_per_user=tokens_per_s_per_user, precisions=precisions, eps=eps, batches=batches
    )
    chains = [
        _Chain(
            trace=_for_tasks(tr, backend),
            base=base.replace(ep=ep, precision=prec),
            batches=space.batches,
            target=tokens_per_s_per_user,
        )
        for prec, ep in space.chains
    ]
    found = (
        backend.map(_search_chain, chains, label="deployments")
        if backend
        else [_search_chain(c) for c in chains]
    )
    best: tuple[float, Deployment, ReplaySummary] | None = None
    tried = 0
    for n, chain_best in found:  # in search order: the first of equal throughputs wins, as one loop would
        tried += n
        if chain_best is not None and (best is None or chain_best[0] > best[0]):
            best = chain_best
    if best is None:
        return SystemResult(
            hw=space.hw, deployment=None, summary=None, note=space.none_reached(tokens_per_s_per_user, tried)
        )
    return SystemResult(hw=space.hw, deployment=best[1], summary=best[2])


def at_interactivity_fast(
    fast: FastReplay,
    base: Deployment,
    *,
    tokens_per_s_per_user: float,
    precisions: Sequence[Precision] | None = None,
    eps: Sequence[int] | None = None,
    batches: Sequence[int] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[SystemResult, PhaseSummary | None]:
    """:func:`at_interactivity` on the fast path: the same deployments tried in the same order, each
    re-timed by ``fast`` from counts shared between them (and between systems); the best deployment
    and its decode figures (the result's ``summary`` is left None: the fast path gives phase figures)."""
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


def compare_at_interactivity(
    trace: str | Path | RemotePath | Trace,
    systems: Sequence[Deployment],
    *,
    tokens_per_s_per_user: float,
    precisions: Sequence[Precision] | None = None,
    backend: Backend | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CompareResult:
    """Each system at its best deployment for ``tokens_per_s_per_user`` (:func:`at_interactivity`).
    Here (no distributed ``backend``) the search runs on the fast path, one
    :class:`~tracekit.replay.fast.FastReplay` shared by every system, and each system's chosen
    deployment is then replayed in full for its summary (the figures are the same)."""
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    fast = FastReplay(tr) if backend is None or backend.local else None
    if fast is not None and not fast.holds():
        fast = None
    found = []
    for b in systems:
        if fast is not None:
            res, _ = at_interactivity_fast(
                fast, b, tokens_per_s_per_user=tokens_per_s_per_user, precisions=precisions, progress=progress
            )
            if res.deployment is not None:
                full = replay(tr, res.deployment, phases=["decode"], collect_ranks=False)
                res = replace(res, summary=full.summary)
        else:
            res = at_interactivity(
                tr, b, tokens_per_s_per_user=tokens_per_s_per_user, precisions=precisions, backend=backend
            )
        found.append(res)
    return CompareResult(trace=str(trace), at_interactivity=tokens_per_s_per_user, systems=tuple(found))
