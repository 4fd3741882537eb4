"""The measured-kernel table: its columns and its kernel families, from ``schemas/measured/v1/``.

One table format serves every source of measured kernel times: ``tracekit bench`` writes it, the
AIConfigurator reader converts that tool's databases into it, and :mod:`tracekit.cost.measured`
looks times up in it. ``measured.json`` declares the columns (like the trace tables);
``families.json`` names each kernel family once, with its shape keys (exact or interpolated) and
what its ``flops`` and ``bytes`` mean. The schema version is stamped into every Parquet file
written here (``tracekit.schema_version`` and ``tracekit.table = measured``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.errors import SchemaError, SchemaVersionError, UnknownNameError, UsageError
from tracekit.schema.tables import (
    META_TABLE_KEY,
    META_VERSION_KEY,
    ColumnSpec,
    TableSpec,
    same_type,
    schema_root,
    type_name,
)

MEASURED_TABLE = "measured"
MEASURED_VERSION = "1.0"
MEASURED_MAJOR = 1

#: Canonical dtype names of the table, and the names accepted for them.
DTYPE_ALIASES: dict[str, str] = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "fp8": "fp8",
    "float8_e4m3fn": "fp8",
    "fp8_e4m3": "fp8",
    "e4m3": "fp8",
    "fp8_block": "fp8_block",
    "int8": "int8",
    "nvfp4": "nvfp4",
    "w4a16_mxfp4": "w4a16_mxfp4",
    "mxfp4": "w4a16_mxfp4",
}

#: Storage bytes per element of each canonical dtype (block scales included for the 4-bit kinds).
DTYPE_BYTES: dict[str, float] = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp32": 4.0,
    "fp8": 1.0,
    "fp8_block": 1.0,
    "int8": 1.0,
    "nvfp4": 4.5 / 8,
    "w4a16_mxfp4": 4.25 / 8,
}


def canonical_dtype(name: str) -> str:
    """The table's name for a dtype (``bfloat16`` -> ``bf16``); UsageError for an unknown one."""
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise UsageError(
            f"unknown dtype {name!r}; valid: {', '.join(sorted(set(DTYPE_ALIASES.values())))} "
            "(or a torch dtype name such as bfloat16)"
        )
    return DTYPE_ALIASES[key]


@dataclass(frozen=True, kw_only=True)
class FamilySpec:
    """One kernel family: what it measures and which shape keys identify a measurement."""

    name: str
    description: str
    #: Which operand the row's dtype describes (weights, KV cache, payload, ...).
    dtype_of: str
    #: Keys that must match a measured row exactly (head dimensions, group sizes).
    exact_keys: tuple[str, ...]
    #: Keys interpolated, outermost first, never extrapolated: the outer ones linearly in log time
    #: vs log size, the innermost (size) key as ``size_axis`` says.
    interpolated_keys: tuple[str, ...]
    #: How time follows the innermost key: ``"affine"`` (a latency plus a cost per unit of size:
    #: interpolated linearly in time vs size) or ``"power"`` (a floor bending to a power of the
    #: size: a monotone cubic in log time vs log size).
    size_axis: str
    #: What ``flops`` and ``bytes`` of a row mean for this family (text from families.json).
    flops_doc: str
    bytes_doc: str

    @property
    def shape_keys(self) -> tuple[str, ...]:
        return self.exact_keys + self.interpolated_keys


def measured_root() -> Path:
    return schema_root() / "measured" / f"v{MEASURED_MAJOR}"


@cache
def measured_spec() -> TableSpec:
    """The measured table's columns, from ``schemas/measured/v1/measured.json``."""
    path = measured_root() / "measured.json"
    if not path.is_file():
        raise SchemaError(f"tracekit's measured-table schema is missing ({path}); reinstall tracekit")
    raw = json.loads(path.read_text())
    return TableSpec(
        name=raw["table"],
        version=raw["version"],
        description=raw["description"],
        columns=tuple(ColumnSpec(**c) for c in raw["columns"]),
    )


@cache
def family_specs() -> dict[str, FamilySpec]:
    """Every kernel family, keyed by name, from ``schemas/measured/v1/families.json``."""
    path = measured_root() / "families.json"
    raw = json.loads(path.read_text())
    out: dict[str, FamilySpec] = {}
    for name, f in raw["families"].items():
        out[name] = FamilySpec(
            name=name,
            description=f["description"],
            dtype_of=f["dtype"],
            exact_keys=tuple(f["exact_keys"]),
            interpolated_keys=tuple(f["interpolated_keys"]),
            size_axis=_size_axis(path, name, f.get("size_axis")),
            flops_doc=f["flops"],
            bytes_doc=f["bytes"],
        )
    return out


SIZE_AXES = ("affine", "power")


