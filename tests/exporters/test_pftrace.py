"""Perfetto protobuf export: read back with the ``perfetto`` package's own trace protos, checked
against the replay's and the trace's tables; loaded in the trace processor where its binary is here."""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

from tests.exporters.test_perfetto import _result_dir
from tests.importers.kineto_layout import KinetoBuilder
from tests.reports.builders import write_ep_trace
from tracekit.cli.main import cli


@dataclass
class Parsed:
    #: uuid -> (name, parent uuid or None, pid or None, is counter)
    tracks: dict[int, tuple[str, int | None, int | None, bool]] = field(default_factory=dict)
    slices: list[dict[str, Any]] = field(default_factory=list)
    counters: list[tuple[int, int, float]] = field(default_factory=list)

    def rank_of(self, track: int) -> str:
        name, parent, _, _ = self.tracks[track]
        while parent is not None:
            name, parent, _, _ = self.tracks[parent]
        return name

    def table(self) -> pl.DataFrame:
        """Slices as rows (process, track, name, ts, dur, depth, args...)."""
        return pl.DataFrame(
            [
                {
                    "process": self.rank_of(s["track"]),
                    "track": self.tracks[s["track"]][0],
                    "name": s["name"],
                    "ts": s["start"],
                    "dur": s["end"] - s["start"],
                    "depth": s["depth"],
                }
                for s in self.slices
            ]
        )


def parse(path: Path) -> Parsed:
    """Tracks, slices (BEGIN/END pairs matched per track) and counters of a .pftrace file."""
    trace = Trace.FromString(path.read_bytes())
    out = Parsed()
    open_: dict[int, list[dict[str, Any]]] = defaultdict(list)
    last_ts = -1
    for p in trace.packet:
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            out.tracks[d.uuid] = (
                d.process.process_name if d.HasField("process") else d.name,
                d.parent_uuid if d.HasField("parent_uuid") else None,
                d.process.pid if d.HasField("process") else None,
                d.HasField("counter"),
            )
            continue
        assert p.timestamp >= last_ts  # written sorted by time
        last_ts = p.timestamp
        e = p.track_event
        assert e.track_uuid in out.tracks
        if e.type == TrackEvent.TYPE_SLICE_BEGIN:
            args = {}
            for a in e.debug_annotations:
                kind = a.WhichOneof("value")
                args[a.name] = getattr(a, kind)
            open_[e.track_uuid].append(
                {"track": e.track_uuid, "name": e.name, "start": p.timestamp, "args": args,
                 "depth": len(open_[e.track_uuid]), "out": list(e.flow_ids), "in": list(e.terminating_flow_ids)}
            )  # fmt: skip
        elif e.type == TrackEvent.TYPE_SLICE_END:
            s = open_[e.track_uuid].pop()
            s["end"] = p.timestamp
            out.slices.append(s)
        elif e.type == TrackEvent.TYPE_COUNTER:
            out.counters.append((e.track_uuid, p.timestamp, e.double_counter_value))
    assert not any(open_.values())  # every slice ended
    return out


