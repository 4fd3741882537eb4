"""Result directories: Parquet tables plus ``result.json``, readable by DuckDB and polars directly.

``result.json`` is written last and marks the result complete: ``tracekit sql`` and ``report`` refuse
a result folder without it. Writers hold the output's lock (:mod:`tracekit.trace.outputs`).

A result may go to a URI (``s3://bucket/results/run1``): it is written to a local staging folder,
then each file is uploaded whole, ``result.json`` last, so readers see a complete result or none.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.errors import UsageError
from tracekit.provenance import stamp as provenance_stamp
from tracekit.schema import result_spec
from tracekit.trace import store
from tracekit.trace.layout import make_output_dir
from tracekit.trace.outputs import OLD_TAG, Output, recover, write_file_atomic
from tracekit.trace.store import Location, RemotePath

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


def _is_result(path: Location) -> bool:
    return (path / RESULT_JSON).exists()


def _output(out: str | Path, overwrite: bool, *, stage_new: bool) -> Output:
    return Output(
        out, kind="dir", force=overwrite, what="result directory", is_ours=_is_result, stage_new=stage_new
    )


def check_out_dir(out: str | Path | RemotePath, *, overwrite: bool = False) -> Location:
    """Refuse ``out`` as :func:`prepare_dir` would, without touching it (call before long work)."""
    loc = store.location(out)
    if isinstance(loc, RemotePath):
        store.check_remote_output(loc, force=overwrite, what="result directory", is_ours=_is_result)
        return loc
    _output(loc, overwrite, stage_new=False).check()
    return loc


#: Local staging folders of results bound for a URI: staging folder -> (destination, replace).
_REMOTE: dict[Path, tuple[RemotePath, bool]] = {}


def _stage_remote(dest: RemotePath, overwrite: bool) -> Path:
    check_out_dir(dest, overwrite=overwrite)
    staging = Path(tempfile.mkdtemp(prefix="tracekit-result-"))
    _REMOTE[staging.resolve()] = (dest, overwrite)
    return staging


def _upload(staging: Path) -> None:
    """Put every file of a staged result at its URI (``result.json`` last), then drop the staging."""
    dest, overwrite = _REMOTE.pop(staging.resolve())
    try:
        if overwrite:
            dest.remove_tree()
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == RESULT_JSON)
        for f in files:
            (dest / f.relative_to(staging).as_posix()).write_bytes(f.read_bytes())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


#: Result directories opened by :func:`prepare_dir` and not yet finished by :func:`write_tables`.
_OPEN: dict[Path, Output] = {}


def prepare_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Lock ``out`` and give an empty directory there; refuse a non-empty directory unless it is a
    result and ``overwrite``. The old result is moved aside (kept whole) and dropped only when
    :func:`write_tables` has written the new ``result.json``; until then readers see a folder
    without ``result.json``, which they refuse as partial.

    New code should prefer :func:`result_dir`, which writes to a staging sibling and renames it into
    place only when complete. For a URI the directory given is a local staging folder, uploaded by
    :func:`write_tables`.
    """
    loc = store.location(out)
    if isinstance(loc, RemotePath):
        return _stage_remote(loc, overwrite)
    path = Path(out)
    output = _output(path, overwrite, stage_new=False)
    output.check()
    output.lock.acquire(path)
    try:
        recover(path)
        output.check(busy=False)
        if path.is_dir() and any(path.iterdir()):
            aside = path.parent / f".{path.name}{OLD_TAG}{os.getpid()}"
            os.rename(path, aside)  # whole and hidden until the new result.json exists
        make_output_dir(path)
    except BaseException:
        output.lock.release()
        raise
    _OPEN[path.resolve()] = output
    return path


@contextlib.contextmanager
def result_dir(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A locked staging directory for a result; renamed to ``out`` (replacing an old result only
    then) when the block ends without an exception, dropped otherwise. Write ``result.json`` (the
    commit marker readers look for) with :func:`write_tables` inside the block. For a URI the
    staging folder is local and its files are uploaded when the block ends."""
    loc = store.location(out)
    if isinstance(loc, RemotePath):
        staging = _stage_remote(loc, overwrite)
        try:
            yield staging
        except BaseException:
            _REMOTE.pop(staging.resolve(), None)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if staging.resolve() in _REMOTE:  # not uploaded by write_tables
            _upload(staging)
        return
    with _output(out, overwrite, stage_new=True) as output:
        yield output.target


def result_arrow(name: str, df: pl.DataFrame) -> pa.Table:
    """Result table ``name`` as Arrow, each column cast to the type ``schemas/v1/results/<name>.json``
    declares, with tracekit's key-value metadata: the schema version and table name, the tracekit
    version and the command that wrote it (:mod:`tracekit.provenance`)."""
    spec = result_spec(name)
    if df.columns != spec.column_names:
        raise ValueError(
            f"result table {name}: built with columns {df.columns}, declared {spec.column_names} "
            "(schemas/v1/results)"
        )
    schema = spec.arrow_schema()
    table = df.to_arrow().cast(schema)
    return table.replace_schema_metadata({**(schema.metadata or {}), **provenance_stamp()})


def write_tables(path: Path, tables: Mapping[str, pl.DataFrame], meta: Mapping[str, Any]) -> Path:
    """Write each table as ``<name>.parquet`` (:func:`result_arrow`: declared types and tracekit's
    metadata), then ``meta`` as ``result.json`` (through a temporary file and a rename, last: the
    marker that the result is complete)."""
    for name, df in tables.items():
        pq.write_table(result_arrow(name, df), path / f"{name}.parquet", compression="zstd")
    write_file_atomic(path / RESULT_JSON, json.dumps(jsonable(dict(meta)), indent=2) + "\n")
    if Path(path).resolve() in _REMOTE:
        _upload(Path(path))
        return path
    output = _OPEN.pop(Path(path).resolve(), None)
    if output is not None:  # opened by prepare_dir: drop the old result kept aside, unlock
        recover(output.path)
        output.lock.release()
    return path


def read_result(path: str | Path) -> dict[str, Any]:
    """``result.json`` of a result directory (or URI)."""
    p = store.location(path) / RESULT_JSON
    if not p.is_file():
        raise UsageError(
            f"{path}: no {RESULT_JSON}; give a directory written by tracekit replay, compare or sweep"
        )
    out: dict[str, Any] = json.loads(p.read_text())
    return out


def write_result(result: Any, out: str | Path, *, overwrite: bool = False) -> Location:
    """Write a :class:`~tracekit.replay.ReplayResult` as a result directory (docs/replay.md); it
    appears at ``out`` only when complete."""
    meta = {
        "kind": "replay",
        "trace": result.trace_path,
        "deployment": result.deployment.to_dict(),
        **({"prefill_deployment": result.prefill_deployment.to_dict()} if result.prefill_deployment else {}),
        "summary": result.summary.to_dict(),
    }
    with result_dir(out, overwrite=overwrite) as path:
        write_tables(path, result.all_tables(), meta)
    return store.location(out)
