"""Start N local processes with torch.distributed initialised, and watch them.

Every process runs ``fn(rank, world_size, *args)`` after ``init_process_group`` (gloo on CPU, NCCL
on GPU) with a TCP store on 127.0.0.1 and a free port. The launcher waits for all of them; when one
dies or fails, the others get ``grace_s`` seconds to notice (gloo fails fast when a peer's socket
closes; NCCL may hang) and close their trace shards, then are stopped. The error raised names every
rank that did not finish and why (exit code, signal, or the exception's one-line message).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from tracekit.errors import CollectorError, TracekitError
from tracekit.schema.manifest import Manifest
from tracekit.trace.outputs import TOKEN_ENV
from tracekit.trace.writer import TraceWriter

T = TypeVar("T")

__all__ = [
    "RankFailure",
    "RankFailureError",
    "RankGroup",
    "free_port",
    "launch",
    "open_shard",
    "rank0_first",
    "run",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, kw_only=True)
class RankFailure:
    """Why one rank did not finish."""

    rank: int
    exitcode: int | None
    #: One-line message of the exception the rank raised, when it raised one.
    message: str | None = None

    def describe(self) -> str:
        if self.message:
            text = self.message if len(self.message) <= 240 else self.message[:237] + "..."
            return f"rank {self.rank} failed: {text}"
        if self.exitcode is not None and self.exitcode < 0:
            try:
                name = signal.Signals(-self.exitcode).name
            except ValueError:
                name = f"signal {-self.exitcode}"
            return f"rank {self.rank} was killed by {name}"
        if self.exitcode is None:
            return f"rank {self.rank} did not finish and was stopped"
        return f"rank {self.rank} exited with code {self.exitcode}"


def rank0_first(rank: int, make: Callable[[], T], where: str | os.PathLike[str]) -> T:
    """``make()`` on rank 0 first, then on the other ranks: rank 0 prepares a trace directory
    (refusing or replacing an existing one, writing the manifest) before the others open their
    shards in it. Collective: every rank of the default process group must call it.
    """
    if rank == 0:
        try:
            made = make()
        except BaseException:
            _agree(True)
            raise
        _agree(False)
        return made
    if _agree(False):
        raise CollectorError(f"{where}: rank 0 could not create the trace (see its error); rank {rank} stops")
    return make()


def open_shard(path: str | os.PathLike[str], manifest: Manifest, *, rank: int, **kwargs: Any) -> TraceWriter:
    """This rank's writer of a multi-rank trace, opened with :func:`rank0_first` (collective)."""
    if rank != 0:
        kwargs.pop("overwrite", None)
    return rank0_first(rank, lambda: TraceWriter(path, manifest, rank=rank, **kwargs), path)


