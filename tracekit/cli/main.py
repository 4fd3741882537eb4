"""The ``tracekit`` command: a click group whose subcommands live in their own modules.

Commands are looked up lazily from ``COMMANDS`` (name -> "module:attribute"), so ``tracekit --help``
stays fast and a command's heavy imports (torch, matplotlib) happen only when it runs. Every
:class:`~tracekit.errors.TracekitError` becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

from tracekit._version import __version__
from tracekit.errors import TracekitError

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

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TracekitError as exc:
            click.echo(f"tracekit: error: {_one_line(exc.cli_message())}", err=True)
            ctx.exit(exc.exit_code)


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
