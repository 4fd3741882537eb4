"""Timelines for Perfetto: protobuf (``.pftrace``, :mod:`tracekit.exporters.pftrace`, the default)
or Chrome-trace JSON (an ``--out`` ending in ``.json``, or ``--format json``), described here.

A replay result (``replay_ranks`` / ``replay_layers`` / ``replay_steps``, docs/replay.md) becomes one
process per pool and one thread (track) per rank. Steps follow each other; a step is its embedding,
its layers in order, its LM head; a layer lasts its slowest rank's time, and on each rank it is, in
order: attention, attention projections, dispatch, expert GEMM, dense (dense FFN or shared experts),
small fixed kernels (norms, router, quantisation, launch gaps), combine, tensor-parallel collective,
``contention`` (compute slowed by the SMs the all-to-all holds, when the result has it), then ``idle``
(waiting for the slowest rank); a step ends with the LM head and, with multi-token prediction, the
``mtp`` draft passes. Communication hidden by overlap is not drawn: each communication
event lasts its exposed share (``exposed_comm_s / comm_s`` of it) and its args carry the full time. Events are ``ph: X`` with ``ts``/``dur`` in microseconds.

A trace with a ``kernels`` table becomes one process per rank and one thread per stream (CPU
operators on thread ``cpu``), each kernel with its category, step and layer in its args.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import polars as pl

from tracekit.errors import InputFormatError, UsageError

#: Events of one rank within a layer, in drawing order: (event name, replay_ranks column, is comm).
SEGMENTS: tuple[tuple[str, str, bool], ...] = (
    ("attention", "attention_s", False),
    ("attn_proj", "attn_proj_s", False),
    ("dispatch", "dispatch_s", True),
    ("expert_gemm", "expert_gemm_s", False),
    ("dense", "dense_s", False),
    ("fixed", "fixed_s", False),
    ("combine", "combine_s", True),
    ("tp_comm", "tp_comm_s", True),
    ("contention", "contention_s", False),
)
#: Columns results of earlier versions lack: drawn as zero.
_OPTIONAL_COLUMNS = ("attn_proj_s", "fixed_s")
_RANK_COLUMNS = (
    "step",
    "layer",
    "rank",
    *(c for _, c, _ in SEGMENTS if c not in _OPTIONAL_COLUMNS and c != "contention_s"),
)


@dataclass(frozen=True, kw_only=True)
class ExportReport:
    """What an export wrote."""

    out: Path
    #: "replay", "kernels" or "recorded comm and steps".
    kind: str
    #: Slices (protobuf) or events (JSON) written.
    events: int
    tracks: int
    #: "pftrace" or "json".
    format: str = "json"
    #: Flows between slices (protobuf only).
    flows: int = 0
    #: Counter values (protobuf only).
    counters: int = 0


#: Output formats: Perfetto's protobuf trace, or Chrome-trace JSON.
FORMATS = ("pftrace", "json")


def export_perfetto(
    source: str | Path, out: str | Path, *, overwrite: bool = False, fmt: str | None = None
) -> ExportReport:
    """Write ``source`` (a replay result directory or a trace directory) as a Perfetto timeline:
    protobuf unless ``fmt`` is ``json`` or ``out`` ends in ``.json``."""
    src, dst = Path(source), Path(out)
    fmt = fmt or ("json" if dst.suffix.lower() == ".json" else "pftrace")
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: not one of {', '.join(FORMATS)}")
    if dst.exists() and not overwrite:
        raise UsageError(f"{dst}: exists; choose another --out or pass --force to replace it")
    if dst.is_dir():
        raise UsageError(f"--out {dst}: is a directory; give a file name such as {dst / 'timeline.json'}")
    if not dst.parent.is_dir() or not os.access(dst.parent, os.W_OK):
        raise UsageError(
            f"--out {dst}: folder {dst.parent} does not exist or is not writable; "
            "create it or give a --out in a writable folder"
        )
    if (src / "result.json").is_file():
        if fmt == "json":
            return _export_replay(src, dst)
        from tracekit.exporters.pftrace import write_replay

        ranks, step_len = _replay_layout(src)
        counts = write_replay(ranks, step_len, src, dst)
        return ExportReport(out=dst, kind="replay", events=counts.slices, tracks=counts.tracks,
                            format=fmt, flows=counts.flows, counters=counts.counters)  # fmt: skip
    if (src / "manifest.json").is_file():
        if fmt == "json":
            return _export_kernels(src, dst)
        from tracekit.exporters.pftrace import write_trace

        kind, counts = write_trace(src, dst)
        return ExportReport(out=dst, kind=kind, events=counts.slices, tracks=counts.tracks,
                            format=fmt, flows=counts.flows, counters=counts.counters)  # fmt: skip
    raise UsageError(
        f"{src}: neither a replay result directory (no result.json) nor a trace (no manifest.json); "
        "give the --out directory of 'tracekit replay' or of 'tracekit import'"
    )


def _read_parquet(path: Path, required: tuple[str, ...]) -> pl.DataFrame:
    if not path.is_file():
        raise InputFormatError(
            f"{path}: missing; the replay result is incomplete, run 'tracekit replay' again"
        )
    try:
        df = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise InputFormatError(
            f"{path}: not a readable Parquet file (truncated or corrupted: {reason}); "
            "run 'tracekit replay' again to rewrite the result"
        ) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputFormatError(
            f"{path.name}: missing columns {missing} (has {df.columns}); it was written by another "
            "tracekit version, replay again"
        )
    return df


#: A replayed step is (pool, phase, step): steps are numbered per phase.
_KEY = ["pool", "phase", "step"]
#: Events shorter than this (seconds) are not drawn: float noise of subtractions.
_MIN_EVENT_S = 1e-12
#: Order of the phases on the timeline.
_PHASE_ORDER = {"prefill": 0, "mixed": 1, "decode": 2}


def _keyed(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with pool and phase (default ``all``) as strings and step as Int64."""
    for col in ("pool", "phase"):
        if col not in df.columns:
            df = df.with_columns(pl.lit("all").alias(col))
    return df.with_columns(
        pl.col("pool").cast(pl.String), pl.col("phase").cast(pl.String), pl.col("step").cast(pl.Int64)
    )


