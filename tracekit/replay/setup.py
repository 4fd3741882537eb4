"""The first stage of a replay: everything fixed for the whole run.

:func:`make_setup` resolves the hardware preset and the target model, checks the EP / TP degrees,
builds the placement epochs (a placement file's, in-memory epochs, or the contiguous layout), plans
the memory of a GPU (weights, KV bytes per token) and maps every target decoder layer to the trace
MoE layer whose routing it replays. :func:`check_kv` refuses a batch whose KV cache does not fit.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np

from tracekit.cost.measured_source import MeasuredTiming, resolve_timing
from tracekit.errors import DeploymentError, TraceWarning, UsageError, param
from tracekit.hardware import HardwareSpec, get_hardware
from tracekit.importers import is_unknown
from tracekit.models import get_model, layer_window, model_names
from tracekit.placement import Placement, read_placements
from tracekit.replay.deployment import Deployment
from tracekit.replay.memory import MemoryPlan, check_weights_fit, memory_plan
from tracekit.schema import ModelArch
from tracekit.trace.reader import Trace


@dataclass(frozen=True, kw_only=True, eq=False)
class ReplaySetup:
    """What one replay of one trace under one deployment holds fixed."""

    trace: Trace
    dep: Deployment
    hw: HardwareSpec
    #: The target model (the trace's own, or ``dep.model``).
    arch: ModelArch
    #: The trace's model (an imported trace's placeholder gets the target's expert count).
    trace_arch: ModelArch
    #: GPUs of the deployment.
    num_ranks: int
    #: The first placement epoch (slots per rank and the slot count are the same in every epoch);
    #: over ``num_ranks // dep.moe_tp`` expert groups.
    placement: Placement
    #: Placement epochs, ascending ``from_step`` (one unless several were given).
    epochs: tuple[Placement, ...]
    #: First trace step replayed: the given placement's first ``from_step`` (None: every step).
    from_step: int | None
    plan: MemoryPlan
    #: int64 [T]: per target decoder layer, -1 for a dense layer, else the index of the trace MoE
    #: layer whose routing it replays (target MoE layer i reuses trace MoE layer i mod L).
    source_of: np.ndarray
    #: Per target decoder layer: its attention window (None: full attention).
    windows: tuple[int | None, ...]
    #: Measured kernel times the pricer asks first (``dep.timing`` measured / auto), or None.
    measured: MeasuredTiming | None = None

    @property
    def ep_groups(self) -> int:
        """Groups the experts are placed on: the GPUs, or groups of ``dep.moe_tp`` GPUs."""
        return self.placement.num_ranks

    @property
    def group_domain(self) -> int:
        """Expert groups per scale-up domain, as the all-to-all between groups sees them: rank ``i``
        of group ``a`` talks to rank ``i`` of group ``b`` over NVLink when both sit in one domain."""
        return max(1, self.hw.scaleup_size // self.dep.moe_tp)

    @property
    def moe_mask(self) -> np.ndarray:
        """bool [T]: the target decoder layers with routed experts."""
        return self.source_of >= 0

    @property
    def distinct_windows(self) -> tuple[int | None, ...]:
        """The attention windows of the target model, full attention (None) first."""
        return tuple(sorted(set(self.windows), key=lambda w: -1 if w is None else w))


def target_model(trace: Trace, name: str | None) -> ModelArch:
    """The model a trace is re-timed as: the trace's own, or ``name`` when its routing fits
    (same expert count and top-k; an imported trace without a model needs ``name``)."""
    own = trace.manifest.model
    if is_unknown(own):
        if name is None:
            raise UsageError(
                f"{trace.path}: the trace was imported without a model (its architecture is the "
                "placeholder 'unknown'), so it cannot be re-timed; re-import it with --model NAME or pass "
                f"{param('model')} NAME to the replay"
            )
        arch = get_model(name)
        # The routing itself says the top-k; the placeholder's expert count is the largest id + 1.
        if arch.top_k != own.top_k or arch.num_experts < own.num_experts:
            raise UsageError(
                f"{param('model')} {name}: {arch.num_experts} experts top-{arch.top_k} does not match the "
                f"trace's routing ({own.num_experts} experts seen, top-{own.top_k}); pick the model the "
                "trace was recorded with"
            )
        return arch
    if name is None:
        if note := stand_in_note(trace):
            warnings.warn(TraceWarning(note), stacklevel=2)
        return own
    arch = get_model(name)
    if (arch.num_experts, arch.top_k) != (own.num_experts, own.top_k):
        raise UsageError(
            f"{param('model')} {name}: {arch.num_experts} experts top-{arch.top_k} cannot reuse the routing "
            f"of {own.name} ({own.num_experts} experts top-{own.top_k}); pick a model with the same expert "
            f"count and top-k, or leave {param('model')} out"
        )
    return arch


#: Hidden size below which a model is a toy: the smallest production MoE models have 2048.
TOY_HIDDEN_SIZE = 1024


def stand_in_note(trace: Trace) -> str | None:
    """Why replaying ``trace`` as its own model gives toy figures, and the ``--model`` that fixes
    it; None for a trace of a full-size model. A tiny preset's manifest names the catalog model
    whose routing shape it keeps (``source_detail.full_model``)."""
    own = trace.manifest.model
    full = str(trace.manifest.source_detail.get("full_model") or "")
    if not full and own.hidden_size >= TOY_HIDDEN_SIZE:
        return None
    shape = f"{own.num_experts} experts top-{own.top_k}"
    if full in model_names():
        fix = f"pass --model {full} (or another catalog model with {shape})"
    else:
        fix = (
            f"pass --model with a catalog model of {shape} (tracekit models list) or the "
            f"config.json of {full or 'the model it stands for'}"
        )
    what = f"a tiny stand-in for {full}" if full else "a toy model"
    return (
        f"{trace.path}: its model {own.name} is {what} (hidden size {own.hidden_size}); replayed as "
        f"itself, tokens/s, batch and memory figures describe that toy, not a deployment: {fix}"
    )


def placement_epochs(
    dep: Deployment, layers: tuple[int, ...], num_experts: int, num_ranks: int
) -> tuple[Placement, ...]:
    """The placement epochs of the deployment: the given ones (every epoch checked against the
    trace and the deployment), or the contiguous layout."""
    if dep.placement is None:
        slots = num_experts + dep.redundant
        slots += (-slots) % num_ranks
        return (Placement.contiguous(layers, num_experts, num_ranks, num_redundant=slots - num_experts),)
    if isinstance(dep.placement, str):
        epochs = tuple(read_placements(dep.placement))
        name = f"{param('placement')} {dep.placement}"
    else:
        epochs = tuple(sorted(dep.placement, key=lambda p: p.from_step))
        name = f"{param('placement')} ({dep.placement_label})"
    for p in epochs:
        at = f" (epoch from step {p.from_step})" if len(epochs) > 1 else ""
        if p.num_ranks != num_ranks:
            raise DeploymentError(
                f"{name}{at} places experts on {p.num_ranks} ranks but the deployment has {param('ep')} "
                f"{num_ranks}; compute the placement with tracekit place --ep {num_ranks}"
            )
        missing = [x for x in layers if x not in p.layers]
        if missing:
            raise DeploymentError(
                f"{name}{at} has no slots for trace layers {missing}; compute it from this trace with "
                "tracekit place"
            )
        if p.num_experts != num_experts:
            raise DeploymentError(f"{name}{at} places {p.num_experts} experts; the trace has {num_experts}")
        if p.slots_per_rank != epochs[0].slots_per_rank:
            raise DeploymentError(
                f"{name}: epoch from step {p.from_step} has {p.slots_per_rank} slots per rank, the first "
                f"epoch {epochs[0].slots_per_rank}; every epoch needs the same slot count (compute the "
                "placement again with tracekit place)"
            )
    return epochs


#: Most GPUs a replayed deployment may have: per-peer token matrices are EP x EP per layer, and the
#: largest EP domains deployed are a few hundred GPUs (DeepSeek decode: EP144; NVL72 racks: 72).
MAX_EP = 4096
#: Most redundant slots per expert on average (deployments use at most about one: DeepSeek 32 of
#: 256, Kimi K2 decode 96 of 384).
MAX_REDUNDANT_PER_EXPERT = 16


def check_sizes(dep: Deployment, num_ranks: int, moe_layers: int, num_experts: int) -> None:
    """Refuse size-like arguments this machine's memory cannot back, before anything is allocated."""
    import tracekit.limits as limits

    limits.at_most(
        param("ep"),
        num_ranks,
        MAX_EP,
        "the replay keeps EP x EP token matrices per layer (largest deployed EP: ~300)",
    )
    limits.at_most(
        param("redundant"),
        dep.redundant,
        MAX_REDUNDANT_PER_EXPERT * num_experts,
        f"{MAX_REDUNDANT_PER_EXPERT} redundant slots per expert on average ({num_experts} experts)",
    )
    # per window of steps: three EP x EP int64 matrices per MoE layer (counts, duplicates, peers)
    limits.fits_memory(
        param("ep"), num_ranks, 3 * 8.0 * moe_layers * num_ranks, "counting EP x EP token matrices"
    )
    for name, per in (
        ("batch_per_gpu", dep.batch_per_gpu),
        ("prefill_tokens_per_gpu", dep.prefill_tokens_per_gpu),
    ):
        if per is not None:
            # a step's schedule holds two int64 (step, rank) per token, and its routing counts one
            # int64 cell per token-expert pair
            limits.fits_memory(
                param(name), per, 8.0 * 4 * num_ranks, f"a step of {per} tokens on each of {num_ranks} GPUs"
            )


