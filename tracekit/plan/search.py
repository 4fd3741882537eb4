"""Deployment planning: the best aggregated and disaggregated deployments of each system for a GPU
budget and a service-level target, searched over the fast path (docs/plan.md).

A *decode instance* is ``ep`` GPUs (attention data parallel ``ep / tp`` x tensor parallel ``tp``;
the routed experts spread over ``ep`` GPUs, or over ``ep / tp`` groups of ``tp`` GPUs each holding a
slice of every expert under MoE TP). Every point of the grid is re-timed by
:class:`tracekit.replay.fast.FastReplay` (one counted workload per expert layout and batch, shared by
every hardware, precision, communication implementation and overlap choice).

- **Aggregated**: every instance runs decode and the prefill of new requests (``aggregated = (ISL,
  OSL)``, prompts in chunks of ``prefill_chunk`` tokens); the budget holds ``floor(GPUs / ep)``
  instances; TTFT is ``ceil(ISL / chunk)`` mean steps (each step carries the expected prefill chunk).
- **Disaggregated**: a decode pool of ``n_d`` instances and a prefill pool of ``n_p`` prefill
  instances, ``n_p`` the fewest that feed the decode pool's request rate (``decode tokens/s / OSL``
  against ``prefill tokens/s / ISL``), trying every ``n_d`` the budget allows; TTFT is the prefill
  replay's plus the KV cache's transfer between pools (as ``tracekit.replay.disagg`` prices it).

Throughput per GPU counts every GPU of the budget the deployment occupies (pools together).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from tracekit.errors import TracekitError, UsageError, param
from tracekit.hardware import get_hardware
from tracekit.models import kv_cache_bytes_per_token_all_layers
from tracekit.replay.deployment import Deployment, Precision
from tracekit.replay.fast import FastReplay
from tracekit.replay.setup import target_model
from tracekit.replay.summary import PhaseSummary

#: A progress callback: (what, done, total).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, kw_only=True)
class Sla:
    """The service-level target: prompt and answer lengths, time to first token, time per output token."""

    isl: int
    osl: int
    ttft_s: float | None = None
    tpot_s: float | None = None

    def __post_init__(self) -> None:
        if self.isl < 1 or self.osl < 1:
            raise UsageError(
                f"{param('isl')} and {param('osl')} must be >= 1 token, got {self.isl}, {self.osl}"
            )
        for name in ("ttft_s", "tpot_s"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise UsageError(f"{param(name)} must be > 0 seconds, got {v}")

    @property
    def tokens_per_s_per_user(self) -> float | None:
        return None if self.tpot_s is None else 1.0 / self.tpot_s

    @property
    def kv_len(self) -> int:
        """Mean context of a decode step: the prompt and half the answer."""
        return self.isl + self.osl // 2


@dataclass(frozen=True, kw_only=True)
class Grid:
    """The deployments searched, per system (every combination that is valid and fits)."""

    #: GPUs per decode instance (the EP degree).
    eps: tuple[int, ...] = (8, 16)
    #: Attention tensor parallelism (data parallel = ep / tp).
    tps: tuple[int, ...] = (1, 8)
    #: Also try MoE tensor parallelism (moe_tp = tp) where tp > 1.
    moe_tp: tuple[bool, ...] = (False, True)
    batches: tuple[int, ...] = (4, 16, 64, 128)
    precisions: tuple[Precision, ...] = (Precision(),)
    #: Communication implementations (None: the system's default).
    impls: tuple[str | None, ...] = (None,)
    tbos: tuple[bool, ...] = (False, True)
    redundant: tuple[int, ...] = (0,)
    #: Prompt tokens per aggregated prefill chunk (None: a whole prompt).
    prefill_chunks: tuple[int | None, ...] = (None,)
    #: Disaggregated prefill instances: GPUs (EP) and prompt tokens per GPU per step.
    prefill_eps: tuple[int, ...] = (8,)
    prefill_tokens: tuple[int, ...] = (4096,)
    prefill_precisions: tuple[Precision, ...] = (Precision(),)

    def __post_init__(self) -> None:
        for name in ("eps", "tps", "batches", "prefill_eps", "prefill_tokens"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                raise UsageError(f"plan grid {name}: give one or more values >= 1, got {list(values)}")
        if any(r < 0 for r in self.redundant):
            raise UsageError(f"plan grid redundant: values must be >= 0, got {list(self.redundant)}")

    def decode_deployments(
        self, hw: str, *, model: str | None, kv_len: int, max_gpus: int
    ) -> list[Deployment]:
        """Every valid decode deployment of the grid on ``hw`` within ``max_gpus`` (batch left unset)."""
        out = []
        for ep, tp, moe, prec, impl, tbo, red in itertools.product(
            self.eps, self.tps, self.moe_tp, self.precisions, self.impls, self.tbos, self.redundant
        ):
            if ep > max_gpus or ep % tp or (moe and tp == 1):
                continue
            moe_tp = tp if moe else 1
            if moe_tp > 1 and red:
                continue  # redundant slots are an EP matter; MoE TP keeps one copy per group
            try:
                dep = Deployment(
                    hw=hw,
                    ep=ep,
                    tp=tp,
                    moe_tp=moe_tp,
                    precision=prec,
                    impl=impl,
                    tbo=tbo,
                    redundant=red,
                    model=model,
                    kv_len=kv_len,
                )
            except (TracekitError, ValueError):
                continue
            out.append(dep)
        return out


@dataclass(frozen=True, kw_only=True)
class PlanInputs:
    """What ``tracekit plan`` searches: systems, a GPU budget, the SLA and the grid."""

    systems: tuple[str, ...]
    #: GPU budgets (one or several).
    total_gpus: tuple[int, ...]
    sla: Sla
    grid: Grid = field(default_factory=Grid)
    model: str | None = None


def _deployment_columns(dep: Deployment) -> dict[str, Any]:
    return {
        "ep": dep.ep,
        "tp": dep.tp,
        "dp": (dep.ep or 1) // dep.tp,
        "moe_tp": dep.moe_tp,
        "batch_per_gpu": dep.batch_per_gpu,
        "precision": dep.precision.label(),
        "precision_experts": dep.precision.experts,
        "impl": dep.impl or "auto",
        "tbo": dep.tbo,
        "redundant": dep.redundant,
    }


POINT_SCHEMA: dict[str, Any] = {
    "hw": pl.String,
    "mode": pl.String,
    "total_gpus": pl.Int32,
    "gpus_used": pl.Int32,
    "ep": pl.Int32,
    "tp": pl.Int32,
    "dp": pl.Int32,
    "moe_tp": pl.Int32,
    "batch_per_gpu": pl.Int32,
    "precision": pl.String,
    "precision_experts": pl.String,
    "impl": pl.String,
    "tbo": pl.Boolean,
    "redundant": pl.Int32,
    "prefill_chunk": pl.Int32,
    "decode_gpus": pl.Int32,
    "prefill_gpus": pl.Int32,
    "prefill_ep": pl.Int32,
    "prefill_tokens_per_gpu": pl.Int32,
    "prefill_precision": pl.String,
    "tokens_per_s_per_gpu": pl.Float64,
    "tokens_per_s_per_user": pl.Float64,
    "tpot_s": pl.Float64,
    "ttft_s": pl.Float64,
    "requests_per_s": pl.Float64,
    "meets_sla": pl.Boolean,
    "bound": pl.String,
}


@dataclass(frozen=True, kw_only=True)
class PlanResult:
    """Every point searched, the frontiers, the best deployment of each (system, mode, budget)."""

    inputs: PlanInputs
    points: pl.DataFrame
    #: Notes (systems or modes without a point, prefill unavailable).
    notes: tuple[str, ...] = ()

    @property
    def pareto(self) -> pl.DataFrame:
        """Per (system, mode, budget): the points no other beats on tokens/s per GPU and per user."""
        return pareto_front(self.points, ["hw", "mode", "total_gpus"])

    @property
    def best(self) -> pl.DataFrame:
        """Per (system, mode, budget): the SLA-meeting point with the most tokens/s per GPU, and its
        ratio to the first system's best of the same mode and budget."""
        ok = self.points.filter(pl.col("meets_sla"))
        if ok.height == 0:
            return ok.with_columns(pl.lit(None, pl.Float64).alias("ratio"))
        best = (
            ok.sort(["tokens_per_s_per_gpu", "tokens_per_s_per_user"], descending=True)
            .group_by(["hw", "mode", "total_gpus"], maintain_order=True)
            .head(1)
        )
        ref = self.inputs.systems[0]
        base = best.filter(pl.col("hw") == ref).select(
            "mode", "total_gpus", pl.col("tokens_per_s_per_gpu").alias("_ref")
        )
        order = {h: i for i, h in enumerate(self.inputs.systems)}
        return (
            best.join(base, on=["mode", "total_gpus"], how="left")
            .with_columns((pl.col("tokens_per_s_per_gpu") / pl.col("_ref")).alias("ratio"))
            .drop("_ref")
            .with_columns(pl.col("hw").replace_strict(order, return_dtype=pl.Int32).alias("_o"))
            .sort(["total_gpus", "mode", "_o"])
            .drop("_o")
        )