def _export(src: Path, out: Path) -> Parsed:
    r = CliRunner().invoke(cli, ["export", "perfetto", str(src), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "pftrace" in r.output
    return parse(out)


def _flows_pair_up(parsed: Parsed) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(source slice, destination slice) of every flow; each id leaves one slice and enters one."""
    src = {f: s for s in parsed.slices for f in s["out"]}
    dst = {f: s for s in parsed.slices for f in s["in"]}
    assert set(src) == set(dst)
    return [(src[f], dst[f]) for f in sorted(src)]


@pytest.mark.parametrize("tbo", [False, True])
def test_replay_tracks_nesting_and_overlap(tmp_path: Path, tbo: bool) -> None:
    src = _result_dir(tmp_path / "r", tbo=tbo)
    parsed = _export(src, tmp_path / "t.pftrace")
    ranks = pl.read_parquet(src / "replay_ranks.parquet")
    layers = pl.read_parquet(src / "replay_layers.parquet")
    procs = {u: t for u, t in parsed.tracks.items() if t[2] is not None}
    assert sorted(t[0] for t in procs.values()) == [f"rank {r}" for r in range(4)]
    children = {(parsed.rank_of(u), t[0]) for u, t in parsed.tracks.items() if t[1] is not None}
    for r in range(4):
        assert {
            (f"rank {r}", n) for n in ("compute", "comm", "tokens received", "dispatch bytes sent")
        } <= children
    by_track: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in parsed.slices:
        by_track[s["track"]].append(s)
    lt = {(r["phase"], r["step"], r["layer"]): r["time_s"] for r in layers.iter_rows(named=True)}
    segs: dict[tuple[Any, ...], dict[str, tuple[int, int]]] = defaultdict(dict)
    for track, slices in by_track.items():
        tname = parsed.tracks[track][0]
        rank = int(parsed.rank_of(track).split()[-1])
        for s in slices:
            a = s["args"]
            if tname == "compute" and s["name"].startswith("layer "):
                assert s["depth"] == 1  # inside its step
                step = next(
                    p for p in slices if p["depth"] == 0 and p["start"] <= s["start"] and s["end"] <= p["end"]
                )
                assert step["args"]["step"] == a["step"] and step["args"]["phase"] == a["phase"]
                assert (s["end"] - s["start"]) / 1e9 == pytest.approx(
                    lt[(a["phase"], a["step"], a["layer"])], abs=2e-9
                )
            elif "layer" in a:
                segs[(a["phase"], a["step"], a["layer"], rank)][s["name"]] = (s["start"], s["end"])
                if tname == "compute":
                    assert s["depth"] == 2
    for r in ranks.iter_rows(named=True):
        got = segs[(r["phase"], r["step"], r["layer"], r["rank"])]
        for name in ("attention", "attn_proj", "expert_gemm", "dense", "fixed", "dispatch", "combine"):
            want = r[name + "_s"]
            have = (got[name][1] - got[name][0]) / 1e9 if name in got else 0.0
            assert have == pytest.approx(want, abs=2e-9)  # comm at its full length
        compute = [got[n] for n in ("attention", "attn_proj", "expert_gemm", "dense", "fixed") if n in got]
        comm = [got[n] for n in ("dispatch", "combine") if n in got]
        overlap = sum(max(0, min(a[1], b[1]) - max(a[0], b[0])) for a in compute for b in comm) / 1e9
        assert overlap == pytest.approx(r["comm_s"] - r["exposed_comm_s"], abs=1e-8)
        if tbo and r["comm_s"] > r["exposed_comm_s"]:
            assert overlap > 0


def test_real_tbo_replay_comm_slices_per_rank_by_sql(tmp_path: Path) -> None:
    replay_mod = pytest.importorskip("tracekit.replay")
    results = pytest.importorskip("tracekit.replay.results")
    from tests.factories import tiny_manifest, write_routing_trace

    rng = np.random.default_rng(5)
    ids = np.argsort(rng.random((3, 2, 16, 8)), axis=-1)[..., :2]
    write_routing_trace(
        tmp_path / "trace", ids, manifest=tiny_manifest(), phases=["prefill", "decode", "decode"]
    )
    res = replay_mod.replay(tmp_path / "trace", replay_mod.Deployment(hw="h200-sxm", ep=2, tbo=True))
    results.write_result(res, tmp_path / "r")
    parsed = _export(tmp_path / "r", tmp_path / "tbo.pftrace")
    slices = parsed.table()
    got = duckdb.sql(
        "SELECT process, count(*) AS n FROM slices WHERE track = 'comm' GROUP BY process ORDER BY process"
    ).fetchall()
    ranks = pl.read_parquet(tmp_path / "r" / "replay_ranks.parquet")
    want = duckdb.sql(
        "SELECT 'rank ' || rank, sum((dispatch_s > 0)::INT + (combine_s > 0)::INT + (tp_comm_s > 0)::INT) "
        "FROM ranks GROUP BY rank ORDER BY 1"
    ).fetchall()
    assert got == [(p, int(n)) for p, n in want] and all(n > 0 for _, n in got)
    assert slices.filter(pl.col("track") == "comm")["dur"].min() > 0
    # flows: dispatch and combine between two different ranks, as replay_peers lists them
    pairs = _flows_pair_up(parsed)
    assert pairs
    for a, b in pairs:
        assert a["name"] == b["name"] and a["name"] in ("dispatch", "combine")
        assert parsed.rank_of(a["track"]) != parsed.rank_of(b["track"])
        assert a["args"]["layer"] == b["args"]["layer"] and a["args"]["step"] == b["args"]["step"]
    # counters: tokens received per rank and layer
    tracks = {u: parsed.rank_of(u) for u, t in parsed.tracks.items() if t[3] and t[0] == "tokens received"}
    got_tokens = sorted(v for u, _, v in parsed.counters if u in tracks)
    assert got_tokens == sorted(float(x) for x in ranks["tokens_recv"].to_list())


def test_recorded_ep_trace_comm_steps_flows_counters(tmp_path: Path) -> None:
    ep = write_ep_trace(tmp_path / "ep4")
    parsed = _export(ep.path, tmp_path / "ep.pftrace")
    slices = parsed.table()
    comm = pl.read_parquet(ep.path / "comm" / "*.parquet")
    timed = comm.filter(pl.col("start_ns").is_not_null())
    got = duckdb.sql(
        "SELECT process, count(*) FROM slices WHERE track LIKE 'comm%' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    want = duckdb.sql("SELECT 'rank ' || rank, count(*) FROM timed GROUP BY 1 ORDER BY 1").fetchall()
    assert got == want
    # every timed call at its recorded time, named by its purpose
    calls = sorted(
        (f"rank {r}", p, s, e)
        for r, p, s, e in timed.select("rank", "purpose", "start_ns", "end_ns").iter_rows()
    )
    drawn = sorted(
        (parsed.rank_of(s["track"]), s["name"], s["start"], s["end"])
        for s in parsed.slices
        if parsed.tracks[s["track"]][0].startswith("comm")
    )
    assert drawn == calls
    # steps on their own track, layers spanning their calls
    steps = pl.read_parquet(ep.path / "steps" / "*.parquet")
    assert slices.filter(pl.col("track") == "steps").height == steps.height
    assert (
        slices.filter(pl.col("track").str.starts_with("layers")).height
        == timed.filter(pl.col("layer").is_not_null()).select("rank", "step", "layer").unique().height
    )
    # flows: from each dispatch / combine call to the same call of every rank it sent bytes to
    pairs = _flows_pair_up(parsed)
    want_flows = 0
    for row in timed.filter(pl.col("purpose").is_in(["dispatch", "combine"])).iter_rows(named=True):
        want_flows += sum(1 for g, b in enumerate(row["send_bytes_per_peer"]) if b and g != row["rank"])
    assert len(pairs) == want_flows > 0
    for a, b in pairs:
        assert a["name"] == b["name"] and a["args"]["step"] == b["args"]["step"]
        assert a["args"]["layer"] == b["args"]["layer"]
        assert parsed.rank_of(a["track"]) != parsed.rank_of(b["track"])
    # tokens received: expert_load of each rank's experts (contiguous: 8 experts over EP 4)
    load = pl.read_parquet(ep.path / "expert_load" / "*.parquet")
    want_tokens = sorted(
        float(v)
        for v in load.group_by("step", "layer", pl.col("expert") // 2).agg(pl.col("num_tokens").sum())[
            "num_tokens"
        ]
    )
    tok_tracks = {u for u, t in parsed.tracks.items() if t[3] and t[0] == "tokens received"}
    assert sorted(v for u, _, v in parsed.counters if u in tok_tracks) == want_tokens


def test_imported_kineto_kernels_keep_step_and_layer_spans(tmp_path: Path) -> None:
    b = KinetoBuilder()
    b.annotation("ProfilerStep#4", 0.0, 40.0, gpu=True)
    b.annotation("model.layers.2", 5.0, 20.0, gpu=True)
    b.kernel("fused_moe_kernel", 10.0, 4.0, stream=7)
    b.kernel("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 12.0, 6.5, stream=20)
    b.kernel("_w8a8_block_fp8_matmul", 30.0, 2.25, stream=7)
    path = b.write(tmp_path / "k.json")
    res = CliRunner().invoke(cli, ["import", "kineto", str(path), "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    parsed = _export(tmp_path / "t", tmp_path / "k.pftrace")
    rows = {(r["track"], r["name"], r["ts"], r["dur"]) for r in parsed.table().iter_rows(named=True)}
    assert ("stream 7", "fused_moe_kernel", 10_000, 4000) in rows  # ns since the file's first event
    assert ("stream 7", "_w8a8_block_fp8_matmul", 30_000, 2250) in rows
    assert ("stream 20", "ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 12_000, 6500) in rows
    assert ("steps", "step 4", 10_000, 22_250) in rows  # the kernels' span inside the step annotation
    assert ("layers", "layer 2", 10_000, 8500) in rows  # the two kernels inside the layer annotation


def _trace_processor() -> str | None:
    found = os.environ.get("TRACE_PROCESSOR_SHELL") or shutil.which("trace_processor_shell")
    return found if found and Path(found).is_file() else None


def _tp_comm_slices_per_rank(trace: Path) -> list[tuple[str, int]]:
    """(process, comm slices) by SQL over the slices the trace processor loaded from ``trace``."""
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

    tp = TraceProcessor(trace=str(trace), config=TraceProcessorConfig(bin_path=_trace_processor()))
    try:
        rows = tp.query(
            "SELECT p.name AS process, count(*) AS n FROM slice s JOIN process_track t ON s.track_id = t.id "
            "JOIN process p USING (upid) WHERE t.name LIKE 'comm%' GROUP BY 1 ORDER BY 1"
        ).as_pandas_dataframe()
    finally:
        tp.close()
    return [(str(p), int(n)) for p, n in zip(rows["process"], rows["n"], strict=True)]


@pytest.mark.skipif(
    _trace_processor() is None,
    reason="no trace_processor_shell here: the perfetto package downloads it from the internet at first "
    "use and no PyPI or Debian package ships it; set TRACE_PROCESSOR_SHELL to a local binary to run this",
)
def test_trace_processor_loads_the_exports(tmp_path: Path) -> None:
    # a recorded EP trace: one comm slice per recorded call with a start time
    ep = write_ep_trace(tmp_path / "ep4")
    out = tmp_path / "ep.pftrace"
    _export(ep.path, out)
    comm = pl.read_parquet(ep.path / "comm" / "*.parquet").filter(pl.col("start_ns").is_not_null())
    want = comm.group_by("rank").len().sort("rank")
    assert _tp_comm_slices_per_rank(out) == [
        (f"rank {r}", n) for r, n in zip(want["rank"].to_list(), want["len"].to_list(), strict=True)
    ]
    # a TBO replay: dispatch, combine and TP comm slices per rank, as replay_ranks has them
    from tests.factories import tiny_manifest, write_routing_trace
    from tracekit.replay import Deployment, replay
    from tracekit.replay.results import write_result

    ids = np.argsort(np.random.default_rng(5).random((3, 2, 16, 8)), axis=-1)[..., :2]
    write_routing_trace(tmp_path / "t", ids, manifest=tiny_manifest(), phases=["prefill", "decode", "decode"])
    write_result(replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=2, tbo=True)), tmp_path / "r")
    _export(tmp_path / "r", tmp_path / "tbo.pftrace")
    ranks = pl.read_parquet(tmp_path / "r" / "replay_ranks.parquet")  # noqa: F841 (read by the SQL)
    want_tbo = duckdb.sql(
        "SELECT 'rank ' || rank, sum((dispatch_s > 0)::INT + (combine_s > 0)::INT + (tp_comm_s > 0)::INT) "
        "FROM ranks GROUP BY rank ORDER BY 1"
    ).fetchall()
    got = _tp_comm_slices_per_rank(tmp_path / "tbo.pftrace")
    assert got == [(p, int(n)) for p, n in want_tbo] and all(n > 0 for _, n in got)
