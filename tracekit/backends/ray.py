"""The Ray backend: tasks on an existing Ray cluster, or on a Ray instance started on this machine.

Each task asks for one CPU. Shared objects go to Ray's object store once (``ray.put``) and every task
gets a reference; a worker node fetches each once. Results come back in order. A task's failure
that is a tracekit error (a deployment that does not fit, a damaged part file) is raised here as it
was raised there, in one line; anything else names the task and the worker.

Workers need tracekit installed (the same version) and must reach the trace: a shared filesystem
for a local path, or the object store of an ``s3://`` URI with their own credentials. The
variables that say where the store is (``AWS_ENDPOINT_URL``, ``AWS_REGION``, ...; never secrets) are
forwarded to the tasks' environment.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from tracekit.backends.base import Backend, serialized_bytes
from tracekit.errors import BackendError, MissingDependencyError, TracekitError, first_line

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

#: Variables forwarded to the tasks: where the object store is, never credentials.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "TRACEKIT_DUCKDB_HTTPFS",
)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "ray", "--backend ray") from None
    return ray


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def _call_shared(fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
    return fn(shared, item)


def _worker_facts() -> dict[str, Any]:
    import socket

    from tracekit._version import __version__

    return {"tracekit": __version__, "host": socket.gethostname(), "pid": os.getpid()}


class RayBackend(Backend):
    """Tasks on Ray. ``address``: the cluster to join (default ``RAY_ADDRESS``; without either, a
    Ray instance is started on this machine with ``workers`` CPUs, and stopped on :meth:`close`)."""

    name = "ray"
    local = False

    def __init__(self, *, address: str | None = None, workers: int | None = None) -> None:
        super().__init__()
        self._ray = ray = _import_ray()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._started = False
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            kwargs: dict[str, Any] = {
                "runtime_env": {"env_vars": env} if env else None,
                "logging_level": "ERROR",
                "log_to_driver": False,
                "configure_logging": False,
            }
            if self.address is None:  # a Ray instance of our own, on this machine
                kwargs.update(num_cpus=workers, include_dashboard=False)
            elif workers is not None:
                raise BackendError(
                    "--ray-workers sizes a Ray instance started here; with --address the cluster's own "
                    "CPUs run the tasks (drop --ray-workers)"
                )
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                where = self.address or "this machine"
                raise BackendError(
                    f"cannot start or join a Ray cluster at {where} ({first_line(exc)}); give --address "
                    "as the head's host:port (its GCS, port 6379 by default) or ray://host:10001, and run "
                    "the same Ray version here and on the cluster"
                ) from None
            self._started = True
        self._remote_call = ray.remote(num_cpus=1)(_call)
        self._remote_shared = ray.remote(num_cpus=1)(_call_shared)
        self._checked = False

    @property
    def workers(self) -> int:
        """CPUs of the cluster (at least one)."""
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def check_workers(self) -> dict[str, Any]:
        """Run one task: the workers import tracekit, at this version. Returns the worker's facts."""
        from tracekit._version import __version__

        ray = self._ray
        try:
            facts: dict[str, Any] = ray.get(ray.remote(num_cpus=1)(_worker_facts).remote())
        except ray.exceptions.RayError as exc:
            raise BackendError(
                f"Ray workers cannot run tracekit ({first_line(exc)}); install tracekit[ray] {__version__} in "
                "the cluster's image (the workers' Python environment)"
            ) from None
        if facts["tracekit"] != __version__:
            raise BackendError(
                f"Ray workers run tracekit {facts['tracekit']}, this process {__version__}; install the same "
                "version on both"
            )
        self._checked = True
        return facts

    def _get(self, ref: Any) -> Any:
        ray = self._ray
        try:
            value = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, TracekitError):
                raise cause from None
            if isinstance(cause, MemoryError):
                raise MemoryError(f"a Ray task ran out of memory: {first_line(cause)}") from None
            raise BackendError(
                f"a Ray task failed: {type(cause).__name__ if cause else 'error'}: "
                f"{first_line(cause) if cause else first_line(exc)}"
            ) from None
        except ray.exceptions.RayError as exc:
            raise BackendError(
                f"Ray could not run a task ({type(exc).__name__}: {first_line(exc)}); check the cluster's "
                "workers (memory per worker, node failures)"
            ) from None
        self.stats.result_bytes += serialized_bytes(value)
        return value

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, label: str = "tasks") -> list[R]:
        if not self._checked:
            self.check_workers()
        refs = []
        for item in items:
            self.stats.arg_bytes += serialized_bytes((fn, item))
            refs.append(self._remote_call.remote(fn, item))
        self.stats.tasks += len(refs)
        return [self._get(r) for r in refs]

    def imap(
        self, fn: Callable[[S, T], R], items: Iterable[T], *, shared: S, ahead: int | None = None
    ) -> Iterator[R]:
        if not self._checked:
            self.check_workers()
        ray = self._ray
        ref = ray.put(shared)
        self.stats.shared_bytes += serialized_bytes(shared)
        limit = 1 + (ahead if ahead is not None else 2 * self.workers)
        todo = iter(items)
        flight: deque[Any] = deque()

        def submit() -> bool:
            item = next(todo, _END)
            if item is _END:
                return False
            self.stats.arg_bytes += serialized_bytes((fn, item))
            flight.append(self._remote_shared.remote(fn, ref, item))
            self.stats.tasks += 1
            return True

        while len(flight) < limit and submit():
            pass
        try:
            while flight:
                result = self._get(flight.popleft())
                submit()
                yield result
        finally:
            for r in flight:  # the caller stopped early: drop what is still running
                ray.cancel(r, force=False)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


_END: Any = object()
