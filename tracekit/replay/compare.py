"""Compare systems on the same trace: each with its own sensible deployment, or each at its best
deployment for a given interactivity (tokens/s per user), the way vendors state "N times faster"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tracekit.errors import DeploymentError, TracekitError, UsageError
from tracekit.hardware import get_hardware
from tracekit.replay.deployment import Deployment, Precision
from tracekit.replay.engine import ReplayResult, _target_model, replay
from tracekit.replay.memory import memory_plan
from tracekit.schema import ModelArch
from tracekit.trace.reader import Trace, open_trace

#: EP degrees the interactivity search tries (those that fit and tile the experts).
EP_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 72, 128, 256)
#: Batches per GPU the interactivity search tries.
BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Largest EP the default deployment grows to when the model does not fit.
MAX_DEFAULT_EP = 256


def _target(trace: Trace, model: str | None) -> ModelArch:
    # the replay's own check: refuses an imported trace without a model in one line
    return _target_model(trace, model)


def _fits(arch: ModelArch, dep: Deployment, ep: int) -> bool:
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
    arch = _target(tr, base.model)
    hw = get_hardware(base.hw, base.hw_overrides or None)
    ep = 1
    while ep * 2 <= hw.scaleup_size:
        ep *= 2
    ep = max(ep, base.tp)
    while not _fits(arch, base, ep):
        if ep >= MAX_DEFAULT_EP:
            raise DeploymentError(
                f"{arch.name} does not fit on {hw.name} even at --ep {ep}; choose smaller --precision "
                "(e.g. experts=fp4) or larger GPUs"
            )
        ep *= 2
    return base.replace(ep=ep)


@dataclass(frozen=True, kw_only=True)
class SystemResult:
    """One system of a comparison: its deployment and summary (or why it has none)."""

    hw: str
    deployment: Deployment | None
    summary: dict[str, Any] | None
    note: str = ""


def compare(trace: str | Path | Trace, systems: Sequence[Deployment]) -> list[SystemResult]:
    """Replay ``trace`` on each system (EP chosen by :func:`default_deployment` when unset)."""
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    out = []
    for base in systems:
        dep = default_deployment(tr, base)
        res: ReplayResult = replay(tr, dep, collect_ranks=False)
        out.append(SystemResult(hw=dep.hw, deployment=dep, summary=res.summary))
    return out


def _decode_point(tr: Trace, dep: Deployment) -> dict[str, Any] | None:
    try:
        res = replay(tr, dep, phases=["decode"], collect_ranks=False)
    except DeploymentError:
        return None
    return res.summary


def at_interactivity(
    trace: str | Path | Trace,
    base: Deployment,
    *,
    tokens_per_s_per_user: float,
    precisions: Sequence[Precision] | None = None,
    eps: Sequence[int] | None = None,
    batches: Sequence[int] | None = None,
) -> SystemResult:
    """The deployment of ``base.hw`` with the most decode tokens/s per GPU that still gives at least
    ``tokens_per_s_per_user``: searched over EP degrees, batches per GPU and ``precisions``."""
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    if tokens_per_s_per_user <= 0:
        raise UsageError(f"--at-interactivity must be > 0 tokens/s per user, got {tokens_per_s_per_user}")
    arch = _target(tr, base.model)
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
    best: tuple[float, Deployment, dict[str, Any]] | None = None
    tried = 0
    for prec in prec_list:
        for ep in ep_list:
            if ep % base.tp or not _fits(arch, replace(base, precision=prec), ep):
                continue
            for batch in batch_list:
                dep = base.replace(ep=ep, batch_per_gpu=batch, precision=prec)
                try:
                    s = _decode_point(tr, dep)
                except TracekitError:
                    s = None
                tried += 1
                if s is None or (s.get("tokens_per_s_per_user") or 0.0) < tokens_per_s_per_user:
                    break  # larger batches are only slower per user
                tps = float(s["tokens_per_s_per_gpu"])
                if best is None or tps > best[0]:
                    best = (tps, dep, s)
    if best is None:
        return SystemResult(
            hw=hw.name,
            deployment=None,
            summary=None,
            note=(
                f"{hw.name} cannot reach {tokens_per_s_per_user:g} tokens/s per user with any of the "
                f"{tried} deployments tried (EP {ep_list}, batch {batch_list[0]}..{batch_list[-1]})"
            ),
        )
    return SystemResult(hw=hw.name, deployment=best[1], summary=best[2])
