"""Small inputs for the report tests, built in code: routing traces, an EP trace with comm and
kernel rows, replay and sweep result directories laid out as docs/replay.md describes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tests.factories import tiny_arch, tiny_manifest, write_routing_trace
from tracekit.replay.summary import BREAKDOWN
from tracekit.trace import TraceWriter

#: A kernel name that must show up as text, never as markup, in the HTML report.
EVIL_KERNEL = '<script>document.title="owned"</script>void fused_moe<128, "x">(float*)'
#: The replay's breakdown components, in its order (the reports list them so).
COMPONENTS = BREAKDOWN


def skewed_routing(
    rng: np.random.Generator, *, steps: int, layers: int, tokens: int, experts: int, top_k: int
) -> np.ndarray:
    """``expert_ids[step, layer, token, k]``: distinct experts per token, drawn with a skew that
    differs by layer (Gumbel top-k over Zipf-like logits), so hot experts exist."""
    ranks = np.arange(1, experts + 1, dtype=float)
    logits = np.stack([-(1.0 + 0.4 * li) * np.log(ranks[rng.permutation(experts)]) for li in range(layers)])
    noise = rng.gumbel(size=(steps, layers, tokens, experts))
    scores = logits[None, :, None, :] + noise
    return np.argsort(-scores, axis=-1)[..., :top_k].astype(np.int16)


def write_skewed_trace(
    path: Path,
    *,
    seed: int = 0,
    steps: int = 6,
    layers: int = 3,
    tokens: int = 16,
    experts: int = 8,
    top_k: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """A routing trace (first two steps prefill, the rest decode); returns (expert_ids, gate_weights)."""
    rng = np.random.default_rng(seed)
    ids = skewed_routing(rng, steps=steps, layers=layers, tokens=tokens, experts=experts, top_k=top_k)
    raw = rng.random(ids.shape).astype(np.float32) + 0.05
    weights = (raw / raw.sum(axis=-1, keepdims=True)).astype(np.float32)
    phases = ["prefill" if s < 2 else "decode" for s in range(steps)]
    write_routing_trace(path, ids, gate_weights=weights, phases=phases)
    return ids, weights


@dataclass(frozen=True, kw_only=True)
class EpTrace:
    path: Path
    #: bytes[src, dst] summed over the all-to-all calls of each purpose.
    matrix: dict[str, np.ndarray]
    #: bytes sent by point-to-point sends, [src, dst].
    sends: np.ndarray
    world: int


class _CommRows:
    """Columns of the comm table, one call at a time (``seq`` counts the calls)."""

    COLUMNS = (
        "seq", "step", "layer", "purpose", "op", "backend", "group_ranks", "dtype", "bytes_sent", "bytes_recv",
        "send_bytes_per_peer", "recv_bytes_per_peer", "peer", "is_async", "start_ns", "end_ns",
    )  # fmt: skip

    def __init__(self) -> None:
        self.rows: dict[str, list[object]] = {k: [] for k in self.COLUMNS}

    def add(self, **kw: object) -> None:
        values = {"peer": None, "send_bytes_per_peer": None, "recv_bytes_per_peer": None, "backend": "nccl",
                  "dtype": "bfloat16", "is_async": False, "seq": len(self.rows["seq"]), **kw}  # fmt: skip
        for k in self.COLUMNS:
            self.rows[k].append(values[k])


def write_ep_trace(path: Path, *, seed: int = 1, world: int = 4, steps: int = 3, layers: int = 2) -> EpTrace:
    """A 4-rank trace with steps, expert_load, comm (uneven all-to-alls with per-peer bytes,
    all-reduces without, sends) and kernels (one with a hostile name)."""
    rng = np.random.default_rng(seed)
    arch = tiny_arch(num_experts=8, top_k=2, num_layers=layers + 1)
    manifest = tiny_manifest(arch, world_size=world)
    matrix = {p: np.zeros((world, world), dtype=np.int64) for p in ("dispatch", "combine")}
    sends = np.zeros((world, world), dtype=np.int64)
    for rank in range(world):
        with TraceWriter(path, manifest, rank=rank, overwrite=rank == 0) as w:
            comm = _CommRows()
            call = comm.add

            t = 1_000_000 * rank
            for s in range(steps):
                w.append(
                    "steps",
                    {
                        "step": [s],
                        "phase": ["decode"],
                        "num_tokens": [8],
                        "num_requests": [8],
                        "start_ns": [t],
                        "duration_ns": [int(rng.integers(1e5, 2e5))],
                    },
                )
                for li in range(layers):
                    layer = li + 1
                    counts = rng.integers(0, 6, arch.num_experts)
                    w.append(
                        "expert_load",
                        {
                            "step": np.full(8, s, np.int32),
                            "layer": np.full(8, layer, np.int16),
                            "expert": np.arange(8, dtype=np.int16),
                            "num_tokens": counts,
                        },
                    )
                    for purpose in ("dispatch", "combine"):
                        per_peer = rng.integers(0, 5, world) * 1024
                        matrix[purpose][rank] += per_peer
                        dur = int(rng.integers(1_000, 50_000))
                        call(
                            step=s,
                            layer=layer,
                            purpose=purpose,
                            op="all_to_all_single",
                            group_ranks=list(range(world)),
                            bytes_sent=int(per_peer.sum() - per_peer[rank]),
                            bytes_recv=int(per_peer.sum() - per_peer[rank]),
                            send_bytes_per_peer=per_peer.tolist(),
                            recv_bytes_per_peer=per_peer.tolist(),
                            start_ns=t,
                            end_ns=t + dur,
                        )
                        t += dur
                    call(
                        step=s,
                        layer=layer,
                        purpose="tp_allreduce",
                        op="all_reduce",
                        group_ranks=list(range(world)),
                        bytes_sent=4096,
                        bytes_recv=4096,
                        start_ns=t,
                        end_ns=t + 3_000,
                    )
                    t += 3_000
                dst = (rank + 1) % world
                nbytes = int(rng.integers(1, 9)) * 512
                sends[rank, dst] += nbytes
                # an untimed send: counts bytes, not time
                call(
                    step=s,
                    layer=None,
                    purpose="kv_transfer",
                    op="send",
                    group_ranks=[rank, dst],
                    bytes_sent=nbytes,
                    bytes_recv=0,
                    peer=dst,
                    start_ns=None,
                    end_ns=None,
                )
            w.append("comm", comm.rows)
            n = 40
            cats = np.array(["expert_gemm", "attention", "collective", "elementwise"])[rng.integers(0, 4, n)]
            names = [f"{c}_kernel_{i % 3}" for i, c in enumerate(cats)]
            names[0] = EVIL_KERNEL
            cats[0] = "elementwise"
            names[1], cats[1] = "void acme::unknown_op<1>(int)", "other"  # for unclassified-kernels
            w.append(
                "kernels",
                {
                    "name": names,
                    "category": cats.tolist(),
                    "start_ns": np.arange(n, dtype=np.int64) * 10_000,
                    "duration_ns": rng.integers(1_000, 9_000, n),
                    "step": rng.integers(0, steps, n).astype(np.int32),
                    "stream": np.full(n, 7, np.int64),
                },
            )
    return EpTrace(path=path, matrix=matrix, sends=sends, world=world)


PROFILE_COMPONENTS = ("attention", "gemm", "expert_gemm", "elementwise", "launch_gaps", "dispatch", "combine")


def write_profile_table(path: Path, steps: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    """``replay_profile``: two profiled ranks and two layers of every replayed step, a measured and a
    predicted time per component, a step row and (in prefill) an unmatched row."""
    from tracekit.replay.tables import frame

    rows = []
    for s in steps.iter_rows(named=True):
        for rank in (0, 1):
            for layer in (0, 1):
                for comp in PROFILE_COMPONENTS:
                    m = float(rng.uniform(1e-5, 1e-4))
                    rows.append(
                        (
                            s["phase"],
                            s["step"],
                            100 + s["step"],
                            layer,
                            rank,
                            comp,
                            m,
                            m * float(rng.uniform(0.7, 1.3)),
                            3,
                        )
                    )
            rows.append(
                (
                    s["phase"],
                    s["step"],
                    100 + s["step"],
                    None,
                    rank,
                    "step",
                    1e-3,
                    float(rng.uniform(0.8e-3, 1.2e-3)),
                    None,
                )
            )
            if s["phase"] == "prefill":
                rows.append(
                    (s["phase"], s["step"], 100 + s["step"], None, rank, "unmatched", 2e-5, None, None)
                )
    cols = list(zip(*rows, strict=True))
    table = frame(
        "replay_profile",
        {
            "pool": ["all"] * len(rows),
            "phase": cols[0],
            "step": cols[1],
            "profile_step": cols[2],
            "layer": pl.Series(cols[3], dtype=pl.Int16),
            "rank": cols[4],
            "component": cols[5],
            "measured_s": cols[6],
            "predicted_s": pl.Series(cols[7], dtype=pl.Float64),
            "error": [None if p is None else p / m - 1 for m, p in zip(cols[6], cols[7], strict=True)],
            "kernels": pl.Series(cols[8], dtype=pl.Int64),
        },
    )
    table.write_parquet(path / "replay_profile.parquet")
    return table


def write_replay_result(
    path: Path, *, seed: int, hw: str, ep: int, steps: int = 5, profile: bool = False
) -> None:
    """A replay-like result directory with the tables and columns of docs/replay.md that the reports
    read (with ``profile``, a replay_profile table too)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    rows = []
    for phase, n in (("prefill", 2), ("decode", steps)):
        for s in range(n):
            comp = {f"{c}_s": float(rng.uniform(1e-4, 2e-3)) for c in COMPONENTS}
            rows.append(
                {
                    "pool": "all",
                    "step": s,
                    "phase": phase,
                    "trace_step_first": s,
                    "trace_step_last": s,
                    "num_tokens": 64,
                    "num_requests": 8,
                    "output_tokens": 8 if phase == "prefill" else 64,
                    "kv_len_mean": 100.0 + s,
                    "step_time_s": sum(comp.values()),
                    **comp,
                    "hidden_comm_s": 0.0,
                    "dispatch_bytes": int(rng.integers(1e6, 2e6)),
                    "network_bytes": 0,
                    "bound": "memory",
                    "measured_time_s": None,
                }
            )
    steps_df = pl.DataFrame(rows, schema_overrides={"step": pl.Int32, "measured_time_s": pl.Float64})
    steps_df.write_parquet(path / "replay_steps.parquet")
    summary = (
        steps_df.group_by("pool", "phase")
        .agg(
            pl.len().cast(pl.Int32).alias("num_steps"),
            pl.col("num_tokens").sum().alias("tokens"),
            pl.col("output_tokens").sum(),
            pl.col("step_time_s").mean(),
            *[pl.col(f"{c}_s").mean() for c in COMPONENTS],
            pl.col("measured_time_s").mean(),
        )
        .with_columns(
            pl.lit(ep, pl.Int32).alias("num_gpus"),
            (pl.col("output_tokens") / pl.col("num_steps") / pl.col("step_time_s") / ep).alias(
                "tokens_per_s_per_gpu"
            ),
            pl.when(pl.col("phase") == "decode")
            .then(1.0 / pl.col("step_time_s"))
            .alias("tokens_per_s_per_user"),
            pl.when(pl.col("phase") == "decode").then(pl.col("step_time_s")).alias("tpot_s"),
            pl.when(pl.col("phase") == "prefill").then(pl.col("step_time_s")).alias("ttft_s"),
            pl.lit("memory").alias("bound"),
            pl.lit(512, pl.Int64).alias("max_batch_per_gpu"),
            pl.lit(10**10, pl.Int64).alias("weight_bytes_per_gpu"),
            pl.lit(70_000, pl.Int64).alias("kv_bytes_per_token"),
        )
        .sort("pool", "phase")
    )
    summary.write_parquet(path / "replay_summary.parquet")
    pl.DataFrame(
        {
            "run_id": [f"run-{seed}"],
            "trace_path": ["trace"],
            "trace_model": ["tiny-test"],
            "model": ["deepseek-r1"],
            "hw": [hw],
            "num_gpus": [ep],
            "ep": [ep],
            "dp": [ep],
            "tp": [1],
            "impl": ["deepep-ll"],
            "tbo": [False],
            "precision_experts": ["fp8"],
            "placement": ["contiguous"],
            "num_steps": [steps + 2],
        },
        schema_overrides={"num_gpus": pl.Int32, "ep": pl.Int32, "dp": pl.Int32, "tp": pl.Int32},
    ).write_parquet(path / "replay_run.parquet")
    if profile:
        write_profile_table(path, steps_df, rng)
    (path / "result.json").write_text(
        json.dumps(
            {
                "kind": "replay",
                "trace": "trace",
                "deployment": {"hw": hw, "ep": ep},
                "model": "deepseek-r1",
                "summary": {},
            }
        )
    )