def _size_axis(path: Path, family: str, value: object) -> str:
    if value not in SIZE_AXES:
        raise SchemaError(f"{path}: family {family} has size_axis {value!r}; valid: {', '.join(SIZE_AXES)}")
    return str(value)


def family_spec(name: str) -> FamilySpec:
    specs = family_specs()
    if name not in specs:
        raise UnknownNameError("kernel family", name, specs)
    return specs[name]


def shape_columns() -> list[str]:
    """Every shape-key column of the table (the union of the families' keys), in schema order."""
    keys = {k for f in family_specs().values() for k in f.shape_keys}
    return [c.name for c in measured_spec().columns if c.name in keys]


# -- flops and bytes of a family's rows ----------------------------------------------------------


def _col(df: pl.DataFrame, name: str) -> np.ndarray:
    return df[name].cast(pl.Float64).to_numpy()


def work(family: str, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(flops, bytes) of each row of ``df`` (one family's rows: its shape columns and ``dtype``),
    as families.json defines them; NaN where the family has no flop count or the dtype no size."""
    spec = family_spec(family)
    c = {k: _col(df, k) for k in spec.shape_keys}
    eb = np.array([DTYPE_BYTES.get(d, np.nan) for d in df["dtype"].to_list()], dtype=np.float64)
    nan = np.full(df.height, np.nan)
    if family == "hbm_read":
        return c["size_bytes"] / eb, c["size_bytes"]
    if family == "hbm_copy":
        return nan, 2.0 * c["size_bytes"]
    if family == "gemm":
        m, n, k = c["m"], c["n"], c["k"]
        return 2.0 * m * n * k, (m * k + k * n) * eb + m * n * 2.0
    if family == "grouped_gemm":
        e, t, h, f = c["num_experts"], c["tokens_per_expert"], c["hidden_size"], c["ffn_size"]
        return 6.0 * e * t * h * f, e * 3.0 * h * f * eb + e * t * h * (eb + 2.0)
    if family == "gqa_decode":
        b, h, kv, hk, d = c["batch_size"], c["num_heads"], c["kv_len"], c["num_kv_heads"], c["head_dim"]
        return 4.0 * b * h * kv * d, 2.0 * b * kv * hk * d * eb
    if family == "gqa_prefill":
        b, h, s, hk, d = c["batch_size"], c["num_heads"], c["seq_len"], c["num_kv_heads"], c["head_dim"]
        return 4.0 * b * h * d * s * (s + 1) / 2, b * s * (2 * h + 2 * hk) * d * eb
    if family == "mla_decode":
        b, h, kv, r, p = (
            c["batch_size"],
            c["num_heads"],
            c["kv_len"],
            c["kv_lora_rank"],
            c["qk_rope_head_dim"],
        )
        return 2.0 * b * h * kv * (2 * r + p), b * kv * (r + p) * eb
    if family == "mla_prefill":
        b, h, s = c["batch_size"], c["num_heads"], c["seq_len"]
        qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
        v = c["v_head_dim"]
        return 2.0 * b * h * (qk + v) * s * (s + 1) / 2, b * s * h * (2 * qk + 2 * v) * eb
    if family == "rmsnorm":
        t, h = c["num_tokens"], c["hidden_size"]
        return 4.0 * t * h, 2.0 * t * h * eb
    if family == "silu_mul":
        t, f = c["num_tokens"], c["ffn_size"]
        return 5.0 * t * f, 3.0 * t * f * eb
    if family in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        return nan, c["message_bytes"]
    if family in ("ep_dispatch", "ep_combine"):
        return nan, c["num_tokens"] * c["top_k"] * c["hidden_size"] * eb
    raise UnknownNameError("kernel family with a work formula", family, family_specs())


def with_work(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with flops, bytes, flops_per_s and bytes_per_s filled in per family (replacing any)."""
    parts = []
    for (fam,), part in df.group_by(["family"], maintain_order=True):
        flops, nbytes = work(str(fam), part)
        t = part["time_s"].to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            parts.append(
                part.with_columns(
                    pl.Series("flops", flops).fill_nan(None),
                    pl.Series("bytes", nbytes).fill_nan(None),
                    pl.Series("flops_per_s", flops / t).fill_nan(None),
                    pl.Series("bytes_per_s", nbytes / t).fill_nan(None),
                )
            )
    return pl.concat(parts, how="vertical") if parts else df


# -- conforming, writing and reading -------------------------------------------------------------


_POLARS_TYPES: dict[str, Any] = {
    "string": pl.String,
    "int64": pl.Int64,
    "int32": pl.Int32,
    "float64": pl.Float64,
}


def conform(rows: pl.DataFrame | list[dict[str, Any]], *, where: str = "measured table") -> pl.DataFrame:
    """Rows as a frame with exactly the schema's columns and types (absent nullable columns are
    null; unknown extra columns are dropped). SchemaError naming ``where`` on a missing required
    column, a null in one, an unknown family or dtype, a bad shape, or a non-positive time."""
    df = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows, infer_schema_length=None)
    spec = measured_spec()
    missing = [c.name for c in spec.columns if not c.nullable and c.name not in df.columns]
    if missing:
        raise SchemaError(f"{where}: missing required column(s) {', '.join(missing)}")
    exprs = []
    for c in spec.columns:
        dtype = _POLARS_TYPES[c.type]
        if c.name in df.columns:
            exprs.append(pl.col(c.name).cast(dtype, strict=False).alias(c.name))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(c.name))
    try:
        out = df.select(exprs)
    except pl.exceptions.PolarsError as exc:
        raise SchemaError(f"{where}: columns do not fit the measured-table schema ({exc})") from None
    for c in spec.columns:
        if not c.nullable and out[c.name].null_count():
            raise SchemaError(f"{where}: column {c.name} has nulls (or values of the wrong type)")
    fams = set(out["family"].unique().to_list())
    unknown = sorted(fams - set(family_specs()))
    if unknown:
        raise SchemaError(
            f"{where}: unknown kernel famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(family_specs()))}"
        )
    bad_dtypes = sorted(set(out["dtype"].unique().to_list()) - set(DTYPE_BYTES))
    if bad_dtypes:
        raise SchemaError(
            f"{where}: unknown dtype(s) {', '.join(bad_dtypes)}; valid: {', '.join(sorted(DTYPE_BYTES))}"
        )
    if (out["time_s"] <= 0).any() or out["time_s"].is_nan().any():
        raise SchemaError(f"{where}: time_s must be a positive number of seconds in every row")
    for fam in fams:
        part = out.filter(pl.col("family") == fam)
        for key in family_spec(fam).shape_keys:
            col = part[key]
            if col.null_count():
                raise SchemaError(f"{where}: {fam} rows without {key} (a shape key of {fam})")
            if (col.cast(pl.Float64) <= 0).any():
                raise SchemaError(f"{where}: {fam} rows with {key} <= 0; shape keys are positive")
    return out


