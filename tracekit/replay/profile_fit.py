"""Fit the timing model to a GPU profile of a real run (``tracekit calibrate --from-profile``).

The profiled run's deployment is replayed on the base preset and every profiled (step, layer, rank)
is matched to the replay's (:mod:`tracekit.replay.profile`). Then, per group of kernels:

- **compute** (attention core, dense GEMMs, routed-expert GEMMs, small memory-bound kernels): the
  kernel curves the group's kernels are priced with are fitted by least squares on
  ``log(predicted / measured)`` over the profiled cells (Levenberg-Marquardt; the Jacobian by
  finite differences through whole replays, one replay per parameter slot: the groups depend on
  disjoint curves, so one replay moves the same slot of every group at once). Parameters:
  ``memory_eff`` and ``compute_eff`` (a factor on the preset's value, shared by every compute class
  of the group, at most 1), ``fixed_s`` and ``per_seq_s`` (seconds). A parameter the profile does
  not exercise (its effect on the cells below 2% rms) or cannot tell from one already chosen (the
  columns of the normalised Jacobian nearly parallel) is not fitted and keeps the preset's value:
  a decode-only profile says nothing of compute efficiency. The attention core is fitted per
  phase (decode and prefill kernels are different curves). These replays run without launch gaps,
  so the small kernels are compared with the profile's kernel time alone.
- **launch gaps**: the median idle between consecutive compute kernels of a layer on one stream,
  per phase, becomes ``launch_gap_s`` (phases under CUDA graphs) or ``launch_gap_eager_s``.
- **communication** (dispatch, combine, tensor-parallel all-reduce): one time multiplier each
  (``[scale] moe_dispatch``, ``moe_combine``, ``collective``), the geometric mean of measured over
  predicted.

:func:`fit_profile` returns the fit, the replays before and after it and their ``replay_profile``
tables; :func:`profile_preset_text` writes the user preset (``base = "<preset>"``, the fitted values
with their residuals and the profile they came from).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tracekit.errors import UsageError
from tracekit.hardware import HardwareSpec, get_hardware
from tracekit.precision import compute_class
from tracekit.replay.deployment import Deployment
from tracekit.replay.profile import Matched, Profile, match_profile, predicted_cells, profile_table

#: Curve fields fitted per kernel family, in the order they are tried.
FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "gemm": ("memory_eff", "compute_eff", "fixed_s"),
    "grouped_gemm": ("memory_eff", "compute_eff", "fixed_s"),
    "attention": ("memory_eff", "compute_eff", "fixed_s", "per_seq_s"),
    "elementwise": ("memory_eff", "fixed_s"),
}
#: Communication groups -> the ``[scale]`` family they fit.
COMM_SCALE = {"dispatch": "moe_dispatch", "combine": "moe_combine", "tp_comm": "collective"}
#: A parameter moving the cells by less than this (rms of d log time / d parameter) is not fitted.
MIN_EFFECT = 0.02
#: Smallest singular value of the normalised Jacobian a new parameter may leave (collinearity).
MIN_SINGULAR = 0.15
#: Starting values of fitted seconds whose preset value is ~0 (the finite difference needs a scale).
_SECONDS_FLOOR = {"fixed_s": 1e-6, "per_seq_s": 1e-7}
_STEP = {"eff": -0.1, "s": 0.1}

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class FitParam:
    """One fitted (or held) parameter of a group: a curve field, tied over the group's curves."""

    field: str
    #: The curves it sets, as (family, dtype) keys of the preset.
    curves: tuple[tuple[str, str], ...]
    #: The preset's value per curve.
    base: tuple[float, ...]
    #: The value per curve after the fit (the base where not fitted).
    value: tuple[float, ...]
    fitted: bool
    #: Why a parameter was held (empty when fitted).
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class GroupFit:
    """The fit of one group of kernels."""

    #: attention:mla_decode, gemm, expert_gemm, elementwise, dispatch, ...
    name: str
    cells: int
    rms_before: float
    rms_after: float
    params: tuple[FitParam, ...] = ()
    #: Communication groups: the fitted time multiplier (``[scale]`` family, value).
    scale: tuple[str, float] | None = None


