"""Facts about a trace for ``tracekit info``: read from Parquet footers and small aggregate queries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracekit.schema.tables import TABLE_NAMES
from tracekit.trace.store import parquet_file

if TYPE_CHECKING:
    from tracekit.trace.reader import Trace


def table_rows(trace: Trace, table: str) -> int:
    """Row count from the Parquet footers alone."""
    return sum(parquet_file(f).metadata.num_rows for f in trace.files(table))


def summarize(trace: Trace) -> dict[str, Any]:
    m = trace.manifest
    model = m.model
    tables = {}
    for t in TABLE_NAMES:
        files = trace.files(t)
        if files:
            tables[t] = {"rows": table_rows(trace, t), "files": len(files), "bytes": trace.size_bytes(t)}
    steps = {"count": 0, "prefill": 0, "decode": 0, "mixed": 0}
    tokens = 0
    if "steps" in tables:
        con = trace.duckdb()
        rows = con.execute(
            "SELECT phase, count(DISTINCT step), sum(num_tokens) FROM steps GROUP BY phase"
        ).fetchall()
        steps["count"] = int(con.execute("SELECT count(DISTINCT step) FROM steps").fetchone()[0])  # type: ignore[index]
        for phase, n, tok in rows:
            steps[str(phase)] = int(n)
            tokens += int(tok or 0)
        con.close()
    ranks = trace.ranks
    return {
        "placement_table": _placement(trace),
        "path": str(trace.path),
        "trace_id": m.trace_id,
        "schema_version": m.schema_version,
        "source": m.source,
        "created_at": m.created_at,
        "complete": trace.complete,
        "incomplete_ranks": [r for r, s in trace.shards.items() if not s.complete],
        "model": {
            "name": model.name,
            "architecture": model.architecture,
            "layers": model.num_layers,
            "moe_layers": len(model.moe_layers),
            "experts": model.num_experts,
            "shared_experts": model.num_shared_experts,
            "top_k": model.top_k,
            "hidden_size": model.hidden_size,
        },
        "parallel": {
            "world_size": m.parallel.world_size,
            "ep_size": m.parallel.ep_size,
            "dp_size": m.parallel.dp_size,
            "tp_size": m.parallel.tp_size,
            "placement": m.parallel.placement,
        },
        "ranks": ranks,
        "steps": steps,
        "tokens": tokens,
        "tables": tables,
        "size_bytes": trace.size_bytes(),
    }


def _placement(trace: Trace) -> dict[str, Any] | None:
    """The expert -> rank map of the first placement epoch (first MoE layer), when the trace has one."""
    if not trace.has("placement"):
        return None
    con = trace.duckdb()
    epochs = con.execute("SELECT count(DISTINCT from_step), count(DISTINCT layer) FROM placement").fetchone()
    rows = con.execute(
        """
        WITH first AS (SELECT min(from_step) AS s FROM placement),
             layer0 AS (SELECT min(layer) AS l FROM placement, first WHERE from_step = first.s)
        SELECT rank, list(expert ORDER BY slot), count(*)
        FROM placement, first, layer0
        WHERE from_step = first.s AND layer = layer0.l
        GROUP BY rank ORDER BY rank
        """
    ).fetchall()
    con.close()
    assert epochs is not None
    return {
        "epochs": int(epochs[0]),
        "layers": int(epochs[1]),
        "slots_per_rank": int(rows[0][2]) if rows else 0,
        "experts_by_rank": {int(r): [int(e) for e in experts] for r, experts, _ in rows},
    }
