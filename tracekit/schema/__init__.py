"""Trace schema v1: table specs (from the data files under ``schemas/``) and the manifest."""

from tracekit.schema.manifest import AttentionSpec, Manifest, ModelArch, ParallelLayout
from tracekit.schema.tables import (
    SCHEMA_VERSION,
    TABLE_NAMES,
    ColumnSpec,
    TableSpec,
    result_spec,
    result_specs,
    table_spec,
    table_specs,
)

__all__ = [
    "SCHEMA_VERSION",
    "TABLE_NAMES",
    "AttentionSpec",
    "ColumnSpec",
    "Manifest",
    "ModelArch",
    "ParallelLayout",
    "TableSpec",
    "result_spec",
    "result_specs",
    "table_spec",
    "table_specs",
]
