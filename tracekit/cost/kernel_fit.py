"""Calibration of the compute-kernel curves against published kernel tables.

Every published kernel figure (``data/kernel_measurements.toml``: DeepGEMM's GEMM and grouped-GEMM
tables) and, when the ``aiconfigurator`` extra is installed, a fixed selection of the measured
kernel databases that AIConfigurator ships (the ``[[database]]`` sections of the same file: MLA and
GQA attention, BF16/FP8/FP4 GEMMs on H100, H200, B200 and GB200) is predicted with the curves of
:mod:`tracekit.cost.kernels` under the same shape. Per (hardware preset, family, compute class) the
curve's parameters are fitted by least squares on ``log(predicted / measured)`` (the
Levenberg-Marquardt solver of :mod:`tracekit.cost.calibration`); a leave-one-out pass refits
without each row in turn and predicts it, which is the error a shape the fit never saw would get.
``tracekit calibrate --write`` records the fitted curves, their residuals and their sources in the
presets; presets without data of their own take a transferred curve marked as an assumption.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from tracekit.cost.calibration import levenberg_marquardt
from tracekit.cost.kernels import attention_time, gemm_time, grouped_gemm_time
from tracekit.errors import MissingDependencyError, UsageError
from tracekit.hardware import HardwareSpec, get_hardware
from tracekit.hardware.curves import KernelCurve
from tracekit.precision import compute_class

KERNEL_DATA = Path(__file__).resolve().parent / "data" / "kernel_measurements.toml"

#: Parameters fitted per family (the rest of a curve's fields stay 0).
FIT_PARAMS: dict[str, tuple[str, ...]] = {
    "gemm": ("compute_eff", "memory_eff", "fixed_s", "half_tiles", "half_k"),
    "grouped_gemm": ("compute_eff", "memory_eff", "fixed_s", "half_tiles", "half_k"),
    "mla_decode": ("compute_eff", "memory_eff", "fixed_s", "per_seq_s"),
    "mla_prefill": ("compute_eff", "memory_eff", "fixed_s", "per_seq_s"),
    "gqa_decode": ("compute_eff", "memory_eff", "fixed_s", "per_seq_s"),
    "gqa_prefill": ("compute_eff", "memory_eff", "fixed_s", "per_seq_s"),
}
#: Starting points of the fit (the solver also tries a second, faster-kernel start).
_START = {
    "compute_eff": 0.6,
    "memory_eff": 0.7,
    "fixed_s": 3e-6,
    "half_tiles": 8.0,
    "half_k": 256.0,
    "per_seq_s": 1e-7,
}
_START_2 = {
    "compute_eff": 0.85,
    "memory_eff": 0.85,
    "fixed_s": 1e-6,
    "half_tiles": 2.0,
    "half_k": 1024.0,
    "per_seq_s": 1e-8,
}

#: MLA dimensions of the DeepSeek-V3 family the attention databases measure.
MLA_KV_LORA, MLA_ROPE, MLA_NOPE, MLA_V = 512, 64, 128, 128


@dataclass(frozen=True, kw_only=True)
class KernelRow:
    """One measured kernel: family, shape and time, on a hardware preset."""

    id: str
    family: str
    hardware: str
    #: Precision of the inputs (a name of :mod:`tracekit.precision`).
    precision: str
    #: Shape: m, n, k (GEMMs; ``groups`` and ``layout`` for grouped GEMMs), or heads, kv_heads,
    #: head_dim, batch, kv_len / seq_len (attention).
    shape: dict[str, Any]
    measured_s: float
    source: str

    @property
    def dtype(self) -> str:
        return compute_class(self.precision)


# ---- data ---------------------------------------------------------------------------------------------


@cache
def _raw() -> dict[str, Any]:
    return tomllib.loads(KERNEL_DATA.read_text(encoding="utf-8"))


def published_rows() -> list[KernelRow]:
    """The published kernel tables (``[[row]]`` of the data file)."""
    out = []
    for r in _raw()["row"]:
        shape = {k: r[k] for k in ("m", "n", "k", "groups", "layout") if k in r}
        flops = 2.0 * r["m"] * r.get("groups", 1) * r["n"] * r["k"]
        out.append(
            KernelRow(
                id=r["id"],
                family=r["family"],
                hardware=r["hardware"],
                precision=r["precision"],
                shape=shape,
                measured_s=flops / (float(r["tflops"]) * 1e12),
                source=r["source"],
            )
        )
    return out


def database_rows(*, required: bool = False) -> list[KernelRow]:
    """The ``[[database]]`` selections, read from AIConfigurator's installed measured tables (none
    without the ``aiconfigurator`` extra, unless ``required``)."""
    from tracekit.cost.measured import MeasuredTable

    out: list[KernelRow] = []
    tables: dict[tuple[str, str], Any] = {}
    for sel in _raw().get("database", []):
        key = (sel["system"], sel["framework"])
        if key not in tables:
            try:
                tables[key] = MeasuredTable.from_aiconfigurator(system=key[0], framework=key[1])
            except MissingDependencyError:
                if required:
                    raise
                return []
        out.extend(_select(tables[key], sel))
    return out


def _select(table: Any, sel: dict[str, Any]) -> list[KernelRow]:
    import polars as pl

    frame = table.frame.filter((pl.col("family") == sel["family"]) & (pl.col("dtype") == sel["dtype"]))
    for col, values in sel["grid"].items():
        frame = frame.filter(pl.col(col).is_in(list(values)))
    keys = list(sel["grid"])
    # one row per grid point: the median over repeated measurements of the same shape
    frame = frame.group_by(keys).agg(pl.col("time_s").median()).sort(keys)
    out = []
    for row in frame.iter_rows(named=True):
        shape = {k: row[k] for k in keys}
        label = "-".join(f"{k}{shape[k]}" for k in keys)
        out.append(
            KernelRow(
                id=f"{sel['system']}-{sel['framework']}-{sel['family']}-{sel['dtype']}-{label}",
                family=sel["family"],
                hardware=sel["hardware"],
                precision=sel["precision"],
                shape=shape,
                measured_s=float(row["time_s"]),
                source=f"AIConfigurator measured database ({sel['system']}, {sel['framework']}, "
                f"{sel['family']} {sel['dtype']})",
            )
        )
    return out


# ---- the model under each row's shape -------------------------------------------------------------------


def _column(rows: list[KernelRow], key: str, default: float = 0.0) -> np.ndarray:
    return np.array([float(r.shape.get(key, default)) for r in rows])


def predict_rows(rows: list[KernelRow], hw: Any) -> np.ndarray:
    """Predicted seconds of ``rows`` (one family and precision) on ``hw``."""
    family, precision = rows[0].family, rows[0].precision
    if family == "gemm":
        return gemm_time(
            hw, m=_column(rows, "m"), n=_column(rows, "n"), k=_column(rows, "k"), precision=precision
        ).time_s
    if family == "grouped_gemm":
        out = np.zeros(len(rows))
        layouts = np.array([str(r.shape.get("layout", "masked")) for r in rows])
        for layout in np.unique(layouts):
            idx = np.flatnonzero(layouts == layout)
            part = [rows[i] for i in idx]
            groups = _column(part, "groups", 1).astype(int)
            tokens = np.zeros((len(part), int(groups.max())))
            for i, (g, m) in enumerate(zip(groups, _column(part, "m"), strict=True)):
                tokens[i, :g] = m
            out[idx] = grouped_gemm_time(
                hw,
                tokens_per_expert=tokens,
                n=_column(part, "n"),
                k=_column(part, "k"),
                precision=precision,
                layout=str(layout),
            ).time_s
        return out
    flops, hbm, seqs = attention_work(family, rows)
    return attention_time(
        hw, family=family, flops=flops, hbm_bytes=hbm, sequences=seqs, precision=precision
    ).time_s


def attention_work(family: str, rows: list[KernelRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FLOPs, HBM bytes, sequences) of attention rows, as the replay counts them (bf16 KV)."""
    h = _column(rows, "num_heads")
    b = _column(rows, "batch_size")
    if family == "mla_decode":
        kv = _column(rows, "kv_len")
        latent = MLA_KV_LORA + MLA_ROPE
        flops = 2.0 * h * (latent + MLA_KV_LORA) * b * kv
        hbm = b * kv * latent * 2.0 + b * h * (latent + MLA_KV_LORA) * 2.0
        return flops, hbm, b
    if family == "mla_prefill":
        s = _column(rows, "seq_len")
        pairs = b * s * (s + 1) / 2.0
        flops = 2.0 * h * (MLA_NOPE + MLA_ROPE + MLA_V) * pairs
        hbm = b * s * h * (2 * (MLA_NOPE + MLA_ROPE) + 2 * MLA_V) * 2.0
        return flops, hbm, b
    d = _column(rows, "head_dim")
    kvh = _column(rows, "num_kv_heads")
    if family == "gqa_decode":
        kv = _column(rows, "kv_len")
        return 4.0 * h * d * b * kv, 2.0 * kvh * d * b * kv * 2.0 + b * h * d * 4.0, b
    if family == "gqa_prefill":
        s = _column(rows, "seq_len")
        pairs = b * s * (s + 1) / 2.0
        return 4.0 * h * d * pairs, b * s * (h + 2 * kvh) * d * 2.0 + b * s * h * d * 2.0, b
    raise UsageError(f"kernel family {family!r} has no attention model")


