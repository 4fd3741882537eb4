"""Windows of replayed steps counted by a backend: here, one window ahead on a helper thread, or as
tasks on a cluster whose workers read the routing row groups themselves.

What a task needs is a :class:`WindowJob`: the phase's token tables, schedule and placement epochs
(shared once per phase) and the trace's address. It pickles small: the trace travels as its path or
URI, never as routing rows, and a worker opens it once per process (:func:`_source`). A task returns
an :class:`~tracekit.replay.counts.ExpertWindow`: counts per (step, layer, rank, slot), whose size
depends on the deployment, not on the number of routing rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tracekit.placement import Placement
from tracekit.replay.counts import ExpertWindow, RoutingSource, expert_window
from tracekit.replay.schedule import PhaseTokens, Schedule, TokenIndex
from tracekit.trace.reader import open_trace
from tracekit.trace.store import absolute

if TYPE_CHECKING:
    from tracekit.backends import Backend

#: Windows counted ahead per worker of a distributed backend (bounds the counts held in memory).
AHEAD_PER_WORKER = 2


@dataclass(frozen=True, kw_only=True, eq=False)
class WindowJob:
    """Everything counting one window of a phase needs besides the window's first step."""

    source: RoutingSource
    index: TokenIndex
    tokens: PhaseTokens
    schedule: Schedule
    epochs: tuple[Placement, ...]
    window_steps: int
    ranks_per_node: int
    #: Decode the next window's row groups in the background (one process counts every window).
    prefetch_next: bool = True

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # the trace by address (and the names and sizes of its routing parts, so a worker's cached
        # copy is refreshed when they change); a worker opens it itself
        src = self.source
        files = tuple((str(f), f.stat().st_size) for f in src.trace.files("routing", check=False))
        return (
            _rebuild,
            (
                absolute(src.trace.path),
                src.layers,
                src.top_k,
                files,
                self.index,
                self.tokens,
                self.schedule,
                self.epochs,
                self.window_steps,
                self.ranks_per_node,
            ),
        )


#: Routing sources a worker process opened: (address, layers, top-k, routing parts) -> source.
_SOURCES: dict[tuple[Any, ...], RoutingSource] = {}
_SOURCES_LOCK = threading.Lock()
#: Sources kept per worker process (each holds a few decoded row groups).
_KEEP = 2


def _source(address: str, layers: tuple[int, ...], top_k: int, files: tuple[Any, ...]) -> RoutingSource:
    key = (address, layers, top_k, files)
    with _SOURCES_LOCK:
        found = _SOURCES.get(key)
        if found is None:
            found = RoutingSource(trace=open_trace(address, warn=False), layers=layers, top_k=top_k)
            _SOURCES[key] = found
            while len(_SOURCES) > _KEEP:
                _SOURCES.pop(next(iter(_SOURCES)))
        return found


def _rebuild(
    address: str,
    layers: tuple[int, ...],
    top_k: int,
    files: tuple[Any, ...],
    index: TokenIndex,
    tokens: PhaseTokens,
    schedule: Schedule,
    epochs: tuple[Placement, ...],
    window_steps: int,
    ranks_per_node: int,
) -> WindowJob:
    return WindowJob(
        source=_source(address, layers, top_k, files),
        index=index,
        tokens=tokens,
        schedule=schedule,
        epochs=epochs,
        window_steps=window_steps,
        ranks_per_node=ranks_per_node,
        prefetch_next=False,  # the next window is another task's, likely on another worker
    )


def count_window(job: WindowJob, step_lo: int) -> ExpertWindow:
    """The routing counts of replayed steps ``step_lo .. step_lo + window_steps - 1`` (or to the end)."""
    return expert_window(
        job.source,
        job.index,
        job.tokens,
        job.schedule,
        job.epochs,
        step_lo=step_lo,
        step_hi=min(job.schedule.num_steps, step_lo + job.window_steps),
        ranks_per_node=job.ranks_per_node,
        prefetch_next=job.prefetch_next,
    )


def count_windows(job: WindowJob, starts: Sequence[int], backend: Backend | None) -> Iterator[ExpertWindow]:
    """The counts of the windows starting at ``starts``, in order: locally the next window is counted
    on a helper thread while the caller times this one; on a cluster, windows run as tasks."""
    if backend is None:
        from tracekit.backends import LocalBackend

        backend = LocalBackend()
    ahead = None if backend.local else AHEAD_PER_WORKER * backend.workers
    return backend.imap(count_window, starts, shared=job, ahead=ahead)
