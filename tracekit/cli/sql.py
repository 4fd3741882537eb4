"""``tracekit sql``, ``tracekit db`` and ``tracekit report``: SQL over traces and replay results."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

import click

from tracekit.cli._render import FORMATS, render_rows
from tracekit.errors import ResourceError, UsageError, first_line

#: Storage format of the database files ``tracekit db`` writes: the previous minor release's (DuckDB
#: 2.0 reads and writes it; DuckDB 1.5 opens it, while a file in 2.0's own format it cannot).
STORAGE_VERSION = "v1.5.0"
_MEMORY_HELP = "DuckDB memory limit (e.g. 2GB); larger work spills to a temporary folder."


def _catalog(inputs: tuple[str, ...]) -> Any:
    from tracekit.reports import Catalog

    return Catalog.from_paths(list(inputs))


def _input_paths(inputs: tuple[str, ...]) -> list[str]:
    from tracekit.reports.catalog import split_input

    return [split_input(spec)[1] for spec in inputs]


def _echo(text: str, out: str | None, force: bool = False, inputs: tuple[str, ...] = ()) -> None:
    if out:
        from tracekit.trace.outputs import Output, os_error

        with Output(out, kind="file", force=force, inputs=_input_paths(inputs), what="report") as o:
            try:
                o.target.write_text(text + "\n", encoding="utf-8")
            except OSError as exc:
                raise os_error(exc, f"--out {out}: cannot write the file") from None
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text)


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parse_params(items: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r}: write it as NAME=VALUE, e.g. --param ep=8")
        params[key.strip()] = value
    return params


@click.command()
@click.argument("args", nargs=-1, metavar="QUERY [INPUT ...]")
@click.option("--schema", is_flag=True, help="List the views and their columns instead of running a query.")
@click.option(
    "-f", "--file", "query_file", type=click.Path(dir_okay=False), help="Read QUERY from this file."
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format."
)
@click.option(
    "--max-rows",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Rows shown in table format (0: all).",
)
@click.option("--memory-limit", default=None, help=_MEMORY_HELP)
def sql(
    args: tuple[str, ...],
    schema: bool,
    query_file: str | None,
    fmt: str,
    max_rows: int,
    memory_limit: str | None,
) -> None:
    """Run QUERY over the tables of the given traces and replay results.

    Each INPUT is a trace directory or a result directory (tracekit replay --out), optionally
    named as NAME=PATH. Every table is a view: routing, expert_load, comm, steps, kernels, ...,
    replay_steps, ...; with several inputs a view holds all of them and its "input" column tells
    them apart, and NAME_table views hold one input each. "inputs" lists the inputs.

    \b
    tracekit sql "SELECT layer, sum(num_tokens) FROM expert_load GROUP BY 1 ORDER BY 1" my-trace
    tracekit sql --schema my-trace h200=replay-h200
    """
    from tracekit.reports import run as runner

    if schema or query_file:
        query_text, inputs = None, args
        if query_file:
            try:
                query_text = Path(query_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"--file {query_file}: cannot read it ({exc.strerror})") from None
    elif not args:
        raise UsageError('give a QUERY and the inputs, e.g. tracekit sql "SELECT * FROM steps" TRACE')
    else:
        query_text, inputs = args[0], args[1:]
        if Path(query_text).exists() and inputs and not Path(inputs[0]).exists():
            raise UsageError(f"{query_text!r} is a path, not a query; the QUERY comes first, then the inputs")

    if schema:
        if not inputs:
            raise UsageError("--schema needs at least one trace or result directory")
        cat = _catalog(inputs)
        con = cat.connect(memory_limit=memory_limit)
        rows = [
            (v.name, ", ".join(v.inputs), ", ".join(f"{c} {t}" for c, t in v.columns)) for v in cat.views(con)
        ]
        con.close()
        click.echo(render_rows(["view", "inputs", "columns"], rows, fmt))
        return

    import duckdb

    assert query_text is not None
    if inputs:
        con = _catalog(inputs).connect(memory_limit=memory_limit)
    else:
        con = duckdb.connect(config={"memory_limit": memory_limit} if memory_limit else {})
    try:
        if fmt == "csv":
            writer = csv.writer(sys.stdout, lineterminator="\n")
            header = False
            for batch in runner.iter_batches(con, query_text):
                if not header:
                    writer.writerow(batch.columns)
                    header = True
                writer.writerows([["" if v is None else v for v in r] for r in batch.rows])
            if not header:  # no rows: still print the header
                result = runner.query(con, query_text, max_rows=0)
                writer.writerow(result.columns)
            return
        limit = max_rows if fmt == "table" and max_rows > 0 else None
        result = runner.query(con, query_text, max_rows=limit)
        rows = result.rows
        more = limit is not None and len(rows) > limit
        click.echo(render_rows(list(result.columns), rows[:limit] if more else rows, fmt))
        if more:
            click.echo(f"(first {limit} rows shown; use --max-rows 0 or --format csv for all)", err=True)
    finally:
        con.close()


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="DuckDB database file to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def db(inputs: tuple[str, ...], out: str, force: bool) -> None:
    """Write a DuckDB database file with a view per table of INPUTS (traces, replay results).

    The views read the Parquet files in place by absolute path; open the file with the duckdb CLI or
    any DuckDB client (duckdb FILE.duckdb) while the inputs stay where they are. The file is written
    in the storage format of DuckDB 1.5, so the previous release's CLI opens it too; it appears only
    when complete (--force replaces the old one only then).
    """
    from tracekit.trace.outputs import Output

    output = Output(out, kind="file", force=force, inputs=_input_paths(inputs), what="database")
    output.check()
    cat = _catalog(inputs)  # a mistyped input fails here, before anything is written
    with output:
        con = cat.connect(output.target, storage_version=STORAGE_VERSION)
        try:
            views = cat.views(con)
            _checkpoint(con, out)
        finally:
            con.close()
        if output.target.with_name(output.target.name + ".wal").exists():
            raise ResourceError(
                f"--out {out}: DuckDB could not fold its log into the database file (disk full?); "
                "nothing was written: free space and run tracekit db again"
            )
    click.echo(
        f"wrote {out}: {len(views)} views over {len(cat.inputs)} input(s), DuckDB storage {STORAGE_VERSION} "
        f"(DuckDB {STORAGE_VERSION.lstrip('v').rsplit('.', 1)[0]} and later open it); open it with: duckdb {out}"
    )


def _checkpoint(con: Any, out: str) -> None:
    import duckdb

    try:
        con.execute("CHECKPOINT")
    except duckdb.Error as exc:
        raise ResourceError(
            f"--out {out}: DuckDB could not write the database file ({first_line(exc)}); nothing was written"
        ) from None


@click.command()
@click.argument("name", required=False)
@click.argument("inputs", nargs=-1)
@click.option("--list", "list_reports", is_flag=True, help="List the reports and what each answers.")
@click.option("--describe", is_flag=True, help="Show NAME's parameters and columns instead of running it.")
@click.option(
    "-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="A report parameter (repeatable)."
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format."
)
@click.option(
    "--ep",
    type=int,
    default=None,
    help="Shorthand for --param ep=N (imbalance, html) [default: each trace's own EP].",
)
@click.option("--out", type=click.Path(dir_okay=False), help="Write the output here (required for html).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--memory-limit", default=None, help=_MEMORY_HELP)
def report(
    name: str | None,
    inputs: tuple[str, ...],
    list_reports: bool,
    describe: bool,
    params: tuple[str, ...],
    fmt: str,
    ep: int | None,
    out: str | None,
    force: bool,
    memory_limit: str | None,
) -> None:
    """Run the canned report NAME over INPUTS (traces and replay results), or write an HTML report.

    \b
    tracekit report --list
    tracekit report imbalance my-trace --ep 8
    tracekit report replay-compare h200=replay-h200 nvl72=replay-nvl72
    tracekit report html my-trace replay-h200 --out report.html
    """
    from tracekit.reports import get_report, reports

    if list_reports:
        rows = [
            (r.name, r.title, ", ".join(f"{p.name}={_show(p.default)}" for p in r.params)) for r in reports()
        ]
        rows.append(("html", "One self-contained HTML file with the key tables and plots (needs --out)", ""))
        click.echo(render_rows(["report", "what it answers", "parameters (defaults)"], rows, fmt))
        return
    if not name:
        raise UsageError("give a report NAME (see tracekit report --list) and the inputs")
    if describe:
        if name == "html":
            click.echo(
                "html: one self-contained HTML file (tables, heatmap, per-rank load, replay breakdown, Pareto curve); needs --out"
            )
            return
        spec = get_report(name)
        click.echo(f"{spec.name}: {spec.title}\n\n{spec.answers}\n\nreads: {', '.join(spec.needs)}")
        if spec.params:
            click.echo(
                render_rows(
                    ["parameter", "type", "default", "meaning"],
                    [(p.name, p.type, _show(p.default), p.description) for p in spec.params],
                    fmt,
                )
            )
        click.echo(render_rows(["column", "meaning"], list(spec.columns), fmt))
        return
    if not inputs:
        raise UsageError(f"report {name}: give at least one trace or result directory")
    if out:
        from tracekit.trace.outputs import Output

        Output(out, kind="file", force=force, inputs=_input_paths(inputs)).check()
    values = _parse_params(params)
    if ep is not None:
        values["ep"] = str(ep)
    if name == "html":
        if not out:
            raise UsageError("report html: give the file to write with --out report.html")
        from tracekit.reports.html import write_html
        from tracekit.trace.outputs import Output

        with Output(out, kind="file", force=force, inputs=_input_paths(inputs), what="report") as o:
            write_html(list(inputs), o.target, params=values, memory_limit=memory_limit)
        click.echo(f"wrote {out} ({os.path.getsize(out)} bytes)")
        return
    get_report(name)  # unknown names fail before the inputs are opened
    from tracekit.reports import run_report

    cat = _catalog(inputs)
    con = cat.connect(memory_limit=memory_limit)
    try:
        result = run_report(con, cat, name, values)
    finally:
        con.close()
    _echo(
        render_rows(list(result.columns), result.rows, fmt, title=name if fmt == "table" else None),
        out,
        force,
        inputs,
    )
    if not result.rows:
        click.echo(
            f"report {name}: no rows (the inputs have no rows in {', '.join(get_report(name).needs)})",
            err=True,
        )
