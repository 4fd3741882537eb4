"""The calibration: every published row within 25%, median within 10%, presets in sync with the fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli
from tracekit.cost.calibration import (
    MAX_ABS_ERROR,
    MEDIAN_ABS_ERROR,
    CalibrationReport,
    calibrate,
    load_measurements,
    predict,
)
from tracekit.hardware import get_hardware


@pytest.fixture(scope="module")
def fitted() -> CalibrationReport:
    return calibrate(fit=True)


def test_every_row_within_tolerance(fitted: CalibrationReport) -> None:
    assert len(fitted.rows) == len(load_measurements()) >= 40
    bad = [(r.measurement.id, round(r.error, 3)) for r in fitted.rows if abs(r.error) > MAX_ABS_ERROR]
    assert not bad
    assert fitted.median_abs_error <= MEDIAN_ABS_ERROR
    # the error is computed from the two numbers shown
    for r in fitted.rows:
        assert r.error == pytest.approx(r.predicted / r.measurement.measured - 1)


def test_presets_hold_the_fit(fitted: CalibrationReport) -> None:
    """The preset files record the values this fit produces (run `tracekit calibrate --write` if not)."""
    for f in fitted.fits:
        for target in (f.hardware, *f.spec.transfer_to):
            stored = get_hardware(target).comm[f.impl]
            for name in f.spec.params:
                assert getattr(stored, name) == pytest.approx(getattr(f.params, name), rel=1e-2, abs=1e-9), (
                    f"{target} comm.{f.impl}.{name}"
                )
    stored = calibrate(fit=False)
    assert [r.predicted for r in stored.rows] == pytest.approx([r.predicted for r in fitted.rows], rel=1e-2)
    residuals = get_hardware("h800-sxm").calibration["residuals"]
    assert {r["id"] for r in residuals} == {
        r.measurement.id for r in fitted.rows if r.measurement.hardware == "h800-sxm"
    }


def test_bandwidth_rows_use_the_sources_byte_count() -> None:
    """DeepEP intranode: bandwidth = tokens received per rank (its own included) x bytes / time."""
    row = next(m for m in load_measurements() if m.id == "deepep-normal intranode EP8 dispatch")
    hw = get_hardware("h800-sxm")
    value, t, _, _ = predict(row, hw)
    from math import comb

    received = 8 * 4096 * (1 - comb(224, 8) / comb(256, 8))
    assert value == pytest.approx(received * 7392 / t)


def test_cli_calibrate_json() -> None:
    out = CliRunner().invoke(cli, ["calibrate", "--no-fit", "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["passed"] is True and len(data["rows"]) == len(load_measurements())
    errors = np.array([abs(r["error_%"]) for r in data["rows"]])
    assert errors.max() <= 25 and np.median(errors) <= 10
