"""Where things live inside a trace directory.

TRACE/
  manifest.json                   the Manifest (written by rank 0)
  _shards/rank-00000.json         one status file per writer: complete or not, rows per table
  <table>/r00000-p000000.parquet  part files, one per flush, written to a hidden temp name
                                  and renamed, so a killed writer leaves only whole files
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar, cast

from tracekit.errors import UsageError
from tracekit.trace.store import RemotePath

#: A local or a remote path: the layout is the same on both.
P = TypeVar("P", bound=Path | RemotePath)

MANIFEST = "manifest.json"
SHARDS = "_shards"
PART_GLOB = "*.parquet"
TMP_SUFFIX = ".tmp"


def shard_status_path(root: P, rank: int) -> P:
    return cast(P, root / SHARDS / f"rank-{rank:05d}.json")


def part_path(root: P, table: str, rank: int, index: int) -> P:
    return cast(P, root / table / f"r{rank:05d}-p{index:06d}.parquet")


def tmp_path(final: P) -> P:
    return cast(P, final.with_name("." + final.name + TMP_SUFFIX))


def make_output_dir(path: Path, option: str = "--out") -> None:
    """Create output directory ``path`` (and its parents); one-line UsageError when that fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"{option} {path}: cannot create the directory ({exc.strerror}); "
            f"give a {option} in a writable location"
        ) from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: directory is not writable; give a {option} you can write to")