# ---- fitting ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class KernelFit:
    hardware: str
    family: str
    dtype: str
    curve: KernelCurve
    rows: int
    rms_log_residual: float
    #: Leave-one-out |error| per row (same order as the rows).
    loo_errors: tuple[float, ...]
    sources: tuple[str, ...]

    @property
    def loo_median(self) -> float:
        return float(np.median(self.loo_errors)) if self.loo_errors else 0.0

    @property
    def loo_worst(self) -> float:
        return float(max(self.loo_errors)) if self.loo_errors else 0.0


def _to_x(name: str, v: float) -> float:
    if name.endswith("_eff"):
        v = min(max(v, 1e-6), 1 - 1e-6)
        return math.log(v / (1 - v))
    return math.log(max(v, 1e-12))


def _from_x(name: str, x: float) -> float:
    x = max(min(x, 60.0), -60.0)
    return 1.0 / (1.0 + math.exp(-x)) if name.endswith("_eff") else math.exp(x)


class _TrialHardware:
    """A preset's peaks with one trial curve."""

    def __init__(self, hw: HardwareSpec, curve: KernelCurve) -> None:
        self.hbm_bw = hw.hbm_bw
        self.num_sms = hw.num_sms
        self._hw = hw
        self._curve = curve

    def peak_flops(self, precision: str) -> float:
        return self._hw.peak_flops(precision)

    def kernel_curve(self, family: str, dtype: str) -> KernelCurve:
        return self._curve


