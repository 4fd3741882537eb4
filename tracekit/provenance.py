"""What produced a file: the tracekit version and the command line, stamped into result files.

The command-line entry point records the command it runs (:func:`running`); a library call made
outside it is described by the process's own command line.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

from tracekit._version import __version__

#: Key of the tracekit version in a result Parquet file's key-value metadata.
META_TRACEKIT_VERSION_KEY = b"tracekit.version"
#: Key of the command that wrote a result Parquet file.
META_COMMAND_KEY = b"tracekit.command"

_COMMAND: ContextVar[str | None] = ContextVar("tracekit_command", default=None)


@contextlib.contextmanager
def running(args: Sequence[str]) -> Iterator[None]:
    """Within the block, files are stamped as written by ``tracekit ARGS``."""
    token = _COMMAND.set(shlex.join(["tracekit", *args]))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def command() -> str:
    """The command that is writing: ``tracekit ...`` under the CLI, else the process's command line
    (a Python program that calls the library)."""
    return _COMMAND.get() or shlex.join(["python", *sys.argv])


def stamp() -> dict[bytes, bytes]:
    """The version and command entries of a result file's key-value metadata."""
    return {META_TRACEKIT_VERSION_KEY: __version__.encode(), META_COMMAND_KEY: command().encode()}
