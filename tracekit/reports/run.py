"""Running queries and canned reports on a catalog's connection."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

from tracekit.errors import UsageError
from tracekit.reports.catalog import INPUTS_VIEW, Catalog
from tracekit.reports.registry import ReportResult, get_report, used_params


@dataclass(frozen=True, kw_only=True)
class QueryResult:
    """Columns and rows of a query."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def _sql_error(exc: duckdb.Error, what: str) -> UsageError:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    head = lines[0] if lines else type(exc).__name__
    hint = next((ln for ln in lines[1:] if ln.lower().startswith(("did you mean", "candidate"))), "")
    text = f"{what}: {head}"
    if hint:
        text += f" ({hint})"
    return UsageError(text + "; list the views and columns with tracekit sql --schema INPUTS")


def execute(
    con: duckdb.DuckDBPyConnection,
    query: str,
    params: Mapping[str, Any] | None = None,
    *,
    what: str = "SQL error",
) -> duckdb.DuckDBPyConnection:
    """Run ``query``; a DuckDB error becomes a one-line :class:`UsageError`."""
    if not query.strip():
        raise UsageError('the SQL query is empty; give a query such as "SELECT * FROM steps"')
    try:
        return con.execute(query, dict(params) if params else None)
    except duckdb.Error as exc:
        raise _sql_error(exc, what) from None


def query(con: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int | None = None) -> QueryResult:
    """Run ``sql`` and fetch its rows (at most ``max_rows`` + 1, to tell whether there are more)."""
    cur = execute(con, sql)
    columns = tuple(d[0] for d in cur.description or ())
    try:
        rows = cur.fetchmany(max_rows + 1) if max_rows is not None else cur.fetchall()
    except duckdb.Error as exc:
        raise _sql_error(exc, "SQL error") from None
    return QueryResult(columns=columns, rows=rows)


def iter_batches(con: duckdb.DuckDBPyConnection, sql: str, batch_rows: int = 10_000) -> Iterator[QueryResult]:
    """Stream the rows of ``sql`` in batches (for CSV output of large results)."""
    cur = execute(con, sql)
    columns = tuple(d[0] for d in cur.description or ())
    while True:
        try:
            rows = cur.fetchmany(batch_rows)
        except duckdb.Error as exc:
            raise _sql_error(exc, "SQL error") from None
        if not rows:
            return
        yield QueryResult(columns=columns, rows=rows)


def check_needs(catalog: Catalog, name: str) -> None:
    """Raise a :class:`UsageError` when no input provides a view the report reads."""
    spec = get_report(name)
    missing = [t for t in spec.needs if t != INPUTS_VIEW and not catalog.has(t)]
    if missing:
        have = ", ".join(f"{i.name} ({i.kind})" for i in catalog.inputs)
        source = (
            "a result directory of tracekit replay/sweep --out"
            if any(t.startswith(("replay_", "sweep_")) for t in missing)
            else "a trace directory"
        )
        raise UsageError(
            f"report {name} reads the view {missing[0]}, which none of the inputs has (inputs: {have}); "
            f"give {source} that has it"
        )


def run_report(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    name: str,
    params: Mapping[str, Any] | None = None,
) -> ReportResult:
    """Run the canned report ``name`` on a connection made by ``catalog.connect()``."""
    spec = get_report(name)
    check_needs(catalog, name)
    values = spec.bind(params)
    used = used_params(spec.sql)
    cur = execute(con, spec.sql, {k: v for k, v in values.items() if k in used}, what=f"report {name} failed")
    columns = tuple(d[0] for d in cur.description or ())
    return ReportResult(name=name, columns=columns, rows=cur.fetchall(), params=values)