@dataclass(frozen=True, kw_only=True, eq=False)
class ProfileFit:
    """What :func:`fit_profile` found (see the module docstring)."""

    hw: str
    base: HardwareSpec
    deployment: Deployment
    profile_sources: tuple[str, ...]
    trace_path: str
    groups: tuple[GroupFit, ...]
    #: Fitted launch gaps: preset field -> seconds.
    gaps: dict[str, float]
    #: Every preset override of the fit (``kernel.<family>.<dtype>.<field>``, ``scale.<family>``,
    #: ``launch_gap_s``): what the user preset records.
    overrides: dict[str, float]
    unmatched: dict[str, float]
    match: str
    #: The replays on the base preset and on the fitted one, with their replay_profile tables.
    before: Any
    after: Any
    table_before: pl.DataFrame
    table_after: pl.DataFrame
    replays: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def step_errors(self, which: str = "after") -> np.ndarray:
        t = self.table_after if which == "after" else self.table_before
        return t.filter(pl.col("component") == "step")["error"].drop_nulls().to_numpy()


# ---- the curves a deployment uses ------------------------------------------------------------------------


def _curve_key(hw: HardwareSpec, family: str, cls: str) -> tuple[str, str]:
    """The preset key a (family, compute class) is priced with (the fallbacks of kernel_curve)."""
    for key in ((family, cls), (family, "any"), (family, "fp8") if cls == "fp4" else None):
        if key is not None and key in hw.kernels:
            return key
    hw.kernel_curve(family, cls)  # raises the preset's own error
    raise AssertionError("unreachable")


