"""Prefill/decode disaggregation: prefill and decode replayed on separate pools, KV cache sent between.

The prefill pool replays the trace's prefill steps under its own deployment, the decode pool the
decode steps under its own. Each request's KV cache (prompt tokens x KV bytes per token, all
layers) crosses the network from a prefill GPU to a decode GPU; that transfer is added to TTFT.
Pools are sized so neither starves the other: with ``prefill_gpus`` unset, the prefill pool gets as
many prefill instances (``ep`` GPUs each) as it takes to feed the decode pool's request rate. The
throughput per GPU of the whole counts both pools' GPUs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import polars as pl

from tracekit.errors import UsageError, param
from tracekit.hardware import get_hardware
from tracekit.models import kv_cache_bytes_per_token_all_layers
from tracekit.replay.deployment import Deployment
from tracekit.replay.engine import ReplayResult, replay
from tracekit.replay.summary import DisaggSummary, PhaseSummary
from tracekit.replay.tables import frame
from tracekit.trace.reader import Trace, open_trace


def _requests(trace: Trace) -> tuple[float, float]:
    """(mean prompt tokens, mean output tokens) per request, from the trace's tokens."""
    tok = trace.scan("tokens").select("request_id", "is_prefill").collect()
    if tok.height == 0 or tok["request_id"].null_count() == tok.height:
        raise UsageError(
            f"{trace.path}: disaggregation needs request ids and phases in the tokens table; this trace has none"
        )
    per = (
        tok.drop_nulls("request_id")
        .group_by("request_id")
        .agg(pl.col("is_prefill").sum().alias("prompt"), (~pl.col("is_prefill")).sum().alias("out"))
    )
    prompt = float(per["prompt"].mean() or 0.0)  # type: ignore[arg-type]
    out = float(per["out"].mean() or 0.0) + 1.0  # type: ignore[arg-type]  # the last prompt token yields one
    if prompt <= 0:
        raise UsageError(f"{trace.path}: no prefill tokens; disaggregation needs both phases in the trace")
    return prompt, out


def _pools(
    ps: PhaseSummary, ds: PhaseSummary, prompt: float, outputs: float, prefill_gpus: int | None
) -> tuple[float, float, int]:
    """Request rates one instance of each pool sustains, and the prefill pool's GPUs (sized to feed
    the decode pool when not given)."""
    ep_p, ep_d = ps.num_gpus, ds.num_gpus
    prefill_rate = ps.tokens_per_s_per_gpu * ep_p / prompt
    decode_rate = ds.tokens_per_s_per_gpu * ep_d / (outputs - 1.0) if outputs > 1.0 else math.inf
    if prefill_gpus is None:
        instances = max(1, math.ceil(decode_rate / prefill_rate)) if math.isfinite(decode_rate) else 1
        return prefill_rate, decode_rate, instances * ep_p
    if prefill_gpus % ep_p:
        raise UsageError(
            f"{param('prefill_gpus')} {prefill_gpus} is not a multiple of the prefill pool's EP degree {ep_p}"
        )
    return prefill_rate, decode_rate, prefill_gpus


def replay_disaggregated(
    trace: str | Path | Trace,
    *,
    prefill: Deployment,
    decode: Deployment,
    prefill_gpus: int | None = None,
    collect_ranks: bool = True,
) -> ReplayResult:
    """Replay prefill on ``prefill``'s pool and decode on ``decode``'s; see the module docstring."""
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    pre = replay(tr, prefill, phases=["prefill"], pool="prefill", collect_ranks=collect_ranks)
    dec = replay(tr, decode, phases=["decode"], pool="decode", collect_ranks=collect_ranks)
    prompt, outputs = _requests(tr)
    ps, ds = pre.phases[0], dec.phases[0]
    ep_p, ep_d = ps.num_gpus, ds.num_gpus
    prefill_rate, decode_rate, gpus_p = _pools(ps, ds, prompt, outputs, prefill_gpus)
    rate = min(prefill_rate * gpus_p / ep_p, decode_rate)
    hw_p = get_hardware(prefill.hw, prefill.hw_overrides or None)
    hw_d = get_hardware(decode.hw, decode.hw_overrides or None)
    # the decode pool's target model, as its replay resolved it (a catalog name or a config.json)
    kv_bytes = prompt * kv_cache_bytes_per_token_all_layers(dec.target, decode.precision.kv_cache)
    link = min(hw_p.scaleout_bw, hw_d.scaleout_bw)
    kv_s = kv_bytes / link + max(hw_p.scaleout_latency_s, hw_d.scaleout_latency_s)
    total_gpus = gpus_p + ep_d
    summary = dataclasses.replace(
        dec.summary,
        tokens_per_s_per_gpu=rate * outputs / total_gpus,
        ttft_s=(ps.ttft_s or 0.0) + kv_s,
        prefill_tokens_per_s_per_gpu=ps.tokens_per_s_per_gpu,
        disagg=DisaggSummary(
            decode_tokens_per_s_per_gpu=ds.tokens_per_s_per_gpu,
            kv_transfer_s=kv_s,
            kv_transfer_bytes=kv_bytes,
            prefill_gpus=gpus_p,
            decode_gpus=ep_d,
            requests_per_s=rate,
        ),
    )
    run = dec.run.with_columns(
        pl.lit(True).alias("disaggregated"),
        pl.lit(hw_p.name).alias("prefill_hw"),
        pl.lit(ep_p, pl.Int32).alias("prefill_ep"),
        pl.lit(gpus_p, pl.Int32).alias("prefill_gpus"),
        pl.lit(pre.run["prefill_tokens_per_gpu"][0], pl.Int32).alias("prefill_tokens_per_gpu"),
    )
    whole = {
        "pool": "all",
        "phase": "disaggregated",
        "num_gpus": total_gpus,
        "tokens_per_s_per_gpu": summary.tokens_per_s_per_gpu,
        "tokens_per_s_per_gpu_p10": summary.tokens_per_s_per_gpu_band[0],
        "tokens_per_s_per_gpu_p90": summary.tokens_per_s_per_gpu_band[1],
        "tokens_per_s_per_user": summary.tokens_per_s_per_user,
        "tpot_s": summary.tpot_s,
        "ttft_s": summary.ttft_s,
    }
    table = pl.concat([pre.summary_table, dec.summary_table])
    whole_row = frame("replay_summary", {c: [whole.get(c)] for c in table.columns})
    return ReplayResult(
        deployment=decode,
        prefill_deployment=prefill,
        trace_path=str(tr.path),
        target=dec.target,
        run=run,
        steps=pl.concat([pre.steps, dec.steps], how="diagonal_relaxed"),
        layers=pl.concat([pre.layers, dec.layers], how="diagonal_relaxed"),
        ranks=pl.concat([pre.ranks, dec.ranks], how="diagonal_relaxed"),
        peers=pl.concat([pre.peers, dec.peers], how="diagonal_relaxed"),
        summary_table=pl.concat([table, whole_row]),
        summary=summary,
        phases=(ps, ds),
        tables={
            name: pl.concat([t for t in (pre.tables.get(name), dec.tables.get(name)) if t is not None])
            for name in ("replay_sources",)
            if name in pre.tables or name in dec.tables
        },
    )
