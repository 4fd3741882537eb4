"""Hardware presets: per-GPU compute and memory, the scale-up domain, the network, and calibrated
communication parameters, loaded from data files under ``tracekit/data/hardware/``."""

from tracekit.hardware.comm_impls import COMM_IMPL_REGISTRY, COMM_IMPLS, CommImpl, comm_impl, default_impl
from tracekit.hardware.spec import (
    CALIBRATION_MARKER,
    CommParams,
    HardwareSpec,
    apply_overrides,
    field_docs,
    field_units,
    get_hardware,
    hardware_names,
    parse_set_options,
    preset_path,
)

__all__ = [
    "CALIBRATION_MARKER",
    "COMM_IMPLS",
    "COMM_IMPL_REGISTRY",
    "CommImpl",
    "CommParams",
    "HardwareSpec",
    "apply_overrides",
    "comm_impl",
    "default_impl",
    "field_docs",
    "field_units",
    "get_hardware",
    "hardware_names",
    "parse_set_options",
    "preset_path",
]
