"""``--backend local|ray``, ``--address`` and ``--ray-workers`` for the commands that can run on a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from tracekit.backends import BACKENDS, Backend, get_backend


def backend_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--backend",
            type=click.Choice(sorted(BACKENDS)),
            default="local",
            show_default=True,
            envvar="TRACEKIT_BACKEND",
            help="Where the work runs: here, or as tasks on a Ray cluster (pip install 'tracekit[ray]').",
        ),
        click.option(
            "--address",
            default=None,
            metavar="HOST:PORT",
            help="Ray cluster to run on: its head's host:port, or ray://host:10001 [RAY_ADDRESS; else a Ray "
            "instance started here].",
        ),
        click.option(
            "--ray-workers",
            type=click.IntRange(1),
            default=None,
            help="CPUs of a Ray instance started here (no --address) [all].",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def open_backend(backend: str, address: str | None, ray_workers: int | None) -> Backend:
    """The backend the options name (a context manager: a Ray instance started here stops at exit)."""
    if backend == "local" and ray_workers is not None:
        from tracekit.errors import UsageError

        raise UsageError("--ray-workers sizes a Ray instance; add --backend ray or drop --ray-workers")
    return get_backend(backend, address=address, workers=ray_workers)
