"""The collectors on a GPU: record a tiny preset on CUDA and on the CPU with the same weights and
prompts, and compare their routing; with two or more GPUs, record an expert-parallel run over NCCL.

    python benchmarks/gpu_check.py --out OUT_DIR [--model tiny-deepseek-v3]

Writes OUT_DIR/trace-cpu, OUT_DIR/trace-cuda (and trace-ep2-cuda), and OUT_DIR/routing_check.json
and .md with: rows compared per step, the share of (step, layer, token) rows whose expert ids are
identical, the largest gate-weight difference where they are, and the checks of the CUDA paths
(steps timed by CUDA events, positive durations, pinned-buffer rows equal to expert_load).
Exit 1 when a check fails. TF32 is switched off so that both devices compute in full FP32; rows
can still differ where two experts' scores tie to the last bit (reported, and allowed below 0.1%
of the prefill rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl


def _routing(trace_dir: Path) -> pl.DataFrame:
    from tracekit.trace import open_trace

    t = open_trace(trace_dir)
    return t.scan("routing").select("step", "layer", "token_index", "expert_ids", "gate_weights").collect()


def _record(model: str, device: str, out: Path, prompts: list[str], new_tokens: int) -> float:
    from tracekit.collect.run import record_generate

    t0 = time.perf_counter()
    record_generate(
        model=model,
        prompts=prompts,
        max_new_tokens=new_tokens,
        batch_size=len(prompts),
        out=out,
        device=device,
        dtype="float32",
        seed=0,
        overwrite=True,
    )
    return time.perf_counter() - t0


def compare(cpu: pl.DataFrame, cuda: pl.DataFrame) -> dict[str, Any]:
    """Per step: rows on both devices, rows whose (sorted) expert ids agree, max |gate diff| there."""
    key = ["step", "layer", "token_index"]
    joined = cpu.join(cuda, on=key, how="inner", suffix="_cuda")
    ids_a = np.sort(np.stack(joined["expert_ids"].to_numpy()), axis=1)
    ids_b = np.sort(np.stack(joined["expert_ids_cuda"].to_numpy()), axis=1)
    same = (ids_a == ids_b).all(axis=1)
    wa = np.stack(joined["gate_weights"].to_numpy())
    wb = np.stack(joined["gate_weights_cuda"].to_numpy())
    # gate weights in the same expert order: sort each row's weights by expert id
    oa = np.argsort(np.stack(joined["expert_ids"].to_numpy()), axis=1)
    ob = np.argsort(np.stack(joined["expert_ids_cuda"].to_numpy()), axis=1)
    wdiff = np.abs(np.take_along_axis(wa, oa, 1) - np.take_along_axis(wb, ob, 1)).max(axis=1)
    steps = joined["step"].to_numpy()
    per_step = []
    for s in np.unique(steps):
        m = steps == s
        per_step.append(
            {
                "step": int(s),
                "rows": int(m.sum()),
                "ids_equal": int(same[m].sum()),
                "max_gate_diff_where_equal": float(wdiff[m & same].max()) if (m & same).any() else None,
            }
        )
    return {
        "rows_cpu": cpu.height,
        "rows_cuda": cuda.height,
        "rows_joined": joined.height,
        "ids_equal_share": float(same.mean()) if same.size else 0.0,
        "per_step": per_step,
    }


def cuda_paths(trace_dir: Path) -> dict[str, Any]:
    """Checks of what only the CUDA path produces."""
    from tracekit.trace import open_trace

    t = open_trace(trace_dir)
    steps = t.scan("steps").collect()
    routing = t.scan("routing").select("step", "layer", "expert_ids").collect()
    load = t.scan("expert_load").collect()
    counted = (
        routing.explode("expert_ids")
        .group_by("step", "layer", pl.col("expert_ids").alias("expert"))
        .len()
        .with_columns(pl.col("expert").cast(pl.Int16))
    )
    merged = load.join(counted, on=["step", "layer", "expert"], how="left").with_columns(
        pl.col("len").fill_null(0)
    )
    return {
        "timing_sources": sorted(steps["timing_source"].unique().to_list()),
        "steps": steps.height,
        "min_step_duration_ns": int(steps["duration_ns"].min()),
        "starts_increasing": bool((steps.sort("step")["start_ns"].diff().drop_nulls() > 0).all()),
        "expert_load_equals_routing": bool((merged["num_tokens"] == merged["len"]).all()),
        "manifest_clock": json.loads((trace_dir / "manifest.json").read_text()).get("clock"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default="tiny-deepseek-v3")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=8)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from tracekit.collect.run import read_prompts

    prompts = read_prompts(Path("tracekit/data/prompts.txt"))[: args.prompts]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": args.model, "device": torch.cuda.get_device_name(0)}
    report["seconds_cpu"] = _record(args.model, "cpu", out / "trace-cpu", prompts, args.new_tokens)
    report["seconds_cuda"] = _record(args.model, "cuda", out / "trace-cuda", prompts, args.new_tokens)
    report["routing"] = compare(_routing(out / "trace-cpu"), _routing(out / "trace-cuda"))
    report["cuda_paths"] = cuda_paths(out / "trace-cuda")
    if torch.cuda.device_count() >= 2:
        from tracekit.collect.ep import record_ep
        from tracekit.trace import open_trace

        record_ep(
            model=args.model, prompts=prompts, max_new_tokens=4, batch_size=4,
            out=out / "trace-ep2-cuda", ep=2, device="cuda", overwrite=True,
        )  # fmt: skip
        comm = open_trace(out / "trace-ep2-cuda").scan("comm").collect()
        report["ep2_nccl"] = {
            "comm_rows": comm.height,
            "timing_sources": sorted(comm["timing_source"].unique().to_list()),
            "end_after_start": bool((comm["end_ns"] >= comm["start_ns"]).all()),
            "backends": sorted(comm["backend"].unique().to_list()),
        }
    else:
        report["ep2_nccl"] = "skipped: one GPU"

    prefill = report["routing"]["per_step"][0]
    paths = report["cuda_paths"]
    checks = {
        "prefill routing equal on >= 99.9% of rows": prefill["ids_equal"] >= 0.999 * prefill["rows"],
        "CUDA steps timed by cuda_event": paths["timing_sources"] == ["cuda_event"],
        "positive step durations": paths["min_step_duration_ns"] > 0,
        "step starts increase": paths["starts_increasing"],
        "expert_load (pinned-buffer copy) equals routing": paths["expert_load_equals_routing"],
    }
    if isinstance(report["ep2_nccl"], dict):
        checks["NCCL comm rows timed by cuda_event"] = report["ep2_nccl"]["timing_sources"] == ["cuda_event"]
        checks["NCCL comm end >= start"] = report["ep2_nccl"]["end_after_start"]
    report["checks"] = checks
    (out / "routing_check.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Collectors on {report['device']} ({args.model})", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks.items()]
    lines += ["", "| step | rows | expert ids equal | max gate diff where equal |", "|---|---|---|---|"]
    for s in report["routing"]["per_step"]:
        lines.append(f"| {s['step']} | {s['rows']} | {s['ids_equal']} | {s['max_gate_diff_where_equal']} |")
    (out / "routing_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
