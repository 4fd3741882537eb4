"""``synthesize``: write a complete synthetic trace, step by step, straight to Parquet.

Tables written: steps, tokens (request ids, positions, prefill flags), routing (ids and gate weights),
expert_load and requests. Same config and seed give byte-identical Parquet files: the trace id and
creation time come from the config, every random draw from one seeded generator, and the writer's
part boundaries depend only on the row counts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tracekit._version import __version__
from tracekit.errors import UsageError
from tracekit.schema.manifest import Manifest, ModelArch
from tracekit.stats import load_stats_or_trace
from tracekit.stats import metrics as m
from tracekit.synth.fit import fit_model
from tracekit.synth.routing import Router, RoutingModel, RoutingSampler, balanced_step
from tracekit.synth.spec import RoutingSpec
from tracekit.trace.store import Location, location

PHASES = ("prefill", "decode")
#: Creation time stamped into every synthetic manifest (a real clock would break reproducibility).
FIXED_CREATED_AT = "2000-01-01T00:00:00+00:00"


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What to synthesise."""

    #: Target model architecture (a catalog model at full scale).
    arch: ModelArch
    #: Routing spec (uniform, zipf, balanced, fitted).
    spec: RoutingSpec
    #: prefill or decode.
    phase: str
    #: Tokens per forward step (decode: concurrent requests; prefill: prompt tokens).
    tokens_per_step: int
    #: Forward steps.
    steps: int
    #: Seed of every random draw.
    seed: int = 0
    #: Prompt length of every request (decode: context already in the KV cache at step 0).
    prompt_len: int = 1024
    #: EP degree for the per-rank imbalance (printed, recorded; solved for with target_imbalance).
    ep: int | None = None
    #: Per-rank (max - mean) / mean to reach at ``ep`` (mean over steps and layers), by scaling skew.
    target_imbalance: float | None = None
    #: Write gate weights (False leaves routing.gate_weights null, about half the size).
    gate_weights: bool = True
    #: Per-step variation of the hot experts (zipf and uniform routing; 0: none): the strength of
    #: :data:`BURST_CLUSTERS` token clusters with their own expert preferences, mixed in proportions
    #: that change every step (see :mod:`tracekit.synth.routing`). What a placement computed from
    #: past steps cannot balance away.
    burst: float = 0.0

    def check(self) -> None:
        if self.phase not in PHASES:
            raise UsageError(f"--phase {self.phase!r}: use prefill or decode")
        for name in ("tokens_per_step", "steps", "prompt_len"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.arch.moe_layers:
            raise UsageError(f"model {self.arch.name} has no MoE layer; nothing to synthesise")
        if self.target_imbalance is not None:
            if self.ep is None or self.ep < 2:
                raise UsageError(
                    "--target-imbalance needs --ep N (N >= 2): the imbalance is per rank at EP N"
                )
            if self.spec.kind == "balanced":
                raise UsageError("--target-imbalance cannot apply to --routing balanced; use zipf or fitted")
            if self.target_imbalance < 0:
                raise UsageError(f"--target-imbalance must be >= 0, got {self.target_imbalance}")
        if self.burst:
            if self.spec.kind not in ("zipf", "uniform"):
                raise UsageError(
                    f"--burst applies to zipf and uniform routing; {self.spec.kind} routing has its own "
                    "step-to-step variation (fitted) or none (balanced)"
                )
            if not 0 < self.burst <= 10:
                raise UsageError(f"--burst must be in (0, 10], got {self.burst:g}")
        if self.ep is not None:
            m.contiguous_slots(self.arch.num_experts, self.ep)
        if self.spec.kind == "balanced":
            router = Router.of(self.arch)
            gs, k = router.group_size, router.top_k
            if router.num_groups > 1 and gs % k and k % gs:
                raise UsageError(
                    f"--routing balanced: model {self.arch.name} has groups of {gs} experts and top-{k}; "
                    "balanced routing needs one to be a multiple of the other; use uniform instead"
                )


#: Largest value of the per-token and per-step counts (token_index, position and step are int32 columns).
MAX_INT32 = 2**31 - 1
#: Routing rows a trace writer part holds (the writer queues up to 4 parts plus one being written).
_PART_ROWS = 1_000_000


def check_size(config: SynthConfig, out: str | os.PathLike[str] | None = None) -> None:
    """Refuse sizes the trace format, this machine's memory or the output's disk cannot hold."""
    import tracekit.limits as limits

    for option, value in (
        ("--tokens-per-step", config.tokens_per_step),
        ("--steps", config.steps),
        ("--prompt-len", config.prompt_len),
    ):
        limits.at_most(option, value, MAX_INT32, "steps, token indices and positions are int32 columns")
    if config.phase == "decode":
        limits.at_most(
            "--steps",
            config.steps,
            MAX_INT32 - config.prompt_len,
            f"decode positions start at --prompt-len {config.prompt_len} and are int32",
        )
    layers, k = len(config.arch.moe_layers), config.arch.top_k
    per_row = 26 + 14 * k  # sampler arrays, the Arrow copy and the writer's buffer, per routing row
    queued = 5 * (10 + 6 * k)  # parts queued for the writer thread
    limits.fits_memory(
        "--tokens-per-step",
        config.tokens_per_step,
        layers * (per_row + queued) + config.arch.num_experts * 24,
        f"one step of {layers} MoE layers x top-{k} routing",
        fixed_bytes=5 * _PART_ROWS * (10 + 6 * k),
    )
    from tracekit.trace.store import is_uri

    if out is not None and not is_uri(out):  # an object store has no free-space figure to check
        rows = config.steps * config.tokens_per_step * layers
        limits.fits_disk("--out", out, rows * 2 * k, f"{rows:,} routing rows (at least {2 * k} bytes each)")


@dataclass(frozen=True, kw_only=True)
class SynthResult:
    #: The trace written: a local path or a remote one (``s3://...``).
    path: Location
    rows: dict[str, int]
    seconds: float
    #: The manifest's source_detail: spec, seed, solved skew, fit report, measured imbalance.
    detail: dict[str, Any] = field(default_factory=dict)


def _run_fields(config: SynthConfig) -> dict[str, Any]:
    """The configuration that decides the generated tokens and routing (manifest and trace id)."""
    return {
        "spec": str(config.spec),
        "seed": config.seed,
        "phase": config.phase,
        "tokens_per_step": config.tokens_per_step,
        "steps": config.steps,
        "prompt_len": config.prompt_len,
        **({"burst": config.burst} if config.burst else {}),
    }


def trace_id_for(config: SynthConfig) -> str:
    key = json.dumps(
        {
            "model": config.arch.name,
            **_run_fields(config),
            "ep": config.ep,
            "target_imbalance": config.target_imbalance,
        },
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


#: The burst model's token clusters, the Dirichlet concentration of their per-step mix, and the chance
#: a token keeps its cluster from one MoE layer to the next (fixed; ``burst`` sets the strength).
BURST_CLUSTERS = 16
BURST_MIX = 0.5
BURST_STAY = 0.5


def with_burst(model: RoutingModel, burst: float) -> RoutingModel:
    """``model`` with the per-step hot-set variation of strength ``burst`` (0: unchanged)."""
    if burst <= 0:
        return model
    return model.with_(
        num_clusters=BURST_CLUSTERS,
        cluster_strength=burst,
        mix_concentration=BURST_MIX,
        cluster_stay=BURST_STAY,
    )


def zipf_model(router: Router, num_layers: int, alpha: float) -> RoutingModel:
    """Popularity rank r (1-based) gets logit -alpha * ln r; each layer shuffles which expert is which."""
    ranks = np.arange(1, router.num_experts + 1, dtype=np.float64)
    return RoutingModel(
        prototypes=(-alpha * np.log(ranks))[None, :],
        layer_prototype=np.zeros(num_layers, dtype=np.int64),
        shuffle_layers=True,
    )


def rank_imbalance(loads_SME: npt.NDArray[Any], ep: int) -> npt.NDArray[np.float64]:
    """Per-rank (max - mean) / mean of loads [..., E] under contiguous placement at ``ep``."""
    e = loads_SME.shape[-1]
    return m.imbalance(m.rank_loads(loads_SME, m.contiguous_slots(e, ep), ep))


def measure_imbalance(
    router: Router, model: RoutingModel, ep: int, tokens: int, seed: int, steps: int
) -> float:
    """Mean per-rank imbalance over the first ``steps`` steps the trace of this seed will hold.

    The sampler is seeded as ``synthesize`` seeds it, and the random draws it consumes do not depend
    on the logits, so every candidate skew sees the same pools noise, expert shuffles and token draws.
    """
    sampler = RoutingSampler(router, model, np.random.default_rng(seed))
    num_layers = len(model.layer_prototype)
    offsets = (np.arange(num_layers, dtype=np.int64) * router.num_experts)[:, None]
    vals = []
    for _ in range(steps):
        ids, _w = sampler.next_step(tokens)
        flat = ids.reshape(num_layers, -1).astype(np.int64) + offsets
        loads = np.bincount(flat.reshape(-1), minlength=num_layers * router.num_experts)
        vals.append(rank_imbalance(loads.reshape(num_layers, -1), ep))
    return float(np.nanmean(np.concatenate(vals)))


def solve_skew(
    router: Router, model: RoutingModel, ep: int, target: float, tokens: int, seed: int, steps: int
) -> tuple[float, float]:
    """Factor on the base logits giving per-rank imbalance ``target`` at ``ep``: (factor, achieved)."""
    steps = max(1, min(steps, 4))

    def f(x: float) -> float:
        return measure_imbalance(router, model.scaled(x), ep, tokens, seed, steps)

    floor = f(0.0)
    if target < floor:
        raise UsageError(
            f"--target-imbalance {target:g} is below what random routing gives at EP {ep} with "
            f"{tokens} tokens per step ({floor:.3f}); ask for more, or use --routing balanced"
        )
    hi = 1.0
    while f(hi) < target:
        hi *= 2.0
        if hi > 64:
            raise UsageError(
                f"--target-imbalance {target:g} at EP {ep} is out of reach (max {f(64.0):.3f} with "
                f"{tokens} tokens per step); ask for less"
            )
    lo = 0.0
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        got = f(mid)
        if abs(got - target) <= 0.002 * max(target, 1e-9):
            return mid, got
        if got < target:
            lo = mid
        else:
            hi = mid
    x = 0.5 * (lo + hi)
    return x, f(x)


def build_model(config: SynthConfig, router: Router) -> tuple[RoutingModel | None, dict[str, Any]]:
    """The routing model for a config (None for balanced) and what was solved or fitted."""
    num_layers = len(config.arch.moe_layers)
    spec = config.spec
    detail: dict[str, Any] = {}
    model: RoutingModel | None
    if spec.kind == "balanced":
        return None, detail
    if spec.kind == "fitted":
        assert spec.source is not None
        stats = load_stats_or_trace(spec.source)
        fit = fit_model(stats, router, num_layers, config.seed)
        model = fit.model
        detail["fit"] = fit.report
        source_tps = stats.meta.get("tokens_per_step")
        if model.mix_concentration > 0 and source_tps:
            # the step-to-step swing of the cluster mix comes from the few requests of a small batch:
            # its variance falls as 1 / tokens per step, so scale the concentration with the batch
            scale = config.tokens_per_step / float(source_tps)
            model = model.with_(mix_concentration=model.mix_concentration * scale)
            detail["fit"]["hot_jaccard"]["mix_concentration_at_target"] = model.mix_concentration
        detail["fit_source"] = {
            "path": spec.source,
            "trace_id": stats.meta.get("trace_id"),
            "model": stats.meta.get("model"),
        }
    else:
        alpha = spec.alpha if spec.kind == "zipf" else 0.0
        model = with_burst(zipf_model(router, num_layers, float(alpha or 0.0)), config.burst)
    if config.target_imbalance is not None and config.ep is not None:
        base = model
        if spec.kind == "uniform" or (spec.kind == "zipf" and not spec.alpha):
            base = with_burst(zipf_model(router, num_layers, 1.0), config.burst)
        factor, achieved = solve_skew(
            router,
            base,
            config.ep,
            config.target_imbalance,
            config.tokens_per_step,
            config.seed,
            config.steps,
        )
        model = base.scaled(factor)
        solved: dict[str, Any] = {
            "ep": config.ep,
            "target": config.target_imbalance,
            "sample_imbalance": achieved,
        }
        if spec.kind == "fitted":
            solved["logit_scale"] = factor
        else:
            solved["zipf_alpha"] = factor
        detail["target_imbalance"] = solved
    return model, detail


class _Requests:
    """Request ids and positions of the tokens of each step."""

    def __init__(self, config: SynthConfig) -> None:
        self.c = config

    def step(self, s: int) -> dict[str, npt.NDArray[Any]]:
        n, p = self.c.tokens_per_step, self.c.prompt_len
        if self.c.phase == "decode":
            return {
                "request_id": np.arange(n, dtype=np.int64),
                "position": np.full(n, p + s, dtype=np.int32),
                "is_prefill": np.zeros(n, dtype=bool),
            }
        g = np.arange(s * n, (s + 1) * n, dtype=np.int64)
        return {
            "request_id": g // p,
            "position": (g % p).astype(np.int32),
            "is_prefill": np.ones(n, dtype=bool),
        }

    def table(self) -> dict[str, npt.NDArray[Any]]:
        n, p, steps = self.c.tokens_per_step, self.c.prompt_len, self.c.steps
        if self.c.phase == "decode":
            return {
                "request_id": np.arange(n, dtype=np.int64),
                "prompt_tokens": np.full(n, p, dtype=np.int32),
                "output_tokens": np.full(n, steps, dtype=np.int32),
            }
        count = math.ceil(steps * n / p)
        return {
            "request_id": np.arange(count, dtype=np.int64),
            "prompt_tokens": np.full(count, p, dtype=np.int32),
        }


def synthesize(
    config: SynthConfig,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    rows_per_part: int | None = None,
) -> SynthResult:
    """Write the synthetic trace of ``config`` to directory (or URI, ``s3://...``) ``out``;
    ``rows_per_part``: rows per Parquet part file of each table [the writer's defaults]."""
    from tracekit.trace import TraceWriter

    config.check()
    check_size(config, out)
    started = time.perf_counter()
    arch = config.arch
    router = Router.of(arch)
    model, detail = build_model(config, router)
    source_detail: dict[str, Any] = {"generator": "tracekit.synth", **_run_fields(config), **detail}
    if model is not None:
        source_detail["model_params"] = {
            "prototypes": int(model.prototypes.shape[0]),
            "num_clusters": model.num_clusters,
            "cluster_strength": model.cluster_strength,
            "cluster_stay": model.cluster_stay,
            "swap_rate": model.swap_rate,
            "mix_concentration": model.mix_concentration,
        }
    manifest = Manifest(
        model=arch,
        source="synthetic",
        trace_id=trace_id_for(config),
        created_at=FIXED_CREATED_AT,
        source_detail=source_detail,
        software={"tracekit": __version__},
        clock="synthetic: no measured times",
        notes="Routing generated by tracekit synth, not recorded from a model run.",
    )
    rng = np.random.default_rng(config.seed)
    sampler = RoutingSampler(router, model, rng) if model is not None else None
    layers = np.asarray(arch.moe_layers, dtype=np.int16)
    num_layers, n, e = len(layers), config.tokens_per_step, arch.num_experts
    requests = _Requests(config)
    layer_col = np.repeat(layers, n)
    token_col = np.tile(np.arange(n, dtype=np.int32), num_layers)
    load_layer = np.repeat(layers, e)
    load_expert = np.tile(np.arange(e, dtype=np.int16), num_layers)
    offsets = (np.arange(num_layers, dtype=np.int64) * e)[:, None]
    imbalances: list[npt.NDArray[np.float64]] = []
    with TraceWriter(
        out, manifest, overwrite=overwrite, background=True, rows_per_part=rows_per_part
    ) as writer:
        for s in range(config.steps):
            if sampler is not None:
                ids, weights = sampler.next_step(n)
            else:
                ids, weights = balanced_step(router, num_layers, n, rng)
            req = requests.step(s)
            num_requests = int(np.unique(req["request_id"]).size)
            prefill = config.phase == "prefill"
            writer.append(
                "steps",
                {
                    "step": [s],
                    "phase": [config.phase],
                    "num_tokens": [n],
                    "num_requests": [num_requests],
                    "num_prefill_tokens": [n if prefill else 0],
                    "num_decode_tokens": [0 if prefill else n],
                },
            )
            writer.append(
                "tokens",
                {"step": np.full(n, s, np.int32), "token_index": np.arange(n, dtype=np.int32), **req},
            )
            routing: dict[str, Any] = {
                "step": np.full(num_layers * n, s, np.int32),
                "layer": layer_col,
                "token_index": token_col,
                "expert_ids": ids.reshape(-1, arch.top_k),
            }
            if config.gate_weights:
                routing["gate_weights"] = weights.reshape(-1, arch.top_k)
            writer.append("routing", routing)
            flat = ids.reshape(num_layers, -1).astype(np.int64) + offsets
            loads = np.bincount(flat.reshape(-1), minlength=num_layers * e)
            writer.append(
                "expert_load",
                {
                    "step": np.full(num_layers * e, s, np.int32),
                    "layer": load_layer,
                    "expert": load_expert,
                    "num_tokens": loads.astype(np.int64),
                },
            )
            if config.ep is not None:
                imbalances.append(rank_imbalance(loads.reshape(num_layers, e), config.ep))
            if progress is not None:
                progress(s + 1, config.steps)
        writer.append("requests", requests.table())
        if config.ep is not None:
            measured = float(np.nanmean(np.concatenate(imbalances)))
            source_detail["ep"] = config.ep
            source_detail["rank_imbalance"] = measured
            writer.update_manifest(manifest.replace(source_detail=source_detail))
        rows = writer.rows_written
    for table, count in writer.rows_written.items():
        rows[table] = count
    return SynthResult(
        path=location(out), rows=rows, seconds=time.perf_counter() - started, detail=source_detail
    )
