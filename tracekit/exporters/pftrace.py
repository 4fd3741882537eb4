"""Perfetto protobuf timelines (``.pftrace``) of replays, recorded traces and imported kernels.

Every export has one process per rank (``rank N``, or ``POOL rank N`` when a replay has pools);
under it, named tracks:

- a **replay**: ``compute`` holds each step, its layers nested in it, and each layer's attention,
  attn_proj, expert_gemm, dense, fixed and contention (compute slowed by the SMs the all-to-all
  holds); ``comm`` holds dispatch, combine and tp_comm at their full length. Without overlap they
  follow the replay's order (attention, projections, dispatch, expert GEMM, dense, fixed kernels,
  combine, TP collective); under overlap a rank's communication ends with its layer's work and
  overlaps its compute by ``comm_s - exposed_comm_s`` (the hidden part), so the overlap shows as
  comm slices beside compute slices. Flows join a dispatch on the source rank to the dispatch on
  each destination rank it sends to (``replay_peers``), and a combine back; counters give
  ``tokens received`` (``tokens_recv``) and ``dispatch bytes sent`` per layer.
- a **recorded trace**: ``steps`` (measured step times), ``layers`` (each layer's span of
  communication calls) and ``comm`` lanes (every timed collective, named by purpose, with op, bytes
  and peers in its args); flows join each dispatch or combine call to the matching call (same step,
  layer, purpose and call order) of every rank it sent bytes to; counters give ``bytes sent`` per
  call and ``tokens received`` per layer (expert_load under contiguous placement at the trace's EP).
- an **imported Kineto trace** (``kernels``): ``steps`` and ``layers`` rebuilt from the step and layer
  annotations each kernel fell in, a track per CUDA stream and ``cpu`` lanes for CPU operators
  (nested as they ran).

Flows are capped at :data:`MAX_FLOWS` (the first steps get them); the export says how many it wrote.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tracekit.errors import UsageError
from tracekit.exporters.timeline import Timeline, TimelineCounts, lanes

#: At most this many flows per export (a 64-rank EP run has 4032 per layer and step).
MAX_FLOWS = 50_000
_COMPUTE = (
    ("attention", "attention_s"),
    ("attn_proj", "attn_proj_s"),
    ("expert_gemm", "expert_gemm_s"),
    ("dense", "dense_s"),
    ("fixed", "fixed_s"),
    ("contention", "contention_s"),
)
_COMM = (("dispatch", "dispatch_s"), ("combine", "combine_s"), ("tp_comm", "tp_comm_s"))


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def write_replay(ranks: pl.DataFrame, step_len: pl.DataFrame, src: Path, dst: Path) -> TimelineCounts:
    """``ranks`` and ``step_len`` as laid out by ``perfetto._replay_layout``."""
    tl = Timeline()
    pools = sorted(ranks["pool"].unique().to_list())
    tracks: dict[tuple[str, int], dict[str, int]] = {}
    for pi, pool in enumerate(pools):
        for rank in sorted(ranks.filter(pl.col("pool") == pool)["rank"].unique().to_list()):
            name = f"rank {rank}" if len(pools) == 1 else f"{pool} rank {rank}"
            proc = tl.process(pi * 100_000 + int(rank) + 1, name)
            tracks[(pool, int(rank))] = {
                "compute": tl.track(proc, "compute", 0),
                "comm": tl.track(proc, "comm", 1),
                "tokens": tl.counter_track(proc, "tokens received", "token-expert pairs"),
                "bytes": tl.counter_track(proc, "dispatch bytes sent", "bytes"),
            }
    # steps, on every rank of their pool
    for row in step_len.iter_rows(named=True):
        start = row["step_start_s"]
        end = start + row["step_s"]
        for (pool, _rank), t in tracks.items():
            if pool != row["pool"]:
                continue
            args = {"phase": row["phase"], "step": int(row["step"])}
            tl.slice(
                t["compute"], f"{row['phase']} step {row['step']}", _ns(start), _ns(end), depth=0, args=args
            )
            emb_end = start + row["embedding_s"]
            tl.slice(t["compute"], "embedding", _ns(start), _ns(emb_end), depth=1, args=args)
            head_start = start + row["embedding_s"] + row["layers_s"]
            head_end = head_start + row["lm_head_s"]
            tl.slice(t["compute"], "lm_head", _ns(head_start), _ns(head_end), depth=1, args=args)
            if row.get("mtp_s", 0.0) > 0:  # multi-token prediction's draft passes end the step
                tl.slice(t["compute"], "mtp", _ns(head_end), _ns(head_end + row["mtp_s"]), depth=1, args=args)

    peers = _peer_pairs(src)
    flows_left = MAX_FLOWS
    order_cols = ["pool", "step_order", "layer", "rank"]
    df = ranks.sort(order_cols)
    comm_cols = [c for _, c in _COMM]
    full_comm = np.sum([df[c].to_numpy() for c in comm_cols], axis=0)
    exposed = df["exposed_comm_s"].to_numpy() if "exposed_comm_s" in df.columns else full_comm
    compute_total = np.sum([df[c].to_numpy() for _, c in _COMPUTE], axis=0)
    # slices of dispatch / combine per (pool, step_order, layer, rank), for flows
    comm_slot: dict[tuple[Any, ...], dict[str, list[list[int]]]] = {}
    rows = df.select(
        "pool", "phase", "step", "step_order", "layer", "rank", "layer_start_s", "layer_s",
        *[c for _, c in _COMPUTE], *comm_cols,
        *[c for c in ("tokens_recv", "dispatch_bytes") if c in df.columns],
    ).iter_rows(named=True)  # fmt: skip
    pending: list[tuple[int, str, int, int, dict[str, Any], tuple[Any, ...]]] = []
    for i, row in enumerate(rows):
        t = tracks[(row["pool"], int(row["rank"]))]
        layer_start = row["layer_start_s"]
        args = {"phase": row["phase"], "step": int(row["step"]), "layer": int(row["layer"])}
        tl.slice(t["compute"], f"layer {row['layer']}", _ns(layer_start), _ns(layer_start + row["layer_s"]),
                 depth=1, args=args)  # fmt: skip
        overlap = exposed[i] < full_comm[i] - 1e-15
        pos = layer_start
        comm_at: dict[str, float] = {}
        if overlap:  # compute back to back; comm ends with the layer's work
            for name, col in _COMPUTE:
                tl.slice(
                    t["compute"], name, _ns(pos), _ns(pos + row[col]), depth=2, args=args, category="compute"
                )
                pos += row[col]
            cpos = max(layer_start, layer_start + compute_total[i] + exposed[i] - full_comm[i])
            for name, col in _COMM:
                comm_at[name] = cpos
                cpos += row[col]
        else:
            serial = (*_COMPUTE[:2], _COMM[0], *_COMPUTE[2:], _COMM[1], _COMM[2])
            for name, col in serial:
                if name in dict(_COMM):
                    comm_at[name] = pos
                else:
                    tl.slice(t["compute"], name, _ns(pos), _ns(pos + row[col]), depth=2, args=args,
                             category="compute")  # fmt: skip
                pos += row[col]
        key = (row["pool"], row["step_order"], int(row["layer"]))
        for name, col in _COMM:
            if row[col] > 0:
                pending.append((_ns(comm_at[name]), name, _ns(comm_at[name] + row[col]), int(row["rank"]),
                                {**args, "total_s": row[col], "overlapped": bool(overlap)}, key))  # fmt: skip
                comm_slot.setdefault(key, {}).setdefault(name, []).append([int(row["rank"])])
        if "tokens_recv" in row and row["tokens_recv"] is not None:
            tl.counter(t["tokens"], _ns(layer_start), float(row["tokens_recv"]))
        if "dispatch_bytes" in row and row["dispatch_bytes"] is not None:
            tl.counter(t["bytes"], _ns(layer_start), float(row["dispatch_bytes"]))
    # flows: dispatch src -> dst, combine dst -> src, for the (pool, layer) pairs replay_peers lists
    flows_out: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    flows_in: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for key, names in sorted(comm_slot.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        pool, _order, layer = key
        have = {n: {r[0] for r in v} for n, v in names.items()}
        for src_rank, dst_rank in peers.get((pool, layer), ()):
            for name, a, b in (("dispatch", src_rank, dst_rank), ("combine", dst_rank, src_rank)):
                if flows_left <= 0 or a not in have.get(name, ()) or b not in have.get(name, ()):
                    continue
                fid = tl.flow()
                flows_out[(*key, name, a)].append(fid)
                flows_in[(*key, name, b)].append(fid)
                flows_left -= 1
    for start, name, end, rank, args, key in pending:
        pool = key[0]
        tl.slice(tracks[(pool, rank)]["comm"], name, start, end, depth=0, args=args, category="communication",
                 flows_out=flows_out.get((*key, name, rank), ()), flows_in=flows_in.get((*key, name, rank), ()))  # fmt: skip
    return tl.write(dst)


def _peer_pairs(src: Path) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """(pool, layer) -> (src_rank, dst_rank) pairs that exchange bytes (``replay_peers``)."""
    path = src / "replay_peers.parquet"
    if not path.is_file():
        return {}
    df = pl.read_parquet(path)
    if not {"layer", "src_rank", "dst_rank", "dispatch_bytes"} <= set(df.columns):
        return {}
    if "pool" not in df.columns:
        df = df.with_columns(pool=pl.lit("all"))
    df = (
        df.filter((pl.col("dispatch_bytes") > 0) & (pl.col("src_rank") != pl.col("dst_rank")))
        .select(pl.col("pool").cast(pl.String), pl.col("layer").cast(pl.Int64), "src_rank", "dst_rank")
        .unique()
        .sort("pool", "layer", "src_rank", "dst_rank")
    )
    out: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for pool, layer, a, b in df.iter_rows():
        out[(pool, layer)].append((int(a), int(b)))
    return out


def write_trace(src: Path, dst: Path) -> tuple[str, TimelineCounts]:
    """A recorded trace's steps, comm and expert loads, or an imported trace's kernels."""
    from tracekit.trace import open_trace

    trace = open_trace(src)
    has_comm = trace.has("comm") and trace.scan("comm").select(pl.len()).collect().item() > 0
    has_kernels = trace.has("kernels") and trace.scan("kernels").select(pl.len()).collect().item() > 0
    if not has_comm and not has_kernels:
        raise UsageError(
            f"{src}: the trace has neither comm nor kernels rows, so it has no timeline; record with "
            "--ep N (tracekit record) or import a Kineto trace, or export a replay of it"
        )
    tl = Timeline()
    ranks: set[int] = set()
    steps = trace.scan("steps").collect() if trace.has("steps") else pl.DataFrame()
    comm = trace.scan("comm").collect() if has_comm else pl.DataFrame()
    kernels = trace.scan("kernels").collect() if has_kernels else pl.DataFrame()
    for df in (steps, comm, kernels):
        if df.height:
            ranks |= {int(r) for r in df["rank"].unique().to_list()}
    procs = {r: tl.process(r + 1, f"rank {r}") for r in sorted(ranks)}
    steps_tracks = {r: tl.track(p, "steps", 0) for r, p in procs.items()}
    layer_tracks = {r: tl.track(p, "layers", 1) for r, p in procs.items()}
    timed = (
        steps.filter(pl.col("start_ns").is_not_null() & (pl.col("duration_ns") > 0))
        if steps.height
        else steps
    )
    for row in timed.iter_rows(named=True):
        tl.slice(steps_tracks[int(row["rank"])], f"{row['phase']} step {row['step']}", int(row["start_ns"]),
                 int(row["start_ns"]) + int(row["duration_ns"]),
                 args={"step": int(row["step"]), "phase": row["phase"], "num_tokens": int(row["num_tokens"] or 0)})  # fmt: skip
    if has_comm:
        _comm_timeline(tl, trace, comm, procs, layer_tracks)
        kind = "recorded comm and steps"
    else:
        _kernel_timeline(tl, kernels, procs, steps_tracks, layer_tracks, timed.height == 0)
        kind = "kernels"
    return kind, tl.write(dst)


def _comm_timeline(
    tl: Timeline, trace: Any, comm: pl.DataFrame, procs: dict[int, int], layer_tracks: dict[int, int]
) -> None:
    timed = comm.filter(pl.col("start_ns").is_not_null() & pl.col("end_ns").is_not_null()).sort(
        "rank", "start_ns", pl.col("end_ns"), descending=[False, False, True]
    )
    # layers: each (rank, step, layer)'s span of calls
    spans = (
        timed.filter(pl.col("layer").is_not_null())
        .group_by("rank", "step", "layer")
        .agg(start=pl.col("start_ns").min(), end=pl.col("end_ns").max())
        .sort("rank", "start", "layer")
    )
    for rank, part in spans.group_by("rank", maintain_order=True):
        lane_of = lanes(part["start"].to_list(), part["end"].to_list())
        tracks: dict[int, int] = {0: layer_tracks[int(rank[0])]}
        for row, lane in zip(part.iter_rows(named=True), lane_of, strict=True):
            if lane not in tracks:
                tracks[lane] = tl.track(procs[int(rank[0])], f"layers {lane + 1}", 1)
            tl.slice(tracks[lane], f"layer {row['layer']}", int(row["start"]), int(row["end"]),
                     args={"step": int(row["step"]), "layer": int(row["layer"])})  # fmt: skip
    _tokens_counters(tl, trace, spans, procs)
    # calls: occurrence index per (rank, step, layer, purpose), to match calls across ranks
    timed = timed.with_columns(occurrence=pl.int_range(pl.len()).over("rank", "step", "layer", "purpose"))
    where: dict[tuple[Any, ...], bool] = {}
    for rk, st, ly, pu, oc in timed.select("rank", "step", "layer", "purpose", "occurrence").iter_rows():
        where[(int(rk), st, ly, pu, int(oc))] = True
    flows_out: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    flows_in: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    budget = MAX_FLOWS
    pairs = timed.filter(
        pl.col("purpose").is_in(["dispatch", "combine"]) & pl.col("send_bytes_per_peer").is_not_null()
    )
    for row in pairs.sort("step", "layer", "purpose", "occurrence", "rank").iter_rows(named=True):
        key = (row["step"], row["layer"], row["purpose"], int(row["occurrence"]))
        group = row["group_ranks"] or []
        for gi, nbytes in enumerate(row["send_bytes_per_peer"] or []):
            if gi >= len(group) or not nbytes or int(group[gi]) == int(row["rank"]) or budget <= 0:
                continue
            peer = int(group[gi])
            if (peer, *key) not in where:
                continue
            fid = tl.flow()
            flows_out[(int(row["rank"]), *key)].append(fid)
            flows_in[(peer, *key)].append(fid)
            budget -= 1
    counters = {r: tl.counter_track(p, "bytes sent", "bytes") for r, p in procs.items()}
    for rank, part in timed.group_by("rank", maintain_order=True):
        r = int(rank[0])
        lane_of = lanes(part["start_ns"].to_list(), part["end_ns"].to_list())
        tracks = {0: tl.track(procs[r], "comm", 2)}
        for row, lane in zip(part.iter_rows(named=True), lane_of, strict=True):
            if lane not in tracks:
                tracks[lane] = tl.track(procs[r], f"comm {lane + 1}", 2)
            call_key = (r, row["step"], row["layer"], row["purpose"], int(row["occurrence"]))
            args = {k: row[k] for k in ("op", "backend", "bytes_sent", "bytes_recv", "step", "layer", "peer")
                    if row.get(k) is not None}  # fmt: skip
            tl.slice(tracks[lane], str(row["purpose"] or row["op"]), int(row["start_ns"]), int(row["end_ns"]),
                     category="communication", args=args, flows_out=flows_out.get(call_key, ()),
                     flows_in=flows_in.get(call_key, ()))  # fmt: skip
            tl.counter(counters[r], int(row["start_ns"]), float(row["bytes_sent"] or 0))
            tl.counter(counters[r], int(row["end_ns"]), 0.0)


def _tokens_counters(tl: Timeline, trace: Any, spans: pl.DataFrame, procs: dict[int, int]) -> None:
    """``tokens received`` per rank at each layer's start: expert_load under contiguous placement."""
    if not trace.has("expert_load") or spans.height == 0:
        return
    arch = trace.manifest.model
    ep = max(int(trace.manifest.parallel.ep_size or 1), 1)
    per_rank = -(-int(arch.num_experts) // ep)
    load = (
        trace.scan("expert_load")
        .group_by("step", "layer", (pl.col("expert") // per_rank).alias("ep_rank"))
        .agg(tokens=pl.col("num_tokens").sum())
        .collect()
    )
    first = spans.group_by("rank", "step", "layer").agg(start=pl.col("start").min())
    joined = first.join(
        load.with_columns(pl.col("ep_rank").cast(first["rank"].dtype)),
        left_on=["rank", "step", "layer"],
        right_on=["ep_rank", "step", "layer"],
    ).sort("rank", "start")
    tracks = {r: tl.counter_track(p, "tokens received", "token-expert pairs") for r, p in procs.items()}
    for row in joined.iter_rows(named=True):
        tl.counter(tracks[int(row["rank"])], int(row["start"]), float(row["tokens"]))


def _kernel_timeline(
    tl: Timeline,
    kernels: pl.DataFrame,
    procs: dict[int, int],
    steps_tracks: dict[int, int],
    layer_tracks: dict[int, int],
    draw_steps: bool,
) -> None:
    df = kernels.with_columns(end_ns=pl.col("start_ns") + pl.col("duration_ns")).sort(
        "rank", "start_ns", "end_ns", descending=[False, False, True]
    )
    # the annotations the importer matched: step and layer spans rebuilt from their kernels
    for cols, tracks, depth_name in (
        (["step"], steps_tracks, "step"),
        (["step", "layer"], layer_tracks, "layer"),
    ):
        if not draw_steps and depth_name == "step":
            continue
        spans = (
            df.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in cols))
            .group_by("rank", *cols)
            .agg(start=pl.col("start_ns").min(), end=pl.col("end_ns").max())
            .sort("rank", "start")
        )
        for row in spans.iter_rows(named=True):
            name = f"step {row['step']}" if depth_name == "step" else f"layer {row['layer']}"
            tl.slice(tracks[int(row["rank"])], name, int(row["start"]), int(row["end"]),
                     args={c: int(row[c]) for c in cols})  # fmt: skip
    for (rank, stream), part in df.group_by("rank", "stream", maintain_order=True):
        r = int(rank)
        lane_of = lanes(part["start_ns"].to_list(), part["end_ns"].to_list())
        base = "cpu" if stream is None else f"stream {stream}"
        lane_tracks: dict[int, int] = {}
        for row, lane in zip(part.iter_rows(named=True), lane_of, strict=True):
            if lane not in lane_tracks:
                lane_tracks[lane] = tl.track(procs[r], base if lane == 0 else f"{base} ({lane + 1})", 3)
            args = {k: row[k] for k in ("category", "step", "layer", "correlation", "collective", "message_bytes")
                    if row.get(k) is not None}  # fmt: skip
            tl.slice(lane_tracks[lane], str(row["name"]), int(row["start_ns"]), int(row["end_ns"]),
                     category=str(row["category"]), args=args)  # fmt: skip