def fit_curve(rows: list[KernelRow], hw: HardwareSpec) -> tuple[KernelCurve, np.ndarray]:
    """The curve of ``rows``' family on ``hw`` that best predicts them, and the log residuals."""
    family, dtype = rows[0].family, rows[0].dtype
    names = FIT_PARAMS[family]
    measured = np.array([r.measured_s for r in rows])

    def curve_of(x: np.ndarray) -> KernelCurve:
        return KernelCurve(
            family=family, dtype=dtype, **{n: _from_x(n, float(v)) for n, v in zip(names, x, strict=True)}
        )

    def residuals(x: np.ndarray) -> np.ndarray:
        pred = predict_rows(rows, _TrialHardware(hw, curve_of(x)))
        return np.log(np.maximum(pred, 1e-15) / measured)

    best: tuple[np.ndarray, np.ndarray] | None = None
    for start in (_START, _START_2):
        x, r = levenberg_marquardt(residuals, np.array([_to_x(n, start[n]) for n in names]))
        if best is None or float(r @ r) < float(best[1] @ best[1]):
            best = (x, r)
    assert best is not None
    return curve_of(best[0]), best[1]


def leave_one_out(rows: list[KernelRow], hw: HardwareSpec) -> np.ndarray:
    """|predicted / measured - 1| of each row, predicted by a fit to the other rows."""
    out = np.zeros(len(rows))
    for i in range(len(rows)):
        rest = rows[:i] + rows[i + 1 :]
        curve, _ = fit_curve(rest, hw)
        out[i] = abs(float(predict_rows([rows[i]], _TrialHardware(hw, curve))[0]) / rows[i].measured_s - 1.0)
    return out


def group_rows(rows: list[KernelRow]) -> dict[tuple[str, str, str], list[KernelRow]]:
    """Rows by (hardware, family, compute class): one fit each."""
    out: dict[tuple[str, str, str], list[KernelRow]] = {}
    for r in rows:
        out.setdefault((r.hardware, r.family, r.dtype), []).append(r)
    return out


def calibrate_kernels(*, with_database: bool = True, loo: bool = True) -> list[KernelFit]:
    """Fit every (hardware, family, class) with rows; with ``loo``, its leave-one-out errors."""
    rows = published_rows() + (database_rows() if with_database else [])
    fits = []
    for (hardware, family, dtype), part in group_rows(rows).items():
        hw = get_hardware(hardware)
        curve, r = fit_curve(part, hw)
        fits.append(
            KernelFit(
                hardware=hardware,
                family=family,
                dtype=dtype,
                curve=curve,
                rows=len(part),
                rms_log_residual=float(np.sqrt(np.mean(r**2))),
                loo_errors=tuple(float(e) for e in leave_one_out(part, hw)) if loo else (),
                sources=tuple(dict.fromkeys(p.source for p in part)),
            )
        )
    return fits