def _replay_layout(src: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Each rank-layer row of ``replay_ranks`` with its layer's start and length on the timeline
    (``layer_start_s``, ``layer_s``, ``step_order``), and each step's start and parts (``step_len``)."""
    try:
        result = json.loads((src / "result.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFormatError(
            f"{src / 'result.json'}: unreadable ({exc}); run 'tracekit replay' again"
        ) from None
    if not isinstance(result, dict) or result.get("kind") != "replay":
        kind = result.get("kind") if isinstance(result, dict) else None
        raise UsageError(
            f"{src}: a {kind!r} result, not a replay; export one replay directory (a sweep has many)"
        )
    ranks = _keyed(_read_parquet(src / "replay_ranks.parquet", _RANK_COLUMNS))
    ranks = ranks.with_columns(pl.col("layer").cast(pl.Int64), pl.col("rank").cast(pl.Int64))
    ranks = ranks.with_columns([pl.lit(0.0).alias(c) for c in _OPTIONAL_COLUMNS if c not in ranks.columns])
    comm = pl.sum_horizontal(*[pl.col(c) for _, c, is_comm in SEGMENTS if is_comm])
    if "exposed_comm_s" in ranks.columns:
        frac = pl.when(comm > 0).then(pl.col("exposed_comm_s") / comm).otherwise(0.0).clip(0.0, 1.0)
        # beyond the communication itself, exposed time is compute slowed by the SMs it holds
        contention = (pl.col("exposed_comm_s") - comm).clip(0.0, None)
    else:
        frac = pl.lit(1.0)
        contention = pl.lit(0.0)
    ranks = ranks.with_columns(contention_s=contention)
    ranks = ranks.with_columns(
        [(pl.col(c) * frac if is_comm else pl.col(c)).alias(c + "_drawn") for _, c, is_comm in SEGMENTS]
    )
    ranks = ranks.with_columns(busy_s=pl.sum_horizontal(*[pl.col(c + "_drawn") for _, c, _ in SEGMENTS]))

    # A layer lasts its slowest rank's time (replay_layers.time_s), never less than any rank's work.
    layer_len = ranks.group_by(*_KEY, "layer").agg(busy_max=pl.col("busy_s").max())
    lpath = src / "replay_layers.parquet"
    if lpath.is_file():
        layers = _keyed(_read_parquet(lpath, ("step", "layer", "time_s"))).with_columns(
            pl.col("layer").cast(pl.Int64)
        )
        layer_len = layer_len.join(layers.select(*_KEY, "layer", "time_s"), on=[*_KEY, "layer"], how="left")
        layer_len = layer_len.with_columns(
            layer_s=pl.max_horizontal(pl.col("time_s").fill_null(0.0), pl.col("busy_max"))
        ).drop("time_s")
    else:
        layer_len = layer_len.with_columns(layer_s=pl.col("busy_max"))

    extra = pl.DataFrame(
        schema={
            "pool": pl.String,
            "phase": pl.String,
            "step": pl.Int64,
            "embedding_s": pl.Float64,
            "lm_head_s": pl.Float64,
            "mtp_s": pl.Float64,
            "step_time_s": pl.Float64,
        }
    )
    spath = src / "replay_steps.parquet"
    if spath.is_file():
        steps = _keyed(_read_parquet(spath, ("step",)))
        for c in ("embedding_s", "lm_head_s", "mtp_s"):
            if c not in steps.columns:
                steps = steps.with_columns(pl.lit(0.0).alias(c))
        if "step_time_s" not in steps.columns:
            steps = steps.with_columns(pl.lit(None, pl.Float64).alias("step_time_s"))
        extra = steps.select(
            *_KEY,
            *[pl.col(c).cast(pl.Float64) for c in ("embedding_s", "lm_head_s", "mtp_s", "step_time_s")],
        )
    step_len = (
        layer_len.group_by(*_KEY)
        .agg(layers_s=pl.col("layer_s").sum())
        .join(extra, on=_KEY, how="left")
        .with_columns(pl.col(c).fill_null(0.0) for c in ("embedding_s", "lm_head_s", "mtp_s"))
        .with_columns(
            edges_end_s=pl.col("embedding_s") + pl.col("layers_s") + pl.col("lm_head_s") + pl.col("mtp_s")
        )
        # the step lasts the replay's step time: what the slowest rank's embedding, LM head and
        # draft passes add beyond the mean is drawn as idle at the step's end
        .with_columns(step_s=pl.max_horizontal("edges_end_s", pl.col("step_time_s").fill_null(0.0)))
        .with_columns(edge_wait_s=pl.col("step_s") - pl.col("edges_end_s"))
        .with_columns(phase_order=pl.col("phase").replace_strict(_PHASE_ORDER, default=len(_PHASE_ORDER)))
        .sort("pool", "phase_order", "phase", "step")
        .with_columns(step_start_s=pl.col("step_s").cum_sum().over("pool") - pl.col("step_s"))
        .with_columns(step_order=pl.int_range(pl.len()).over("pool"))
    )
    layer_len = (
        layer_len.sort(*_KEY, "layer")
        .with_columns(offset_s=pl.col("layer_s").cum_sum().over(_KEY) - pl.col("layer_s"))
        .join(step_len.select(*_KEY, "step_start_s", "embedding_s", "step_order"), on=_KEY)
        .with_columns(layer_start_s=pl.col("step_start_s") + pl.col("embedding_s") + pl.col("offset_s"))
    )
    ranks = ranks.join(
        layer_len.select(*_KEY, "layer", "layer_start_s", "layer_s", "step_order"), on=[*_KEY, "layer"]
    )
    return ranks, step_len


def _export_replay(src: Path, dst: Path) -> ExportReport:
    ranks, step_len = _replay_layout(src)
    # drawing order on a track: step, then layer (embedding before, LM head after), then segment
    cols = [
        *_KEY,
        "layer",
        "rank",
        "name",
        "cat",
        "ts_s",
        "dur_s",
        "full_s",
        "step_order",
        "layer_order",
        "seg",
    ]
    parts = []
    offset: pl.Expr = pl.lit(0.0)
    for seg, (name, col, is_comm) in enumerate(SEGMENTS):
        parts.append(
            ranks.with_columns(
                layer_order=pl.col("layer"),
                seg=pl.lit(seg),
                name=pl.lit(name),
                cat=pl.lit("communication" if is_comm else "compute"),
                ts_s=pl.col("layer_start_s") + offset,
                dur_s=pl.col(col + "_drawn"),
                full_s=pl.col(col),
            ).select(cols)
        )
        offset = offset + pl.col(col + "_drawn")
    idle = (pl.col("layer_s") - offset).clip(0.0, None)
    parts.append(
        ranks.with_columns(
            layer_order=pl.col("layer"),
            seg=pl.lit(len(SEGMENTS)),
            name=pl.lit("idle"),
            cat=pl.lit("idle"),
            ts_s=pl.col("layer_start_s") + offset,
            dur_s=idle,
            full_s=idle,
        ).select(cols)
    )
    rank_ids = ranks.select("pool", "rank").unique()
    edges = step_len.join(rank_ids, on="pool")
    for name, start, col, order in (
        ("embedding", pl.col("step_start_s"), "embedding_s", -1),
        (
            "lm_head",
            pl.col("step_start_s") + pl.col("embedding_s") + pl.col("layers_s"),
            "lm_head_s",
            1 << 30,
        ),
        (
            "mtp",
            pl.col("step_start_s") + pl.col("embedding_s") + pl.col("layers_s") + pl.col("lm_head_s"),
            "mtp_s",
            (1 << 30) + 1,
        ),
        ("idle", pl.col("step_start_s") + pl.col("edges_end_s"), "edge_wait_s", (1 << 30) + 2),
    ):
        parts.append(
            edges.with_columns(
                layer=pl.lit(None, pl.Int64),
                layer_order=pl.lit(order, pl.Int64),
                seg=pl.lit(0),
                name=pl.lit(name),
                cat=pl.lit("idle" if name == "idle" else "compute"),
                ts_s=start,
                dur_s=pl.col(col),
                full_s=pl.col(col),
            ).select(cols)
        )
    # float noise (an idle of 1e-20 s) is not an event
    events = (
        pl.concat(parts)
        .filter(pl.col("dur_s") > _MIN_EVENT_S)
        .sort("pool", "rank", "step_order", "layer_order", "seg")
    )
    pools = sorted(rank_ids["pool"].unique().to_list())
    pid_of = {p: i + 1 for i, p in enumerate(pools)}
    tmp = dst.with_name("." + dst.name + ".tmp")
    n = 0
    with tmp.open("w") as fh:
        fh.write('{"displayTimeUnit": "ms", "otherData": {"source": "tracekit replay", "result": ')
        fh.write(json.dumps(str(src)))
        fh.write('}, "traceEvents": [\n')
        first = _write_meta(fh, [(pid_of[p], f"replay pool {p}", None) for p in pools], first=True)
        tracks = [(pid_of[p], None, int(r)) for p, r in rank_ids.sort("pool", "rank").iter_rows()]
        first = _write_meta(fh, tracks, first=first)
        for row in events.iter_rows(named=True):
            args: dict[str, Any] = {"phase": row["phase"], "step": row["step"]}
            if row["layer"] is not None:
                args["layer"] = row["layer"]
            if row["cat"] == "communication":
                args["total_s"] = row["full_s"]
                args["exposed_s"] = row["dur_s"]
            ev = {
                "name": row["name"],
                "cat": row["cat"],
                "ph": "X",
                "pid": pid_of[row["pool"]],
                "tid": row["rank"],
                "ts": row["ts_s"] * 1e6,
                "dur": row["dur_s"] * 1e6,
                "args": args,
            }
            fh.write(("" if first else ",\n") + json.dumps(ev))
            first = False
            n += 1
        fh.write("\n]}\n")
    os.replace(tmp, dst)
    return ExportReport(out=dst, kind="replay", events=n, tracks=rank_ids.height)


def _write_meta(fh: IO[str], items: Sequence[tuple[int, str | None, int | None]], *, first: bool) -> bool:
    for pid, pname, tid in items:
        if tid is None:
            evs = [
                {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": pname}},
                {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}},
            ]
        else:
            label = "cpu" if tid < 0 else f"rank {tid}" if pname is None else pname
            evs = [
                {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": label}},
                {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}},
            ]
        for ev in evs:
            fh.write(("" if first else ",\n") + json.dumps(ev))
            first = False
    return first


def _export_kernels(src: Path, dst: Path) -> ExportReport:
    from tracekit.trace import open_trace

    trace = open_trace(src)
    if not trace.has("kernels"):
        raise UsageError(
            f"{src}: the trace has no kernels table; import a Kineto trace (tracekit import kineto)"
        )
    df = (
        trace.scan("kernels")
        .select("rank", "stream", "name", "category", "start_ns", "duration_ns", "step", "layer", "device")
        .with_columns(pl.col("stream").fill_null(-1))
        .sort("rank", "stream", "start_ns")
        .collect()
    )
    tracks = df.select("rank", "stream").unique().sort("rank", "stream")
    tmp = dst.with_name("." + dst.name + ".tmp")
    with tmp.open("w") as fh:
        fh.write('{"displayTimeUnit": "ms", "otherData": {"source": "tracekit trace", "trace": ')
        fh.write(json.dumps(str(src)))
        fh.write('}, "traceEvents": [\n')
        ranks = sorted(set(tracks["rank"].to_list()))
        first = _write_meta(fh, [(int(r), f"rank {r}", None) for r in ranks], first=True)
        thread_items = [(int(r), "cpu" if s < 0 else f"stream {s}", int(s)) for r, s in tracks.iter_rows()]
        first = _write_meta(fh, thread_items, first=first)
        ts_us = (df["start_ns"].to_numpy() / 1000.0).tolist()
        dur_us = (df["duration_ns"].to_numpy() / 1000.0).tolist()
        n = 0
        for i, row in enumerate(df.iter_rows(named=True)):
            args = {k: row[k] for k in ("category", "step", "layer", "device") if row[k] is not None}
            ev = {
                "name": row["name"],
                "cat": row["category"],
                "ph": "X",
                "pid": row["rank"],
                "tid": row["stream"],
                "ts": ts_us[i],
                "dur": dur_us[i],
                "args": args,
            }
            fh.write(("" if first else ",\n") + json.dumps(ev))
            first = False
            n += 1
        fh.write("\n]}\n")
    os.replace(tmp, dst)
    return ExportReport(out=dst, kind="kernels", events=n, tracks=tracks.height)
