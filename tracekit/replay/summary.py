"""A replay's summary: per-phase figures (``replay_summary``), the run table (``replay_run``), the
measured step times a trace carries, and the typed :class:`ReplaySummary` that compare, sweep,
disaggregation, placement what-ifs and the command line read.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from tracekit._version import __version__
from tracekit.models import expert_weight_bytes
from tracekit.placement import moved_replicas
from tracekit.replay.schedule import PhaseTokens, Schedule, sequence_ids
from tracekit.replay.setup import ReplaySetup
from tracekit.replay.tables import frame
from tracekit.replay.uncertainty import Spread, component_spreads, throughput_band

#: Components of a step's time, in the order the summary and breakdown list them.
BREAKDOWN = (
    "attention",
    "attn_proj",
    "expert_gemm",
    "dense",
    "fixed",
    "dispatch",
    "combine",
    "tp_comm",
    "straggler",
    "embedding",
    "lm_head",
    "mtp",
)


@dataclass(frozen=True, kw_only=True)
class PhaseSummary:
    """One phase of one pool: a row of ``replay_summary``."""

    pool: str
    phase: str
    num_gpus: int
    num_steps: int
    #: Tokens per GPU per step when re-batched (None: as recorded).
    batch_per_gpu: int | None
    tokens: int
    output_tokens: int
    #: Mean step time.
    step_time_s: float
    #: Decode: output tokens/s per GPU; prefill: prompt tokens/s per GPU.
    tokens_per_s_per_gpu: float
    #: Its 10th and 90th percentiles over the fitted parameters' spread (:mod:`tracekit.replay.uncertainty`).
    tokens_per_s_per_gpu_p10: float
    tokens_per_s_per_gpu_p90: float
    #: Decode: 1 / TPOT; prefill: None.
    tokens_per_s_per_user: float | None
    tpot_s: float | None
    #: Prefill: mean time from a request's first prefill step to the end of its last.
    ttft_s: float | None
    #: Mean seconds per step of each component of :data:`BREAKDOWN`.
    breakdown: Mapping[str, float]
    bound: str
    max_batch_per_gpu: int
    weight_bytes_per_gpu: int
    kv_bytes_per_token: int
    #: Mean measured step time (None when not comparable).
    measured_time_s: float | None
    #: Where each component's spread comes from (the band's draws; not a column).
    spreads: Mapping[str, Spread] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The ``replay_summary`` row."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("breakdown", "spreads")
        }
        comps = {f"{c}_s": self.breakdown[c] for c in BREAKDOWN}
        keys = list(out)
        at = keys.index("bound")
        return {**{k: out[k] for k in keys[:at]}, **comps, **{k: out[k] for k in keys[at:]}}


@dataclass(frozen=True, kw_only=True)
class RunSteps:
    """Which trace steps a replay used, and how the placement changed over them."""

    trace_step_first: int | None
    trace_step_last: int | None
    trace_steps_replayed: int
    placement_from_step: int | None
    placement_epochs: int
    moved_experts: int
    migration_bytes: int


@dataclass(frozen=True, kw_only=True)
class DisaggSummary:
    """What a disaggregated replay adds: both pools and the KV transfer between them."""

    decode_tokens_per_s_per_gpu: float
    kv_transfer_s: float
    kv_transfer_bytes: float
    prefill_gpus: int
    decode_gpus: int
    requests_per_s: float


@dataclass(frozen=True, kw_only=True)
class ReplaySummary:
    """The figures of a replay: its decode phase (prefill when the trace has no decode steps), with
    the prefill phase's TTFT and throughput, the trace steps used, and a disaggregated replay's pools.
    ``replay --json`` prints :meth:`to_dict`."""

    main: PhaseSummary
    #: The prefill phase's throughput when the main phase is decode (None otherwise).
    prefill_tokens_per_s_per_gpu: float | None
    #: TTFT: the prefill phase's (a disaggregated replay adds the KV transfer).
    ttft_s: float | None
    run: RunSteps
    #: The whole of a disaggregated replay (throughput per GPU counts both pools).
    tokens_per_s_per_gpu: float
    disagg: DisaggSummary | None = None

    # the main phase's figures
    @property
    def phase(self) -> str:
        return self.main.phase

    @property
    def num_gpus(self) -> int:
        return self.main.num_gpus

    @property
    def batch_per_gpu(self) -> int | None:
        return self.main.batch_per_gpu

    @property
    def step_time_s(self) -> float:
        return self.main.step_time_s

    @property
    def tokens_per_s_per_user(self) -> float | None:
        return self.main.tokens_per_s_per_user

    @property
    def tpot_s(self) -> float | None:
        return self.main.tpot_s

    @property
    def bound(self) -> str:
        return self.main.bound

    @property
    def max_batch_per_gpu(self) -> int:
        return self.main.max_batch_per_gpu

    @property
    def weight_bytes_per_gpu(self) -> int:
        return self.main.weight_bytes_per_gpu

    @property
    def measured_time_s(self) -> float | None:
        return self.main.measured_time_s

    @property
    def breakdown(self) -> Mapping[str, float]:
        return self.main.breakdown

    @property
    def tokens_per_s_per_gpu_band(self) -> tuple[float, float]:
        """p10 and p90 of :attr:`tokens_per_s_per_gpu` (the main phase's relative band)."""
        m = self.main
        if m.tokens_per_s_per_gpu <= 0:
            return (self.tokens_per_s_per_gpu, self.tokens_per_s_per_gpu)
        k = self.tokens_per_s_per_gpu / m.tokens_per_s_per_gpu
        return (m.tokens_per_s_per_gpu_p10 * k, m.tokens_per_s_per_gpu_p90 * k)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as ``replay --json`` prints and ``result.json`` stores them."""
        main = {
            f.name: getattr(self.main, f.name) for f in dataclasses.fields(self.main) if f.name != "spreads"
        }
        main["breakdown"] = dict(self.main.breakdown)
        main["ttft_s"] = self.ttft_s
        main["tokens_per_s_per_gpu"] = self.tokens_per_s_per_gpu
        main["tokens_per_s_per_gpu_p10"], main["tokens_per_s_per_gpu_p90"] = self.tokens_per_s_per_gpu_band
        if self.prefill_tokens_per_s_per_gpu is not None:
            main["prefill_tokens_per_s_per_gpu"] = self.prefill_tokens_per_s_per_gpu
        main.update(dataclasses.asdict(self.run))
        if self.disagg is not None:
            main["disaggregated"] = True
            main.update(dataclasses.asdict(self.disagg))
        return main


def make_summary(phases: list[PhaseSummary], run: RunSteps) -> ReplaySummary:
    """The summary of a replay whose last phase is its main one."""
    main = phases[-1]
    prefill = [p for p in phases if p.phase == "prefill"]
    before = prefill[0] if prefill and main.phase != "prefill" else None
    return ReplaySummary(
        main=main,
        prefill_tokens_per_s_per_gpu=before.tokens_per_s_per_gpu if before else None,
        ttft_s=before.ttft_s if before else main.ttft_s,
        run=run,
        tokens_per_s_per_gpu=main.tokens_per_s_per_gpu,
    )


def device_matches(setup: ReplaySetup) -> bool:
    """Whether the trace was recorded on the replay's GPU (its measured times are comparable)."""
    device = str(setup.trace.manifest.hardware.get("device", "")).lower()
    hw = setup.hw
    short = hw.gpu.split(" ")[0].lower() if hw.gpu else hw.name.split("-")[0].lower()
    return bool(short) and short in device


def attach_measured(setup: ReplaySetup, steps: pl.DataFrame, schedule: Schedule) -> pl.DataFrame:
    """``steps`` with ``measured_time_s`` from the trace, when its steps are replayed as recorded on
    the recorded model and GPU (null otherwise)."""
    if schedule.rebatched or setup.dep.model is not None or not device_matches(setup):
        return steps
    st = setup.trace.scan("steps").select("step", "duration_ns").collect()
    per = st.group_by("step").agg(
        (pl.col("duration_ns").max() / 1e9).cast(pl.Float64).alias("measured_time_s")
    )
    return steps.drop("measured_time_s").join(per, left_on="trace_step_first", right_on="step", how="left")


def _ttft(steps: pl.DataFrame, tokens: PhaseTokens, schedule: Schedule) -> float | None:
    p, step, _ = schedule.tokens
    if not p.size:
        return None
    seq = sequence_ids(tokens, schedule)
    ordered = steps.sort("step")["step_time_s"].to_numpy()
    ends = np.cumsum(ordered)
    starts = ends - ordered
    per = (
        pl.DataFrame({"seq": seq, "step": step})
        .group_by("seq")
        .agg(pl.col("step").min().alias("a"), pl.col("step").max().alias("b"))
        .sort("seq")  # groups come in any order: sort them so the mean is the same on every run
    )
    return float((ends[per["b"].to_numpy()] - starts[per["a"].to_numpy()]).mean())


def phase_summary(
    setup: ReplaySetup,
    steps: pl.DataFrame,
    *,
    phase: str,
    pool: str,
    tokens: PhaseTokens,
    schedule: Schedule,
) -> PhaseSummary:
    """The figures of one replayed phase from its ``replay_steps`` rows."""
    total_time = float(steps["step_time_s"].sum())
    n = steps.height
    mean_step = total_time / n if n else 0.0
    out_tokens = int(steps["output_tokens"].sum())
    all_tokens = int(steps["num_tokens"].sum())
    decode = phase == "decode"
    # prefill serves the prompt tokens found in the prefix cache too
    served = out_tokens if decode else all_tokens * tokens.served_per_token
    tps_gpu = served / total_time / setup.num_ranks if total_time > 0 else 0.0
    breakdown = {c: float(steps[f"{c}_s"].mean()) if n else 0.0 for c in BREAKDOWN}  # type: ignore[arg-type]
    spreads = spreads_of(setup, phase)
    band = throughput_band(tps_gpu, breakdown, spreads)
    # the bound carrying the most of the phase's time
    bounds, of_step = np.unique(steps["bound"].to_numpy(), return_inverse=True)
    bound_s = np.bincount(of_step, weights=steps["step_time_s"].to_numpy(), minlength=bounds.size)
    kv_mean = float(np.mean(tokens.kv_len)) if tokens.num_tokens else 1.0
    measured = steps["measured_time_s"].drop_nulls()
    plan = setup.plan
    return PhaseSummary(
        pool=pool,
        phase=phase,
        num_gpus=setup.num_ranks,
        num_steps=n,
        batch_per_gpu=schedule.batch_per_gpu,
        tokens=all_tokens,
        output_tokens=out_tokens,
        step_time_s=mean_step,
        tokens_per_s_per_gpu=tps_gpu,
        tokens_per_s_per_gpu_p10=band[0],
        tokens_per_s_per_gpu_p90=band[1],
        tokens_per_s_per_user=(1.0 / mean_step if mean_step > 0 else None) if decode else None,
        tpot_s=mean_step if decode else None,
        ttft_s=None if decode else _ttft(steps, tokens, schedule),
        breakdown=breakdown,
        bound=str(bounds[int(np.argmax(bound_s))]) if bounds.size else "latency",
        max_batch_per_gpu=plan.max_batch(kv_mean, setup.dep.tp),
        weight_bytes_per_gpu=int(plan.weight_bytes),
        kv_bytes_per_token=round(plan.kv_bytes_per_token),
        measured_time_s=float(measured.mean()) if measured.len() else None,  # type: ignore[arg-type]
        spreads=spreads,
    )


def spreads_of(setup: ReplaySetup, phase: str) -> dict[str, Spread]:
    """The fitted spread of each component of ``phase`` under the setup's deployment."""
    dep = setup.dep
    kind = "mla_" if setup.arch.attention.kind == "mla" else "gqa_"
    p = dep.precision
    return component_spreads(
        setup.hw,
        attention_family=kind + phase,
        precision={part: getattr(p, part) for part in ("attention", "attention_core", "dense", "experts")},
        impl=dep.impl_for(phase),
    )


def summary_frame(phases: list[PhaseSummary]) -> pl.DataFrame:
    """``replay_summary``: one row per phase."""
    rows = [p.row() for p in phases]
    return frame("replay_summary", {k: [r[k] for r in rows] for k in rows[0]})


def epoch_of(from_steps: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Index of the placement epoch in force at each trace step (as ``placement_at``: the last
    epoch with ``from_step <= step``, the first before any)."""
    return np.maximum(np.searchsorted(from_steps, steps, side="right") - 1, 0)


def run_steps(setup: ReplaySetup, trace_steps: np.ndarray) -> RunSteps:
    """Replayed trace steps, placement epochs in force over them and the expert weights moved
    between consecutive ones.

    Each (target MoE layer, rank) copies in one expert's weights per replica it gains at an epoch
    change (:func:`tracekit.placement.moved_replicas`); a target layer moves what its trace source
    layer moves, at the target's expert size and the deployment's expert precision."""
    from_steps = np.array([p.from_step for p in setup.epochs], dtype=np.int64)
    used = np.unique(epoch_of(from_steps, trace_steps)) if trace_steps.size else np.zeros(1, np.int64)
    src_layers = tuple(setup.trace_arch.moe_layers)
    per_source = np.zeros(len(src_layers), dtype=np.int64)
    for a, b in itertools.pairwise(used):
        old, new = setup.epochs[int(a)], setup.epochs[int(b)]
        moved = moved_replicas(old, new)
        per_source += moved[[new.layers.index(x) for x in src_layers]]
    moved_total = int(per_source[setup.source_of[setup.moe_mask]].sum())
    return RunSteps(
        trace_step_first=int(trace_steps.min()) if trace_steps.size else None,
        trace_step_last=int(trace_steps.max()) if trace_steps.size else None,
        trace_steps_replayed=int(trace_steps.size),
        placement_from_step=setup.from_step,
        placement_epochs=int(used.size),
        moved_experts=moved_total,
        migration_bytes=moved_total * int(expert_weight_bytes(setup.arch, setup.dep.precision.experts)),
    )


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """How each phase was scheduled (for ``replay_run``)."""

    rebatched: bool = False
    token_reuse: float = 1.0
    #: Tokens per GPU per step by phase (None: as recorded).
    batch: dict[str, int | None] = field(default_factory=dict)
    num_steps: int = 0


def run_frame(setup: ReplaySetup, info: RunInfo, steps: RunSteps, trace_path: str) -> pl.DataFrame:
    """``replay_run``: one row, every input."""
    dep = setup.dep
    p = dep.precision
    row = {
        "run_id": uuid.uuid4().hex,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tracekit_version": __version__,
        "trace_path": trace_path,
        "trace_id": setup.trace.manifest.trace_id,
        "trace_model": setup.trace_arch.name,
        "model": setup.arch.name,
        "hw": setup.hw.name,
        "num_gpus": setup.num_ranks,
        "ep": setup.num_ranks,
        "dp": setup.num_ranks // dep.tp,
        "tp": dep.tp,
        "impl": dep.impl or "auto",
        "tbo": dep.tbo,
        "sbo": dep.sbo,
        "cuda_graphs": dep.cuda_graphs,
        "precision_attention": p.attention,
        "precision_attention_core": p.attention_core,
        "precision_dense": p.dense,
        "precision_experts": p.experts,
        "precision_dispatch": p.dispatch,
        "precision_combine": p.combine,
        "precision_kv_cache": p.kv_cache,
        "placement": dep.placement_label,
        "num_slots": setup.placement.num_slots,
        "slots_per_rank": setup.placement.slots_per_rank,
        "redundant_slots": setup.placement.num_redundant,
        "batch_per_gpu": info.batch.get("decode"),
        "prefill_tokens_per_gpu": info.batch.get("prefill"),
        "kv_len": dep.kv_len,
        "kv_len_mean": dep.kv_len_mean,
        "prefix_hit": dep.prefix_hit,
        "mtp_drafts": dep.mtp[0] if dep.mtp else None,
        "mtp_acceptance": dep.mtp[1] if dep.mtp else None,
        "aggregated_isl": dep.aggregated[0] if dep.aggregated else None,
        "aggregated_osl": dep.aggregated[1] if dep.aggregated else None,
        "prefill_chunk": dep.prefill_chunk,
        "rebatched": info.rebatched,
        "trace_moe_layers": len(setup.trace_arch.moe_layers),
        "target_moe_layers": len(setup.arch.moe_layers),
        "layer_map": "identity"
        if len(setup.arch.moe_layers) == len(setup.trace_arch.moe_layers)
        else "cyclic",
        "token_reuse": float(info.token_reuse),
        "num_steps": info.num_steps,
        **dataclasses.asdict(steps),
        "disaggregated": False,
        "prefill_hw": None,
        "prefill_ep": None,
        "prefill_gpus": None,
    }
    return frame("replay_run", {k: [v] for k, v in row.items()})
