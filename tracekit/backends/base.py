"""The backend interface and the local backend."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


@dataclass
class ShipStats:
    """What a backend sent to its workers and got back, in serialized bytes."""

    #: Tasks run.
    tasks: int = 0
    #: Objects shared with every task (once per object; a worker node fetches each once).
    shared_bytes: int = 0
    #: Arguments of the tasks themselves.
    arg_bytes: int = 0
    #: Results returned by the tasks.
    result_bytes: int = 0

    @property
    def to_workers_bytes(self) -> int:
        return self.shared_bytes + self.arg_bytes


def serialized_bytes(obj: Any) -> int:
    """Bytes ``obj`` takes pickled (protocol 5, large buffers counted once, as Ray ships them)."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return len(head) + sum(memoryview(b).nbytes for b in buffers)


class Backend:
    """Runs tasks somewhere; a context manager that closes what it started."""

    #: Registry name.
    name: str = "local"
    #: True when tasks run in this process (nothing is serialized).
    local: bool = True

    def __init__(self) -> None:
        self.stats = ShipStats()

    @property
    def workers(self) -> int:
        """CPUs (task slots) the backend runs tasks on."""
        return 1

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, label: str = "tasks") -> list[R]:
        """``[fn(item) for item in items]``, each as one task; results in order."""
        raise NotImplementedError

    def imap(
        self, fn: Callable[[S, T], R], items: Iterable[T], *, shared: S, ahead: int | None = None
    ) -> Iterator[R]:
        """``fn(shared, item)`` for each item, results yielded in order, at most ``ahead`` tasks
        submitted beyond the one being waited for."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend started."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LocalBackend(Backend):
    """Everything in this process: ``map`` in order; ``imap`` runs the next item on a helper thread
    while the caller works on the current result (as the replay overlaps counting and timing)."""

    name = "local"
    local = True

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, label: str = "tasks") -> list[R]:
        self.stats.tasks += len(items)
        return [fn(item) for item in items]

    def imap(
        self, fn: Callable[[S, T], R], items: Iterable[T], *, shared: S, ahead: int | None = None
    ) -> Iterator[R]:
        todo = iter(items)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracekit-ahead") as pool:
            first = next(todo, _END)
            pending: Future[R] | None = None if first is _END else pool.submit(fn, shared, first)
            while pending is not None:
                nxt = next(todo, _END)
                current = pending
                # the next item starts before this result is handed over (one ahead)
                pending = None if nxt is _END else pool.submit(fn, shared, nxt)
                self.stats.tasks += 1
                yield current.result()


_END: Any = object()
