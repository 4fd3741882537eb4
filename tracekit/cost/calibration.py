"""Calibration of the communication model against published measurements.

The measurements (``data/comm_measurements.toml`` next to this module) each carry the conditions
they were taken under; every row is predicted under the same conditions and compared in the
metric it was published in (a time, or a bandwidth computed with the source's own byte count).
``calibrate(fit=True)`` fits each implementation's efficiency and latency parameters by least
squares on ``log(predicted / measured)`` (Levenberg-Marquardt with a numerical Jacobian, numpy
only); ``write_user_presets`` writes user presets (``base = "<preset>"``) with the fitted values and
every row's residual; ``update_shipped_presets`` rewrites the built-in presets of a source checkout.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from tracekit.cost.comm import combine, dispatch
from tracekit.cost.traffic import (
    EPTraffic,
    balanced_traffic,
    contiguous_expert_to_rank,
    ep_traffic,
    expected_uniform_traffic,
    random_routing,
)
from tracekit.errors import UsageError
from tracekit.hardware import CALIBRATION_MARKER, CommParams, HardwareSpec, get_hardware
from tracekit.hardware.spec import COMM_FIELDS, reload_presets

MEASUREMENTS = Path(__file__).resolve().parent / "data" / "comm_measurements.toml"

#: Tolerances the calibration must meet (checked by the tests and reported by the CLI).
MAX_ABS_ERROR = 0.25
MEDIAN_ABS_ERROR = 0.10

#: Tokens sampled per rank for routings that are sampled (then scaled to the real count).
SAMPLE_TOKENS = 512


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One published figure and the conditions it was measured under."""

    id: str
    hardware: str
    impl: str
    op: str  # dispatch or combine
    ranks: int
    tokens_per_rank: int
    num_experts: int
    top_k: int
    routing: str  # uniform, grouped or balanced
    bytes_per_token: float
    metric: str  # time or bandwidth
    measured: float  # seconds or bytes/s
    bytes_counted: str = ""  # bandwidth rows: recv-rank or sent-node
    source: str = ""
    note: str = ""

    @property
    def unit(self) -> str:
        return "s" if self.metric == "time" else "B/s"


@dataclass(frozen=True, kw_only=True)
class FitSpec:
    """Which parameters of one (hardware, implementation) are fitted, from where, and where they go."""

    hardware: str
    impl: str
    params: tuple[str, ...]
    start: Mapping[str, float]
    fixed: Mapping[str, float]
    fixed_note: str
    transfer_to: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class CalibrationRow:
    """A measurement, the model's prediction under the same conditions, and the relative error."""

    measurement: Measurement
    predicted: float  # in the measurement's unit
    error: float  # predicted / measured - 1
    time_s: float  # predicted time (mean over ranks)
    bound: str
    link: str
    fitted: bool  # whether the row was used by a fit


@dataclass(frozen=True, kw_only=True)
class FitResult:
    hardware: str
    impl: str
    params: CommParams
    rows: int
    rms_log_residual: float
    spec: FitSpec


@dataclass(frozen=True, kw_only=True)
class CalibrationReport:
    rows: tuple[CalibrationRow, ...]
    fits: tuple[FitResult, ...]

    @property
    def median_abs_error(self) -> float:
        return float(np.median([abs(r.error) for r in self.rows]))

    @property
    def max_abs_error(self) -> float:
        return float(max(abs(r.error) for r in self.rows))

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= MAX_ABS_ERROR and self.median_abs_error <= MEDIAN_ABS_ERROR


# ---- data ---------------------------------------------------------------------------------------------


@cache
def _raw() -> dict[str, Any]:
    return tomllib.loads(MEASUREMENTS.read_text(encoding="utf-8"))


def load_measurements() -> list[Measurement]:
    """Every published measurement, in file order."""
    names = {f.name for f in dataclasses.fields(Measurement)}
    out = []
    for row in _raw()["row"]:
        out.append(Measurement(**{k: v for k, v in row.items() if k in names}))
    return out


def load_fit_specs() -> list[FitSpec]:
    return [
        FitSpec(
            hardware=f["hardware"],
            impl=f["impl"],
            params=tuple(f["params"]),
            start=dict(f["start"]),
            fixed=dict(f["fixed"]),
            fixed_note=str(f.get("fixed_note", "")),
            transfer_to=tuple(f.get("transfer_to", ())),
        )
        for f in _raw()["fit"]
    ]


