"""Reports on a large routing trace run in bounded memory (DuckDB streams the Parquet files).

Writes a synthetic trace with ``--rows`` routing rows (256 experts, top-8, 4 MoE layers, skewed
routing, gate weights, a matching expert_load table), then runs reports over it, each in a fresh
process under a DuckDB memory limit, and prints wall time and peak resident memory (RSS) per report
beside the size of the routing table in memory (Arrow) and, for comparison, the peak RSS of reading
the routing table whole into polars.

    python benchmarks/report_50m.py                       # 5M rows, a few minutes on 2 cores
    python benchmarks/report_50m.py --rows 50000000       # the full size
    python benchmarks/report_50m.py --trace DIR --keep    # reuse/keep a generated trace
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUM_EXPERTS = 256
TOP_K = 8
MOE_LAYERS = 4
TOKENS_PER_STEP = 8192
REPORTS = ("routing-check", "gate-weights", "expert-load", "imbalance", "routing-drift")
#: Bytes of one routing row in Arrow: rank, step (int32), layer (int16), token_index (int32),
#: expert_ids (8 x int16), gate_weights (8 x float32).
ROW_BYTES = 4 + 4 + 2 + 4 + 2 * TOP_K + 4 * TOP_K


def peak_rss_mib() -> float:
    """Peak resident memory of this process. /proc's VmHWM starts afresh at exec; getrusage's
    ru_maxrss would carry over the parent's peak from before the fork."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_trace(path: Path, rows: int, seed: int = 0) -> None:
    from tracekit.schema import AttentionSpec, Manifest, ModelArch, ParallelLayout
    from tracekit.trace import TraceWriter

    arch = ModelArch(
        name="bench-256x8", architecture="deepseek_v3", num_layers=MOE_LAYERS + 1,
        moe_layers=tuple(range(1, MOE_LAYERS + 1)), hidden_size=1024, intermediate_size=2048,
        moe_intermediate_size=256, num_experts=NUM_EXPERTS, top_k=TOP_K,
        attention=AttentionSpec(kind="gqa", num_heads=8, num_kv_heads=2, head_dim=64), vocab_size=1000,
    )  # fmt: skip
    manifest = Manifest(model=arch, source="synthetic", parallel=ParallelLayout())
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, NUM_EXPERTS + 1) ** 0.8
    p /= p.sum()
    perms = [rng.permutation(NUM_EXPERTS) for _ in range(MOE_LAYERS)]
    stride = NUM_EXPERTS // TOP_K
    steps = -(-rows // (TOKENS_PER_STEP * MOE_LAYERS))
    written = 0
    with TraceWriter(path, manifest, rows_per_part={"routing": 2_000_000, "expert_load": 1_000_000}) as w:
        for s in range(steps):
            n = min(TOKENS_PER_STEP, -(-(rows - written) // MOE_LAYERS))
            w.append("steps", {"step": [s], "phase": ["decode"], "num_tokens": [n], "num_requests": [n]})
            for li, layer in enumerate(arch.moe_layers):
                base = perms[li][rng.choice(NUM_EXPERTS, size=n, p=p)]
                ids = ((base[:, None] + stride * np.arange(TOP_K)) % NUM_EXPERTS).astype(np.int16)
                g = rng.random((n, TOP_K), dtype=np.float32)
                g /= g.sum(axis=1, keepdims=True)
                w.append("routing", {"step": np.full(n, s, np.int32), "layer": np.full(n, layer, np.int16),
                                     "token_index": np.arange(n, dtype=np.int32), "expert_ids": ids,
                                     "gate_weights": g})  # fmt: skip
                counts = np.bincount(ids.ravel(), minlength=NUM_EXPERTS)
                w.append("expert_load", {"step": np.full(NUM_EXPERTS, s, np.int32),
                                         "layer": np.full(NUM_EXPERTS, layer, np.int16),
                                         "expert": np.arange(NUM_EXPERTS, dtype=np.int16), "num_tokens": counts})  # fmt: skip
                written += n


def child_report(trace: str, name: str, memory_limit: str, threads: int) -> None:
    from tracekit.reports import Catalog, run_report

    cat = Catalog.from_paths([trace])
    con = cat.connect(memory_limit=memory_limit, threads=threads)
    t0 = time.perf_counter()
    # "baseline": imports and views only, the floor every report starts from
    rows = 0 if name == "baseline" else len(run_report(con, cat, name).rows)
    wall = time.perf_counter() - t0
    print(json.dumps({"report": name, "rows": rows, "wall_s": wall, "peak_rss_mib": peak_rss_mib()}))


def child_naive(trace: str) -> None:
    import polars as pl

    t0 = time.perf_counter()
    df = pl.read_parquet(str(Path(trace) / "routing" / "*.parquet"))
    wall = time.perf_counter() - t0
    print(json.dumps({"report": "polars read_parquet (whole table)", "rows": df.height, "wall_s": wall,
                      "peak_rss_mib": peak_rss_mib()}))  # fmt: skip


def run_child(args: list[str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000, help="routing rows (full size: 50000000)")
    ap.add_argument("--trace", type=Path, help="trace directory to use (generated there if absent)")
    ap.add_argument("--keep", action="store_true", help="keep the generated trace")
    ap.add_argument("--memory-limit", default="1GB", help="DuckDB memory limit per report")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-naive", action="store_true", help="skip reading the whole table into polars")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "naive":
            child_naive(args.child[1])
        else:
            child_report(args.child[1], args.child[0], args.memory_limit, args.threads)
        return

    tmp = None
    trace = args.trace
    if trace is None:
        tmp = Path(tempfile.mkdtemp(prefix="tracekit-bench-"))
        trace = tmp / "trace"
    try:
        if not (trace / "manifest.json").exists():
            t0 = time.perf_counter()
            write_trace(trace, args.rows)
            print(f"wrote {args.rows:,} routing rows in {time.perf_counter() - t0:.1f} s", flush=True)
        import pyarrow.parquet as pq

        files = sorted((trace / "routing").glob("*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        disk = sum(f.stat().st_size for f in files)
        arrow_mib = rows * ROW_BYTES / 2**20
        print(
            f"trace: {rows:,} routing rows, {disk / 2**20:.0f} MiB of Parquet, {arrow_mib:.0f} MiB in memory as Arrow"
        )
        print(
            f"DuckDB memory_limit={args.memory_limit}, threads={args.threads}; each report in a fresh process\n"
        )
        results = [run_child(["--memory-limit", args.memory_limit, "--threads", str(args.threads),
                              "--child", name, str(trace)]) for name in ("baseline", *REPORTS)]  # fmt: skip
        if not args.no_naive:
            results.append(run_child(["--child", "naive", str(trace)]))
        base = float(results[0]["peak_rss_mib"])  # type: ignore[arg-type]
        print(
            f"{'report':36} {'rows':>9} {'wall s':>8} {'peak RSS MiB':>13} {'above baseline':>15} {'/ table':>8}"
        )
        for r in results:
            rss = float(r["peak_rss_mib"])  # type: ignore[arg-type]
            print(
                f"{r['report']!s:36} {r['rows']!s:>9} {float(r['wall_s']):8.2f} {rss:13.0f} "  # type: ignore[arg-type]
                f"{rss - base:15.0f} {(rss - base) / arrow_mib:8.2f}"
            )
        print(
            "\n'above baseline': peak RSS minus that of a process that only imports tracekit and opens the views;"
        )
        print("'/ table': that extra memory over the routing table's in-memory (Arrow) size.")
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            print(f"\nkept {trace}")


if __name__ == "__main__":
    main()
