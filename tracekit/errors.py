"""The one exception tree of tracekit.

Every error says what happened and what to do; the CLI prints it as one line and exits with
``error.exit_code``: 2 for a mistake in what the user gave (arguments, input files, an output that
exists, is busy or cannot be written there), 1 when the machine refused (no space left, out of
memory) or a recording failed at run time. The CLI also turns click's usage errors (exit 2),
``OSError`` (2 for EACCES, EROFS, ENOTDIR and the like; 1 for ENOSPC and the rest) and
``MemoryError`` (exit 1) into one line, never a traceback. A message names a parameter through
:func:`param`: a Python caller reads the parameter's name (``ep``), the command line its flag
(``--ep``)::

    TracekitError                  base; never raised itself
    ├── UsageError                 a bad argument or option value (exit 2)
    ├── TraceError                 a trace on disk cannot be used (exit 2)
    │   ├── NotATraceError         the path is not a tracekit trace
    │   ├── SchemaError            a table or manifest does not match the schema
    │   ├── SchemaVersionError     the trace was written by a newer, unknown major version
    │   └── IncompleteTraceError   a writer (or one rank) stopped before closing its shard
    ├── InputFormatError           a file to import is malformed (exit 2)
    ├── UnknownNameError           a name not in a registry; the message lists the valid names (exit 2)
    ├── MissingDependencyError     an optional extra is not installed; says what to install (exit 2)
    ├── ModelError                 a model cannot be loaded, or has no MoE layer (exit 2)
    ├── DeploymentError            a deployment cannot run (does not fit, bad degrees) (exit 2)
    ├── OutputBusyError            another process is writing the same output (exit 2)
    ├── StorageError               an object store or remote filesystem refused or cannot be reached (exit 2)
    ├── BackendError               a distributed backend (Ray) cannot run the work (exit 2)
    ├── ResourceError              the machine refused: no space left, no memory (exit 1)
    └── CollectorError             recording failed at run time (exit 1)

Warnings about inputs that can still be read (an incomplete trace, a status that disagrees with the
files) are :class:`TraceWarning`; the CLI prints each as one ``tracekit: warning:`` line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_MARK = "\x1f"
_PARAM = re.compile(f"{_MARK}([^{_MARK}|]*)\\|([^{_MARK}]*){_MARK}")


def param(name: str, flag: str | None = None) -> str:
    """A parameter's name inside an error message: ``str(error)`` shows ``name`` (what a Python caller
    passed), :meth:`TracekitError.cli_message` the command-line flag (``flag``, by default ``--name``
    with dashes)."""
    return f"{_MARK}{name}|{flag or '--' + name.replace('_', '-')}{_MARK}"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for a one-line
    error that quotes what a library said."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TracekitError(Exception):
    """Base of every error tracekit raises on purpose."""

    exit_code: int = 2

    def __str__(self) -> str:
        return _PARAM.sub(lambda m: m.group(1), super().__str__())

    def cli_message(self) -> str:
        """The message as the command line prints it: parameters named by their flags."""
        return _PARAM.sub(lambda m: m.group(2), super().__str__())


class UsageError(TracekitError):
    """A bad argument or option value."""


class TraceError(TracekitError):
    """A trace on disk cannot be used as it is."""


class NotATraceError(TraceError):
    """The path is not a tracekit trace directory."""


class SchemaError(TraceError):
    """A table or the manifest does not match the schema."""


class SchemaVersionError(TraceError):
    """The trace was written with a schema major version this tracekit does not know."""


class IncompleteTraceError(TraceError):
    """A writer stopped before closing its shard (killed, crashed, still running)."""


class InputFormatError(TracekitError):
    """A file given to an importer is malformed."""


class ModelError(TracekitError):
    """A model cannot be loaded or used (not a model directory, no MoE layer, ...)."""


class DeploymentError(TracekitError):
    """A deployment cannot run as asked (does not fit in memory, inconsistent degrees, ...)."""


class CollectorError(TracekitError):
    """Recording failed while the run was going on."""

    exit_code = 1


class OutputBusyError(UsageError):
    """Another process holds the advisory lock of the output (it is writing the same path)."""


class StorageError(TracekitError):
    """An object store or remote filesystem refused a request or cannot be reached (bad bucket,
    credentials or endpoint)."""


class BackendError(TracekitError):
    """A distributed backend cannot run the work: the cluster cannot be reached, or its workers lack
    tracekit or cannot read the trace."""


class ResourceError(TracekitError):
    """The machine refused: no space left on the device, out of memory, an I/O error."""

    exit_code = 1


class TraceWarning(UserWarning):
    """An input can be read but is incomplete or disagrees with what its writer recorded."""


class UnknownNameError(TracekitError):
    """A name that is not in a registry."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        msg = f"unknown {kind} {name!r}; valid names: {', '.join(self.valid) or '(none)'}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


class MissingDependencyError(TracekitError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs {package}, which is not installed; "
            f"install it with: pip install 'tracekit[{extra}]'"
        )
