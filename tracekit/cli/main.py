"""The ``tracekit`` command: a click group whose subcommands live in their own modules.

Commands are looked up lazily from ``COMMANDS`` (name -> "module:attribute"), so ``tracekit --help``
stays fast and a command's heavy imports (torch, matplotlib) happen only when it runs. Every failure
becomes one line on stderr, never a traceback: a :class:`~tracekit.errors.TracekitError` with its exit
code, click's usage errors (exit 2), ``OSError`` (exit 2 when the path cannot be written, such as
EACCES or EROFS; exit 1 when the machine refused, such as ENOSPC), ``MemoryError`` (exit 1), and
anything unexpected (exit 1; ``TRACEKIT_DEBUG=1`` shows the traceback). tracekit's warnings are one
``tracekit: warning:`` line each, printed when the command succeeds (a failed command prints only its
error); other libraries' warnings are not shown.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import warnings
from typing import Any

import click

from tracekit._version import __version__
from tracekit.errors import TracekitError, TraceWarning, first_line
from tracekit.provenance import running
from tracekit.trace.outputs import USER_ERRNOS, os_error

#: Every subcommand: name -> "module:attribute". Entries whose module is absent are not listed.
COMMANDS: dict[str, str] = {
    "info": "tracekit.cli.trace_cmds:info",
    "validate": "tracekit.cli.trace_cmds:validate",
    "schema": "tracekit.cli.trace_cmds:schema",
    "record": "tracekit.cli.record:record",
    "hw": "tracekit.cli.catalog:hw",
    "models": "tracekit.cli.catalog:models",
    "cost": "tracekit.cli.cost:cost",
    "calibrate": "tracekit.cli.cost:calibrate",
    "replay": "tracekit.cli.replay:replay",
    "compare": "tracekit.cli.replay:compare",
    "sweep": "tracekit.cli.replay:sweep",
    "stats": "tracekit.cli.synth:stats",
    "synth": "tracekit.cli.synth:synth",
    "place": "tracekit.cli.place:place",
    "sql": "tracekit.cli.sql:sql",
    "db": "tracekit.cli.sql:db",
    "report": "tracekit.cli.sql:report",
    "import": "tracekit.cli.io:import_",
    "export": "tracekit.cli.io:export",
    "bench": "tracekit.cli.bench:bench",
    "plan": "tracekit.cli.plan:plan",
}


def _available(target: str) -> bool:
    module = target.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class TracekitGroup(click.Group):
    """Lazy subcommands, and library errors turned into one line and an exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([n for n, t in COMMANDS.items() if _available(t)] + list(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        target = COMMANDS.get(cmd_name)
        if target is None or not _available(target):
            return None
        module, attr = target.split(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run a command; every failure becomes one ``tracekit: error:`` line and an exit code."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        pending: list[str] = []
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        with warnings.catch_warnings(), running(argv):
            _route_warnings(pending)
            code = _run(
                lambda: super(TracekitGroup, self).main(args, prog_name, complete_var, False, **extra)
            )
        if code == 0:  # a failed command says one line: its error
            for line in pending:
                _say(f"tracekit: warning: {line}")
        sys.exit(code)


def _run(call: Any) -> int:
    """Call the click entry point and map what it raises to (one stderr line, exit code)."""
    try:
        rv = call()
        return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        _say("tracekit: aborted")
        return 1
    except click.ClickException as exc:  # usage errors: click would print several lines
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and ctx is not None:
            hint = f" (see {ctx.command_path} --help)"
        _say(f"tracekit: error: {_one_line(exc.format_message())}{hint}")
        return int(exc.exit_code)
    except TracekitError as exc:
        _say(f"tracekit: error: {_one_line(exc.cli_message())}")
        return exc.exit_code
    except BrokenPipeError:  # the reader of stdout went away (| head): stop quietly
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        where = exc.filename if exc.filename is not None else "a file"
        _say(f"tracekit: error: {_one_line(str(os_error(exc, str(where))))}")
        return 2 if exc.errno in USER_ERRNOS else 1
    except MemoryError:
        _say(
            "tracekit: error: out of memory; give a smaller input or size (or raise the memory limit) "
            "and retry"
        )
        return 1
    except RecursionError:
        _say("tracekit: error: an input is nested too deeply to read (damaged or hostile JSON)")
        return 2
    except KeyboardInterrupt:
        _say("tracekit: interrupted")
        return 130
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as exc:
        if os.environ.get("TRACEKIT_DEBUG"):
            raise
        _say(
            f"tracekit: error: unexpected {type(exc).__name__}: {_one_line(first_line(exc))}; "
            "run tracekit validate on the inputs, or set TRACEKIT_DEBUG=1 to see where it failed"
        )
        return 1


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        click.echo(line, err=True)


def _route_warnings(pending: list[str]) -> None:
    """tracekit's own warnings are kept (once per text) in ``pending``, printed as one line each
    when the command succeeds; other libraries' warnings are dropped."""

    def show(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
        if not issubclass(category, TraceWarning):
            return
        text = _one_line(str(message))
        if text not in pending:
            pending.append(text)

    warnings.simplefilter("ignore")
    warnings.simplefilter("always", TraceWarning)
    warnings.showwarning = show


def _one_line(text: str) -> str:
    return " ".join(text.split())


@click.group(
    cls=TracekitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="tracekit")
def cli() -> None:
    """tracekit: record, replay and analyse Mixture-of-Experts inference traces.

    Record expert routing and communication from real runs, re-time them on hardware models
    (H200, GB200 NVL72, ...), and query everything in SQL.
    """


def main() -> None:
    cli(prog_name="tracekit")


if __name__ == "__main__":  # pragma: no cover
    main()
