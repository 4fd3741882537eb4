"""Benchmark: the fast path (tracekit.replay.fast) against the replay it replaces, side by side in one run.

    python benchmarks/plan_search.py                  # 32,768-token fitted DeepSeek-R1 decode trace
    python benchmarks/plan_search.py --old-sample 20  # fewer sweep points timed on the old path

1. The equal-interactivity search of ``tracekit compare --at-interactivity 50`` for DeepSeek-R1 on
   h200-sxm and gb200-nvl72 (FP8, KV length 2048; EP and batch candidates of
   tracekit.replay.compare), through :func:`tracekit.replay.compare.at_interactivity_fast` and
   through :func:`tracekit.replay.compare.at_interactivity` (the previous implementation); both must
   choose the same deployments with the same figures. Target: <= 10 s.
2. A 1,000-point sweep (2 systems x 5 EP x 10 batches x 2 precisions x 5 variants: plain, TBO,
   DeepEP normal, 32 redundant experts, attention TP 8) through
   :func:`tracekit.replay.sweep.sweep_fast` (over ``--jobs`` processes). Target: <= 60 s. The previous implementation
   (``tracekit.replay.sweep._point``, one full replay per point) is timed on ``--old-sample`` points
   drawn evenly from the grid and extrapolated to 1,000 (printed as such); the sampled points' figures
   are compared with the fast path's.

The trace: DeepSeek-R1 decode routing (58 MoE layers x 256 experts, top-8), 4 steps of 8,192
tokens, synthesised with the skew fitted to the published per-rank imbalance (1.564 at EP 32) and
the step-to-step variation fitted to what EPLB leaves (benchmarks/e2e_anchors.toml). Both paths
replay at most ``--steps`` steps per deployment (the same deployments on both sides; 0: every step).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.models import get_model
from tracekit.replay.compare import at_interactivity, at_interactivity_fast
from tracekit.replay.deployment import Deployment, Precision
from tracekit.replay.fast import FastReplay
from tracekit.replay.sweep import _point, sweep_fast
from tracekit.synth import SynthConfig, parse_spec, synthesize
from tracekit.trace import open_trace

TOKENS_PER_STEP, STEPS = 8192, 4


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Timer:
    """Wall and CPU seconds (CPU: this process and its workers; what the work costs on a shared,
    loaded machine)."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), _cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = _cpu_s() - self.cpu0

    def __str__(self) -> str:
        return f"{self.wall:.1f} s wall, {self.cpu:.1f} s CPU"


PER_USER = 50.0
SYSTEMS = ("h200-sxm", "gb200-nvl72")


def make_trace(work: Path) -> Path:
    path = work / "r1-decode-32k"
    if not (path / "manifest.json").exists():
        synthesize(
            SynthConfig(
                arch=get_model("deepseek-r1"),
                spec=parse_spec("zipf:1.0"),
                phase="decode",
                tokens_per_step=TOKENS_PER_STEP,
                steps=STEPS,
                seed=11,
                prompt_len=2048,
                ep=32,
                target_imbalance=1.564,
                burst=0.65,
                gate_weights=False,
            ),
            path,
            overwrite=True,
        )
    return path