def _agree(failed: bool) -> bool:
    """True on every rank when any rank says it failed (an all-reduce of one flag)."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if failed else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag)
    return bool(flag.item())


#: What gloo and NCCL say when a peer process went away (the root cause is that peer's failure).
_PEER_LOST = (
    "Connection closed by peer",
    "Connection reset by peer",
    "communicator was aborted",
    "Broken pipe",
)


def _lost_peer(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _PEER_LOST)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _bootstrap(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout_s: float,
    threads: int,
    errors: Any,
    fn: Callable[..., None],
    args: tuple[Any, ...],
    token: str = "",
) -> None:
    if token:
        os.environ[TOKEN_ENV] = token  # the ranks of one group write one output together
    import torch
    import torch.distributed as dist

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % max(1, torch.cuda.device_count()))
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        try:
            fn(rank, world_size, *args)
        finally:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    except BaseException as exc:
        kind = type(exc).__name__
        errors.put((rank, f"{kind}: {_one_line(str(exc))}"))
        if not isinstance(exc, TracekitError | KeyboardInterrupt) and not _lost_peer(exc):
            traceback.print_exc()  # an unexpected failure of this rank itself: keep the evidence
        raise SystemExit(1) from None


class RankGroup:
    """N started processes; :meth:`join` waits for them and raises if any did not finish."""

    def __init__(self, processes: list[Any], errors: Any, grace_s: float) -> None:
        self.processes = processes
        self._errors = errors
        self.grace_s = grace_s

    @property
    def pids(self) -> list[int]:
        """Process id of each rank, by rank."""
        return [int(p.pid) for p in self.processes]

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for every rank. Raises CollectorError naming each rank that did not finish."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        alive = list(self.processes)
        first_failure_at: float | None = None
        while alive:
            now = time.monotonic()
            wait_s = 0.5
            if first_failure_at is not None:
                if now - first_failure_at > self.grace_s:
                    break
                wait_s = min(wait_s, self.grace_s - (now - first_failure_at))
            if deadline is not None:
                if now > deadline:
                    break
                wait_s = min(wait_s, deadline - now)
            multiprocessing.connection.wait([p.sentinel for p in alive], timeout=max(wait_s, 0.01))
            for p in list(alive):
                if p.exitcode is not None:
                    alive.remove(p)
                    if p.exitcode != 0 and first_failure_at is None:
                        first_failure_at = time.monotonic()
        for p in alive:  # failed peers left them hanging, or the deadline passed
            p.terminate()
        for p in alive:
            p.join(5.0)
            if p.exitcode is None:
                p.kill()
                p.join()
        messages: dict[int, str] = {}
        while not self._errors.empty():
            rank, message = self._errors.get()
            messages[int(rank)] = str(message)
        failures = [
            RankFailure(rank=r, exitcode=p.exitcode, message=messages.get(r))
            for r, p in enumerate(self.processes)
            if p.exitcode != 0 or r in messages
        ]
        if failures:
            raise RankFailureError(failures)


class RankFailureError(CollectorError):
    """One or more ranks of a multi-process run did not finish."""

    def __init__(self, failures: Sequence[RankFailure], hint: str = "") -> None:
        self.failures = tuple(failures)
        # The root cause first: a rank killed or failing on its own, before peers that lost it.
        ordered = sorted(self.failures, key=lambda f: (f.message is not None, f.rank))
        message = "; ".join(f.describe() for f in ordered)
        super().__init__(f"{message}; {hint}" if hint else message)

    @property
    def ranks(self) -> list[int]:
        return [f.rank for f in self.failures]


def launch(
    fn: Callable[..., None],
    world_size: int,
    args: tuple[Any, ...] = (),
    *,
    backend: str = "gloo",
    timeout_s: float = 300.0,
    grace_s: float = 20.0,
    threads_per_rank: int | None = None,
) -> RankGroup:
    """Start ``world_size`` processes running ``fn(rank, world_size, *args)``; returns at once.

    ``fn`` must be importable by name (a module-level function): processes are started with the
    ``spawn`` method. ``timeout_s`` bounds each collective; ``threads_per_rank`` sets torch's
    intra-op threads (default: the CPU count shared evenly, at least 1).
    """
    if world_size < 1:
        raise CollectorError(f"world size must be at least 1, got {world_size}")
    if threads_per_rank is None:
        threads_per_rank = max(1, (os.cpu_count() or 1) // world_size)
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    port = free_port()
    token = os.environ.get(TOKEN_ENV) or uuid.uuid4().hex
    processes = []
    for rank in range(world_size):
        p = ctx.Process(
            target=_bootstrap,
            args=(rank, world_size, port, backend, timeout_s, threads_per_rank, errors, fn, args, token),
            name=f"tracekit-rank-{rank}",
            daemon=False,
        )
        p.start()
        processes.append(p)
    return RankGroup(processes, errors, grace_s)


def run(fn: Callable[..., None], world_size: int, args: tuple[Any, ...] = (), **kwargs: Any) -> None:
    """:func:`launch` then :meth:`RankGroup.join`."""
    launch(fn, world_size, args, **kwargs).join()
