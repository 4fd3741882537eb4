"""Placement what-ifs: compute each policy's placement from a trace's (or a file's) expert loads,
score it, and re-time the trace under it.

:func:`placement_whatif` is ``tracekit place`` as a library call. Placements are computed from the
loads (in-sample, from a training window, or recomputed every few steps), scored by per-rank load
imbalance, and, given a hardware preset, replayed: each placement epoch is replayed with its own
placement (in memory) and contributes the replayed steps that lie in its range and in the scored
steps. A target model (``model``) re-times the trace as a larger model whose MoE layers reuse the
trace's cyclically; migration bytes then count the target's layers, at its expert size and the
deployment's expert precision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from tracekit.errors import UsageError, param
from tracekit.models import expert_weight_bytes, get_model
from tracekit.placement import PlanResult, StepLoads, get_policy, plan, read_loads_file, trace_loads
from tracekit.replay.deployment import Deployment, Precision
from tracekit.replay.engine import replay
from tracekit.schema import ModelArch
from tracekit.trace.reader import open_trace
from tracekit.trace.store import absolute

if TYPE_CHECKING:
    from tracekit.backends import Backend

#: Policies compared by default (``eplb`` repeats one of the two eplb-*).
EVALUATE_DEFAULT = ("contiguous", "round-robin", "greedy", "eplb-hierarchical", "eplb-global")
#: Label of the default layout without redundant slots, the row every comparison starts from.
BASELINE_LABEL = "contiguous, 0 redundant"


@dataclass(frozen=True, kw_only=True)
class ReplayedPlacement:
    """A policy's placement epochs re-timed on the trace, over the scored steps."""

    phase: str
    replayed_steps: int
    #: Mean over the replayed steps' MoE layers of per-rank (max - mean) / mean received pairs.
    replay_imbalance: float
    straggler_s: float
    step_time_s: float
    tokens_per_s_per_gpu: float
    #: Largest batch per GPU that fits (redundant slots' weights reduce the KV cache).
    max_batch_per_gpu: int | None
    weight_bytes_per_gpu: int


@dataclass(frozen=True, kw_only=True)
class PolicyOutcome:
    label: str
    plan: PlanResult
    replayed: ReplayedPlacement | None = None


@dataclass(frozen=True, kw_only=True)
class PlacementWhatIf:
    """Every policy's placement, score and (given hardware) replay."""

    loads: StepLoads
    num_ranks: int
    num_redundant: int
    num_nodes: int
    num_groups: int
    outcomes: tuple[PolicyOutcome, ...]
    #: Policies that could not run here, with why.
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def description(self) -> str:
        return (
            f"{self.loads.num_experts} experts x {len(self.loads.layers)} MoE layers on EP {self.num_ranks} "
            f"({self.num_nodes} node{'s' if self.num_nodes > 1 else ''}), {self.num_redundant} redundant slots"
        )


def placement_whatif(
    trace: str | Path | None = None,
    *,
    loads_file: str | Path | None = None,
    num_ranks: int,
    policies: Sequence[str] = ("eplb",),
    num_redundant: int = 0,
    num_nodes: int = 1,
    num_groups: int | None = None,
    window: int | None = None,
    recompute_every: int | None = None,
    placement_file: str | Path | None = None,
    precision: Precision | None = None,
    model: str | None = None,
    hw: str | None = None,
    baseline: bool = True,
    keep_going: bool = False,
    backend: Backend | None = None,
) -> PlacementWhatIf:
    """Compute, score and (with ``hw``) replay the placements of ``policies``; see the module
    docstring. ``baseline`` adds the contiguous layout without redundant slots (when the experts
    split evenly over the ranks); ``keep_going`` skips a policy that cannot run instead of raising.
    ``backend``: where the loads are counted and the placements replayed (one task per policy)."""
    if (trace is None) == (loads_file is None):
        raise UsageError("give a trace directory or a loads file (one of them)")
    if hw is not None and trace is None:
        raise UsageError(f"{param('hw')} replays a trace; give a trace, not a loads file")
    for name in policies:
        get_policy(name)
    prec = precision or Precision()
    if loads_file is not None:
        if window is not None or recompute_every is not None:
            raise UsageError(
                f"{param('window')} and {param('recompute_every')} need per-step loads: give a trace, not a "
                "loads file"
            )
        layers, totals = read_loads_file(loads_file)
        loads = StepLoads(steps=np.zeros(1, dtype=np.int64), layers=layers, loads=totals[None])
        groups, copies, expert_bytes = num_groups or 1, None, 0
    else:
        assert trace is not None
        loads = trace_loads(trace, backend=backend)
        arch = _target(open_trace(trace).manifest.model, model)
        groups = num_groups or open_trace(trace).manifest.model.num_expert_groups
        # as the replay does: target MoE layer i reuses trace MoE layer i mod (trace MoE layers)
        copies = np.bincount(np.arange(len(arch.moe_layers)) % len(loads.layers), minlength=len(loads.layers))
        expert_bytes = int(expert_weight_bytes(arch, prec.experts))
    common: dict[str, Any] = {
        "num_ranks": num_ranks,
        "num_nodes": num_nodes,
        "num_groups": groups,
        "window": window,
        "recompute_every": recompute_every,
        "expert_bytes": expert_bytes,
    }
    outcomes: list[PolicyOutcome] = []
    skipped: list[tuple[str, str]] = []
    if baseline and num_ranks > 0 and loads.num_experts % num_ranks == 0:
        outcomes.append(PolicyOutcome(label=BASELINE_LABEL, plan=plan(loads, policy="contiguous", **common)))
    for name in policies:
        try:
            res = plan(loads, policy=name, num_redundant=num_redundant, file=_path(placement_file), **common)
        except UsageError as exc:
            if not keep_going:
                raise
            skipped.append((name, str(exc)))
            continue
        outcomes.append(PolicyOutcome(label=res.policy, plan=_retarget(res, copies, expert_bytes)))
    if hw is not None:
        dep = Deployment(hw=hw, ep=num_ranks, model=model, precision=prec)
        outcomes = _replayed(trace, outcomes, dep, backend)
    return PlacementWhatIf(
        loads=loads,
        num_ranks=num_ranks,
        num_redundant=num_redundant,
        num_nodes=num_nodes,
        num_groups=groups,
        outcomes=tuple(outcomes),
        skipped=tuple(skipped),
    )


