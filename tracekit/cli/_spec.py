"""``--spec FILE.toml``: a command's options read from a TOML file; flags given on the command line win.

Keys are the command's long option names (``hw``, ``ep``, ``batch-per-gpu`` or ``batch_per_gpu``,
``precision``...); a repeatable option takes a list (``hw = ["h200-sxm", "gb200-nvl72"]``) or one
value; a ``--x/--no-x`` switch takes a boolean. The file's values become the command's defaults
(click's default map), so every value goes through the same checks as the flag. A key the command
does not know is refused in one line naming the key and the file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tracekit.errors import UsageError


def _options(command: click.Command) -> dict[str, click.Option]:
    """Spec key -> option: every long name of each option except ``--spec`` itself."""
    keys: dict[str, click.Option] = {}
    for p in command.params:
        if not isinstance(p, click.Option) or p.name == "spec" or p.hidden:
            continue
        for opt in p.opts:
            if opt.startswith("--"):
                keys[opt[2:]] = p
                keys[opt[2:].replace("-", "_")] = p
    return keys


def load_spec(path: Path, command: click.Command) -> dict[str, Any]:
    """The default map of ``command`` that the TOML file ``path`` gives (option name -> value)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"--spec {path}: cannot read it ({e.strerror or e}); give a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(
            f"--spec {path}: not valid TOML ({e}); see docs/replay.md, deployment specs"
        ) from None
    keys = _options(command)
    out: dict[str, Any] = {}
    for key, value in data.items():
        opt = keys.get(key)
        if opt is None:
            valid = sorted({k for k in keys if "_" not in k or k.replace("_", "-") not in keys})
            raise UsageError(
                f"--spec {path}: unknown key {key!r} for tracekit {command.name}; valid: {', '.join(valid)}"
            )
        if isinstance(value, dict):
            raise UsageError(f"--spec {path}: key {key!r} is a table; give a value (tables are not read)")
        if opt.multiple and not isinstance(value, list):
            value = [value]
        elif not opt.multiple and isinstance(value, list):
            raise UsageError(f"--spec {path}: key {key!r} takes one value, not a list")
        if opt.multiple:
            value = [str(v) if not isinstance(v, bool) else v for v in value]
        assert opt.name is not None
        out[opt.name] = value
    return out


def spec_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--spec FILE.toml`` option: read first (eager), its values become the defaults."""

    def callback(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
        if value is not None:
            ctx.default_map = {**(ctx.default_map or {}), **load_spec(value, ctx.command)}

    return click.option(
        "--spec",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        is_eager=True,
        expose_value=False,
        callback=callback,
        help="Read options from a TOML file (keys: the long option names); flags given here win.",
    )(fn)
