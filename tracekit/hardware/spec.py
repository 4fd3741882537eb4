"""Hardware presets: one TOML data file per system under ``tracekit/data/hardware/``.

A preset file has a ``[spec]`` table whose entries are ``field = { value = ..., source = "..." }``
(``note = "..."`` marks an assumption), and one ``[comm.<impl>]`` table per communication
implementation with the same form, and ``[kernel.<family>.<class>]`` tables of compute-kernel curves.
The part of a built-in file below the calibration marker is written by ``scripts/update_presets.py``
from the fits of ``tracekit calibrate --kernels``. All values are SI: FLOP/s, bytes, bytes/s, seconds.

A user preset is any such file; ``base = "<preset>"`` at its top inherits every field of that preset
and the file overrides what it lists.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from tracekit.errors import UnknownNameError, UsageError
from tracekit.hardware.comm_impls import COMM_IMPLS
from tracekit.hardware.curves import CURVE_FIELDS, FAMILIES, KernelCurve
from tracekit.precision import compute_class

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "hardware"

#: Marker line in a built-in preset file: everything below it is written by ``scripts/update_presets.py``.
CALIBRATION_MARKER = "# ==== fitted by scripts/update_presets.py (the fits of `tracekit calibrate --kernels`): do not edit below this line ===="


def _f(doc: str, unit: str, default: Any = dataclasses.MISSING) -> Any:
    if default is dataclasses.MISSING:
        return field(metadata={"doc": doc, "unit": unit})
    return field(default=default, metadata={"doc": doc, "unit": unit})


@dataclass(frozen=True, kw_only=True)
class CommParams:
    """Achievable-efficiency and latency parameters of one communication implementation.

    A rank's time is ``max(floor, latency + bytes / (link_bw * eff / penalty))`` over the links it
    uses (NVLink inside the scale-up domain, the NIC outside), with ``penalty = 1 + eff_log2_penalty
    * log2(max(ranks, 8) / 8)``; dispatch and combine have their own latency and floor.
    """

    impl: str = _f("Implementation name.", "")
    eff_up: float = _f("Fraction of scale-up (NVLink) bandwidth per direction achieved.", "fraction")
    eff_out: float = _f("Fraction of scale-out (NIC) bandwidth per direction achieved.", "fraction")
    dispatch_latency_s: float = _f("Fixed time added to a dispatch's transfer time.", "s")
    combine_latency_s: float = _f("Fixed time added to a combine's transfer time.", "s")
    dispatch_floor_s: float = _f("Least time of a dispatch (launch and barrier).", "s", 0.0)
    combine_floor_s: float = _f("Least time of a combine (launch and barrier).", "s", 0.0)
    latency_log2_s: float = _f("Latency added per doubling of the group beyond 8 ranks.", "s", 0.0)
    eff_log2_penalty: float = _f(
        "Relative bandwidth loss per doubling of the group beyond 8 ranks (synchronisation).", "fraction", 0.0
    )
    latency_out_s: float = _f(
        "Latency added when the NIC sets the time, beyond the preset's extra network hop (RDMA "
        "setup of kernels that use NVLink inside the domain).",
        "s",
        0.0,
    )
    sm_frac: float = _f(
        "Fraction of the GPU's SMs the kernels hold while a transfer over the NIC is in flight (taken "
        "from compute that runs beside it; 0: no SMs, as DeepEP's low-latency hook mode).",
        "fraction",
        0.0,
    )
    sm_frac_up: float = _f(
        "Fraction of the SMs held while NVLink traffic flows (1: kernels that copy over NVLink stay "
        "resident until the transfer ends, so nothing overlaps it).",
        "fraction",
        0.0,
    )
    launch_s: float = _f(
        "Time the send and receive kernels of one dispatch or combine occupy the GPU in all (issue, "
        "wait, unpack), never hidden by overlap.",
        "s",
        0.0,
    )
    overlap_derate: float = _f(
        "Slowdown of a transfer that runs beside compute (HBM and L2 shared with the GEMMs), as a "
        "time multiplier (1: as fast as alone).",
        "x",
        1.0,
    )
    rms_log_residual: float = _f(
        "Spread of the calibration fit: rms of log(predicted / measured) over its rows (0: not "
        "fitted); the replay's p10-p90 band draws the implementation's time factor from it.",
        "log",
        0.0,
    )


#: Timing families a preset's ``[scale]`` table can scale (a user's calibration; 1 by default).
SCALE_FAMILIES = (
    "dense_gemm",
    "expert_gemm",
    "attention",
    "elementwise",
    "launch",
    "moe_dispatch",
    "moe_combine",
    "collective",
)


@dataclass(frozen=True, kw_only=True)
class HardwareSpec:
    """One GPU system: per-GPU compute and memory, the scale-up domain and the network between domains."""

    name: str = _f("Preset name.", "")
    description: str = _f("What system this is.", "", "")
    gpu: str = _f("GPU model.", "", "")
    bf16_flops: float = _f("Dense BF16 tensor-core peak per GPU.", "FLOP/s")
    fp8_flops: float = _f("Dense FP8 tensor-core peak per GPU.", "FLOP/s")
    fp4_flops: float = _f(
        "Dense FP4 tensor-core peak per GPU (0: no FP4 tensor cores; FP8 is used).", "FLOP/s"
    )
    hbm_bytes: float = _f("HBM capacity per GPU.", "B")
    hbm_bw: float = _f("HBM bandwidth per GPU.", "B/s")
    scaleup_size: int = _f("GPUs in one scale-up (NVLink) domain.", "GPUs")
    gpus_per_node: int = _f("GPUs per host or compute tray.", "GPUs")
    scaleup_bw: float = _f("Scale-up (NVLink) bandwidth per GPU, per direction.", "B/s")
    scaleout_bw: float = _f("Scale-out (NIC) bandwidth per GPU, per direction.", "B/s")
    scaleup_latency_s: float = _f("GPU-to-GPU latency inside the scale-up domain.", "s")
    scaleout_latency_s: float = _f("GPU-to-GPU latency across the network.", "s")
    num_sms: int = _f("Streaming multiprocessors per GPU.", "SMs")
    launch_gap_s: float = _f("Gap between two kernels replayed from a CUDA graph.", "s")
    launch_gap_eager_s: float = _f("Gap between two kernels launched one by one from the host.", "s")
    kernels: Mapping[tuple[str, str], KernelCurve] = field(
        default_factory=dict,
        metadata={"doc": "Efficiency curve per (kernel family, compute class).", "unit": ""},
    )
    scale: Mapping[str, float] = field(
        default_factory=dict,
        metadata={
            "doc": "Time multipliers per timing family (a user's calibration; 1 if absent).",
            "unit": "",
        },
    )
    comm: Mapping[str, CommParams] = field(
        default_factory=dict, metadata={"doc": "Parameters per communication implementation.", "unit": ""}
    )
    sources: Mapping[str, str] = field(
        default_factory=dict, metadata={"doc": "Source (and assumption notes) of every value.", "unit": ""}
    )
    calibration: Mapping[str, Any] = field(
        default_factory=dict,
        metadata={"doc": "Fit summary and residuals written by tracekit calibrate.", "unit": ""},
    )

    def comm_params(self, impl: str) -> CommParams:
        """The parameters of communication implementation ``impl``."""
        if impl not in self.comm:
            raise UnknownNameError(
                "communication implementation", impl, self.comm, hint=f"of hardware preset {self.name}"
            )
        return self.comm[impl]

    def kernel_curve(self, family: str, dtype: str) -> KernelCurve:
        """The efficiency curve of kernel ``family`` in compute class ``dtype`` (fp4 falls back to
        fp8 where the preset has no FP4 curve)."""
        for key in ((family, dtype), (family, "any"), (family, "fp8") if dtype == "fp4" else None):
            if key is not None and key in self.kernels:
                return self.kernels[key]
        have = sorted(f"{f}.{d}" for f, d in self.kernels)
        raise UsageError(
            f"hardware preset {self.name} has no [kernel.{family}.{dtype}] curve; add one (presets have: "
            f"{', '.join(have) or 'none'})"
        )

    def time_scale(self, family: str) -> float:
        """The time multiplier of timing family ``family`` (1 unless a calibrated preset sets it)."""
        return float(self.scale.get(family, 1.0))

    def peak_flops(self, precision: str) -> float:
        """Dense peak FLOP/s for GEMMs in ``precision``, by its compute class
        (:func:`tracekit.precision.compute_class`); fp4 falls back to fp8 without FP4 tensor cores."""
        c = compute_class(precision)
        if c == "fp4":
            return self.fp4_flops if self.fp4_flops > 0 else self.fp8_flops
        if c == "fp8":
            return self.fp8_flops
        if c == "fp32":
            return self.bf16_flops / 2.0  # TF32 tensor cores run at half the BF16 rate
        return self.bf16_flops


SCALAR_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(HardwareSpec)
    if f.name not in ("comm", "sources", "calibration", "kernels", "scale")
)
#: Scalar fields a preset may leave out (their defaults apply).
OPTIONAL_FIELDS: tuple[str, ...] = ()
#: Scalar fields that are whole numbers.
INTEGER_FIELDS = ("scaleup_size", "gpus_per_node", "num_sms")
COMM_FIELDS = tuple(f.name for f in dataclasses.fields(CommParams) if f.name != "impl")


def field_units() -> dict[str, str]:
    """Unit of every spec field and every comm field (``comm.<impl>.<field>`` uses the comm field's)."""
    out = {f.name: f.metadata.get("unit", "") for f in dataclasses.fields(HardwareSpec)}
    out.update({f"comm.{f.name}": f.metadata.get("unit", "") for f in dataclasses.fields(CommParams)})
    return out


def field_docs() -> dict[str, str]:
    out = {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(HardwareSpec)}
    out.update({f"comm.{f.name}": f.metadata.get("doc", "") for f in dataclasses.fields(CommParams)})
    return out


# ---- loading -------------------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(
            f"hardware preset file {path} cannot be read ({exc}); pass a preset name or a readable file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"hardware preset file {path} is not valid TOML ({exc}); fix the file") from None


def _value(entry: Any, where: str) -> tuple[Any, str]:
    """(value, source text) of a ``{ value = ..., source = ..., note = ... }`` entry or a bare value."""
    if isinstance(entry, Mapping):
        if "value" not in entry:
            raise UsageError(f'{where}: expected {{ value = ..., source = "..." }}; add a value')
        src = str(entry.get("source", ""))
        if entry.get("note"):
            src = f"{src} (assumption: {entry['note']})" if src else f"(assumption: {entry['note']})"
        return entry["value"], src
    return entry, ""


#: Keys a preset file may hold at its top level, and the TOML kind each must be.
_TOP_KEYS: dict[str, type] = {
    "base": str,
    "name": str,
    "description": str,
    "gpu": str,
    "spec": dict,
    "comm": dict,
    "kernel": dict,
    "scale": dict,
    "calibration": dict,
}


def _home(key: str) -> str | None:
    """The table a preset field named ``key`` belongs in (None for a name no table knows)."""
    if key in SCALAR_FIELDS and key not in ("name", "description", "gpu"):
        return "[spec]"
    if key in COMM_IMPLS:
        return f"[comm.{key}]"
    if key in COMM_FIELDS:
        return f"a [comm.<impl>] table (impl one of {', '.join(COMM_IMPLS)})"
    if key in FAMILIES:
        return f"[kernel.{key}.<class>] tables (class bf16, fp8, fp4 or any)"
    if key in CURVE_FIELDS:
        return "a [kernel.<family>.<class>] table"
    if key in SCALE_FAMILIES:
        return "[scale]"
    return None


def _misplaced(path: Path, key: str, here: str, valid: str) -> UsageError:
    """The error for a preset entry ``key`` found ``here``, where tracekit would not read it."""
    home = _home(key.rsplit(".", 1)[-1])
    if home is not None:
        return UsageError(
            f"hardware preset {path}: {key!r} {here} is not read there; it belongs under {home}"
        )
    return UsageError(f"hardware preset {path}: unknown {key!r} {here}; valid: {valid}")


def _check_layout(raw: Mapping[str, Any], path: Path) -> None:
    """Refuse entries a preset file holds where tracekit would never read them: spec fields at the
    top level, unknown or misspelt tables, flat ``[comm]`` or ``[kernel.<family>]`` entries."""
    for key, value in raw.items():
        kind = _TOP_KEYS.get(key)
        if kind is None:
            raise _misplaced(
                path,
                key,
                "at the top level",
                f"{', '.join(_TOP_KEYS)} (fields go in the tables: see tracekit hw show)",
            )
        if not isinstance(value, kind):
            want = "a table" if kind is dict else "a string"
            raise UsageError(f"hardware preset {path}: {key!r} must be {want}, got {value!r}")
    for impl, entries in raw.get("comm", {}).items():
        if impl not in COMM_IMPLS:
            raise _misplaced(
                path, f"comm.{impl}", "in [comm]", f"[comm.<impl>] with impl one of {', '.join(COMM_IMPLS)}"
            )
        if not isinstance(entries, Mapping):
            raise UsageError(f"hardware preset {path}: comm.{impl} must be a table of fields")
    for fam, by in raw.get("kernel", {}).items():
        if fam not in FAMILIES:
            raise _misplaced(
                path,
                f"kernel.{fam}",
                "in [kernel]",
                f"[kernel.<family>.<class>] with family one of {', '.join(FAMILIES)}",
            )
        if not isinstance(by, Mapping):
            raise UsageError(f"hardware preset {path}: kernel.{fam} must hold [kernel.{fam}.<class>] tables")
        for dt, entries in by.items():
            if not isinstance(entries, Mapping) or "value" in entries:  # a field, not a [class] table
                raise _misplaced(
                    path, f"kernel.{fam}.{dt}", f"in [kernel.{fam}]", f"[kernel.{fam}.<class>] tables"
                )


def _merge_raw(path: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    raw = _read_toml(path)
    _check_layout(raw, path)
    base = raw.get("base")
    if base is None:
        return raw
    base_path = _preset_path(str(base))
    if str(base_path) in seen:
        raise UsageError(f"hardware preset {path}: base chain loops through {base}; remove the cycle")
    merged = _merge_raw(base_path, (*seen, str(base_path)))
    merged = {**merged, "spec": {**merged.get("spec", {}), **raw.get("spec", {})}}
    comm = {k: dict(v) for k, v in merged.get("comm", {}).items()}
    for impl, entries in raw.get("comm", {}).items():
        comm.setdefault(impl, {}).update(entries)
    merged["comm"] = comm
    kernel = {fam: {dt: dict(v) for dt, v in by.items()} for fam, by in merged.get("kernel", {}).items()}
    for fam, by in raw.get("kernel", {}).items():
        for dt, entries in by.items():
            kernel.setdefault(fam, {}).setdefault(dt, {}).update(entries)
    merged["kernel"] = kernel
    merged["scale"] = {**merged.get("scale", {}), **raw.get("scale", {})}
    for key in ("name", "description", "gpu", "calibration"):
        if key in raw:
            merged[key] = raw[key]
    merged.setdefault("name", path.stem)
    if "name" not in raw:
        merged["name"] = path.stem
    return merged


def _build(raw: dict[str, Any], where: str) -> HardwareSpec:
    kwargs: dict[str, Any] = {
        "name": str(raw.get("name", "")),
        "description": str(raw.get("description", "")),
        "gpu": str(raw.get("gpu", "")),
    }
    sources: dict[str, str] = {}
    spec = raw.get("spec", {})
    numeric = [f for f in SCALAR_FIELDS if f not in ("name", "description", "gpu")]
    unknown = sorted(set(spec) - set(numeric))
    for name in unknown:
        if _home(name) is not None:
            raise UsageError(f"{where}: spec.{name} is not a [spec] field; it belongs under {_home(name)}")
    if unknown:
        raise UsageError(f"{where}: unknown [spec] fields {unknown}; valid: {', '.join(numeric)}")
    for name in numeric:
        if name not in spec:
            if name in OPTIONAL_FIELDS:
                continue
            raise UsageError(f"{where}: [spec] has no {name!r}; add it with a value and a source")
        value, src = _value(spec[name], f"{where}: spec.{name}")
        kwargs[name] = _number(value, f"{where}: spec.{name}", integer=name in INTEGER_FIELDS)
        sources[name] = src
    comm: dict[str, CommParams] = {}
    for impl, entries in raw.get("comm", {}).items():
        if impl not in COMM_IMPLS:
            raise UsageError(
                f"{where}: unknown [comm.{impl}]; valid implementations: {', '.join(COMM_IMPLS)}"
            )
        params: dict[str, Any] = {}
        for name, entry in entries.items():
            if name not in COMM_FIELDS:
                home = _home(name)
                raise UsageError(
                    f"{where}: comm.{impl}.{name} is not read there; it belongs under {home} (TOML puts "
                    "every line after a [table] header into it)"
                    if home is not None
                    else f"{where}: unknown field comm.{impl}.{name}; valid: {', '.join(COMM_FIELDS)}"
                )
            value, src = _value(entry, f"{where}: comm.{impl}.{name}")
            params[name] = _number(value, f"{where}: comm.{impl}.{name}")
            sources[f"comm.{impl}.{name}"] = src
        try:
            comm[impl] = CommParams(impl=impl, **params)
        except TypeError as exc:
            raise UsageError(
                f"{where}: [comm.{impl}] is incomplete ({exc}); add the missing fields"
            ) from None
    kwargs["comm"] = comm
    kwargs["kernels"] = _curves(raw.get("kernel", {}), where, sources)
    scale: dict[str, float] = {}
    for fam, entry in raw.get("scale", {}).items():
        if fam not in SCALE_FAMILIES:
            raise UsageError(f"{where}: unknown [scale] field {fam!r}; valid: {', '.join(SCALE_FAMILIES)}")
        value, src = _value(entry, f"{where}: scale.{fam}")
        scale[fam] = _number(value, f"{where}: scale.{fam}")
        sources[f"scale.{fam}"] = src
    kwargs["scale"] = scale
    kwargs["sources"] = sources
    kwargs["calibration"] = dict(raw.get("calibration", {}))
    hw = HardwareSpec(**kwargs)
    _check(hw, where)
    return hw


def _curves(
    tables: Mapping[str, Any], where: str, sources: dict[str, str]
) -> dict[tuple[str, str], KernelCurve]:
    """``[kernel.<family>.<dtype>]`` tables as curves (their sources recorded in ``sources``)."""
    out: dict[tuple[str, str], KernelCurve] = {}
    for fam, by in tables.items():
        if fam not in FAMILIES:
            raise UsageError(f"{where}: unknown [kernel.{fam}]; valid families: {', '.join(FAMILIES)}")
        for dt, entries in by.items():
            values: dict[str, float] = {}
            for name, entry in entries.items():
                if name not in CURVE_FIELDS:
                    raise UsageError(
                        f"{where}: unknown field kernel.{fam}.{dt}.{name}; valid: {', '.join(CURVE_FIELDS)}"
                    )
                value, src = _value(entry, f"{where}: kernel.{fam}.{dt}.{name}")
                values[name] = _number(value, f"{where}: kernel.{fam}.{dt}.{name}")
                sources[f"kernel.{fam}.{dt}.{name}"] = src
            try:
                out[(fam, dt)] = KernelCurve(family=fam, dtype=dt, **values)
            except TypeError as exc:
                raise UsageError(
                    f"{where}: [kernel.{fam}.{dt}] is incomplete ({exc}); add the missing fields"
                ) from None
    return out


def _number(value: Any, where: str, *, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or value < 0:
        raise UsageError(f"{where} must be a finite number >= 0, got {value!r}")
    if integer:
        if int(value) != value or value < 1:
            raise UsageError(f"{where} must be a whole number >= 1, got {value!r}")
        return int(value)
    return float(value)


def _check(hw: HardwareSpec, where: str) -> None:
    for name in ("bf16_flops", "fp8_flops", "hbm_bw", "scaleup_bw", "scaleout_bw"):
        if getattr(hw, name) <= 0:
            raise UsageError(f"{where}: {name} must be > 0")
    for p in hw.comm.values():
        for name in ("eff_up", "eff_out"):
            if not 0 < getattr(p, name) <= 1:
                raise UsageError(f"{where}: comm.{p.impl}.{name} must be in (0, 1], got {getattr(p, name)}")


def _preset_path(name: str) -> Path:
    path = DATA_DIR / f"{name}.toml"
    if path.is_file():
        return path
    candidate = Path(name).expanduser()
    if candidate.is_file():
        return candidate
    if name.endswith(".toml") or "/" in name:
        raise UsageError(
            f"hardware preset file {name} does not exist; pass a preset name or an existing .toml file"
        )
    raise UnknownNameError(
        "hardware preset", name, hardware_names(), hint="or pass a path to a preset .toml file"
    )


def hardware_names() -> list[str]:
    """Names of the built-in hardware presets, sorted."""
    return sorted(p.stem for p in DATA_DIR.glob("*.toml"))


@cache
def _load_cached(path: str) -> HardwareSpec:
    p = Path(path)
    return _build(_merge_raw(p), p.name if p.parent == DATA_DIR else str(p))


def reload_presets() -> None:
    """Forget the presets read so far (after a preset file was rewritten)."""
    _load_cached.cache_clear()


def get_hardware(name: str | Path, overrides: Mapping[str, Any] | None = None) -> HardwareSpec:
    """A hardware preset by name or preset-file path, with ``overrides`` applied.

    ``overrides`` maps a field (``scaleout_bw``) or a comm field (``comm.deepep-ll.eff_out``) to a
    value; values may be strings (as given by ``--set field=value`` on the command line).
    """
    hw = _load_cached(str(_preset_path(str(name)).resolve()))
    if overrides:
        hw = apply_overrides(hw, overrides)
    return hw


def apply_overrides(hw: HardwareSpec, overrides: Mapping[str, Any]) -> HardwareSpec:
    """``hw`` with fields replaced; each override's source is recorded as 'override'."""
    changes: dict[str, Any] = {}
    comm = dict(hw.comm)
    sources = dict(hw.sources)
    for key, raw in overrides.items():
        if key.startswith("kernel."):
            kernels = dict(changes.get("kernels", hw.kernels))
            parts = key.split(".")
            if len(parts) != 4 or (parts[1], parts[2]) not in kernels or parts[3] not in CURVE_FIELDS:
                have = ", ".join(f"{f}.{d}" for f, d in sorted(kernels))
                raise UsageError(
                    f"override {key!r}: expected kernel.<family>.<dtype>.<field> with family.dtype in {have} and "
                    f"field in {', '.join(CURVE_FIELDS)}"
                )
            value = _number(_parse(raw, key), f"override {key}")
            kernels[(parts[1], parts[2])] = dataclasses.replace(
                kernels[(parts[1], parts[2])], **{parts[3]: value}
            )
            changes["kernels"] = kernels
        elif key.startswith("scale."):
            fam = key.split(".", 1)[1]
            if fam not in SCALE_FAMILIES:
                raise UsageError(f"override {key!r}: valid: scale.<{'|'.join(SCALE_FAMILIES)}>")
            changes["scale"] = {
                **changes.get("scale", hw.scale),
                fam: _number(_parse(raw, key), f"override {key}"),
            }
        elif key.startswith("comm."):
            parts = key.split(".")
            if len(parts) != 3 or parts[1] not in comm or parts[2] not in COMM_FIELDS:
                raise UsageError(
                    f"override {key!r}: expected comm.<impl>.<field> with impl in {', '.join(sorted(comm))} "
                    f"and field in {', '.join(COMM_FIELDS)}"
                )
            value = _number(_parse(raw, key), f"override {key}")
            comm[parts[1]] = dataclasses.replace(comm[parts[1]], **{parts[2]: value})
        else:
            numeric = [f for f in SCALAR_FIELDS if f not in ("name", "description", "gpu")]
            if key not in numeric:
                raise UsageError(
                    f"override {key!r} is not a hardware field; valid: {', '.join(numeric)}, comm.<impl>.<field>, "
                    "kernel.<family>.<dtype>.<field>, scale.<family>"
                )
            changes[key] = _number(_parse(raw, key), f"override {key}", integer=key in INTEGER_FIELDS)
        sources[key] = "override"
    new = dataclasses.replace(hw, comm=comm, sources=sources, **changes)
    _check(new, f"hardware {hw.name} with overrides")
    return new


def _parse(raw: Any, key: str) -> Any:
    if isinstance(raw, str):
        try:
            return float(raw) if any(c in raw.lower() for c in ".e") else int(raw)
        except ValueError:
            raise UsageError(
                f"override {key}={raw!r}: the value must be a number in SI units (e.g. 5e10)"
            ) from None
    return raw


def parse_set_options(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["field=value", ...]`` (the CLI's repeated ``--set``) as a dict."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--set {item!r}: expected FIELD=VALUE, for example --set scaleout_bw=1e11")
        out[key.strip()] = value.strip()
    return out


def preset_path(name: str) -> Path:
    """The file of a built-in preset (or the given file)."""
    return _preset_path(name)
