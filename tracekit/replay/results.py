"""Result directories: Parquet tables plus ``result.json``, readable by DuckDB and polars directly."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from tracekit.errors import UsageError
from tracekit.trace.layout import make_output_dir

RESULT_JSON = "result.json"


def jsonable(v: Any) -> Any:
    """Plain JSON values (numpy scalars to Python, NaN and inf to null)."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, str):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def check_out_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse ``out`` as :func:`prepare_dir` would, without touching it (call before long work)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is not a directory; choose another --out")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise UsageError(
                f"{path}: directory exists and is not empty; choose another --out or pass --force"
            )
        if not (path / RESULT_JSON).exists():
            raise UsageError(f"{path}: not empty and not a tracekit result directory; refusing to delete it")
    return path


def prepare_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Create ``out`` (empty); refuse a non-empty directory unless it is a result and ``overwrite``."""
    path = check_out_dir(out, overwrite=overwrite)
    if path.is_dir() and any(path.iterdir()):
        shutil.rmtree(path)
    make_output_dir(path)
    return path


def write_tables(path: Path, tables: Mapping[str, pl.DataFrame], meta: Mapping[str, Any]) -> Path:
    """Write each table as ``<name>.parquet`` and ``meta`` as ``result.json``."""
    for name, df in tables.items():
        df.write_parquet(path / f"{name}.parquet")
    (path / RESULT_JSON).write_text(json.dumps(jsonable(dict(meta)), indent=2) + "\n")
    return path


def read_result(path: str | Path) -> dict[str, Any]:
    """``result.json`` of a result directory."""
    p = Path(path) / RESULT_JSON
    if not p.is_file():
        raise UsageError(
            f"{path}: no {RESULT_JSON}; give a directory written by tracekit replay, compare or sweep"
        )
    out: dict[str, Any] = json.loads(p.read_text())
    return out


def write_result(result: Any, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a :class:`~tracekit.replay.ReplayResult` as a result directory (docs/replay.md)."""
    path = prepare_dir(out, overwrite=overwrite)
    meta = {
        "kind": "replay",
        "trace": result.trace_path,
        "deployment": result.deployment.to_dict(),
        **({"prefill_deployment": result.prefill_deployment.to_dict()} if result.prefill_deployment else {}),
        "summary": result.summary.to_dict(),
    }
    return write_tables(path, result.all_tables(), meta)
