"""Where heavy work runs: in this process (``local``) or as tasks on a Ray cluster (``ray``).

A backend maps a function over items and returns the results in order; :meth:`Backend.imap` also
shares one object (a replay phase's token tables) with every task and yields results as they come,
keeping a bounded number of tasks in flight. The replay counts windows of steps this way, sweeps,
comparisons and placement evaluations run one deployment per task, and statistics count expert
loads one group of part files per task. Only functions, their arguments and their results travel:
workers read the trace themselves, from its path or URI.

Backends are named in :data:`BACKENDS`; ``ray`` needs the optional extra (``tracekit[ray]``) and is
imported only when asked for.
"""

from __future__ import annotations

from tracekit.backends.base import Backend, LocalBackend, ShipStats
from tracekit.errors import UnknownNameError

#: Every backend by name: what it runs on.
BACKENDS = {
    "local": "this process (and its threads and process pools)",
    "ray": "tasks on a Ray cluster: --address, RAY_ADDRESS, or a Ray instance started on this machine",
}


def get_backend(name: str = "local", *, address: str | None = None, workers: int | None = None) -> Backend:
    """The backend called ``name``. ``address``: the Ray cluster to join (``host:port`` of its head, or
    ``ray://host:10001``; default ``RAY_ADDRESS``, else a Ray instance started here with ``workers``
    CPUs [all of them]). A Ray instance this process started stops when the backend is closed."""
    if name == "local":
        if address is not None:
            from tracekit.errors import UsageError

            raise UsageError("--address names a Ray cluster; add --backend ray or drop --address")
        return LocalBackend()
    if name == "ray":
        from tracekit.backends.ray import RayBackend

        return RayBackend(address=address, workers=workers)
    raise UnknownNameError("backend", name, BACKENDS)


__all__ = ["BACKENDS", "Backend", "LocalBackend", "ShipStats", "get_backend"]
