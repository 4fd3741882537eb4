"""The p10-p90 band against closed forms of the lognormal, and its shared draws."""

from __future__ import annotations

import math

import pytest

from tracekit.hardware import get_hardware
from tracekit.replay.uncertainty import Spread, component_spreads, ratio_band, throughput_band

Z90 = 1.2815515655446004  # the standard normal's 90th percentile


def test_one_component_band_is_the_lognormal_quantiles() -> None:
    """All of the step in one family of spread s: tokens/s / exp(N(0, s)) has p10 = x exp(-z s)."""
    s = 0.1
    lo, hi = throughput_band(1000.0, {"expert_gemm": 0.02}, {"expert_gemm": Spread(key="k", sigma=s)})
    assert lo == pytest.approx(1000.0 * math.exp(-Z90 * s), rel=0.01)
    assert hi == pytest.approx(1000.0 * math.exp(Z90 * s), rel=0.01)


def test_unfitted_components_and_step_level_parts_add_no_spread() -> None:
    lo, hi = throughput_band(500.0, {"fixed": 0.01, "straggler": 0.005}, {})
    assert lo == hi == 500.0


def test_half_the_step_in_a_fitted_family_narrows_the_band() -> None:
    sp = {"expert_gemm": Spread(key="k", sigma=0.2)}
    full = throughput_band(1.0, {"expert_gemm": 1.0}, sp)
    half = throughput_band(1.0, {"expert_gemm": 0.5, "fixed": 0.5}, sp)
    assert half[1] - half[0] < full[1] - full[0]
    assert half[0] < 1.0 < half[1]


def test_a_shared_fit_cancels_in_a_ratio() -> None:
    a = (2000.0, {"expert_gemm": 0.01}, {"expert_gemm": Spread(key="same fit", sigma=0.1)})
    b = (1000.0, {"expert_gemm": 0.01}, {"expert_gemm": Spread(key="same fit", sigma=0.1)})
    assert ratio_band(a, b) == pytest.approx((2.0, 2.0))
    # independent fits: the log ratio has spread s * sqrt(2)
    c = (1000.0, {"expert_gemm": 0.01}, {"expert_gemm": Spread(key="other fit", sigma=0.1)})
    lo, hi = ratio_band(a, c)
    assert lo == pytest.approx(2.0 * math.exp(-Z90 * 0.1 * math.sqrt(2)), rel=0.015)
    assert hi == pytest.approx(2.0 * math.exp(Z90 * 0.1 * math.sqrt(2)), rel=0.015)


def test_presets_share_the_fits_they_copy() -> None:
    """h100-sxm and h200-sxm take H800's DeepGEMM curves: one fit, one key, H800's residual."""
    prec = {"attention": "fp8", "attention_core": "bf16", "dense": "fp8", "experts": "fp8"}
    spreads = {
        name: component_spreads(
            get_hardware(name), attention_family="mla_decode", precision=prec, impl="deepep-ll"
        )
        for name in ("h800-sxm", "h100-sxm", "h200-sxm")
    }
    h800 = get_hardware("h800-sxm").kernel_curve("grouped_gemm", "fp8")
    for name in ("h100-sxm", "h200-sxm"):
        assert spreads[name]["expert_gemm"].key == spreads["h800-sxm"]["expert_gemm"].key
        assert spreads[name]["expert_gemm"].sigma == pytest.approx(h800.rms_log_residual)
        assert spreads[name]["dispatch"].key == spreads["h800-sxm"]["dispatch"].key
    # each system's own database fit of its MLA decode kernels is its own
    assert spreads["h100-sxm"]["attention"].key != spreads["h200-sxm"]["attention"].key
    assert spreads["h200-sxm"]["attention"].sigma > 0