def check_deployment_sizes(trace: Trace, dep: Deployment) -> None:
    """Run ``check_sizes`` for ``dep`` on ``trace`` without building anything (sweeps check every
    point before the first is replayed)."""
    trace_arch = trace.manifest.model
    num_ranks = dep.ep or max(trace.manifest.parallel.world_size, len(trace.ranks), 1)
    num_experts = (
        target_model(trace, dep.model).num_experts if is_unknown(trace_arch) else trace_arch.num_experts
    )
    check_sizes(dep, num_ranks, max(len(trace_arch.moe_layers), 1), num_experts)


def make_setup(trace: Trace, dep: Deployment) -> ReplaySetup:
    """Resolve everything a replay of ``trace`` under ``dep`` holds fixed (see the module docstring)."""
    hw = get_hardware(dep.hw, dep.hw_overrides or None)
    trace_arch = trace.manifest.model
    arch = target_model(trace, dep.model)
    if is_unknown(trace_arch):
        # The placeholder knows the routed layers and top-k; the expert count is the target's.
        trace_arch = dataclasses.replace(trace_arch, num_experts=arch.num_experts)
    num_ranks = dep.ep or max(trace.manifest.parallel.world_size, len(trace.ranks), 1)
    if num_ranks % dep.tp:
        raise UsageError(
            f"{param('tp')} {dep.tp} does not divide the deployment's {num_ranks} GPUs; pick {param('ep')} "
            "as a multiple"
        )
    src_layers = tuple(trace_arch.moe_layers)
    if not src_layers:
        raise DeploymentError(f"{trace.path}: the trace's model has no MoE layer; nothing to replay")
    check_sizes(dep, num_ranks, len(src_layers), trace_arch.num_experts)
    # under MoE TP the experts are placed on groups of moe_tp GPUs (each GPU a slice of every expert)
    epochs = placement_epochs(dep, src_layers, trace_arch.num_experts, num_ranks // dep.moe_tp)
    placement = epochs[0]
    plan = memory_plan(
        arch,
        dep.precision,
        hbm_bytes=hw.hbm_bytes,
        slots_per_rank=placement.slots_per_rank,
        tp=dep.tp,
        moe_tp=dep.moe_tp,
    )
    check_weights_fit(plan, model=arch.name, hw=hw.name, ep=num_ranks)
    moe_pos = {layer: i for i, layer in enumerate(arch.moe_layers)}
    source_of = np.array(
        [moe_pos[t] % len(src_layers) if t in moe_pos else -1 for t in range(arch.num_layers)], dtype=np.int64
    )
    return ReplaySetup(
        trace=trace,
        dep=dep,
        hw=hw,
        arch=arch,
        trace_arch=trace_arch,
        num_ranks=num_ranks,
        placement=placement,
        epochs=epochs,
        from_step=placement.from_step if dep.placement is not None else None,
        plan=plan,
        source_of=source_of,
        windows=tuple(layer_window(arch, t) for t in range(arch.num_layers)),
        measured=resolve_timing(dep.timing, dep.measured, gpu=hw.gpu, hw_name=hw.name),
    )


def check_kv(setup: ReplaySetup, phase: str, keys: np.ndarray, tokens: np.ndarray) -> None:
    """Refuse a phase whose KV cache does not fit: ``keys[T, R]`` the KV tokens each rank holds
    per replayed step (full-attention layers), ``tokens[T, R]`` its tokens per step."""
    held = keys
    tp = setup.dep.tp
    if tp > 1:
        t, r = held.shape
        held = np.repeat(held.reshape(t, r // tp, tp).sum(axis=-1), tp, axis=-1)
    plan = setup.plan
    need = float(held.max()) * plan.kv_bytes_per_token if held.size else 0.0
    if need > plan.free_bytes:
        seqs = max(1.0, float(tokens.max()) if phase == "decode" else 1.0)
        kv_mean = float(held.max()) / seqs
        fit = plan.max_batch(kv_mean, tp)
        raise DeploymentError(
            f"the {phase} batch does not fit on {setup.hw.name} with {param('ep')} {setup.num_ranks}: its KV "
            f"cache needs {need / 1e9:.1f} GB per GPU but {max(plan.free_bytes, 0) / 1e9:.1f} GB are left "
            f"after {plan.weight_bytes / 1e9:.1f} GB of weights; at this KV length at most {fit} sequences "
            f"per GPU fit: lower {param('batch_per_gpu')} or {param('kv_len')}, or raise {param('ep')}"
        )