def arrow_table(df: pl.DataFrame) -> pa.Table:
    """The conformed frame as Arrow, with the measured schema and its version in the metadata."""
    spec = measured_spec()
    fields = [pa.field(c.name, c.arrow_type(), nullable=c.nullable) for c in spec.columns]
    meta = {META_VERSION_KEY: MEASURED_VERSION.encode(), META_TABLE_KEY: MEASURED_TABLE.encode()}
    return df.to_arrow().cast(pa.schema(fields, metadata=meta))


def write_measured(df: pl.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a measured table (conformed first) as one Parquet file; returns the path."""
    out = Path(path)
    table = arrow_table(conform(df, where=str(out)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
    tmp.replace(out)
    return out


def read_measured(path: str | os.PathLike[str]) -> pl.DataFrame:
    """A measured table from Parquet: refuses a file that is not one, or is of a newer major version."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such file; give a measured table written by `tracekit bench`")
    try:
        pf = pq.ParquetFile(p)
        meta = pf.schema_arrow.metadata or {}
        table = pf.read()
    except (OSError, pa.ArrowException) as exc:
        raise SchemaError(f"{p}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    kind = meta.get(META_TABLE_KEY)
    if kind is not None and kind != MEASURED_TABLE.encode():
        raise SchemaError(
            f"{p}: a tracekit {kind.decode(errors='replace')!r} table, not a measured table; "
            "give a file written by `tracekit bench run` or `tracekit bench import-aiconfigurator`"
        )
    version = meta.get(META_VERSION_KEY, b"").decode(errors="replace")
    if not version:
        raise SchemaError(f"{p}: no tracekit schema version in its metadata; not a measured table")
    _check_version(version, str(p))
    spec = measured_spec()
    for c in spec.columns:
        if c.name in table.column_names and not same_type(table.schema.field(c.name).type, c.arrow_type()):
            raise SchemaError(
                f"{p}: column {c.name} is {type_name(table.schema.field(c.name).type)}, "
                f"the schema says {c.type}"
            )
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return conform(df, where=str(p))


def _check_version(version: str, where: str) -> None:
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise SchemaVersionError(f"{where}: unreadable measured-table version {version!r}") from None
    if major > MEASURED_MAJOR:
        raise SchemaVersionError(
            f"{where}: written with measured-table schema {version}, newer than this tracekit reads "
            f"({MEASURED_VERSION}); upgrade tracekit"
        )
    if major < 1:
        raise SchemaVersionError(f"{where}: unknown measured-table version {version!r}")
