"""Perfetto / chrome://tracing export: a replay result directory (built here following
docs/replay.md, and one written by the real replay) and an imported trace's kernels."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from tests.importers.kineto_layout import KinetoBuilder
from tracekit.cli.main import cli

SEG = [
    "attention_s",
    "attn_proj_s",
    "expert_gemm_s",
    "dense_s",
    "fixed_s",
    "dispatch_s",
    "combine_s",
    "tp_comm_s",
]
COMPUTE = ["attention_s", "attn_proj_s", "expert_gemm_s", "dense_s", "fixed_s"]
NAME = {
    "attention_s": "attention",
    "attn_proj_s": "attn_proj",
    "fixed_s": "fixed",
    "expert_gemm_s": "expert_gemm",
    "dense_s": "dense",
    "dispatch_s": "dispatch",
    "combine_s": "combine",
    "tp_comm_s": "tp_comm",
}


def _result_dir(path: Path, *, tbo: bool, seed: int = 0) -> Path:
    """replay_ranks / replay_layers / replay_steps with the columns docs/replay.md lists."""
    rng = np.random.default_rng(seed)
    rows = []
    for phase, steps in (("prefill", 1), ("decode", 2)):
        for step in range(steps):
            for layer in range(3):
                for rank in range(4):
                    r = {"pool": "all", "step": step, "phase": phase, "layer": layer, "rank": rank}
                    for c in SEG:
                        r[c] = float(rng.uniform(1e-6, 5e-5))
                    if layer == 0:  # a dense layer: no dispatch / combine
                        r["dispatch_s"] = r["combine_s"] = 0.0
                    r["tp_comm_s"] = 0.0
                    r["compute_s"] = sum(r[c] for c in COMPUTE)
                    r["comm_s"] = r["dispatch_s"] + r["combine_s"] + r["tp_comm_s"]
                    r["exposed_comm_s"] = max(0.0, r["comm_s"] - r["compute_s"]) if tbo else r["comm_s"]
                    r["total_s"] = r["compute_s"] + r["exposed_comm_s"]
                    rows.append(r)
    ranks = pl.DataFrame(rows).with_columns(
        pl.col("step").cast(pl.Int32), pl.col("layer").cast(pl.Int16), pl.col("rank").cast(pl.Int32)
    )
    layers = (
        ranks.group_by("pool", "step", "phase", "layer")
        .agg(time_s=pl.col("total_s").max(), mean_load_s=pl.col("total_s").mean())
        .with_columns(straggler_s=pl.col("time_s") - pl.col("mean_load_s"))
    )
    steps = (
        layers.group_by("pool", "step", "phase")
        .agg(layers_s=pl.col("time_s").sum())
        .with_columns(embedding_s=pl.lit(2e-6), lm_head_s=pl.lit(3e-6))
        .with_columns(step_time_s=pl.col("layers_s") + pl.col("embedding_s") + pl.col("lm_head_s"))
        .drop("layers_s")
    )
    path.mkdir()
    ranks.write_parquet(path / "replay_ranks.parquet")
    layers.write_parquet(path / "replay_layers.parquet")
    steps.write_parquet(path / "replay_steps.parquet")
    (path / "result.json").write_text(json.dumps({"kind": "replay", "trace": "x", "summary": {}}))
    return path


def _export(src: Path, out: Path) -> dict:
    res = CliRunner().invoke(cli, ["export", "perfetto", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def _tracks(doc: dict) -> dict[tuple[int, int], list[dict]]:
    tracks: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for ev in doc["traceEvents"]:
        if ev["ph"] == "X":
            tracks[(ev["pid"], ev["tid"])].append(ev)
    return tracks


def _check_timeline(doc: dict, ranks: pl.DataFrame, layers: pl.DataFrame, steps: pl.DataFrame) -> None:
    tracks = _tracks(doc)
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in doc["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }
    assert sorted(t for _, t in tracks) == sorted(ranks["rank"].unique().to_list())  # one track per rank
    assert all(names[k] == f"rank {k[1]}" for k in tracks)
    for evs in tracks.values():
        ts = np.array([e["ts"] for e in evs])
        dur = np.array([e["dur"] for e in evs])
        assert np.all(np.diff(ts) >= 0)  # ordered
        assert np.all(ts[:-1] + dur[:-1] <= ts[1:] + 1e-6)  # non-overlapping
        assert np.all(dur > 0)
    # durations equal to the replay's, per (phase, step, layer, rank) and component
    got: dict[tuple, float] = defaultdict(float)
    total_args: dict[tuple, float] = {}
    for (_, rank), evs in tracks.items():
        for e in evs:
            a = e["args"]
            got[(a["phase"], a["step"], a.get("layer"), rank, e["name"])] += e["dur"] / 1e6
            if "total_s" in a:
                total_args[(a["phase"], a["step"], a.get("layer"), rank, e["name"])] = a["total_s"]
    lt = {(r["phase"], r["step"], r["layer"]): r["time_s"] for r in layers.iter_rows(named=True)}
    for r in ranks.iter_rows(named=True):
        key = (r["phase"], r["step"], r["layer"], r["rank"])
        frac = min(r["exposed_comm_s"] / r["comm_s"], 1.0) if r["comm_s"] > 0 else 0.0
        for c in SEG:
            expected = r[c] * (frac if c in ("dispatch_s", "combine_s", "tp_comm_s") else 1.0)
            assert got.get((*key, NAME[c]), 0.0) == pytest.approx(expected, rel=1e-9, abs=1e-15)
            if c in ("dispatch_s", "combine_s") and expected > 0:
                assert total_args[(*key, NAME[c])] == pytest.approx(r[c])
        idle = lt[key[:3]] - r["total_s"]
        assert got.get((*key, "idle"), 0.0) == pytest.approx(max(idle, 0.0), abs=1e-12)
    # each track spans the sum of step times (all ranks end together)
    total = steps["step_time_s"].sum()
    for evs in tracks.values():
        assert (evs[-1]["ts"] + evs[-1]["dur"]) / 1e6 == pytest.approx(total, rel=1e-9)


@pytest.mark.parametrize("tbo", [False, True])
def test_replay_result_built_from_the_docs(tmp_path: Path, tbo: bool) -> None:
    src = _result_dir(tmp_path / "r", tbo=tbo)
    doc = _export(src, tmp_path / "out.json")
    _check_timeline(
        doc,
        pl.read_parquet(src / "replay_ranks.parquet"),
        pl.read_parquet(src / "replay_layers.parquet"),
        pl.read_parquet(src / "replay_steps.parquet"),
    )


@pytest.mark.parametrize("mtp", [None, (1, 0.8)])
def test_real_replay_result(tmp_path: Path, mtp: tuple[int, float] | None) -> None:
    replay_mod = pytest.importorskip("tracekit.replay")
    results = pytest.importorskip("tracekit.replay.results")
    from tests.factories import tiny_manifest, write_routing_trace

    rng = np.random.default_rng(5)
    ids = np.argsort(rng.random((3, 2, 16, 8)), axis=-1)[..., :2]
    write_routing_trace(
        tmp_path / "trace", ids, manifest=tiny_manifest(), phases=["prefill", "decode", "decode"]
    )
    res = replay_mod.replay(tmp_path / "trace", replay_mod.Deployment(hw="h200-sxm", ep=2, tbo=True, mtp=mtp))
    results.write_result(res, tmp_path / "r")
    doc = _export(tmp_path / "r", tmp_path / "out.json")
    _check_timeline(
        doc,
        pl.read_parquet(tmp_path / "r" / "replay_ranks.parquet"),
        pl.read_parquet(tmp_path / "r" / "replay_layers.parquet"),
        pl.read_parquet(tmp_path / "r" / "replay_steps.parquet"),
    )


def test_imported_kernels(tmp_path: Path) -> None:
    b = KinetoBuilder()
    b.kernel("fused_moe_kernel", 10.0, 4.0, stream=7)
    b.kernel("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 12.0, 6.5, stream=20)
    b.kernel("_w8a8_block_fp8_matmul", 20.0, 2.25, stream=7)
    path = b.write(tmp_path / "k.json")
    res = CliRunner().invoke(cli, ["import", "kineto", str(path), "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    doc = _export(tmp_path / "t", tmp_path / "k_out.json")
    tracks = _tracks(doc)
    assert set(tracks) == {(0, 7), (0, 20)}
    assert [(e["name"], e["ts"], e["dur"], e["cat"]) for e in tracks[(0, 7)]] == [
        ("fused_moe_kernel", 0.0, 4.0, "expert_gemm"),
        ("_w8a8_block_fp8_matmul", 10.0, 2.25, "dense_gemm"),
    ]
    assert tracks[(0, 20)][0]["dur"] == 6.5


def test_refusals_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "result.json").write_text('{"kind": "sweep"}')
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "result.json").write_text('{"kind": "replay"}')
    pl.DataFrame({"step": [0]}).write_parquet(tmp_path / "bad" / "replay_ranks.parquet")
    for src, message in (
        (tmp_path / "sweep", "not a replay"),
        (tmp_path / "bad", "missing columns"),
        (tmp_path, "neither a replay result"),
    ):
        res = CliRunner().invoke(cli, ["export", "perfetto", str(src), "--out", str(tmp_path / "o.json")])
        assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1