def write_sweep_result(path: Path, *, seed: int = 5) -> pl.DataFrame:
    """A sweep-like result directory; returns its points."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    pts = []
    for hw in ("h200-sxm", "gb200-nvl72"):
        for ep in (8, 16):
            for batch in (16, 32, 64, 128):
                step = 0.01 + batch * rng.uniform(1e-4, 3e-4) * (0.6 if hw.startswith("gb") else 1.0)
                pts.append(
                    {
                        "hw": hw,
                        "ep": ep,
                        "tp": 1,
                        "batch_per_gpu": batch,
                        "precision_experts": "fp8",
                        "impl": "deepep-ll",
                        "tbo": False,
                        "num_gpus": ep,
                        "tokens_per_s_per_gpu": batch / step,
                        "tokens_per_s_per_user": 1.0 / step,
                        "step_time_s": step,
                        "max_batch_per_gpu": 256,
                        "bound": "memory",
                        "fits": True,
                        "error": None,
                    }
                )
    points = pl.DataFrame(pts, schema_overrides={"error": pl.String})
    points.write_parquet(path / "sweep_points.parquet")
    # Pareto frontier per hw: no other point of the hw is better on both axes.
    keep = []
    for row in points.iter_rows(named=True):
        same = points.filter(pl.col("hw") == row["hw"])
        dominated = same.filter(
            (pl.col("tokens_per_s_per_gpu") >= row["tokens_per_s_per_gpu"])
            & (pl.col("tokens_per_s_per_user") >= row["tokens_per_s_per_user"])
            & (
                (pl.col("tokens_per_s_per_gpu") > row["tokens_per_s_per_gpu"])
                | (pl.col("tokens_per_s_per_user") > row["tokens_per_s_per_user"])
            )
        ).height
        keep.append(dominated == 0)
    points.filter(pl.Series(keep)).write_parquet(path / "sweep_pareto.parquet")
    (path / "result.json").write_text(json.dumps({"kind": "sweep"}))
    return points