def with_curve(hw: HardwareSpec, curve: KernelCurve) -> HardwareSpec:
    """``hw`` with one curve replaced."""
    return dataclasses.replace(hw, kernels={**hw.kernels, (curve.family, curve.dtype): curve})


# ---- curves per preset: own fits, then transfers ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PresetCurve:
    """A curve a preset records, with where it came from."""

    curve: KernelCurve
    source: str
    #: Set when the curve was copied from another preset or family (an assumption).
    note: str = ""


def _listed(v: Any) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def preset_curves(fits: list[KernelFit]) -> dict[str, dict[tuple[str, str], PresetCurve]]:
    """Per preset, every curve it records: its own fits, then the data file's ``[[transfer]]``
    copies (in file order, so a transfer may copy an earlier one)."""
    out: dict[str, dict[tuple[str, str], PresetCurve]] = {}
    for f in fits:
        loo = (
            f", leave-one-out median {100 * f.loo_median:.1f}% worst {100 * f.loo_worst:.1f}%"
            if f.loo_errors
            else ""
        )
        src = (
            f"fitted by tracekit calibrate to {f.rows} rows of {'; '.join(f.sources)} (rms log residual "
            f"{f.rms_log_residual:.3f}{loo}; docs/calibration.md)"
        )
        curve = dataclasses.replace(f.curve, rms_log_residual=f.rms_log_residual)
        out.setdefault(f.hardware, {})[(f.family, f.dtype)] = PresetCurve(curve=curve, source=src)
    for t in _raw().get("transfer", []):
        for family in _listed(t["family"]):
            for dtype in _listed(t["dtype"]):
                key = (t.get("from_family", family), t.get("from_dtype", dtype))
                found = out.get(t["from"], {}).get(key)
                if found is None:
                    continue
                curve = dataclasses.replace(found.curve, family=family, dtype=dtype)
                src = f"copied from {t['from']} [kernel.{key[0]}.{key[1]}]: {found.source}"
                for target in _listed(t["to"]):
                    if (family, dtype) in out.get(target, {}) and target != t["from"]:
                        continue
                    out.setdefault(target, {})[(family, dtype)] = PresetCurve(
                        curve=curve, source=src, note=t["note"]
                    )
    return out


def kernel_sections(curves: dict[tuple[str, str], PresetCurve]) -> str:
    """The ``[kernel.<family>.<dtype>]`` tables of one preset (written below its calibration marker)."""
    from tracekit.hardware.curves import CURVE_FIELDS

    lines: list[str] = []
    for (family, dtype), pc in sorted(curves.items()):
        lines.append(f"[kernel.{family}.{dtype}]")
        for name in CURVE_FIELDS:
            value = getattr(pc.curve, name)
            note = f", note = {_q(pc.note)}" if pc.note else ""
            lines.append(f"{name} = {{ value = {_fmt(value)}, source = {_q(pc.source)}{note} }}")
        lines.append("")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- the report -----------------------------------------------------------------------------------------

#: Leave-one-out limits per family fitted to the published tables (checked by the tests and the CLI).
LOO_MEDIAN_LIMIT = 0.10
LOO_WORST_LIMIT = 0.25


def is_published(fit: KernelFit) -> bool:
    """Whether a fit's rows all come from the published tables (the ``[[row]]`` data)."""
    published = {r.source for r in published_rows()}
    return all(s in published for s in fit.sources)


def kernels_passed(fits: list[KernelFit]) -> bool:
    """Every family fitted to published tables within the leave-one-out limits."""
    return all(
        f.loo_median <= LOO_MEDIAN_LIMIT and f.loo_worst <= LOO_WORST_LIMIT
        for f in fits
        if is_published(f) and f.loo_errors
    )


def kernel_report_rows(fits: list[KernelFit]) -> tuple[list[str], list[list[Any]]]:
    """The fits as table columns and rows (errors in percent)."""
    cols = [
        "hardware",
        "family",
        "class",
        "rows",
        "data",
        "rms_log_residual",
        "loo_median_%",
        "loo_worst_%",
    ]
    out: list[list[Any]] = []
    for f in sorted(fits, key=lambda f: (not is_published(f), f.hardware, f.family, f.dtype)):
        out.append(
            [
                f.hardware,
                f.family,
                f.dtype,
                f.rows,
                "published table" if is_published(f) else "measured database",
                round(f.rms_log_residual, 3),
                round(100 * f.loo_median, 1) if f.loo_errors else None,
                round(100 * f.loo_worst, 1) if f.loo_errors else None,
            ]
        )
    return cols, out
