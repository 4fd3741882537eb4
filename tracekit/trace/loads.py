"""Expert loads per (step, layer, expert) from a trace: its ``expert_load`` rows summed, or its routing
rows counted. Here one DuckDB query over the whole table; on a distributed backend one task per group
of part files, each returning its partial counts (never the rows), summed here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from tracekit.trace.reader import Trace, open_trace
from tracekit.trace.store import absolute, dataset_paths, location

if TYPE_CHECKING:
    from tracekit.backends import Backend

#: Per table: the query that sums its rows into loads (over a view with the table's name).
LOAD_SQL = {
    "expert_load": "SELECT step, layer, expert, CAST(sum(num_tokens) AS BIGINT) AS n FROM expert_load GROUP BY ALL",
    "routing": "SELECT step, layer, expert, count(*) AS n FROM "
    "(SELECT step, layer, unnest(expert_ids) AS expert FROM routing) GROUP BY ALL",
}
#: Part-file groups per worker of a distributed backend.
GROUPS_PER_WORKER = 2


def load_table(trace: Trace) -> str | None:
    """The table loads come from: ``expert_load`` when the trace has it, else ``routing``, else None."""
    for table in ("expert_load", "routing"):
        if trace.has(table):
            return table
    return None


def expert_loads(trace: Trace, *, backend: Backend | None = None) -> pa.Table:
    """Columns ``step``, ``layer``, ``expert``, ``n`` (tokens), one row per (step, layer, expert) with
    tokens, in no particular order; empty when the trace has neither table."""
    table = load_table(trace)
    if table is None:
        return pa.table(
            {
                n: pa.array([], t)
                for n, t in (
                    ("step", pa.int32()),
                    ("layer", pa.int16()),
                    ("expert", pa.int16()),
                    ("n", pa.int64()),
                )
            }
        )
    if backend is None or backend.local:
        con = trace.duckdb()
        try:
            return con.sql(LOAD_SQL[table]).to_arrow_table()
        finally:
            con.close()
    files = [str(f) for f in trace.files(table)]
    groups = max(1, min(len(files), GROUPS_PER_WORKER * backend.workers))
    jobs = [(absolute(trace.path), table, tuple(files[g::groups])) for g in range(groups)]
    parts = backend.map(part_loads, jobs, label="part-file groups")
    con = duckdb.connect()
    try:
        con.register("parts", pa.concat_tables(parts))
        return con.sql(
            "SELECT step, layer, expert, CAST(sum(n) AS BIGINT) AS n FROM parts GROUP BY ALL"
        ).to_arrow_table()
    finally:
        con.close()


def part_loads(job: tuple[str, str, tuple[str, ...]]) -> pa.Table:
    """The loads of some part files of one table (a task): ``(trace address, table, files)``."""
    import pyarrow.dataset as ds

    address, table, files = job
    trace = open_trace(address, warn=False)
    paths, fs = dataset_paths([location(f) for f in files])
    data = ds.dataset(paths, filesystem=fs, format="parquet", schema=trace.arrow_schema(table))
    con = duckdb.connect()
    try:
        con.register(table, data)
        return con.sql(LOAD_SQL[table]).to_arrow_table()
    finally:
        con.close()
