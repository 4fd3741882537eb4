"""Benchmark: synthesise DeepSeek-R1 decode routing (58 MoE layers x 256 experts, top-8, 8 groups /
top-4 groups) straight to Parquet, and report routing rows per second and peak memory.

    python benchmarks/synth_r1_decode.py            # 131,072 tokens (16 steps of 8192), a few seconds
    python benchmarks/synth_r1_decode.py --full     # 1,048,576 tokens (128 steps of 8192): the target size

Target (issue 7): the full size in under 60 s and under 4 GB peak RSS on 2 cores. Peak RSS is the
process's ru_maxrss (Linux reports KiB), which includes the Python interpreter and imported libraries.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.models import get_model
from tracekit.synth import SynthConfig, parse_spec, synthesize

TOKENS_PER_STEP = 8192
FULL_TOKENS = 1 << 20
DEFAULT_TOKENS = 1 << 17


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--full", action="store_true", help=f"synthesise {FULL_TOKENS:,} tokens (the target size)"
    )
    ap.add_argument("--tokens", type=int, default=None, help="tokens in all (a multiple of 8192)")
    ap.add_argument("--routing", default="zipf:0.6", help="routing spec (default zipf:0.6)")
    ap.add_argument("--no-gate-weights", action="store_true", help="leave gate weights null")
    ap.add_argument("--out", default=None, help="trace directory (default: a temporary one, deleted)")
    args = ap.parse_args()
    tokens = args.tokens or (FULL_TOKENS if args.full else DEFAULT_TOKENS)
    steps = max(1, tokens // TOKENS_PER_STEP)
    arch = get_model("deepseek-r1")
    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.mkdtemp(prefix="synth-bench-")
        out = os.path.join(tmp, "trace")
    config = SynthConfig(
        arch=arch,
        spec=parse_spec(args.routing),
        phase="decode",
        tokens_per_step=TOKENS_PER_STEP,
        steps=steps,
        seed=0,
        ep=32,
        gate_weights=not args.no_gate_weights,
    )
    t0 = time.perf_counter()
    cpu0, main0 = time.process_time(), time.thread_time()
    result = synthesize(config, out, overwrite=True)
    seconds = time.perf_counter() - t0
    main_cpu = time.thread_time() - main0
    other_cpu = time.process_time() - cpu0 - main_cpu
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    rows = result.rows["routing"]
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(
        f"model            deepseek-r1 decode, {len(arch.moe_layers)} MoE layers, {arch.num_experts} experts, top-{arch.top_k}"
    )
    print(
        f"tokens           {steps * TOKENS_PER_STEP:,} ({steps} steps x {TOKENS_PER_STEP})   routing {config.spec}"
    )
    print(f"routing rows     {rows:,}")
    print(f"wall time        {seconds:.1f} s   (target < 60 s at {FULL_TOKENS:,} tokens)")
    print(
        f"cpu time         {main_cpu:.1f} s sampling thread + {other_cpu:.1f} s writer thread(s); "
        f"on two free cores the wall time is about the larger, {max(main_cpu, other_cpu):.1f} s"
    )
    print(f"rows per second  {rows / seconds:,.0f}")
    print(f"peak RSS         {rss_gib:.2f} GiB   (target < 4 GB)")
    print(f"trace size       {size / 1024**2:.0f} MiB on disk")
    print(f"per-rank (max-mean)/mean at EP32: {result.detail['rank_imbalance']:.3f}")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