def _fit_groups(
    hw: HardwareSpec, dep: Deployment, arch: Any, phases: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Fit groups of a deployment: name -> {group (profile group), phases, family (fields), curves}."""
    p = dep.precision
    gemm_classes = {compute_class(p.attention), compute_class(p.dense), "bf16"}
    attn_kind = "mla" if arch.attention.kind == "mla" else "gqa"
    out: dict[str, dict[str, Any]] = {
        "gemm": {
            "group": "gemm",
            "phases": tuple(phases),
            "fields": FAMILY_FIELDS["gemm"],
            "curves": tuple(sorted({_curve_key(hw, "gemm", c) for c in gemm_classes})),
        },
        "expert_gemm": {
            "group": "expert_gemm",
            "phases": tuple(phases),
            "fields": FAMILY_FIELDS["grouped_gemm"],
            "curves": (_curve_key(hw, "grouped_gemm", compute_class(p.experts)),),
        },
        "elementwise": {
            "group": "elementwise",
            "phases": tuple(phases),
            "fields": FAMILY_FIELDS["elementwise"],
            "curves": (_curve_key(hw, "elementwise", "any"),),
        },
    }
    for ph in phases:
        fam = f"{attn_kind}_{'decode' if ph == 'decode' else 'prefill'}"
        out[f"attention:{fam}"] = {
            "group": "attention",
            "phases": (ph,),
            "fields": FAMILY_FIELDS["attention"],
            "curves": (_curve_key(hw, fam, compute_class(p.attention_core)),),
        }
    return out


# ---- parameters <-> preset overrides ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Param:
    group: str
    field: str
    curves: tuple[tuple[str, str], ...]
    base: tuple[float, ...]

    @property
    def is_eff(self) -> bool:
        return self.field.endswith("_eff")

    def x0(self) -> float:
        if self.is_eff:
            return 0.0
        return math.log(max(float(np.mean(self.base)), _SECONDS_FLOOR[self.field]))

    def values(self, x: float) -> tuple[float, ...]:
        if self.is_eff:
            return tuple(min(b * math.exp(x), 1.0) for b in self.base)
        return tuple(math.exp(x) for _ in self.base)

    def overrides(self, x: float) -> dict[str, float]:
        return {
            f"kernel.{f}.{d}.{self.field}": v for (f, d), v in zip(self.curves, self.values(x), strict=True)
        }


def _params(hw: HardwareSpec, groups: Mapping[str, Mapping[str, Any]]) -> dict[str, list[_Param]]:
    out: dict[str, list[_Param]] = {}
    for name, g in groups.items():
        out[name] = [
            _Param(
                group=name,
                field=f,
                curves=g["curves"],
                base=tuple(float(getattr(hw.kernels[c], f)) for c in g["curves"]),
            )
            for f in g["fields"]
        ]
    return out


# ---- the fit ---------------------------------------------------------------------------------------------


class _Evaluator:
    """Replays the deployment with trial curves and returns every fit group's log residuals."""

    def __init__(
        self,
        trace: Any,
        dep: Deployment,
        phases: Sequence[str],
        matched: Matched,
        groups: Mapping[str, Mapping[str, Any]],
        progress: Progress | None,
    ) -> None:
        self.trace, self.dep, self.phases = trace, dep, list(phases)
        self.groups = groups
        self.progress = progress
        self.replays = 0
        meas = matched.cells.join(matched.step_map.select("g", "phase"), on="g")
        self.measured = meas.filter(pl.col("measured_s") > 0)
        self.step_map = matched.step_map

    def replay(self, overrides: Mapping[str, float], *, gaps: bool) -> Any:
        from tracekit.replay import replay

        over = {**dict(self.dep.hw_overrides), **overrides}
        if not gaps:
            over.update({"launch_gap_s": 0.0, "launch_gap_eager_s": 0.0})
        self.replays += 1
        if self.progress is not None:
            self.progress(f"replay {self.replays}")
        return replay(self.trace, self.dep.replace(hw_overrides=over), phases=self.phases)

    def cells(self, result: Any) -> pl.DataFrame:
        """Measured beside predicted, per fit group's cells: name, g, layer, rank, measured_s, predicted_s."""
        pred = predicted_cells(result.ranks, self.step_map)
        both = self.measured.join(pred, on=["g", "layer", "rank", "group"])
        parts = []
        for name, g in self.groups.items():
            part = both.filter((pl.col("group") == g["group"]) & pl.col("phase").is_in(list(g["phases"])))
            parts.append(part.with_columns(pl.lit(name).alias("fit_group")))
        return pl.concat(parts).sort("fit_group", "g", "layer", "rank")

    def residuals(self, overrides: Mapping[str, float]) -> dict[str, np.ndarray]:
        cells = self.cells(self.replay(overrides, gaps=False))
        return _residuals(cells, self.groups)


def _residuals(cells: pl.DataFrame, groups: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name in groups:
        part = cells.filter((pl.col("fit_group") == name) & (pl.col("predicted_s") > 0))
        out[name] = np.log(part["predicted_s"].to_numpy() / part["measured_s"].to_numpy())
    return out


def _rms(r: np.ndarray) -> float:
    return float(np.sqrt(np.mean(r**2))) if r.size else float("nan")


def _all_overrides(
    params: Mapping[str, list[_Param]], x: Mapping[str, np.ndarray], chosen: Mapping[str, list[int]]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, plist in params.items():
        for i in chosen[name]:
            out.update(plist[i].overrides(float(x[name][i])))
    return out


def _jacobian(
    ev: _Evaluator,
    params: Mapping[str, list[_Param]],
    x: Mapping[str, np.ndarray],
    chosen: Mapping[str, list[int]],
    r0: Mapping[str, np.ndarray],
    *,
    widen: bool = True,
) -> dict[str, np.ndarray]:
    """d residual / d x for every group's chosen parameters: one replay per parameter slot. With
    ``widen``, a parameter whose cells did not move (every kernel on the other side of a
    roofline's max) is probed again with a step four and sixteen times larger, so that a bound it
    would make active is seen."""
    jac = {name: np.zeros((r0[name].size, len(chosen[name]))) for name in params}
    slots = max((len(c) for c in chosen.values()), default=0)
    for j in range(slots):
        todo = {name for name, idx in chosen.items() if j < len(idx)}
        for factor in (1.0, 4.0, 16.0) if widen else (1.0,):
            if not todo:
                break
            trial = {n: v.copy() for n, v in x.items()}
            steps: dict[str, float] = {}
            for name in todo:
                p = params[name][chosen[name][j]]
                steps[name] = (_STEP["eff"] if p.is_eff else _STEP["s"]) * factor
                trial[name][chosen[name][j]] += steps[name]
            r = ev.residuals(_all_overrides(params, trial, chosen))
            for name, h in steps.items():
                if r[name].size == r0[name].size:
                    jac[name][:, j] = (r[name] - r0[name]) / h
                moved = bool(np.any(np.abs(jac[name][:, j]) > 1e-9))
                if moved or not np.any(np.abs(r0[name]) > 1e-6):
                    todo.discard(name)
    return jac


def _choose(jac: np.ndarray, plist: list[_Param], candidates: list[int]) -> tuple[list[int], dict[int, str]]:
    """The parameters the cells identify (see the module docstring), and why the others are held."""
    chosen: list[int] = []
    why: dict[int, str] = {}
    effects = [
        float(np.sqrt(np.mean(jac[:, c] ** 2))) if jac.shape[0] else 0.0 for c in range(len(candidates))
    ]
    for col in range(len(candidates)):
        i = candidates[col]
        effect = effects[col]
        if effect < MIN_EFFECT:
            why[i] = f"the profile does not exercise it (effect {effect:.3f} < {MIN_EFFECT})"
            continue
        cols = [candidates.index(c) for c in chosen] + [col]
        m = jac[:, cols]
        m = m / np.linalg.norm(m, axis=0)
        smallest = float(np.linalg.svd(m, compute_uv=False)[-1])
        if smallest < MIN_SINGULAR:
            why[i] = f"not distinguishable from {', '.join(plist[c].field for c in chosen)} in this profile"
            continue
        chosen.append(i)
    return chosen, why


def _lm_steps(
    jac: Mapping[str, np.ndarray], r: Mapping[str, np.ndarray], lam: Mapping[str, float]
) -> dict[str, np.ndarray]:
    out = {}
    for name, j in jac.items():
        if j.shape[1] == 0 or r[name].size == 0:
            out[name] = np.zeros(j.shape[1])
            continue
        a = j.T @ j
        g = j.T @ r[name]
        out[name] = np.linalg.solve(a + lam[name] * (np.diag(np.diag(a)) + 1e-9 * np.eye(a.shape[0])), -g)
    return out


def _reset_held(
    params: dict[str, list[_Param]], x: dict[str, np.ndarray], chosen: dict[str, list[int]]
) -> None:
    """Held parameters go back to the preset's value."""
    for n, plist in params.items():
        for i, p in enumerate(plist):
            if i not in chosen[n] and not p.is_eff:
                x[n][i] = math.log(max(float(np.mean(p.base)), 1e-30))


def _levenberg_marquardt(
    ev: _Evaluator,
    params: dict[str, list[_Param]],
    x: dict[str, np.ndarray],
    chosen: dict[str, list[int]],
    r: dict[str, np.ndarray],
    cost: dict[str, float],
    max_iterations: int,
) -> None:
    """Levenberg-Marquardt per group on the chosen parameters; updates ``x``, ``r`` and ``cost``."""
    lam = dict.fromkeys(params, 1e-2)
    active = {n for n in params if chosen[n]}
    for _ in range(max_iterations):
        if not active:
            break
        sub = {n: chosen[n] if n in active else [] for n in params}
        jac = _jacobian(ev, params, x, sub, r)
        step = _lm_steps({n: jac[n] for n in active}, r, lam)
        trial = {n: v.copy() for n, v in x.items()}
        for n in active:
            trial[n][chosen[n]] += step[n]
        rt = ev.residuals(_all_overrides(params, trial, chosen))
        start = dict(cost)
        improved = set()
        for n in list(active):
            ct = float(rt[n] @ rt[n])
            if rt[n].size == r[n].size and ct < cost[n]:
                x[n], r[n], cost[n] = trial[n], rt[n], ct
                lam[n] = max(lam[n] / 3.0, 1e-7)
                improved.add(n)
            else:
                lam[n] *= 4.0
                if lam[n] > 1e6:
                    active.discard(n)
        # a step that helped is tried twice as long while that helps more (the roofline's max makes
        # the cost flat until a bound changes sides: the local step stops short of the kink)
        grow = set(improved)
        for k in range(1, 6):
            if not grow:
                break
            trial = {n: v.copy() for n, v in x.items()}
            for n in grow:
                trial[n][chosen[n]] += step[n] * (2**k - 2 ** (k - 1))
            rt = ev.residuals(_all_overrides(params, trial, chosen))
            for n in list(grow):
                ct = float(rt[n] @ rt[n])
                if rt[n].size == r[n].size and ct < cost[n]:
                    x[n], r[n], cost[n] = trial[n], rt[n], ct
                else:
                    grow.discard(n)
        for n in improved:
            small = start[n] - cost[n] < 1e-6 * max(start[n], 1e-12) or float(np.max(np.abs(step[n]))) < 1e-4
            if small or cost[n] < 1e-12:
                active.discard(n)


def _gap_values(matched: Matched, deployment: Deployment) -> dict[str, float]:
    """The launch gaps the profile shows, per phase: CUDA-graph phases set launch_gap_s, eager ones
    launch_gap_eager_s."""
    gaps: dict[str, list[float]] = {}
    for ph, g in matched.median_gap_s.items():
        graphs = deployment.cuda_graphs if deployment.cuda_graphs is not None else ph == "decode"
        gaps.setdefault("launch_gap_s" if graphs else "launch_gap_eager_s", []).append(g)
    gap_values = {k: float(np.median(v)) for k, v in gaps.items()}
    return gap_values


def _group_fits(
    params: dict[str, list[_Param]],
    x: dict[str, np.ndarray],
    chosen: dict[str, list[int]],
    held: dict[str, dict[int, str]],
    r_base: dict[str, np.ndarray],
    r: dict[str, np.ndarray],
) -> list[GroupFit]:
    """What each compute group's fit found, parameter by parameter."""
    compute_groups = []
    for n, plist in params.items():
        fps = []
        for i, p in enumerate(plist):
            fitted = i in chosen[n]
            fps.append(
                FitParam(
                    field=p.field,
                    curves=p.curves,
                    base=p.base,
                    value=p.values(float(x[n][i])) if fitted else p.base,
                    fitted=fitted,
                    note="" if fitted else held[n].get(i, ""),
                )
            )
        compute_groups.append(
            GroupFit(
                name=n,
                cells=int(r_base[n].size),
                rms_before=_rms(r_base[n]),
                rms_after=_rms(r[n]),
                params=tuple(fps),
            )
        )
    return compute_groups


def fit_profile(
    trace: Any,
    deployment: Deployment,
    profile: Profile,
    *,
    phases: Sequence[str] | None = None,
    match: str = "auto",
    max_iterations: int = 8,
    fit_gaps: bool = True,
    progress: Progress | None = None,
) -> ProfileFit:
    """Fit the curves, launch gaps and communication multipliers of ``deployment``'s preset to
    ``profile`` (see the module docstring). ``fit_gaps=False`` keeps the preset's launch gaps (a
    profile whose idle time between a layer's kernels is not launch overhead: other work
    interleaved, as a training profile's backward chunks)."""
    from tracekit.replay import replay
    from tracekit.trace import open_trace

    tr = open_trace(trace) if not hasattr(trace, "scan") else trace
    hw = get_hardware(deployment.hw, deployment.hw_overrides or None)
    base_res = replay(tr, deployment, phases=phases)
    phase_list = list(dict.fromkeys(base_res.steps["phase"].to_list()))
    num_ranks = int(base_res.run["num_gpus"][0])
    matched = match_profile(profile, base_res.steps, num_ranks=num_ranks, match=match)
    groups = _fit_groups(hw, deployment, base_res.target, phase_list)
    ev = _Evaluator(tr, deployment, phase_list, matched, groups, progress)
    ev.replays = 1
    present = set(matched.cells["group"].unique().to_list())
    groups = {n: g for n, g in groups.items() if g["group"] in present}
    ev.groups = groups
    params = _params(hw, groups)
    # the preset as it is (without gaps): the "before" residuals
    r_base = ev.residuals({})
    empty = [n for n, r in r_base.items() if r.size == 0]
    for n in empty:
        groups.pop(n)
        params.pop(n)
        r_base.pop(n)
    x = {n: np.array([p.x0() for p in plist]) for n, plist in params.items()}
    every = {n: list(range(len(plist))) for n, plist in params.items()}
    r0 = ev.residuals(_all_overrides(params, x, every))
    jac = _jacobian(ev, params, x, every, r0, widen=False)
    chosen: dict[str, list[int]] = {}
    held: dict[str, dict[int, str]] = {}
    for n in params:
        chosen[n], held[n] = _choose(jac[n], params[n], every[n])
    _reset_held(params, x, chosen)
    r = ev.residuals(_all_overrides(params, x, chosen))
    cost = {n: float(v @ v) for n, v in r.items()}
    _levenberg_marquardt(ev, params, x, chosen, r, cost, max_iterations)
    fitted_over = _all_overrides(params, x, chosen)
    # communication: one multiplier each, against the fitted compute replay
    fitted_free = ev.replay(fitted_over, gaps=False)
    comm_groups, scales = _fit_comm(ev, hw, matched, fitted_over, fitted_free)
    gap_values = _gap_values(matched, deployment) if fit_gaps else {}
    overrides = {**fitted_over, **scales, **gap_values}
    after = ev.replay(overrides, gaps=True)
    after_free = fitted_free if not scales else ev.replay({**fitted_over, **scales}, gaps=False)
    before_free = ev.replay({}, gaps=False)
    table_before = profile_table(base_res, profile, gap_free=before_free, match=matched.match)
    table_after = profile_table(after, profile, gap_free=after_free, match=matched.match)
    compute_groups = _group_fits(params, x, chosen, held, r_base, r)
    return ProfileFit(
        hw=deployment.hw,
        base=hw,
        deployment=deployment,
        profile_sources=profile.sources,
        trace_path=str(tr.path),
        groups=tuple(compute_groups + comm_groups),
        gaps=gap_values,
        overrides=overrides,
        unmatched=matched.unmatched,
        match=matched.match,
        before=base_res,
        after=after,
        table_before=table_before,
        table_after=table_after,
        replays=ev.replays,
    )


def _fit_comm(
    ev: _Evaluator, hw: HardwareSpec, matched: Matched, over: Mapping[str, float], base: Any
) -> tuple[list[GroupFit], dict[str, float]]:
    """One time multiplier per communication group. The multiplier scales a collective's transfer,
    not the fixed time its kernels take (``launch_s``): a second replay with the multipliers doubled
    splits the two, and the multiplier is the geometric mean of (measured - launch) / transfer."""
    cells = matched.cells.filter(pl.col("group").is_in(list(COMM_SCALE)) & (pl.col("measured_s") > 0))
    present = [g for g in COMM_SCALE if g in set(cells["group"].to_list())]
    if not present:
        return [], {}
    doubled = ev.replay(
        {**over, **{f"scale.{COMM_SCALE[g]}": 2.0 * hw.time_scale(COMM_SCALE[g]) for g in present}},
        gaps=False,
    )
    one = predicted_cells(base.ranks, matched.step_map).rename({"predicted_s": "p1"})
    two = predicted_cells(doubled.ranks, matched.step_map).rename({"predicted_s": "p2"})
    both = cells.join(one, on=["g", "layer", "rank", "group"]).join(two, on=["g", "layer", "rank", "group"])
    groups: list[GroupFit] = []
    scales: dict[str, float] = {}
    for group in present:
        part = both.filter((pl.col("group") == group) & (pl.col("p1") > 0))
        meas, p1, p2 = (part[c].to_numpy() for c in ("measured_s", "p1", "p2"))
        transfer = p2 - p1
        launch = p1 - transfer
        ok = (transfer > 0) & (meas > launch)
        if not ok.any():
            continue
        rel = float(np.exp(np.mean(np.log((meas[ok] - launch[ok]) / transfer[ok]))))
        fam = COMM_SCALE[group]
        value = hw.time_scale(fam) * rel
        scales[f"scale.{fam}"] = value
        before = np.log(p1 / meas)
        after = np.log((launch + rel * transfer) / meas)
        groups.append(
            GroupFit(
                name=group,
                cells=int(p1.size),
                rms_before=_rms(before),
                rms_after=_rms(after),
                scale=(fam, value),
            )
        )
    return groups, scales


# ---- reporting and the user preset ---------------------------------------------------------------------


def fit_rows(fit: ProfileFit) -> tuple[list[str], list[list[Any]]]:
    """One row per parameter: group, parameter, curves, preset value, fitted value, status."""
    cols = [
        "group",
        "parameter",
        "curves",
        "preset",
        "fitted",
        "cells",
        "rms log before",
        "rms log after",
        "status",
    ]
    rows: list[list[Any]] = []
    for g in fit.groups:
        if g.scale is not None:
            fam, v = g.scale
            rows.append(
                [g.name, f"scale.{fam}", "-", f"{fit.base.time_scale(fam):.4g}", f"{v:.4g}", g.cells,
                 round(g.rms_before, 4), round(g.rms_after, 4), "fitted"]
            )  # fmt: skip
            continue
        for p in g.params:
            curves = ", ".join(f"{f}.{d}" for f, d in p.curves)
            rows.append(
                [g.name, p.field, curves, ", ".join(f"{v:.4g}" for v in p.base), ", ".join(f"{v:.4g}" for v in p.value),
                 g.cells, round(g.rms_before, 4), round(g.rms_after, 4), "fitted" if p.fitted else f"held: {p.note}"]
            )  # fmt: skip
    for name, v in fit.gaps.items():
        rows.append(
            ["launch gaps", name, "-", f"{getattr(fit.base, name):.4g}", f"{v:.4g}", "-", "-", "-",
             "median idle between kernels"]
        )  # fmt: skip
    return cols, rows


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def profile_preset_text(fit: ProfileFit, name: str) -> str:
    """A user preset: ``base`` the deployment's preset, the fitted values with their sources and
    residuals, and a ``[calibration.profile]`` table saying where they came from."""
    base = fit.hw
    p = Path(base)
    if base.endswith(".toml") or p.is_file():
        base = str(p.resolve())
    src = ", ".join(fit.profile_sources)
    lines = [
        f"# Written by tracekit calibrate --from-profile from {src}",
        f"# (trace {fit.trace_path}); use it with --hw <this file>.",
        f"base = {_q(base)}",
        f"name = {_q(name)}",
        f"description = {_q(f'{fit.base.name} calibrated to the profile {src}')}",
        "",
    ]
    if fit.gaps:
        lines.append("[spec]")
        for k, v in fit.gaps.items():
            lines.append(
                f"{k} = {{ value = {_fmt(v)}, source = {_q(f'median idle between consecutive compute kernels of a layer in {src}')} }}"
            )
        lines.append("")
    by_curve: dict[tuple[str, str], list[tuple[str, float, str]]] = {}
    for g in fit.groups:
        for prm in g.params:
            if not prm.fitted:
                continue
            why = (
                f"fitted by tracekit calibrate --from-profile to {g.cells} profiled cells (step x layer x rank) of "
                f"{src}: rms log residual {g.rms_before:.3f} before, {g.rms_after:.3f} after"
            )
            for c, v in zip(prm.curves, prm.value, strict=True):
                by_curve.setdefault(c, []).append((prm.field, v, why))
    for (fam, dt), entries in sorted(by_curve.items()):
        lines.append(f"[kernel.{fam}.{dt}]")
        for fname, v, why in entries:
            lines.append(f"{fname} = {{ value = {_fmt(v)}, source = {_q(why)} }}")
        lines.append("")
    scales = [g for g in fit.groups if g.scale is not None]
    if scales:
        lines.append("[scale]")
        for g in scales:
            assert g.scale is not None
            fam, v = g.scale
            why = (
                f"fitted by tracekit calibrate --from-profile: geometric mean of measured / predicted {g.name} over "
                f"{g.cells} cells of {src} (rms log residual {g.rms_before:.3f} before, {g.rms_after:.3f} after)"
            )
            lines.append(f"{fam} = {{ value = {_fmt(v)}, source = {_q(why)} }}")
        lines.append("")
    errs_b, errs_a = fit.step_errors("before"), fit.step_errors("after")
    lines += [
        "[calibration.profile]",
        f"profile = [{', '.join(_q(s) for s in fit.profile_sources)}]",
        f"trace = {_q(fit.trace_path)}",
        f"step_match = {_q(fit.match)}",
        f"deployment = {_q(_deployment_label(fit.deployment))}",
        f"step_error_median_before = {_fmt(float(np.median(np.abs(errs_b))) if errs_b.size else 0.0)}",
        f"step_error_median_after = {_fmt(float(np.median(np.abs(errs_a))) if errs_a.size else 0.0)}",
        f"step_error_worst_after = {_fmt(float(np.max(np.abs(errs_a))) if errs_a.size else 0.0)}",
        f"held = [{', '.join(_q(f'{g.name} {q.field}: {q.note}') for g in fit.groups for q in g.params if not q.fitted)}]",
        "",
        "[calibration.profile.unmatched_s]",
        *[f"{_q(k)} = {_fmt(v)}" for k, v in sorted(fit.unmatched.items())],
        "",
    ]
    return "\n".join(lines)


def _deployment_label(dep: Deployment) -> str:
    parts = [f"hw={dep.hw}", f"ep={dep.ep}", f"tp={dep.tp}", f"precision={dep.precision.label()}"]
    for k in ("impl", "batch_per_gpu", "prefill_tokens_per_gpu", "kv_len", "model"):
        v = getattr(dep, k)
        if v is not None:
            parts.append(f"{k}={v}")
    if dep.tbo:
        parts.append("tbo")
    return " ".join(parts)


def write_profile_preset(
    fit: ProfileFit, out_dir: Path, *, name: str | None = None, force: bool = False
) -> Path:
    """Write the fitted user preset into ``out_dir`` as ``<name>.toml`` (default
    ``<preset>-profile``); an existing file is replaced only with ``force``."""
    name = name or f"{fit.base.name}-profile"
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: not a directory; give a directory for the preset file")
    path = out_dir / f"{name}.toml"
    if path.exists() and not force:
        raise UsageError(f"--out {out_dir}: {path.name} already exists; pass --force to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(profile_preset_text(fit, name), encoding="utf-8")
    tmp.replace(path)
    return path
