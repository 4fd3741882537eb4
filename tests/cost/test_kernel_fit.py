"""The compute-kernel curves against the published kernel tables: the fit reproduces them, the
leave-one-out error of every family stays within its limits, the presets hold the fitted curves,
and docs/calibration.md shows the numbers this test recomputes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tracekit.cost.kernel_fit import (
    LOO_MEDIAN_LIMIT,
    LOO_WORST_LIMIT,
    KernelFit,
    calibrate_kernels,
    fit_curve,
    group_rows,
    leave_one_out,
    predict_rows,
    published_rows,
)
from tracekit.hardware import get_hardware
from tracekit.hardware.curves import CURVE_FIELDS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "calibration.md"


@pytest.fixture(scope="module")
def fits() -> list[KernelFit]:
    return calibrate_kernels(with_database=False, loo=True)


def test_every_published_family_within_the_leave_one_out_limits(fits: list[KernelFit]) -> None:
    assert {(f.hardware, f.family, f.dtype) for f in fits} == set(group_rows(published_rows()))
    for f in fits:
        assert f.rows >= 10
        assert f.loo_median <= LOO_MEDIAN_LIMIT, (f.family, f.loo_median)
        assert f.loo_worst <= LOO_WORST_LIMIT, (f.family, f.loo_worst)


def test_leave_one_out_is_a_refit_without_the_row() -> None:
    """A second computation of one row's leave-one-out error: fit the other rows by hand, predict it."""
    rows = [r for r in published_rows() if r.family == "gemm"]
    hw = get_hardware(rows[0].hardware)
    loo = leave_one_out(rows, hw)
    i = 5
    curve, _ = fit_curve(rows[:i] + rows[i + 1 :], hw)
    from tracekit.cost.kernel_fit import with_curve

    predicted = predict_rows([rows[i]], with_curve(hw, curve))[0]
    assert loo[i] == pytest.approx(abs(predicted / rows[i].measured_s - 1.0), rel=1e-6)
    # the published figure is a throughput: time = FLOPs / TFLOPS
    r = rows[i]
    assert r.measured_s == pytest.approx(2 * r.shape["m"] * r.shape["n"] * r.shape["k"] / 295e12)


def test_presets_hold_the_published_fits(fits: list[KernelFit]) -> None:
    """The built-in presets record these curves (scripts/update_presets.py writes them)."""
    for f in fits:
        stored = get_hardware(f.hardware).kernel_curve(f.family, f.dtype)
        for name in CURVE_FIELDS:
            want = f.rms_log_residual if name == "rms_log_residual" else getattr(f.curve, name)
            assert getattr(stored, name) == pytest.approx(want, rel=2e-2, abs=1e-9), (
                f"{f.hardware} kernel.{f.family}.{f.dtype}.{name}"
            )
        src = get_hardware(f.hardware).sources[f"kernel.{f.family}.{f.dtype}.compute_eff"]
        assert "DeepGEMM" in src and "leave-one-out" in src


def test_docs_table_matches_the_recomputed_errors(fits: list[KernelFit]) -> None:
    text = DOCS.read_text(encoding="utf-8")
    for f in fits:
        pattern = (
            rf"\| {re.escape(f.hardware)} \| {f.family} \| {f.dtype} \| {f.rows} \| published table \| "
            rf"([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|"
        )
        m = re.search(pattern, text)
        assert m, f"docs/calibration.md has no row for {f.hardware} {f.family} {f.dtype}"
        rms, med, worst = (float(x) for x in m.groups())
        assert rms == pytest.approx(f.rms_log_residual, abs=0.0015)
        assert med == pytest.approx(100 * f.loo_median, abs=0.15)
        assert worst == pytest.approx(100 * f.loo_worst, abs=0.15)


def test_fit_residuals_are_the_log_errors(fits: list[KernelFit]) -> None:
    for f in fits:
        rows = [
            r for r in published_rows() if (r.hardware, r.family, r.dtype) == (f.hardware, f.family, f.dtype)
        ]
        hw = get_hardware(f.hardware)
        from tracekit.cost.kernel_fit import with_curve

        pred = predict_rows(rows, with_curve(hw, f.curve))
        meas = np.array([r.measured_s for r in rows])
        assert f.rms_log_residual == pytest.approx(
            float(np.sqrt(np.mean(np.log(pred / meas) ** 2))), rel=1e-6
        )