# ---- the model under each row's conditions --------------------------------------------------------------


@cache
def _traffic(routing: str, ranks: int, tokens: int, experts: int, top_k: int, domain_size: int) -> EPTraffic:
    if routing == "uniform":
        return expected_uniform_traffic(
            num_ranks=ranks, tokens_per_rank=tokens, num_experts=experts, top_k=top_k, domain_size=domain_size
        )
    if routing == "balanced":
        return balanced_traffic(num_ranks=ranks, tokens_per_rank=tokens, top_k=top_k, domain_size=domain_size)
    if routing == "grouped":
        nodes = max(1, ranks // domain_size)
        sample = min(tokens, SAMPLE_TOKENS)
        rng = np.random.default_rng(1234 + ranks)
        ids = random_routing(
            ranks * sample, experts, top_k, num_groups=nodes, topk_groups=min(nodes, 4), rng=rng
        )
        dst = contiguous_expert_to_rank(experts, ranks)[ids]
        src = np.repeat(np.arange(ranks), sample)
        return ep_traffic(dst_rank=dst, src_rank=src, num_ranks=ranks, domain_size=domain_size).scaled(
            tokens / sample
        )
    raise UsageError(f"calibration row routing {routing!r} is not one of uniform, grouped, balanced")


def predict(m: Measurement, hw: HardwareSpec) -> tuple[float, float, str, str]:
    """(predicted value in the row's unit, mean time over ranks, bound, link) for measurement ``m``."""
    traffic = _traffic(m.routing, m.ranks, m.tokens_per_rank, m.num_experts, m.top_k, hw.scaleup_size)
    fn = dispatch if m.op == "dispatch" else combine
    cost = fn(hw, traffic, impl=m.impl, bytes_per_token=m.bytes_per_token)
    t = float(np.mean(cost.time_s))
    slow = int(np.argmax(cost.time_s))
    bound, link = str(cost.bound[slow]), str(cost.link[slow])
    if m.metric == "time":
        return t, t, bound, link
    if m.bytes_counted == "recv-rank":
        counted = float(np.mean(traffic.rank_tokens.sum(axis=0))) * m.bytes_per_token
    elif m.bytes_counted == "sent-node":
        counted = float(np.mean(traffic.domain_tokens.sum(axis=1))) * m.bytes_per_token
    else:
        raise UsageError(f"calibration row {m.id!r}: bytes_counted must be recv-rank or sent-node")
    return counted / t, t, bound, link


def _with_params(hw: HardwareSpec, params: Mapping[str, CommParams]) -> HardwareSpec:
    return dataclasses.replace(hw, comm={**hw.comm, **params})


# ---- fitting ------------------------------------------------------------------------------------------


def _to_x(name: str, v: float) -> float:
    if name.startswith("eff_") and name != "eff_log2_penalty":
        v = min(max(v, 1e-6), 1 - 1e-6)
        return math.log(v / (1 - v))
    return math.log(max(v, 1e-12))


def _from_x(name: str, x: float) -> float:
    if name.startswith("eff_") and name != "eff_log2_penalty":
        return 1.0 / (1.0 + math.exp(-x))
    return math.exp(x)


def levenberg_marquardt(
    fn: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, iterations: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of ``fn(x)`` (residuals) from ``x0``: (x, residuals at x). A numerical Jacobian,
    numpy only."""
    x = x0.astype(np.float64)
    r = fn(x)
    cost = float(r @ r)
    lam = 1e-2
    for _ in range(iterations):
        h = 1e-6
        jac = np.stack([(fn(x + h * e) - r) / h for e in np.eye(len(x))], axis=1)
        a = jac.T @ jac
        g = jac.T @ r
        step = np.linalg.solve(a + lam * (np.diag(np.diag(a)) + 1e-9 * np.eye(len(x))), -g)
        xn = x + step
        rn = fn(xn)
        cn = float(rn @ rn)
        if cn < cost:
            done = cost - cn < 1e-12 * max(cost, 1e-30)
            x, r, cost = xn, rn, cn
            lam = max(lam / 3.0, 1e-9)
            if done:
                break
        else:
            lam *= 4.0
            if lam > 1e9:
                break
    return x, r


def _fit(spec: FitSpec, rows: list[Measurement]) -> FitResult:
    hw = get_hardware(spec.hardware)
    names = list(spec.params)

    def params_of(x: np.ndarray) -> CommParams:
        values = {**spec.fixed, **{n: _from_x(n, float(v)) for n, v in zip(names, x, strict=True)}}
        return CommParams(impl=spec.impl, **values)

    def residuals(x: np.ndarray) -> np.ndarray:
        trial = _with_params(hw, {spec.impl: params_of(x)})
        return np.array([math.log(predict(m, trial)[0] / m.measured) for m in rows])

    x0 = np.array([_to_x(n, float(spec.start[n])) for n in names])
    x, r = levenberg_marquardt(residuals, x0)
    rms = float(np.sqrt(np.mean(r**2)))
    return FitResult(
        hardware=spec.hardware,
        impl=spec.impl,
        params=dataclasses.replace(params_of(x), rms_log_residual=rms),
        rows=len(rows),
        rms_log_residual=rms,
        spec=spec,
    )


def calibrate(*, fit: bool = True) -> CalibrationReport:
    """Predict every measurement; with ``fit``, first fit the parameters (else use the presets as stored)."""
    measurements = load_measurements()
    specs = load_fit_specs()
    fits: list[FitResult] = []
    overlay: dict[str, dict[str, CommParams]] = {}
    used: set[str] = set()
    if fit:
        for spec in specs:
            rows = [m for m in measurements if m.hardware == spec.hardware and m.impl == spec.impl]
            if not rows:
                continue
            result = _fit(spec, rows)
            fits.append(result)
            used.update(m.id for m in rows)
            for target in (spec.hardware, *spec.transfer_to):
                overlay.setdefault(target, {})[spec.impl] = result.params
    out = []
    for m in measurements:
        hw = get_hardware(m.hardware)
        if m.hardware in overlay:
            hw = _with_params(hw, overlay[m.hardware])
        value, t, bound, link = predict(m, hw)
        out.append(
            CalibrationRow(
                measurement=m,
                predicted=value,
                error=value / m.measured - 1.0,
                time_s=t,
                bound=bound,
                link=link,
                fitted=m.id in used if fit else _fitted_in_file(m),
            )
        )
    return CalibrationReport(rows=tuple(out), fits=tuple(fits))


def _fitted_in_file(m: Measurement) -> bool:
    return any(s.hardware == m.hardware and s.impl == m.impl for s in load_fit_specs())


# ---- writing the presets ------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return f"{v:.6g}" if v != 0 else "0.0"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', "'") + '"'


def preset_sections(report: CalibrationReport, preset: str) -> str:
    """The text written below the calibration marker of ``preset``'s file."""
    lines: list[str] = []
    for f in report.fits:
        if preset != f.hardware and preset not in f.spec.transfer_to:
            continue
        lines.append(f"[comm.{f.impl}]")
        for name in COMM_FIELDS:
            value = getattr(f.params, name)
            if name == "rms_log_residual":
                src = (
                    f"rms log residual of the tracekit calibrate fit to {f.rows} published measurements "
                    f"on {f.hardware}" + ("" if preset == f.hardware else " (transferred with the fit)")
                )
                lines.append(f"{name} = {{ value = {_fmt(value)}, source = {_q(src)} }}")
            elif preset == f.hardware:
                if name in f.spec.params:
                    src = (
                        f"fitted by tracekit calibrate to {f.rows} published measurements on {f.hardware} "
                        f"(rms log residual {f.rms_log_residual:.3f}; table in docs/calibration.md)"
                    )
                    lines.append(f"{name} = {{ value = {_fmt(value)}, source = {_q(src)} }}")
                else:
                    lines.append(
                        f"{name} = {{ value = {_fmt(value)}, source = {_q('tracekit calibrate, held fixed')}, "
                        f"note = {_q(f.spec.fixed_note)} }}"
                    )
            else:
                lines.append(
                    f"{name} = {{ value = {_fmt(value)}, source = {_q(f'transferred from the {f.hardware} fit of tracekit calibrate')}, "
                    f"note = {_q('same fractions of link bandwidth and same latencies assumed on this system')} }}"
                )
        lines.append("")
    rows = [r for r in report.rows if r.measurement.hardware == preset]
    if rows:
        errs = [abs(r.error) for r in rows]
        lines += [
            "[calibration]",
            'command = "tracekit calibrate --kernels"',
            f"rows = {len(rows)}",
            f"median_abs_error = {_fmt(float(np.median(errs)))}",
            f"max_abs_error = {_fmt(max(errs))}",
            "",
        ]
        for r in rows:
            m = r.measurement
            lines += [
                "[[calibration.residuals]]",
                f"id = {_q(m.id)}",
                f"impl = {_q(m.impl)}",
                f"unit = {_q(m.unit)}",
                f"measured = {_fmt(m.measured)}",
                f"predicted = {_fmt(r.predicted)}",
                f"error = {_fmt(round(r.error, 4))}",
                "",
            ]
    return "\n".join(lines)


def _touched(report: CalibrationReport, kernel_sections: Mapping[str, str]) -> list[str]:
    """Every preset a calibration writes: those its fits and rows concern, and those with curves."""
    targets: set[str] = set(kernel_sections)
    for f in report.fits:
        targets.update((f.hardware, *f.spec.transfer_to))
    targets.update(r.measurement.hardware for r in report.rows)
    return sorted(targets)


def user_presets(
    report: CalibrationReport, kernel_sections: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Per built-in preset the calibration concerns, the text of a user preset that inherits it
    (``base = "<preset>"``) and overrides it with the fitted values: file name -> text."""
    kernel_sections = kernel_sections or {}
    out: dict[str, str] = {}
    for name in _touched(report, kernel_sections):
        body = preset_sections(report, name) + kernel_sections.get(name, "")
        out[f"{name}-calibrated.toml"] = (
            f"# Written by `tracekit calibrate --write`: the built-in preset {name} with the values\n"
            "# fitted to the published measurements (each with its source and residual).\n"
            "# Use it with --hw PATH-TO-THIS-FILE.\n"
            f"base = {_q(name)}\n"
            f"name = {_q(name + '-calibrated')}\n\n" + body
        )
    return out


def write_user_presets(
    report: CalibrationReport,
    kernel_sections: Mapping[str, str] | None,
    out_dir: Path,
    *,
    force: bool = False,
) -> list[Path]:
    """Write :func:`user_presets` into ``out_dir`` (created if missing); an existing file is
    replaced only with ``force``. Each file is written whole or not at all."""
    texts = user_presets(report, kernel_sections)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: not a directory; give a directory for the preset files")
    existing = [n for n in texts if (out_dir / n).exists()]
    if existing and not force:
        raise UsageError(
            f"--out {out_dir}: {', '.join(existing)} already exist; pass --force to replace them, "
            "or give another directory"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in texts.items():
        path = out_dir / name
        tmp = path.with_name("." + name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


def update_shipped_presets(
    report: CalibrationReport, kernel_sections: Mapping[str, str] | None, data_dir: Path
) -> list[Path]:
    """Rewrite the fitted part (below the marker) of the presets in ``data_dir`` (a source
    checkout's ``tracekit/data/hardware``; ``scripts/update_presets.py`` calls this, the CLI never
    does): the communication fits of ``report`` and, per preset, its ``kernel_sections`` text (the
    compute curves of :mod:`tracekit.cost.kernel_fit`); returns the files."""
    kernel_sections = kernel_sections or {}
    written = []
    for name in _touched(report, kernel_sections):
        path = Path(data_dir) / f"{name}.toml"
        text = path.read_text(encoding="utf-8")
        head, sep, _ = text.partition(CALIBRATION_MARKER)
        if not sep:
            raise UsageError(
                f"preset {path.name} has no calibration marker line; add {CALIBRATION_MARKER!r} at its end"
            )
        body = preset_sections(report, name) + kernel_sections.get(name, "")
        path.write_text(head + CALIBRATION_MARKER + "\n\n" + body, encoding="utf-8")
        written.append(path)
    reload_presets()
    return written


def report_rows(report: CalibrationReport) -> tuple[list[str], list[list[Any]]]:
    """The report as table columns and rows (values in readable units: us or GB/s)."""
    cols = ["row", "hardware", "impl", "unit", "measured", "predicted", "error_%", "bound", "link", "fitted"]
    out: list[list[Any]] = []
    for r in report.rows:
        m = r.measurement
        scale, unit = (1e6, "us") if m.metric == "time" else (1e-9, "GB/s")
        out.append(
            [
                m.id,
                m.hardware,
                m.impl,
                unit,
                round(m.measured * scale, 1),
                round(r.predicted * scale, 1),
                round(100 * r.error, 1),
                r.bound,
                r.link,
                "yes" if r.fitted else "no",
            ]
        )
    return cols, out
