"""Collective microbenchmarks across the local devices: one process per GPU (NCCL), or per CPU
rank (gloo, tiny sizes, so CI runs the path).

``message_bytes`` is counted as nccl-tests counts it, like AIConfigurator's NCCL tables: all_reduce
the buffer, all_gather the gathered output, reduce_scatter the input, all_to_all the send buffer.
Each size is timed on every rank (CUDA events on the rank's stream, or the host clock after a
barrier); the slowest rank's median is the row's time. Rank 0 writes the rows as JSON.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")


@dataclass(frozen=True, kw_only=True)
class CommJob:
    """What each rank runs (pickled to the processes)."""

    sizes_bytes: tuple[int, ...]
    dtype: str
    device: str
    out: str
    #: time.time() after which no new size is started.
    deadline: float
    warmup: int
    repeats: int


def _one_op(op: str, size: int, world: int, td: torch.dtype, device: torch.device) -> Any:
    elem = torch.empty((), dtype=td).element_size()
    n = max(world, size // elem // world * world)  # divisible by the group size
    if op == "all_reduce":
        buf = torch.ones(n, dtype=td, device=device)
        return n * elem, lambda: dist.all_reduce(buf)
    if op == "all_gather":
        out = torch.empty(n, dtype=td, device=device)
        inp = torch.ones(n // world, dtype=td, device=device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return n * elem, lambda: gather(out, inp)
    if op == "reduce_scatter":
        inp = torch.ones(n, dtype=td, device=device)
        out = torch.empty(n // world, dtype=td, device=device)
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        return n * elem, lambda: scatter(out, inp)
    send = torch.ones(n, dtype=td, device=device)
    recv = torch.empty(n, dtype=td, device=device)
    return n * elem, lambda: dist.all_to_all_single(recv, send)


def _time(fn: Any, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        dist.barrier()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for s, e in zip(starts, ends, strict=True):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends, strict=True)]
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def comm_rank(rank: int, world_size: int, job: CommJob) -> None:
    """One rank of the collective benchmark (torch.distributed already initialised)."""
    from tracekit.collect.bench.cases import TORCH_DTYPES

    device = (
        torch.device(f"cuda:{torch.cuda.current_device()}") if job.device == "cuda" else torch.device("cpu")
    )
    td = TORCH_DTYPES[job.dtype]
    rows: list[dict[str, Any]] = []
    for size in job.sizes_bytes:
        go = torch.tensor([1 if time.time() < job.deadline else 0], device=device)
        dist.broadcast(go, src=0)
        if not int(go.item()):
            break
        for op in OPS:
            nbytes, fn = _one_op(op, size, world_size, td, device)
            times = _time(fn, device, job.warmup, job.repeats)
            stats = torch.tensor([statistics.median(times), min(times)], dtype=torch.float64, device=device)
            dist.all_reduce(stats, op=dist.ReduceOp.MAX)  # the slowest rank sets the collective's time
            rows.append(
                {
                    "family": op,
                    "dtype": job.dtype,
                    "num_gpus": world_size,
                    "message_bytes": nbytes,
                    "time_s": float(stats[0]),
                    "time_min_s": float(stats[1]),
                    "repeats": len(times),
                    "timing_source": "cuda_event" if device.type == "cuda" else "host_timer",
                }
            )
    if rank == 0:
        Path(job.out).write_text(json.dumps(rows))


def backend_version(backend: str) -> str | None:
    if backend == "nccl" and torch.cuda.is_available():
        try:
            v = torch.cuda.nccl.version()
        except (RuntimeError, AttributeError):
            return None
        return ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
    return torch.__version__ if backend == "gloo" else None
