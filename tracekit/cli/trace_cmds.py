"""``tracekit validate``, ``tracekit info`` and ``tracekit schema``."""

from __future__ import annotations

import sys

import click

from tracekit.cli._render import echo_json, format_option, human_bytes, render_fields, render_rows
from tracekit.schema.tables import SCHEMA_VERSION, table_specs
from tracekit.trace import open_trace
from tracekit.trace import validate as validate_trace


@click.command()
@click.argument("traces", nargs=-1, required=True, type=click.Path())
@format_option()
def validate(traces: tuple[str, ...], fmt: str) -> None:
    """Check TRACES against the trace schema.

    Exit 0 when every trace is valid and complete; otherwise print one line per problem and exit 2.
    With --format other than table, one row per trace (trace, valid, problems) goes to stdout.
    """
    bad = False
    rows = []
    for path in traces:
        result = validate_trace(path)
        rows.append((path, result.ok, "; ".join(str(p) for p in result.problems)))
        if fmt != "table":
            bad = bad or not result.ok
            continue
        note = f"; note: {'; '.join(result.notes)}" if result.notes else ""
        if result.ok:
            click.echo(f"{path}: valid (schema {SCHEMA_VERSION}){note}")
            continue
        bad = True
        for p in result.problems:
            click.echo(str(p), err=True)
        if note:
            click.echo(f"{path}: note: {'; '.join(result.notes)}", err=True)
    if fmt != "table":
        click.echo(render_rows(["trace", "valid", "problems"], rows, fmt))
    if bad:
        sys.exit(2)


@click.command()
@click.argument("trace", type=click.Path())
@format_option()
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
def info(trace: str, fmt: str, as_json: bool) -> None:
    """Model, source, steps, tokens, layers, experts, ranks and sizes of TRACE."""
    s = open_trace(trace).summary()
    if as_json or fmt == "json":
        echo_json(s)
        return
    m, p = s["model"], s["parallel"]
    lines = [
        f"trace      {s['path']}  ({s['source']}, schema {s['schema_version']}, "
        f"{'complete' if s['complete'] else 'INCOMPLETE: ranks ' + str(s['incomplete_ranks'])})",
        f"model      {m['name']} ({m['architecture']}): {m['layers']} layers, {m['moe_layers']} MoE, "
        f"{m['experts']} experts (+{m['shared_experts']} shared), top-{m['top_k']}, hidden {m['hidden_size']}",
        f"layout     world {p['world_size']}, EP {p['ep_size']}, DP {p['dp_size']}, TP {p['tp_size']}, "
        f"placement {p['placement']}; ranks {s['ranks']}",
        f"steps      {s['steps']['count']} ({s['steps']['prefill']} prefill, {s['steps']['decode']} decode, "
        f"{s['steps']['mixed']} mixed), {s['tokens']} tokens",
        f"size       {human_bytes(s['size_bytes'])}",
    ]
    if s["placement_table"]:
        pt = s["placement_table"]
        lines.append(
            f"placement  {pt['epochs']} epoch(s), {pt['layers']} layer(s), {pt['slots_per_rank']} slots per rank; "
            "first layer: " + "; ".join(f"rank {r}: {_ranges(e)}" for r, e in pt["experts_by_rank"].items())
        )
    rows = [(t, v["rows"], v["files"], v["bytes"]) for t, v in s["tables"].items()]
    columns = ["table", "rows", "files", "size_bytes"]
    if fmt == "csv":
        click.echo(render_rows(columns, rows, fmt))
        return
    if fmt == "markdown":
        facts = [(ln[:11].strip(), ln[11:]) for ln in lines]
        click.echo(render_fields(facts, fmt, title=str(s["path"])) + "\n")
    else:
        click.echo("\n".join(lines))
    click.echo(render_rows(columns, rows, fmt))


@click.command()
@click.argument("table", required=False)
@format_option()
def schema(table: str | None, fmt: str) -> None:
    """List the trace tables, or the columns of TABLE with types, units and meaning."""
    specs = table_specs()
    if table is None:
        click.echo(
            render_rows(
                ["table", "columns", "description"],
                [(n, len(t.columns), t.description) for n, t in specs.items()],
                fmt,
            )
        )
        return
    from tracekit.schema.tables import table_spec

    spec = table_spec(table)
    rows = [
        (c.name, c.type, "yes" if c.nullable else "no", c.unit or "", c.description) for c in spec.columns
    ]
    click.echo(render_rows(["column", "type", "nullable", "unit", "description"], rows, fmt, title=spec.name))


def _ranges(experts: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out: list[str] = []
    start = prev = None
    for e in [*experts, None]:
        if start is not None and e is not None and prev is not None and e == prev + 1:
            prev = e
            continue
        if start is not None:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = e
    return ",".join(out)
