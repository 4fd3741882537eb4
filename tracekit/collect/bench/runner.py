"""Run the microbenchmarks within a time budget and return the measured table."""

from __future__ import annotations

import json
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from tracekit.collect.bench.cases import (
    GPU_SHAPES,
    TINY_SHAPES,
    Case,
    describe,
    has_module,
    single_device_cases,
)
from tracekit.collect.bench.comm import CommJob, backend_version, comm_rank
from tracekit.collect.bench.timing import time_call
from tracekit.errors import UsageError, first_line
from tracekit.schema.measured import conform, with_work

#: ``progress(done, total, label)`` after each measurement (and once at the start).
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What to run."""

    #: cpu, cuda or cuda:N.
    device: str = "cpu"
    #: Wall-clock budget of the whole run, seconds; cases not started by then are skipped.
    budget_s: float = 300.0
    #: Tiny shapes (the default on the CPU) instead of MoE-model shapes.
    tiny: bool | None = None
    #: Processes for the collectives: 0 none, None all local GPUs when there are several (never
    #: on the CPU unless asked: gloo ranks at tiny sizes).
    comm_ranks: int | None = None
    #: Families to run (None: all).
    families: tuple[str, ...] | None = None
    #: Timed repeats per shape (fewer for long calls).
    repeats: int = 20
    warmup: int = 3


@dataclass(frozen=True, kw_only=True)
class BenchResult:
    """The measured table and what was left out."""

    frame: pl.DataFrame
    #: Cases that were not measured, with why (budget, error).
    skipped: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def parse_budget(text: str) -> float:
    """``5m``, ``90s``, ``1h`` or a number of seconds -> seconds."""
    t = text.strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise UsageError(f"--budget {text!r}: give a duration such as 90s, 5m or 1h") from None
    if not value > 0:
        raise UsageError(f"--budget {text!r}: the budget must be positive")
    return value


def _device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
        return torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
    raise UsageError(f"--device {name!r}: give cpu, cuda or cuda:N")


def _driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    line = out.stdout.strip().splitlines()
    return line[0].strip() if out.returncode == 0 and line else None


def environment(device: torch.device) -> dict[str, Any]:
    """Device, driver, CUDA and torch versions stamped on every row."""
    if device.type == "cuda":
        return {
            "device": torch.cuda.get_device_name(device),
            "device_count": torch.cuda.device_count(),
            "driver": _driver(),
            "cuda": torch.version.cuda,
            "torch": torch.__version__,
        }
    return {
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "device_count": 1,
        "driver": None,
        "cuda": None,
        "torch": torch.__version__,
    }


def _library_version(library: str) -> str | None:
    if library.startswith("torch"):
        return torch.__version__
    if has_module(library):
        try:
            from importlib.metadata import version

            return version(library.replace("_", "-"))
        except Exception:  # metadata lookups raise several types; the version is informative only
            return None
    return None


def run_bench(options: BenchOptions, progress: Progress | None = None) -> BenchResult:
    """Measure every case for ``options.device`` within the budget; the collectives last."""
    device = _device(options.device)
    tiny = options.tiny if options.tiny is not None else device.type == "cpu"
    start = time.monotonic()
    deadline = start + options.budget_s
    cases = single_device_cases(device, tiny=tiny)
    if options.families is not None:
        cases = [c for c in cases if c.family in options.families]
    ranks = _comm_ranks(options, device)
    run_comm = ranks > 1 and (options.families is None or bool(set(options.families) & _COMM_FAMILIES))
    # the collectives get a quarter of the budget when they run
    kernel_deadline = start + options.budget_s * (0.75 if run_comm else 1.0)
    total = len(cases) + (1 if run_comm else 0)
    env = environment(device)
    detail = (
        f"tracekit bench on {socket.gethostname()}: {'tiny' if tiny else 'MoE'} shapes, "
        f"budget {options.budget_s:g} s"
    )
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    if progress:
        progress(0, total, "starting")
    warmup = options.warmup if device.type == "cuda" else min(options.warmup, 1)
    for i, case in enumerate(cases):
        if time.monotonic() >= kernel_deadline:
            skipped.append(f"{describe(case)}: time budget spent")
            continue
        row = _measure(case, device, warmup=warmup, repeats=options.repeats, skipped=skipped)
        if row is not None:
            rows.append(row)
        if progress:
            progress(i + 1, total, describe(case))
    if run_comm:
        rows += _run_comm(device, ranks, tiny, deadline, options, skipped)
        if progress:
            progress(total, total, "collectives")
    if not rows:
        raise UsageError(
            f"no measurement fitted in the budget of {options.budget_s:g} s; give a longer --budget"
        )
    frame = pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.lit(env["device"]).alias("device"),
        pl.lit(env["device_count"]).alias("device_count"),
        pl.lit(env["driver"], dtype=pl.String).alias("driver"),
        pl.lit(env["cuda"], dtype=pl.String).alias("cuda"),
        pl.lit(env["torch"]).alias("torch"),
        pl.lit("tracekit bench").alias("source"),
        pl.lit(detail).alias("source_detail"),
    )
    frame = with_work(conform(frame, where="tracekit bench"))
    return BenchResult(frame=frame, skipped=skipped, elapsed_s=time.monotonic() - start)


_COMM_FAMILIES = {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}


def _comm_ranks(options: BenchOptions, device: torch.device) -> int:
    if options.comm_ranks is not None:
        if options.comm_ranks < 0:
            raise UsageError(f"--comm-ranks must be 0 or more, got {options.comm_ranks}")
        if device.type == "cuda" and options.comm_ranks > torch.cuda.device_count():
            raise UsageError(
                f"--comm-ranks {options.comm_ranks}: this machine has {torch.cuda.device_count()} GPU(s)"
            )
        return options.comm_ranks
    return torch.cuda.device_count() if device.type == "cuda" else 0


def _measure(
    case: Case, device: torch.device, *, warmup: int, repeats: int, skipped: list[str]
) -> dict[str, Any] | None:
    try:
        timing = time_call(case.build(), device, warmup=warmup, repeats=repeats)
    except (RuntimeError, ValueError, TypeError, NotImplementedError, ImportError) as exc:
        # a kernel this device or library build does not support: noted, not fatal
        skipped.append(f"{describe(case)}: {first_line(exc)[:200]}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None
    return {
        "family": case.family,
        "dtype": case.dtype,
        "library": case.library,
        "library_version": _library_version(case.library),
        **case.shape,
        "time_s": timing.median_s,
        "time_min_s": timing.min_s,
        "repeats": timing.repeats,
        "timing_source": timing.source,
    }


def _run_comm(
    device: torch.device, ranks: int, tiny: bool, deadline: float, options: BenchOptions, skipped: list[str]
) -> list[dict[str, Any]]:
    from tracekit.collect.ep_launch import RankFailureError, launch

    backend = "nccl" if device.type == "cuda" else "gloo"
    sizes = (TINY_SHAPES if tiny else GPU_SHAPES).comm_bytes
    with tempfile.TemporaryDirectory(prefix="tracekit-bench-") as tmp:
        out = Path(tmp) / "comm.json"
        job = CommJob(
            sizes_bytes=sizes,
            dtype="bf16" if device.type == "cuda" else "fp32",
            device=device.type,
            out=str(out),
            deadline=time.time() + max(0.0, deadline - time.monotonic()),
            warmup=options.warmup,
            repeats=min(options.repeats, 20),
        )
        try:
            launch(comm_rank, ranks, (job,), backend=backend, timeout_s=120.0).join(
                timeout_s=max(60.0, deadline - time.monotonic() + 60.0)
            )
        except RankFailureError as exc:
            skipped.append(f"collectives on {ranks} {backend} ranks: {first_line(exc)[:300]}")
            return []
        if not out.is_file():
            skipped.append(f"collectives on {ranks} {backend} ranks: rank 0 wrote no result")
            return []
        rows = json.loads(out.read_text())
    version = backend_version(backend)
    return [{**r, "library": backend, "library_version": version} for r in rows]
