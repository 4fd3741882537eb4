"""The Ray backend: a 64-point sweep on one Ray worker versus two, and the bytes a replay ships to its
workers per routing row, measured in one run.

    python benchmarks/ray_sweep.py               # a decode trace of ~0.5M routing rows (a few minutes)
    python benchmarks/ray_sweep.py --steps 64    # a longer trace: more work per point
    python benchmarks/ray_sweep.py --trace DIR --keep

The trace is synthesized (qwen3-30b-a3b: 48 MoE layers, 128 experts, top-8; decode steps of 256
tokens) into a local folder. Each Ray instance is started here with 1, then 2 CPUs (one task per
CPU), warmed with a few points (worker processes started, tracekit imported), then runs the same 64
deployments; both results must equal the local backend's row for row. Target: >= 1.6x from 1 to 2
workers on a quiet 2-core machine. The load average is printed beside the ratio: other work on the
machine takes CPU from the second worker, and the ratio falls with it.

What travels: a sweep task gets (trace address, deployment) and returns one row; a replay task gets
the phase's token tables once (shared) and a window start, and returns counts per (step, layer, rank,
slot). Neither ships routing rows: workers read the trace's part files themselves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

from tracekit.backends import get_backend
from tracekit.models import get_model
from tracekit.replay import Deployment, Precision, grid, replay, run_sweep
from tracekit.synth import SynthConfig, parse_spec, synthesize
from tracekit.trace import open_trace

MODEL = "qwen3-30b-a3b"
TOKENS_PER_STEP = 256


def make_trace(path: Path, steps: int) -> int:
    """Synthesize the decode trace; returns its routing rows."""
    config = SynthConfig(
        arch=get_model(MODEL),
        spec=parse_spec("zipf:1.0"),  # skewed expert popularity
        phase="decode",
        tokens_per_step=TOKENS_PER_STEP,
        steps=steps,
        gate_weights=False,
    )
    synthesize(config, path, overwrite=True)
    return int(open_trace(path).summary()["tables"]["routing"]["rows"])


def points() -> list[Deployment]:
    """64 deployments: 2 systems x 4 EP degrees x 4 batches x 2 precisions."""
    out = grid(
        Deployment(hw="h200-sxm"),
        hws=["h200-sxm", "gb200-nvl72"],
        eps=[8, 16, 32, 64],
        batches=[16, 32, 64, 128],
        precisions=[Precision(), Precision.parse(["experts=fp4"])],
    )
    assert len(out) == 64
    return out


def peak_rss_bytes(_: int) -> int:
    """The peak resident memory of the worker process that runs this (Linux: ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sweep_on_ray(
    trace: Path, deployments: list[Deployment], workers: int
) -> tuple[float, pl.DataFrame, int, int]:
    """Seconds for the sweep on a Ray instance of ``workers`` CPUs (warm), its points, bytes shipped,
    and the largest peak memory of a worker process."""
    with get_backend("ray", workers=workers) as backend:
        run_sweep(trace, deployments[: 2 * workers], backend=backend)  # warm: workers up, imports done
        before = backend.stats.to_workers_bytes
        t0 = time.perf_counter()
        result = run_sweep(trace, deployments, backend=backend)
        seconds = time.perf_counter() - t0
        shipped = backend.stats.to_workers_bytes - before
        peak = max(backend.map(peak_rss_bytes, list(range(4 * workers))))
        return seconds, result, shipped, peak


def replay_bytes(trace: Path, rows: int, dep: Deployment) -> dict[str, float]:
    """A replay on 2 Ray workers: bytes to and from the workers per routing row replayed."""
    with get_backend("ray", workers=2) as backend:
        on_ray = replay(trace, dep, backend=backend)
        stats = backend.stats
    here = replay(trace, dep)
    if on_ray.summary.to_dict() != here.summary.to_dict():
        raise SystemExit("the Ray replay differs from the local one")
    parts = open_trace(trace).files("routing")
    return {
        "tasks": stats.tasks,
        "to_workers": stats.to_workers_bytes / rows,
        "shared": stats.shared_bytes / rows,
        "args": stats.arg_bytes / rows,
        "from_workers": stats.result_bytes / rows,
        "on_disk": sum(p.stat().st_size for p in parts) / rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="decode steps of 256 tokens [40: ~0.5M rows]")
    ap.add_argument("--trace", type=Path, default=None, help="where to write the trace [a temp folder]")
    ap.add_argument("--keep", action="store_true", help="keep the trace")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tk-ray-bench-"))
    trace = args.trace or tmp / "trace"
    try:
        t0 = time.perf_counter()
        rows = make_trace(trace, args.steps)
        print(f"trace: {MODEL}, {args.steps} decode steps x {TOKENS_PER_STEP} tokens, {rows:,} routing rows "
              f"({time.perf_counter() - t0:.1f} s to write)")  # fmt: skip
        deployments = points()
        local = run_sweep(trace, deployments, jobs=1)
        load_before = os.getloadavg()[0]
        s1, r1, _, _ = sweep_on_ray(trace, deployments, 1)
        s2, r2, b2, rss = sweep_on_ray(trace, deployments, 2)
        load_after = os.getloadavg()[0]
        if not (r1.equals(local) and r2.equals(local)):
            raise SystemExit("a Ray sweep differs from the local one")
        fits = int(local["fits"].sum())
        print(f"sweep of {len(deployments)} points ({fits} fit), each replaying the whole trace:")
        print(f"  1 Ray worker : {s1:7.2f} s")
        print(f"  2 Ray workers: {s2:7.2f} s")
        print(f"  ratio        : {s1 / s2:7.2f}x   (target >= 1.6x on a quiet 2-core machine)")
        print(f"  load average : {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} CPUs)")
        print(f"  to workers   : {b2 / len(deployments):,.0f} bytes per point "
              f"({b2 / (len(deployments) * rows):.6f} per routing row replayed)")  # fmt: skip
        print(f"  worker memory: {rss / 2**20:,.0f} MiB peak resident (largest worker process)")
        for ep, batch in ((8, 32), (32, 64)):
            b = replay_bytes(trace, rows, Deployment(hw="gb200-nvl72", ep=ep, batch_per_gpu=batch))
            print(
                f"replay on 2 Ray workers (gb200-nvl72, EP {ep}, batch {batch}), {b['tasks']:.0f} window task(s):"
            )
            print(f"  to workers   : {b['to_workers']:.4f} bytes per routing row "
                  f"(token tables {b['shared']:.4f}, task arguments {b['args']:.4f})")  # fmt: skip
            print(f"  from workers : {b['from_workers']:.4f} bytes per routing row (counts)")
        print(
            f"the routing parts: {b['on_disk']:.2f} bytes per row on disk (read by the workers, never shipped)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
            if args.trace is not None:
                shutil.rmtree(args.trace, ignore_errors=True)


if __name__ == "__main__":
    main()