def _path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


def _target(own: ModelArch, model: str | None) -> ModelArch:
    if model is None:
        return own
    target = get_model(model)
    if target.num_experts != own.num_experts:
        raise UsageError(
            f"{param('model')} {model} has {target.num_experts} routed experts but the trace's model has "
            f"{own.num_experts}; choose a model with the same expert count"
        )
    return target


def _retarget(res: PlanResult, copies: np.ndarray | None, expert_bytes: int) -> PlanResult:
    """Migration counted on the target model's MoE layers (each a copy of a trace layer's placement)."""
    if copies is None:
        return res
    moved = res.moved_per_layer * copies
    return dataclasses.replace(
        res,
        moved_experts=int(moved.sum()),
        moved_per_layer=moved,
        migration_bytes=int(moved.sum()) * expert_bytes,
    )


def _replay_job(job: tuple[str, PlanResult, Deployment]) -> ReplayedPlacement:
    return replay_placement(*job)


def _replayed(
    trace: str | Path | None, outcomes: list[PolicyOutcome], dep: Deployment, backend: Backend | None
) -> list[PolicyOutcome]:
    """``outcomes`` with each placement replayed under ``dep`` (one task per policy on ``backend``)."""
    assert trace is not None  # placement_whatif refuses --hw without a trace
    address = str(trace) if backend is None or backend.local else absolute(trace)
    jobs = [(address, o.plan, dep) for o in outcomes]
    replayed = backend.map(_replay_job, jobs, label="policies") if backend else [_replay_job(j) for j in jobs]
    return [dataclasses.replace(o, replayed=r) for o, r in zip(outcomes, replayed, strict=True)]


def replay_placement(trace: str | Path, result: PlanResult, dep: Deployment) -> ReplayedPlacement:
    """Replay the trace under each epoch of ``result`` and keep the steps it scores."""
    first_scored = int(result.eval_steps[0]) if result.eval_steps.size else 0
    steps_parts, layer_parts, summaries = [], [], []
    ends = [e.from_step for e in result.epochs[1:]] + [None]
    for epoch, end in zip(result.epochs, ends, strict=True):
        lo = max(epoch.from_step, first_scored)
        if end is not None and end <= lo:
            continue
        rr = replay(trace, dep.replace(placement=(epoch.with_(from_step=0),)))
        keep = pl.col("trace_step_first") >= lo
        if end is not None:
            keep = keep & (pl.col("trace_step_last") < end)
        steps = rr.steps.filter((pl.col("pool") == "all") & keep)
        steps_parts.append(steps)
        kept = steps.select("phase", "step")
        layer_parts.append(rr.layers.filter(pl.col("pool") == "all").join(kept, on=["phase", "step"]))
        summaries.append(rr.summary)
    if not steps_parts or sum(p.height for p in steps_parts) == 0:
        raise UsageError(
            f"policy {result.policy}: no replayed step lies entirely in the scored trace steps; use a smaller "
            f"{param('window')} (or none)"
        )
    steps = pl.concat(steps_parts)
    layers = pl.concat(layer_parts)
    phase = "decode" if (steps.get_column("phase") == "decode").any() else "prefill"
    steps = steps.filter(pl.col("phase") == phase)
    moe = layers.filter((pl.col("phase") == phase) & (pl.col("kind") == "moe"))
    time_s = float(steps.get_column("step_time_s").sum())
    produced = float(steps.get_column("output_tokens" if phase == "decode" else "num_tokens").sum())
    batches = [s.max_batch_per_gpu for s in summaries]
    num_gpus = summaries[0].num_gpus
    return ReplayedPlacement(
        phase=phase,
        replayed_steps=steps.height,
        replay_imbalance=float(moe.get_column("imbalance").mean() or 0.0) if moe.height else 0.0,  # type: ignore[arg-type]
        straggler_s=float(steps.get_column("straggler_s").mean() or 0.0),  # type: ignore[arg-type]
        step_time_s=time_s / steps.height,
        tokens_per_s_per_gpu=produced / time_s / num_gpus if time_s > 0 else 0.0,
        max_batch_per_gpu=min(batches) if batches else None,
        weight_bytes_per_gpu=max(s.weight_bytes_per_gpu for s in summaries),
    )