def sweep_points(steps: int | None) -> list[Deployment]:
    fp8, fp4 = Precision.parse("fp8"), Precision.parse("fp8,experts=fp4")
    variants = [{}, {"tbo": True}, {"impl": "deepep-normal"}, {"redundant": 32}, {"tp": 8}]
    out = []
    for hw, ep, b, prec, v in itertools.product(
        SYSTEMS, (8, 16, 32, 48, 64), (1, 2, 4, 8, 16, 32, 64, 128, 256, 512), (fp8, fp4), variants
    ):
        out.append(
            Deployment(hw=hw, ep=ep, batch_per_gpu=b, precision=prec, kv_len=2048, steps=steps, **v)  # type: ignore[arg-type]
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="where the trace is kept (default: a temporary directory)")
    ap.add_argument(
        "--steps", type=int, default=32, help="steps replayed per deployment, both paths (0: all)"
    )
    ap.add_argument(
        "--old-sample", type=int, default=40, help="sweep points timed on the previous implementation"
    )
    ap.add_argument("--skip-old-search", action="store_true", help="do not run the previous search")
    ap.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes of the fast sweep [CPU count]"
    )
    args = ap.parse_args()
    steps = args.steps or None
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="plan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(
        f"machine          {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (wall times stretch under load)"
    )
    trace = make_trace(work)
    tr = open_trace(trace)
    arch_layers = len(tr.manifest.model.moe_layers)
    print(
        f"trace            {TOKENS_PER_STEP * STEPS:,} decode tokens, {arch_layers} MoE layers ({time.perf_counter() - t0:.1f} s to synthesise or open)"
    )
    print(f"steps replayed   at most {steps or 'all'} per deployment (both paths)")

    # 1. equal-interactivity search
    base = {
        hw: Deployment(hw=hw, precision=Precision.parse("fp8"), kv_len=2048, steps=steps) for hw in SYSTEMS
    }
    with Timer() as fast_search:
        fast = FastReplay(tr)
        found = {hw: at_interactivity_fast(fast, base[hw], tokens_per_s_per_user=PER_USER) for hw in SYSTEMS}
    old_search: Timer | None = None
    old = {}
    if not args.skip_old_search:
        with Timer() as old_search:
            old = {hw: at_interactivity(tr, base[hw], tokens_per_s_per_user=PER_USER) for hw in SYSTEMS}
    print(f"\n1. equal-interactivity search, {PER_USER:g} tokens/s per user, {' and '.join(SYSTEMS)}")
    for hw in SYSTEMS:
        res, s = found[hw]
        d = res.deployment
        line = f"   {hw:12s} fast: " + (
            f"EP{d.ep} batch {d.batch_per_gpu}: {s.tokens_per_s_per_gpu:,.1f} tok/s/GPU at {s.tokens_per_s_per_user:.1f} tok/s/user"
            if d is not None and s is not None
            else res.note
        )
        if hw in old:
            o = old[hw]
            od, osum = o.deployment, o.summary
            line += "   old: " + (
                f"EP{od.ep} batch {od.batch_per_gpu}: {osum.tokens_per_s_per_gpu:,.1f}"
                if od is not None and osum is not None
                else o.note
            )
            same = (od is None and d is None) or (
                od is not None
                and d is not None
                and (od.ep, od.batch_per_gpu) == (d.ep, d.batch_per_gpu)
                and abs(osum.tokens_per_s_per_gpu / s.tokens_per_s_per_gpu - 1) < 1e-9  # type: ignore[union-attr]
            )
            line += "   same" if same else "   DIFFERENT"
        print(line)
    if found["h200-sxm"][1] is not None and found["gb200-nvl72"][1] is not None:
        ratio = found["gb200-nvl72"][1].tokens_per_s_per_gpu / found["h200-sxm"][1].tokens_per_s_per_gpu  # type: ignore[union-attr]
        print(f"   gb200-nvl72 / h200-sxm at equal interactivity: {ratio:.2f}x")
    old_txt = f"{old_search}" if old_search is not None else "not run"
    speed = f" ({old_search.cpu / fast_search.cpu:.1f}x in CPU)" if old_search is not None else ""
    print(f"   time: fast {fast_search} (target <= 10 s)   previous {old_txt}{speed}")

    # 2. 1,000-point sweep
    points = sweep_points(steps)
    with Timer() as fast_sweep:
        df = sweep_fast(FastReplay(tr), points, jobs=args.jobs)
    print(
        f"\n2. sweep of {len(points):,} points ({int(df['fits'].sum())} fit), fast path over {args.jobs} processes"
    )
    sample = points[:: max(1, len(points) // max(1, args.old_sample))][: args.old_sample]
    with Timer() as old_sample:
        old_rows = [_point((str(trace), d)) for d in sample]
    idx = [points.index(d) for d in sample]
    worst = 0.0
    for i, row in zip(idx, old_rows, strict=True):
        new = df.row(i, named=True)
        if row["fits"] != new["fits"]:
            worst = float("inf")
        elif row["fits"]:
            worst = max(worst, abs(new["tokens_per_s_per_gpu"] / row["tokens_per_s_per_gpu"] - 1))
    n = max(1, len(sample))
    scale = len(points) / n
    print(f"   time: fast {fast_sweep} (target <= 60 s)")
    print(
        f"   previous: {old_sample} for {len(sample)} of the points; extrapolated to all {len(points):,}: "
        f"~{old_sample.wall * scale:,.0f} s wall, ~{old_sample.cpu * scale:,.0f} s CPU "
        f"({old_sample.cpu * scale / fast_sweep.cpu:.1f}x the fast path's CPU)"
    )
    print(f"   sampled points, fast against previous: largest relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