def pareto_front(points: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    """Per group of ``by``: the points not dominated on (tokens/s per user, tokens/s per GPU)."""
    keep = []
    for _key, part in points.group_by(list(by), maintain_order=True):
        x = part["tokens_per_s_per_user"].to_numpy()
        y = part["tokens_per_s_per_gpu"].to_numpy()
        ge = (x[None, :] >= x[:, None]) & (y[None, :] >= y[:, None])
        gt = (x[None, :] > x[:, None]) | (y[None, :] > y[:, None])
        keep.append(part.filter(pl.Series(~(ge & gt).any(axis=1))))
    if not keep:
        return points.clear()
    return pl.concat(keep).sort([*by, "tokens_per_s_per_user"])


@dataclass(frozen=True, kw_only=True)
class _Decode:
    dep: Deployment
    summary: PhaseSummary


@dataclass(frozen=True, kw_only=True)
class _Prefill:
    dep: Deployment
    summary: PhaseSummary
    #: Requests per second one instance prefills, and the TTFT it gives (with the KV transfer).
    rate: float
    ttft_s: float


def plan(
    inputs: PlanInputs,
    trace: FastReplay,
    *,
    prefill_trace: FastReplay | None = None,
    progress: Progress | None = None,
) -> PlanResult:
    """Search ``inputs`` on ``trace``'s decode routing (and ``prefill_trace``'s prefill routing, for the
    disaggregated prefill pool; ``trace`` itself when it has prefill tokens)."""
    sla, grid = inputs.sla, inputs.grid
    arch = target_model(trace.trace, inputs.model)
    max_gpus = max(inputs.total_gpus)
    if not inputs.systems:
        raise UsageError(f"{param('hw')}: name one system or more")
    deps = {
        hw: grid.decode_deployments(hw, model=inputs.model, kv_len=sla.kv_len, max_gpus=max_gpus)
        for hw in inputs.systems
    }
    for hw in inputs.systems:
        get_hardware(hw)  # an unknown name fails here, with the valid ones
        if not deps[hw]:
            raise UsageError(
                f"plan: no deployment of the grid fits a budget of {max_gpus} GPUs on {hw} (EP {list(grid.eps)}, "
                f"TP {list(grid.tps)}); give more GPUs or smaller EP degrees"
            )
    pre_source = prefill_trace if prefill_trace is not None else trace
    has_prefill = pre_source.has_phase("prefill")
    notes: list[str] = []
    if not has_prefill:
        notes.append(
            "no prefill tokens in the trace: disaggregated deployments need a prefill trace (--prefill-trace)"
        )
    total = sum(len(d) for d in deps.values()) * len(grid.batches) * (1 + len(grid.prefill_chunks))
    done = 0
    rows: list[dict[str, Any]] = []
    variants: list[tuple[str, int | None]] = [("decode", None)]
    variants += [("aggregated", c) for c in grid.prefill_chunks]
    batches = sorted(grid.batches)
    for hw in inputs.systems:
        decode: list[_Decode] = []
        for base in deps[hw]:
            for mode, chunk in variants:
                for i, b in enumerate(batches):
                    done += 1
                    if progress is not None:
                        progress(hw, done, total)
                    dep = base.replace(batch_per_gpu=b)
                    if mode == "aggregated":
                        dep = dep.replace(aggregated=(sla.isl, sla.osl), prefill_chunk=chunk)
                    try:
                        s = trace.phase(dep)
                    except TracekitError:  # does not fit: larger batches do not either
                        done += len(batches) - i - 1
                        break
                    if mode == "decode":
                        decode.append(_Decode(dep=dep, summary=s))
                    else:
                        rows.extend(_aggregated_rows(dep, s, inputs))
        prefills = _prefills(hw, inputs, pre_source, arch) if has_prefill else []
        if has_prefill and not prefills:
            notes.append(f"{hw}: no prefill deployment of the grid fits")
        for d in decode:
            rows.extend(_disaggregated_rows(d, prefills, inputs))
    points = pl.DataFrame(rows, schema=POINT_SCHEMA) if rows else pl.DataFrame(schema=POINT_SCHEMA)
    for hw in inputs.systems:
        for mode in ("aggregated", "disaggregated"):
            mine = points.filter((pl.col("hw") == hw) & (pl.col("mode") == mode))
            if mode == "disaggregated" and not has_prefill:
                continue
            if mine.height and not mine["meets_sla"].any():
                notes.append(f"{hw} {mode}: no deployment of the grid meets the SLA")
    return PlanResult(inputs=inputs, points=points, notes=tuple(notes))


def _aggregated_rows(dep: Deployment, s: PhaseSummary, inputs: PlanInputs) -> list[dict[str, Any]]:
    sla = inputs.sla
    chunk = dep.prefill_chunk or sla.isl
    ttft = math.ceil(sla.isl / chunk) * s.step_time_s
    ep = dep.ep or s.num_gpus
    out = []
    for budget in inputs.total_gpus:
        instances = budget // ep
        if instances < 1:
            continue
        used = instances * ep
        tps_gpu = s.tokens_per_s_per_gpu * used / budget
        tpu = s.tokens_per_s_per_user or 0.0
        out.append(
            {
                "hw": dep.hw,
                "mode": "aggregated",
                "total_gpus": budget,
                "gpus_used": used,
                **_deployment_columns(dep),
                "prefill_chunk": dep.prefill_chunk,
                "decode_gpus": used,
                "prefill_gpus": 0,
                "tokens_per_s_per_gpu": tps_gpu,
                "tokens_per_s_per_user": tpu,
                "tpot_s": s.tpot_s,
                "ttft_s": ttft,
                "requests_per_s": s.tokens_per_s_per_gpu * used / sla.osl,
                "meets_sla": _meets(sla, s.tpot_s, ttft),
                "bound": s.bound,
            }
        )
    return out


def _meets(sla: Sla, tpot_s: float | None, ttft_s: float | None) -> bool:
    ok = True
    if sla.tpot_s is not None:
        ok &= tpot_s is not None and tpot_s <= sla.tpot_s * (1 + 1e-12)
    if sla.ttft_s is not None:
        ok &= ttft_s is not None and ttft_s <= sla.ttft_s * (1 + 1e-12)
    return ok


def _prefills(hw: str, inputs: PlanInputs, source: FastReplay, arch: Any) -> list[_Prefill]:
    sla, grid = inputs.sla, inputs.grid
    spec = get_hardware(hw)
    out = []
    for ep, tokens, prec in itertools.product(grid.prefill_eps, grid.prefill_tokens, grid.prefill_precisions):
        if ep > max(inputs.total_gpus):
            continue
        dep = Deployment(hw=hw, ep=ep, precision=prec, model=inputs.model, prefill_tokens_per_gpu=tokens)
        try:
            s = source.phase(dep, "prefill")
        except TracekitError:
            continue
        kv_bytes = sla.isl * kv_cache_bytes_per_token_all_layers(arch, prec.kv_cache)
        kv_s = kv_bytes / spec.scaleout_bw + spec.scaleout_latency_s
        ttft = (s.ttft_s or 0.0) + kv_s
        rate = s.tokens_per_s_per_gpu * ep / sla.isl
        out.append(_Prefill(dep=dep, summary=s, rate=rate, ttft_s=ttft))
    return out


def _disaggregated_rows(d: _Decode, prefills: list[_Prefill], inputs: PlanInputs) -> list[dict[str, Any]]:
    sla = inputs.sla
    s, dep = d.summary, d.dep
    ep_d = dep.ep or s.num_gpus
    decode_rate = s.tokens_per_s_per_gpu * ep_d / sla.osl  # requests/s of one decode instance
    out = []
    for budget in inputs.total_gpus:
        for p in prefills:
            ep_p = p.dep.ep or p.summary.num_gpus
            best: tuple[float, int, int, float] | None = None
            for n_d in range(1, (budget - ep_p) // ep_d + 1):
                n_p = max(1, math.ceil(n_d * decode_rate / p.rate))
                if n_d * ep_d + n_p * ep_p > budget:
                    n_p = (budget - n_d * ep_d) // ep_p
                rate = min(n_d * decode_rate, n_p * p.rate)
                tps = rate * sla.osl / budget
                if best is None or tps > best[0]:
                    best = (tps, n_d, n_p, rate)
            if best is None:
                continue
            tps, n_d, n_p, rate = best
            out.append(
                {
                    "hw": dep.hw,
                    "mode": "disaggregated",
                    "total_gpus": budget,
                    "gpus_used": n_d * ep_d + n_p * ep_p,
                    **_deployment_columns(dep),
                    "prefill_chunk": None,
                    "decode_gpus": n_d * ep_d,
                    "prefill_gpus": n_p * ep_p,
                    "prefill_ep": ep_p,
                    "prefill_tokens_per_gpu": p.dep.prefill_tokens_per_gpu,
                    "prefill_precision": p.dep.precision.label(),
                    "tokens_per_s_per_gpu": tps,
                    "tokens_per_s_per_user": s.tokens_per_s_per_user or 0.0,
                    "tpot_s": s.tpot_s,
                    "ttft_s": p.ttft_s,
                    "requests_per_s": rate,
                    "meets_sla": _meets(sla, s.tpot_s, p.ttft_s),
                    "bound": s.bound,
                }
            )
    return out
