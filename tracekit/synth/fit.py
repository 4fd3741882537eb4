"""Fit the generative routing model to the statistics of a recorded trace.

What is matched, per source MoE layer (a *prototype*; target layers map onto source layers by
relative depth):

- the load profile: each expert's share of the layer's assignments over the whole source trace
  (which fixes max/mean, Gini, CV and entropy). When the target has another expert count, the sorted
  profile is resampled along its Lorenz curve and dealt to experts in a seeded random order. The base
  logits are found by a fixed-point iteration until the pool's load equals the profile;
- co-activation (``coact_nmi``), cross-layer correlation (``cross_layer_nmi``) and hot-set drift
  (``hot_jaccard``), each by bisection on one knob (cluster strength, cluster stay probability,
  concentration of the per-step cluster mix), simulated at the source's own sample size so both sides
  carry the same sampling noise. Drift is fitted as stationary (the batch mix varies from step to
  step), so the long-run load keeps the source's profile.

The source's observed shares are taken as the truth: a small source carries its sampling noise into
the fitted skew (see docs/synth.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tracekit.errors import UsageError
from tracekit.stats import RoutingStats, hot_set_size
from tracekit.stats import metrics as m
from tracekit.synth.routing import Router, RoutingModel, RoutingSampler, build_pools

NUM_CLUSTERS = 8
#: Upper bound of the cluster strength: beyond it the clusters' pools saturate and the load profile
#: can no longer be matched.
MAX_CLUSTER_STRENGTH = 4.0
_FIT_POOL_ROWS = 8_192
_SIM_POOL_ROWS = 8_192
_EPS = 1e-6


@dataclass(frozen=True, kw_only=True)
class FitResult:
    """A fitted model and how close it came."""

    model: RoutingModel
    #: Per statistic: the source's value and the fitted model's, simulated at the source's size.
    report: dict[str, Any] = field(default_factory=dict)


def lorenz_resample(shares: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """Sorted (descending) shares of ``len(shares)`` experts mapped onto ``n`` experts."""
    s = np.sort(np.asarray(shares, dtype=np.float64))[::-1]
    total = s.sum()
    if total <= 0:
        return np.full(n, 1.0 / n)
    cum = np.concatenate([[0.0], np.cumsum(s / total)])
    x_src = np.linspace(0.0, 1.0, len(s) + 1)
    cum_n = np.interp(np.linspace(0.0, 1.0, n + 1), x_src, cum)
    return np.diff(cum_n)


def _source_profiles(
    stats: RoutingStats, router: Router, rng: np.random.Generator
) -> tuple[list[int], npt.NDArray[np.float64], bool]:
    experts = stats.experts.sort("layer", "expert")
    layers = sorted({int(x) for x in experts["layer"].to_list()})
    if not layers:
        raise UsageError("the statistics hold no expert loads; fit a trace with routing or expert_load rows")
    e_src = int(stats.meta.get("num_experts", 0)) or int(experts["expert"].max()) + 1  # type: ignore[arg-type]
    same = e_src == router.num_experts
    profiles = np.empty((len(layers), router.num_experts))
    for i, layer in enumerate(layers):
        counts = np.zeros(e_src)
        sub = experts.filter(experts["layer"] == layer)
        counts[sub["expert"].to_numpy().astype(np.int64)] = sub["num_tokens"].to_numpy()
        total = counts.sum()
        if total <= 0:
            profiles[i] = 1.0 / router.num_experts
        elif same:
            profiles[i] = counts / total
        else:
            profiles[i] = lorenz_resample(counts, router.num_experts)[rng.permutation(router.num_experts)]
    return layers, profiles, same


def layer_mapping(num_target: int, num_source: int) -> npt.NDArray[np.int64]:
    """Source layer index of each target MoE layer, by relative depth."""
    if num_target <= 1 or num_source <= 1:
        return np.zeros(num_target, dtype=np.int64)
    return np.rint(np.arange(num_target) * (num_source - 1) / (num_target - 1)).astype(np.int64)


def pool_load(router: Router, model: RoutingModel, seed: int) -> npt.NDArray[np.float64]:
    """[prototypes, E] expected share of each expert under the model (the pools' own load)."""
    pools = build_pools(router, model, np.random.default_rng(seed), weights=False)
    p = model.prototypes.shape[0]
    per = pools.clusters * pools.rows
    ids = pools.ids.reshape(p, per * router.top_k).astype(np.int64)
    loads = np.stack([np.bincount(ids[i], minlength=router.num_experts) for i in range(p)]).astype(np.float64)
    return loads / loads.sum(axis=1, keepdims=True)


def fit_logits(
    router: Router, model: RoutingModel, target: npt.NDArray[np.float64], seed: int, iters: int = 8
) -> RoutingModel:
    """Adjust base logits until the pools' load matches ``target`` [prototypes, E]."""
    logits = np.log(target + _EPS)
    logits -= logits.max(axis=1, keepdims=True)
    cur = model.with_(prototypes=logits, pool_rows=_FIT_POOL_ROWS)
    for _ in range(iters):
        got = pool_load(router, cur, seed)
        step = np.log((target + _EPS) / (got + _EPS))
        # close enough: shares within 0.5% in total variation and the top expert within 1%
        tvd = 0.5 * np.abs(got - target).sum(axis=1).max()
        top = np.abs(got.max(axis=1) / np.maximum(target.max(axis=1), _EPS) - 1.0).max()
        if tvd < 0.005 and top < 0.01:
            break
        new = np.clip(cur.prototypes + step, -40.0, 40.0)
        cur = cur.with_(prototypes=new - new.max(axis=1, keepdims=True))
    return cur.with_(pool_rows=model.pool_rows)


# -- statistics of simulated routing -----------------------------------------------------------------


def _simulate(
    router: Router, model: RoutingModel, tokens: int, steps: int, seed: int
) -> npt.NDArray[np.int16]:
    """[steps, M, tokens, k] routing drawn from a model with a small pool."""
    sampler = RoutingSampler(router, model.with_(pool_rows=_SIM_POOL_ROWS), np.random.default_rng(seed))
    return np.stack([sampler.next_step(tokens)[0] for _ in range(steps)])


def sim_coact(router: Router, ids: npt.NDArray[np.int16]) -> float:
    flat = ids.transpose(1, 0, 2, 3).reshape(ids.shape[1], -1, ids.shape[3])
    vals = [m.normalized_mutual_information(m.coactivation_counts(x, router.num_experts)) for x in flat]
    return float(np.mean(vals))


def sim_cross(router: Router, ids: npt.NDArray[np.int16]) -> float:
    flat = ids.transpose(1, 0, 2, 3).reshape(ids.shape[1], -1, ids.shape[3])
    vals = [
        m.normalized_mutual_information(m.transition_counts(flat[i], flat[i + 1], router.num_experts))
        for i in range(len(flat) - 1)
    ]
    return float(np.mean(vals)) if vals else float("nan")


def sim_jaccard(router: Router, ids: npt.NDArray[np.int16], window: int) -> float:
    steps, layers = ids.shape[0], ids.shape[1]
    hot_n = hot_set_size(router.num_experts, router.top_k)
    vals = []
    for layer in range(layers):
        prev = None
        for start in range(0, steps, window):
            load = np.bincount(
                ids[start : start + window, layer].reshape(-1).astype(np.int64), minlength=router.num_experts
            )
            hot = m.hot_set(load, hot_n)
            if prev is not None:
                vals.append(m.jaccard(hot, prev))
            prev = hot
    return float(np.mean(vals)) if vals else float("nan")


def _bisect(
    f: Callable[[float], float], target: float, lo: float, hi: float, increasing: bool, iters: int
) -> float:
    """x in [lo, hi] with f(x) ~ target for a monotone f; clamps at the ends."""
    f_lo, f_hi = f(lo), f(hi)
    if increasing:
        if target <= f_lo:
            return lo
        if target >= f_hi:
            return hi
    else:
        if target >= f_lo:
            return lo
        if target <= f_hi:
            return hi
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = f(mid) > target
        if above == increasing:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def _mean(values: list[Any]) -> float | None:
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    return float(np.mean(v)) if v else None


def fit_model(stats: RoutingStats, router: Router, num_target_layers: int, seed: int) -> FitResult:
    """Fit a routing model for a target with ``num_target_layers`` MoE layers to ``stats``."""
    rng = np.random.default_rng(seed)
    layers, profiles, same_experts = _source_profiles(stats, router, rng)
    mapping = layer_mapping(num_target_layers, len(layers))
    base = RoutingModel(
        prototypes=np.log(profiles + _EPS),
        layer_prototype=np.arange(len(layers), dtype=np.int64),
        num_clusters=NUM_CLUSTERS,
        cluster_bias=rng.standard_normal((len(layers), NUM_CLUSTERS, router.num_experts)),
        shuffle_layers=False,
    )
    meta = stats.meta
    ltab = stats.layers.sort("layer")
    sampled = [int(x) for x in ltab["routing_tokens_sampled"].to_list() if x]
    tokens = max(router.top_k, min(min(sampled) if sampled else 0, 16_384))
    target_coact = _mean(ltab["coact_nmi"].to_list())
    target_cross = _mean(ltab["cross_layer_nmi"].to_list())
    target_jac = _mean(ltab["hot_jaccard"].to_list())
    report: dict[str, Any] = {"source_layers": layers, "layer_map": mapping.tolist(), "sim_tokens": tokens}
    sim_seed = seed + 1

    model = fit_logits(router, base, profiles, seed + 2)
    if target_coact is not None and sampled:

        def coact_at(rho: float) -> float:
            mod = model.with_(cluster_strength=rho)
            return sim_coact(router, _simulate(router, mod, tokens, 1, sim_seed))

        rho = _bisect(coact_at, target_coact, 0.0, MAX_CLUSTER_STRENGTH, increasing=True, iters=6)
        if rho > 0:
            model = fit_logits(router, model.with_(cluster_strength=rho), profiles, seed + 2, iters=25)
        report["coact_nmi"] = {"source": target_coact, "fitted": coact_at(rho), "cluster_strength": rho}
    if target_cross is not None and len(layers) > 1 and model.cluster_strength > 0:

        def cross_at(phi: float) -> float:
            return sim_cross(router, _simulate(router, model.with_(cluster_stay=phi), tokens, 1, sim_seed))

        phi = _bisect(cross_at, target_cross, 0.0, 1.0, increasing=True, iters=6)
        model = model.with_(cluster_stay=phi)
        report["cross_layer_nmi"] = {"source": target_cross, "fitted": cross_at(phi), "cluster_stay": phi}
    steps = int(meta.get("num_steps") or 0)
    window = int(meta.get("window_steps") or 1)
    tps = meta.get("tokens_per_step")
    if target_jac is not None and steps >= 2 * window and tps and model.cluster_strength > 0:
        sim_steps = min(steps, 64 * window, 256)
        sim_tps = max(1, min(round(float(tps)), 4096))

        def jac_at(log_beta: float) -> float:
            beta = 10.0**log_beta
            mod = model.with_(mix_concentration=beta)
            return sim_jaccard(router, _simulate(router, mod, sim_tps, sim_steps, sim_seed), window)

        log_beta = _bisect(jac_at, target_jac, -1.0, 3.0, increasing=True, iters=6)
        beta = 0.0 if log_beta >= 3.0 else 10.0**log_beta
        model = model.with_(mix_concentration=beta)
        report["hot_jaccard"] = {
            "source": target_jac,
            "fitted": jac_at(log_beta if beta else 3.0),
            "mix_concentration": beta,
        }
    skew = pool_load(router, model.with_(pool_rows=_FIT_POOL_ROWS), seed + 2)
    report["max_over_mean"] = {
        "source": [float(x) for x in m.max_over_mean(profiles)],
        "fitted": [float(x) for x in m.max_over_mean(skew)],
    }
    report["gini"] = {
        "source": [float(x) for x in m.gini(profiles)],
        "fitted": [float(x) for x in m.gini(skew)],
    }
    identity_layout = same_experts and num_target_layers == len(layers)
    final = model.with_(layer_prototype=mapping, shuffle_layers=not identity_layout)
    return FitResult(model=final, report=report)
