"""The p10-p90 band of a replay's throughput, from the spread of every fitted parameter.

Each timing family's curve in a preset (``[kernel.<family>.<class>]``) and each communication
implementation (``[comm.<impl>]``) carries ``rms_log_residual``: how far its fit is from the
measurements it was fitted to, in log space. A replayed step's components are priced by those
families (attention core, projections and dense GEMMs, grouped GEMMs, dispatch, combine); the band
draws one time factor per family, ``exp(N(0, rms_log_residual))``, multiplies each component of the
phase's mean step by its family's factor (the straggler, embedding, LM head and draft passes by the
step's resulting factor), and reports the 10th and 90th percentiles of the throughput over the
draws. Families whose curve came from the same fit (a curve a preset copied from another) share one
draw, also across the systems of a comparison, so a ratio between two systems carries only the
spread they do not share. Unfitted families (the small memory-bound kernels, launch gaps, NCCL)
have no spread.

The band is first-order: it rescales the components of the mean step instead of replaying again,
so overlap and the slowest rank are taken as they were at the nominal values.

To change the spread or what a component draws: this module.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tracekit.hardware import HardwareSpec
from tracekit.precision import compute_class

#: Draws of the band and their seed (a replay's band is the same on every run).
DRAWS = 4000
SEED = 20261201
#: Components that follow the whole step (no family of their own).
STEP_LEVEL = ("straggler", "embedding", "lm_head", "mtp")


@dataclass(frozen=True, kw_only=True)
class Spread:
    """The spread of one component: the fit it comes from (shared draws) and its rms log residual."""

    key: str
    sigma: float


def component_spreads(
    hw: HardwareSpec,
    *,
    attention_family: str,
    precision: Mapping[str, str],
    impl: str,
) -> dict[str, Spread]:
    """Per replay component with a fitted family: where its spread comes from."""

    def curve(family: str, part: str) -> Spread:
        dtype = compute_class(precision[part])
        c = hw.kernel_curve(family, dtype)
        src = hw.sources.get(f"kernel.{family}.{dtype}.rms_log_residual") or f"{hw.name}:{family}.{dtype}"
        return Spread(key=_fit_key(src), sigma=c.rms_log_residual)

    comm = hw.comm_params(impl)
    comm_src = hw.sources.get(f"comm.{impl}.rms_log_residual") or f"{hw.name}:comm.{impl}"
    comm_spread = Spread(key=_fit_key(comm_src) + f"|{impl}", sigma=comm.rms_log_residual)
    return {
        "attention": curve(attention_family, "attention_core"),
        "attn_proj": curve("gemm", "attention"),
        "dense": curve("gemm", "dense"),
        "expert_gemm": curve("grouped_gemm", "experts"),
        "dispatch": comm_spread,
        "combine": comm_spread,
    }


def _fit_key(source: str) -> str:
    """One key per fit: a copied curve's source names the fit it was copied from."""
    source = source.split(" (assumption: ", 1)[0]
    marker = "]: "
    if source.startswith("copied from") and marker in source:
        source = source.split(marker, 1)[1]
    return source.removesuffix(" (transferred with the fit)")


def step_factor_draws(
    breakdown: Mapping[str, float], spreads: Mapping[str, Spread], draws: Mapping[str, np.ndarray]
) -> np.ndarray:
    """[DRAWS] each draw's step time over the nominal one."""
    own = {c: t for c, t in breakdown.items() if c not in STEP_LEVEL}
    base = sum(own.values())
    if base <= 0:
        return np.ones(DRAWS)
    scaled = sum(
        (t * (draws[spreads[c].key] if c in spreads else 1.0) for c, t in own.items()),
        np.zeros(DRAWS),
    )
    return np.asarray(scaled / base)


def draw_factors(spreads: Sequence[Mapping[str, Spread]], seed: int = SEED) -> dict[str, np.ndarray]:
    """One array of time factors per distinct fit key over ``spreads`` (shared by equal keys; the
    arrays are shared between calls with the same fits: read-only)."""
    sigma: dict[str, float] = {}
    for sp in spreads:
        for s in sp.values():
            sigma[s.key] = max(sigma.get(s.key, 0.0), s.sigma)
    return dict(_draws(tuple(sorted(sigma.items())), seed))


@functools.lru_cache(maxsize=256)
def _draws(sigmas: tuple[tuple[str, float], ...], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {k: np.exp(rng.normal(0.0, v, DRAWS)) if v > 0 else np.ones(DRAWS) for k, v in sigmas}
    for a in out.values():
        a.flags.writeable = False
    return out


def throughput_band(
    tokens_per_s: float, breakdown: Mapping[str, float], spreads: Mapping[str, Spread]
) -> tuple[float, float]:
    """(p10, p90) of a phase's tokens/s over the draws."""
    draws = draw_factors([spreads])
    samples = tokens_per_s / step_factor_draws(breakdown, spreads, draws)
    return float(np.percentile(samples, 10)), float(np.percentile(samples, 90))


def ratio_band(
    a: tuple[float, Mapping[str, float], Mapping[str, Spread]],
    b: tuple[float, Mapping[str, float], Mapping[str, Spread]],
) -> tuple[float, float]:
    """(p10, p90) of ``a``'s tokens/s over ``b``'s, with shared fits drawn once for both."""
    draws = draw_factors([a[2], b[2]])
    sa = a[0] / step_factor_draws(a[1], a[2], draws)
    sb = b[0] / step_factor_draws(b[1], b[2], draws)
    r = sa / sb
    return float(np.percentile(r, 10)), float(np.percentile(r, 90))
