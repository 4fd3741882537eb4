"""Timing one kernel call: CUDA events on a GPU, ``time.perf_counter`` on the CPU.

Each repeat is timed on its own (events recorded around the call on the current stream, read
after one synchronisation at the end), so the median and the fastest repeat come from the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class Timing:
    """The repeats of one measurement."""

    median_s: float
    min_s: float
    repeats: int
    #: cuda_event or host_timer.
    source: str


def repeats_for(first_s: float, *, target_s: float, lo: int, hi: int) -> int:
    """Repeats that take about ``target_s`` given one call of ``first_s``, within [lo, hi]."""
    if first_s <= 0:
        return hi
    return max(lo, min(hi, int(target_s / first_s)))


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    target_s: float = 0.25,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed ones (fewer when one
    call is long: about ``target_s`` in all, at least 3)."""
    for _ in range(max(0, warmup)):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        probe_start = torch.cuda.Event(enable_timing=True)
        probe_end = torch.cuda.Event(enable_timing=True)
        probe_start.record()
        fn()
        probe_end.record()
        probe_end.synchronize()
        n = repeats_for(probe_start.elapsed_time(probe_end) * 1e-3, target_s=target_s, lo=3, hi=repeats)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends, strict=True):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends, strict=True)]
        source = "cuda_event"
    else:
        t0 = time.perf_counter()
        fn()
        n = repeats_for(time.perf_counter() - t0, target_s=target_s, lo=3, hi=repeats)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        source = "host_timer"
    return Timing(median_s=statistics.median(times), min_s=min(times), repeats=len(times), source=source)
