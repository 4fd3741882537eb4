"""The one vocabulary of number formats: storage and wire bytes against hand-computed values."""

from __future__ import annotations

import pytest

from tracekit.errors import UnknownNameError, UsageError
from tracekit.hardware import get_hardware
from tracekit.precision import (
    DEPLOYMENT_FORMATS,
    FORMATS,
    WIRE_FORMATS,
    bytes_per_param,
    canonical,
    compute_class,
    wire_bytes_per_token,
)


def test_storage_bytes_by_hand() -> None:
    assert bytes_per_param("bfloat16") == 2.0
    assert bytes_per_param("torch.float32") == 4.0
    assert bytes_per_param("fp8") == 1.0
    assert bytes_per_param("float8_e4m3fn") == 1.0
    # NVFP4: 4 bits + an 8-bit scale per 16 values; MXFP4: 4 bits + an 8-bit scale per 32 values
    assert bytes_per_param("nvfp4") == (4 + 8 / 16) / 8
    assert bytes_per_param("fp4") == bytes_per_param("nvfp4")
    assert bytes_per_param("mxfp4") == (4 + 8 / 32) / 8
    # INT4 with a bf16 scale per 32 values
    assert bytes_per_param("int4") == (4 + 16 / 32) / 8


def test_wire_bytes_by_hand() -> None:
    h = 7168
    assert wire_bytes_per_token("bf16", h) == 2 * h
    assert wire_bytes_per_token("fp8", h) == h + h / 128 * 4  # one fp32 scale per 128 values
    assert wire_bytes_per_token("fp4", h) == h / 2 + h / 16  # one fp8 scale per 16 values
    assert wire_bytes_per_token("mxfp4", h) == h / 2 + h / 32  # one 8-bit scale per 32 values
    with pytest.raises(UsageError, match="weights only"):
        wire_bytes_per_token("int4", h)
    assert "int4" not in WIRE_FORMATS and "int4" in DEPLOYMENT_FORMATS


def test_compute_class_sets_the_peak() -> None:
    gb = get_hardware("gb200-nvl72")
    h200 = get_hardware("h200-sxm")
    assert gb.peak_flops("mxfp4") == gb.fp4_flops
    assert gb.peak_flops("int4") == gb.bf16_flops  # W4A16 computes in bf16
    assert h200.peak_flops("nvfp4") == h200.fp8_flops  # no FP4 tensor cores on Hopper
    assert h200.peak_flops("fp32") == h200.bf16_flops / 2
    assert {compute_class(n) for n in FORMATS} == {"fp32", "bf16", "fp8", "fp4"}


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="mxfp4"):
        canonical("fp3")
