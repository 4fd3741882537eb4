"""Turn what callers append (Arrow, polars, dicts of numpy arrays) into a table of the schema."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from tracekit.errors import SchemaError
from tracekit.schema.tables import TableSpec


def to_arrow(spec: TableSpec, data: Any, schema: pa.Schema, *, defaults: Mapping[str, Any]) -> pa.Table:
    """Conform ``data`` to ``schema``: cast each column, fill absent nullable columns with nulls and
    absent ``defaults`` columns (such as ``rank``) with their value; refuse absent required ones."""
    columns = _as_columns(data)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise SchemaError(f"table {spec.name}: columns of different lengths {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    arrays = []
    for fld in schema:
        if fld.name in columns:
            arrays.append(_column(spec.name, fld, columns[fld.name]))
        elif fld.name in defaults:
            arrays.append(pa.array(np.full(n, defaults[fld.name]), type=fld.type))
        elif fld.nullable:
            arrays.append(pa.nulls(n, type=fld.type))
        else:
            raise SchemaError(f"table {spec.name}: required column {fld.name!r} is missing")
    unknown = set(columns) - set(schema.names)
    if unknown:
        raise SchemaError(
            f"table {spec.name}: unknown columns {sorted(unknown)}; valid: {', '.join(schema.names)}"
        )
    return pa.Table.from_arrays(arrays, schema=schema)


def _as_columns(data: Any) -> dict[str, Any]:
    if isinstance(data, pa.Table | pa.RecordBatch):
        return {name: data.column(name) for name in data.schema.names}
    if isinstance(data, Mapping):
        return dict(data)
    if hasattr(data, "to_arrow"):  # polars DataFrame
        table = data.to_arrow()
        return {name: table.column(name) for name in table.schema.names}
    raise SchemaError(f"cannot append {type(data).__name__}: give a dict of arrays, Arrow or polars")


def _column(table: str, fld: pa.Field, values: Any) -> pa.Array | pa.ChunkedArray:
    typ = fld.type
    if isinstance(values, np.ndarray) and values.ndim == 2 and pa.types.is_fixed_size_list(typ):
        if values.shape[1] != typ.list_size:
            raise SchemaError(
                f"table {table}: column {fld.name} has {values.shape[1]} entries per row, "
                f"expected top_k = {typ.list_size}"
            )
        flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=typ.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, typ.list_size)
    try:
        if isinstance(values, pa.Array | pa.ChunkedArray):
            if values.type == typ:
                return values
            return values.cast(typ)
        if isinstance(values, np.ndarray):
            return pa.array(values, type=typ, from_pandas=False)
        if hasattr(values, "to_arrow"):  # polars Series
            return values.to_arrow().cast(typ)
        return pa.array(values, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
        raise SchemaError(f"table {table}: column {fld.name} cannot be stored as {typ}: {exc}") from None
