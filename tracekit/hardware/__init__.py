"""Hardware presets: per-GPU compute and memory, the scale-up domain, the network, and calibrated
communication parameters, loaded from data files under ``tracekit/data/hardware/``."""

from tracekit.hardware.spec import (
    CALIBRATION_MARKER,
    COMM_IMPLS,
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
    "CommParams",
    "HardwareSpec",
    "apply_overrides",
    "field_docs",
    "field_units",
    "get_hardware",
    "hardware_names",
    "parse_set_options",
    "preset_path",
]
