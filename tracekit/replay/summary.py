"""The replay's result tables beyond the per-window frames: measured step times, the per-peer
table, per-phase summaries and the run table (docs/replay.md lists every column)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from tracekit import __version__
from tracekit.replay.deployment import payload_bytes_per_token
from tracekit.replay.workload import AttentionLoad, PhaseTokens, Schedule

if TYPE_CHECKING:
    from tracekit.replay.engine import _PhaseOut, _Setup

#: Components of a step's time, in the order the summary and breakdown list them.
BREAKDOWN = (
    "attention",
    "expert_gemm",
    "dense",
    "dispatch",
    "combine",
    "tp_comm",
    "straggler",
    "embedding",
    "lm_head",
)


def device_matches(su: _Setup) -> bool:
    device = str(su.trace.manifest.hardware.get("device", "")).lower()
    short = su.hw.gpu.split(" ")[0].lower() if su.hw.gpu else su.hw.name.split("-")[0].lower()
    return bool(short) and short in device


def attach_measured(su: _Setup, steps: pl.DataFrame, schedule: Schedule) -> pl.DataFrame:
    measured = pl.lit(None, pl.Float64)
    if not schedule.rebatched and su.dep.model is None and device_matches(su):
        st = su.trace.scan("steps").select("step", "duration_ns").collect()
        per = st.group_by("step").agg((pl.col("duration_ns").max() / 1e9).alias("measured_time_s"))
        joined = steps.join(per, left_on="trace_step_first", right_on="step", how="left")
        return joined
    return steps.with_columns(measured.alias("measured_time_s"))


def peers_frame(su: _Setup, out: _PhaseOut, pool: str, phase: str) -> pl.DataFrame:
    arch = su.arch
    R = su.num_ranks
    moe_t = np.nonzero(su.source_of >= 0)[0]
    assert out.peer_tokens is not None
    toks = out.peer_tokens[su.source_of[moe_t]]  # [Tm, R, R]
    n = moe_t.size * R * R
    ti, si, di = np.meshgrid(moe_t, np.arange(R), np.arange(R), indexing="ij")
    dom = su.hw.scaleup_size
    link = np.where(si == di, "local", np.where(si // dom == di // dom, "nvlink", "network"))
    sent = si != di  # a rank does not send to itself: local pairs carry no bytes
    bpd = payload_bytes_per_token(su.dep.precision.dispatch, arch.hidden_size)
    bpc = payload_bytes_per_token(su.dep.precision.combine, arch.hidden_size)
    return pl.DataFrame(
        {
            "pool": [pool] * n,
            "phase": [phase] * n,
            "layer": ti.reshape(-1).astype(np.int16),
            "src_rank": si.reshape(-1).astype(np.int32),
            "dst_rank": di.reshape(-1).astype(np.int32),
            "tokens": toks.reshape(-1).astype(np.int64),
            "dispatch_bytes": (toks * sent * bpd).reshape(-1).astype(np.int64),
            "combine_bytes": (toks * sent * bpc).reshape(-1).astype(np.int64),
            "link": link.reshape(-1),
        }
    )


def _ttft(steps: pl.DataFrame, tokens: PhaseTokens, schedule: Schedule) -> float | None:
    p, step, _ = schedule.tokens
    if not p.size:
        return None
    copy = schedule.token_copy
    req = tokens.request[p]
    seq = np.where(req >= 0, req * schedule.step.shape[0] + copy, -1 - (copy * tokens.num_tokens + p))
    ends = np.cumsum(steps.sort("step")["step_time_s"].to_numpy())
    starts = ends - steps.sort("step")["step_time_s"].to_numpy()
    per = (
        pl.DataFrame({"seq": seq, "step": step})
        .group_by("seq")
        .agg(pl.col("step").min().alias("a"), pl.col("step").max().alias("b"))
        .sort("seq")  # groups come in any order: sort them so the mean is the same on every run
    )
    return float((ends[per["b"].to_numpy()] - starts[per["a"].to_numpy()]).mean())


def phase_summary(
    su: _Setup,
    steps: pl.DataFrame,
    phase: str,
    pool: str,
    tokens: PhaseTokens,
    schedule: Schedule,
    load: AttentionLoad,
) -> dict[str, Any]:
    R = su.num_ranks
    total_time = float(steps["step_time_s"].sum())
    n = steps.height
    mean_step = total_time / n if n else 0.0
    out_tokens = int(steps["output_tokens"].sum())
    all_tokens = int(steps["num_tokens"].sum())
    decode = phase == "decode"
    tps_gpu = (out_tokens if decode else all_tokens) / total_time / R if total_time > 0 else 0.0
    bound_time = steps.group_by("bound").agg(pl.col("step_time_s").sum()).sort("step_time_s", descending=True)
    kv_mean = float(np.mean(tokens.kv_len)) if tokens.num_tokens else 1.0
    measured = steps["measured_time_s"].drop_nulls()
    row: dict[str, Any] = {
        "pool": pool,
        "phase": phase,
        "num_gpus": R,
        "num_steps": n,
        "batch_per_gpu": schedule.batch_per_gpu,
        "tokens": all_tokens,
        "output_tokens": out_tokens,
        "step_time_s": mean_step,
        "tokens_per_s_per_gpu": tps_gpu,
        "tokens_per_s_per_user": (1.0 / mean_step if mean_step > 0 else None) if decode else None,
        "tpot_s": mean_step if decode else None,
        "ttft_s": None if decode else _ttft(steps, tokens, schedule),
    }
    for c in BREAKDOWN:
        row[f"{c}_s"] = float(steps[f"{c}_s"].mean()) if n else 0.0  # type: ignore[arg-type]
    row.update(
        {
            "bound": str(bound_time["bound"][0]) if bound_time.height else "latency",
            "max_batch_per_gpu": su.plan.max_batch(kv_mean, su.dep.tp),
            "weight_bytes_per_gpu": int(su.plan.weight_bytes),
            "kv_bytes_per_token": round(su.plan.kv_bytes_per_token),
            "measured_time_s": float(measured.mean()) if measured.len() else None,  # type: ignore[arg-type]
        }
    )
    return row


def summary_dict(main: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    comps = BREAKDOWN
    out = {k: v for k, v in main.items() if not (k.endswith("_s") and k[:-2] in comps)}
    out["breakdown"] = {c: main[f"{c}_s"] for c in comps}
    prefill = [r for r in rows if r["phase"] == "prefill"]
    if prefill and main["phase"] != "prefill":
        out["ttft_s"] = prefill[0]["ttft_s"]
        out["prefill_tokens_per_s_per_gpu"] = prefill[0]["tokens_per_s_per_gpu"]
    return out


def run_frame(su: _Setup, info: dict[str, Any], trace_path: str) -> pl.DataFrame:
    dep = su.dep
    p = dep.precision
    row = {
        "run_id": uuid.uuid4().hex,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tracekit_version": __version__,
        "trace_path": trace_path,
        "trace_id": su.trace.manifest.trace_id,
        "trace_model": su.trace_arch.name,
        "model": su.arch.name,
        "hw": su.hw.name,
        "num_gpus": su.num_ranks,
        "ep": su.num_ranks,
        "dp": su.num_ranks // dep.tp,
        "tp": dep.tp,
        "impl": dep.impl or "auto",
        "tbo": dep.tbo,
        "precision_attention": p.attention,
        "precision_dense": p.dense,
        "precision_experts": p.experts,
        "precision_dispatch": p.dispatch,
        "precision_combine": p.combine,
        "placement": dep.placement or "contiguous",
        "num_slots": su.placement.num_slots,
        "slots_per_rank": su.placement.slots_per_rank,
        "redundant_slots": su.placement.num_redundant,
        "batch_per_gpu": info["batch"].get("decode"),
        "prefill_tokens_per_gpu": info["batch"].get("prefill"),
        "kv_len": dep.kv_len,
        "rebatched": info["rebatched"],
        "trace_moe_layers": len(su.trace_arch.moe_layers),
        "target_moe_layers": len(su.arch.moe_layers),
        "layer_map": "identity" if len(su.arch.moe_layers) == len(su.trace_arch.moe_layers) else "cyclic",
        "token_reuse": float(info["token_reuse"]),
        "num_steps": info["num_steps"],
        "trace_step_first": info.get("trace_step_first"),
        "trace_step_last": info.get("trace_step_last"),
        "trace_steps_replayed": info.get("trace_steps_replayed"),
        "placement_from_step": info.get("placement_from_step"),
        "placement_epochs": info.get("placement_epochs", 1),
        "moved_experts": info.get("moved_experts", 0),
        "migration_bytes": info.get("migration_bytes", 0),
        "disaggregated": False,
        "prefill_hw": None,
        "prefill_ep": None,
        "prefill_gpus": None,
    }
    schema = {
        "num_gpus": pl.Int32, "ep": pl.Int32, "dp": pl.Int32, "tp": pl.Int32, "num_slots": pl.Int32,
        "slots_per_rank": pl.Int32, "redundant_slots": pl.Int32, "batch_per_gpu": pl.Int32,
        "prefill_tokens_per_gpu": pl.Int32, "kv_len": pl.Int32, "trace_moe_layers": pl.Int32,
        "target_moe_layers": pl.Int32, "num_steps": pl.Int32, "prefill_hw": pl.String,
        "trace_step_first": pl.Int32, "trace_step_last": pl.Int32, "trace_steps_replayed": pl.Int32,
        "placement_from_step": pl.Int32, "placement_epochs": pl.Int32, "moved_experts": pl.Int64,
        "migration_bytes": pl.Int64,
        "prefill_ep": pl.Int32, "prefill_gpus": pl.Int32,
    }  # fmt: skip
    return pl.DataFrame([row]).with_columns([pl.col(k).cast(v) for k, v in schema.items()])
