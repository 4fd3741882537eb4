"""``tracekit report html``: one self-contained HTML file with the key tables and plots.

No network: CSS, the small script and every plot (inline SVG, :mod:`tracekit.reports.svg`) are in
the file. Every string that comes from an input (kernel, model, file and input names) is escaped
with :func:`html.escape`. The page's script marks ``<body data-report-ok="1">`` once it ran and
writes any script error into ``#tk-errors``, so a headless browser can check the page.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from tracekit._version import __version__
from tracekit.errors import UnknownNameError, UsageError
from tracekit.reports import svg
from tracekit.reports.catalog import Catalog, CatalogInput
from tracekit.reports.registry import get_report
from tracekit.reports.run import execute, run_report

#: Parameters of the HTML report and their defaults.
HTML_PARAMS: dict[str, int] = {
    "ep": 8,  # EP ranks of the per-rank load plot and the imbalance table (contiguous placement)
    "top": 3,  # hot experts listed per layer
}
#: Rows shown at most per table.
MAX_TABLE_ROWS = 200

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1300px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px}
table.tk-table{border-collapse:collapse;font-size:12px;margin:8px 0 16px}
table.tk-table th,table.tk-table td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
table.tk-table th{background:#f3f5f8;cursor:pointer;user-select:none}
table.tk-table td.tk-text{text-align:left}
caption{text-align:left;font-weight:600;padding:4px 0}
.tk-note{font-size:11px;fill:#666;color:#666}.tk-title{font-size:13px;font-weight:600}
.tk-axis{font-size:10px;fill:#444}.tk-mean{stroke:#e15759;stroke-dasharray:4 3;stroke-width:1.5}
.tk-frame{fill:none;stroke:#bbb}.tk-bg{fill:#ccc}
svg.tk-plot{display:block;margin:8px 0 16px;overflow:visible}.tk-scroll{overflow-x:auto}
#tk-errors:empty{display:none}#tk-errors{color:#b00;border:1px solid #b00;padding:8px}
"""

# Runs once the page is parsed: counts the plots, makes table headers sort their column, and
# records script errors into #tk-errors; a headless browser reads data-report-ok and #tk-errors.
_SCRIPT = """
(function () {
  var errors = [];
  function record(msg) {
    errors.push(String(msg));
    var box = document.getElementById("tk-errors");
    if (box) { box.textContent = errors.join("\\n"); }
  }
  window.addEventListener("error", function (e) { record(e.message || e); });
  function sortable(table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var dir = th.getAttribute("data-dir") === "asc" ? -1 : 1;
        rows.sort(function (a, b) {
          var x = a.cells[col].textContent, y = b.cells[col].textContent;
          var nx = parseFloat(x), ny = parseFloat(y);
          if (!isNaN(nx) && !isNaN(ny)) { return dir * (nx - ny); }
          return dir * x.localeCompare(y);
        });
        rows.forEach(function (r) { body.appendChild(r); });
        th.setAttribute("data-dir", dir === 1 ? "asc" : "desc");
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    try {
      document.querySelectorAll("table.tk-table").forEach(sortable);
      var plots = document.querySelectorAll("svg.tk-plot").length;
      document.body.setAttribute("data-plots", String(plots));
      document.body.setAttribute("data-report-ok", errors.length ? "0" : "1");
    } catch (e) {
      record(e && e.message ? e.message : e);
      document.body.setAttribute("data-report-ok", "0");
    }
  });
})();
"""


def _has_rows(con: duckdb.DuckDBPyConnection, view: str) -> bool:
    row = execute(con, f'SELECT count(*) FROM (SELECT 1 FROM "{view}" LIMIT 1)').fetchone()
    return bool(row and row[0])


def _cell(v: Any) -> tuple[str, bool]:
    """Text of a cell and whether it is text (left-aligned) rather than a number."""
    if v is None:
        return "", False
    if isinstance(v, bool):
        return str(v).lower(), True
    if isinstance(v, int | float | np.integer | np.floating):
        return svg.fmt(v), False
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v), True
    return str(v), True


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str) -> str:
    """An HTML table (escaped), at most :data:`MAX_TABLE_ROWS` rows."""
    out = [f'<div class="tk-scroll"><table class="tk-table"><caption>{escape(caption)}</caption><thead><tr>']
    out += [f"<th>{escape(str(c))}</th>" for c in columns]
    out.append("</tr></thead><tbody>")
    for r in rows[:MAX_TABLE_ROWS]:
        out.append("<tr>")
        for v in r:
            text, is_text = _cell(v)
            out.append(f'<td class="tk-text">{escape(text)}</td>' if is_text else f"<td>{escape(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    if len(rows) > MAX_TABLE_ROWS:
        out.append(
            f'<p class="tk-note">first {MAX_TABLE_ROWS} of {len(rows)} rows; see tracekit report for all</p>'
        )
    return "".join(out)


def _report_table(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, name: str, params: Mapping[str, Any]
) -> str:
    spec = get_report(name)
    res = run_report(
        con, catalog, name, {k: v for k, v in params.items() if any(p.name == k for p in spec.params)}
    )
    return f"<h3>{escape(spec.title)}</h3>" + table(res.columns, res.rows, f"tracekit report {name}")


def _expert_plots(con: duckdb.DuckDBPyConnection, inp: CatalogInput, ep: int) -> str:
    facts = dict(inp.facts)
    num_experts = int(facts.get("num_experts") or 0)
    data = execute(
        con,
        f'SELECT layer, expert, sum(num_tokens) AS n FROM "{inp.view("expert_load")}" GROUP BY ALL ORDER BY ALL',
    ).fetchnumpy()
    layers = np.unique(data["layer"]).astype(int)
    experts = data["expert"].astype(int)
    num_experts = max(num_experts, int(experts.max()) + 1 if experts.size else 0)
    tokens = np.zeros((layers.size, num_experts), dtype=np.int64)
    np.add.at(
        tokens, (np.searchsorted(layers, data["layer"].astype(int)), experts), data["n"].astype(np.int64)
    )
    layer_total = tokens.sum(axis=1, keepdims=True)
    vs_mean = np.divide(tokens * num_experts, layer_total, out=np.zeros(tokens.shape), where=layer_total > 0)
    notes = np.char.add(tokens.astype(str), " tokens")
    heat = svg.heatmap(
        vs_mean,
        row_labels=[str(x) for x in layers],
        col_labels=[str(x) for x in range(num_experts)],
        title=f"{inp.name}: expert load, layer x expert (tokens / even share)",
        row_name="layer",
        col_name="expert",
        unit="x even share",
        notes=notes,
    )
    ep = max(1, min(ep, num_experts))
    per_rank = (num_experts + ep - 1) // ep
    rank_tokens = np.zeros(ep, dtype=np.int64)
    np.add.at(rank_tokens, np.arange(num_experts) // per_rank, tokens.sum(axis=0))
    bar = svg.bars(
        [str(r) for r in range(ep)],
        rank_tokens.tolist(),
        title=f"{inp.name}: tokens per EP rank (ep={ep}, contiguous placement, all MoE layers)",
        unit="token-expert assignments",
    )
    return heat + bar


def _comm_plots(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> str:
    res = run_report(con, catalog, "comm-matrix", {})
    out = []
    for name in sorted({r[0] for r in res.rows}):
        rows = [r for r in res.rows if r[0] == name]
        ranks = sorted({int(r[1]) for r in rows} | {int(r[2]) for r in rows})
        index = {r: i for i, r in enumerate(ranks)}
        m = np.zeros((len(ranks), len(ranks)))
        for r in rows:
            m[index[int(r[1])], index[int(r[2])]] = float(r[3])
        out.append(
            svg.heatmap(
                m,
                row_labels=[str(r) for r in ranks],
                col_labels=[str(r) for r in ranks],
                title=f"{name}: bytes sent, source rank (rows) to destination rank (columns)",
                row_name="from rank",
                col_name="to rank",
                unit="bytes",
            )
        )
    return "".join(out)


def _replay_plots(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> str:
    res = run_report(con, catalog, "step-breakdown", {"by": "phase"})
    col = {c: i for i, c in enumerate(res.columns)}
    groups: list[tuple[str, str, str]] = []
    components: list[str] = []
    for r in res.rows:
        key = (str(r[col["input"]]), str(r[col["pool"]]), str(r[col["phase"]]))
        if key not in groups:
            groups.append(key)
        if r[col["component"]] not in components:
            components.append(str(r[col["component"]]))
    values = np.zeros((len(groups), len(components)))
    for r in res.rows:
        key = (str(r[col["input"]]), str(r[col["pool"]]), str(r[col["phase"]]))
        values[groups.index(key), components.index(str(r[col["component"]]))] = (
            float(r[col["time_s"]] or 0.0) * 1e3
        )
    labels = [f"{i} {ph}" + ("" if pool == "all" else f" ({pool})") for i, pool, ph in groups]
    return svg.stacked_bars(
        labels, components, values, title="Replay: mean step time by component", unit="ms"
    )


def _pareto_plot(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> str:
    series = []
    rows = execute(
        con,
        "SELECT input, hw, ep, batch_per_gpu, tokens_per_s_per_user, tokens_per_s_per_gpu FROM sweep_pareto "
        "WHERE tokens_per_s_per_user IS NOT NULL AND tokens_per_s_per_gpu IS NOT NULL "
        "ORDER BY input, hw, tokens_per_s_per_user",
    ).fetchall()
    keys = sorted({(r[0], r[1]) for r in rows})
    for inp, hw in keys:
        pts = [r for r in rows if (r[0], r[1]) == (inp, hw)]
        name = str(hw) if len({k[0] for k in keys}) == 1 else f"{inp}: {hw}"
        tips = [
            f"{hw} ep={r[2]} batch/GPU={r[3]}: {svg.fmt(r[4])} tok/s/user, {svg.fmt(r[5])} tok/s/GPU"
            for r in pts
        ]
        series.append((name, [float(r[4]) for r in pts], [float(r[5]) for r in pts], tips))
    background = None
    if catalog.has("sweep_points"):
        bg = execute(
            con,
            "SELECT tokens_per_s_per_user, tokens_per_s_per_gpu FROM sweep_points "
            "WHERE tokens_per_s_per_user IS NOT NULL AND tokens_per_s_per_gpu IS NOT NULL ORDER BY ALL",
        ).fetchall()
        background = ([float(r[0]) for r in bg], [float(r[1]) for r in bg])
    return svg.scatter_lines(
        series,
        title="Sweep: Pareto frontier (grey: every point that fits)",
        x_label="tokens/s per user",
        y_label="tokens/s per GPU",
        background=background,
    )


def build_html(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, params: Mapping[str, Any] | None = None
) -> str:
    """The whole page as a string."""
    values = dict(HTML_PARAMS)
    for key, raw in (params or {}).items():
        if key not in HTML_PARAMS:
            raise UnknownNameError("parameter of report html", key, HTML_PARAMS)
        try:
            values[key] = int(raw)
        except (TypeError, ValueError):
            raise UsageError(f"report html parameter {key}: {raw!r} is not an integer") from None
        if values[key] < 1:
            raise UsageError(f"report html parameter {key}: must be at least 1, got {values[key]}")
    body: list[str] = []
    inputs = execute(con, "SELECT input, kind, model, hw, path FROM inputs ORDER BY position").fetchall()
    body.append("<h2>Inputs</h2>" + table(["input", "kind", "model", "hw", "path"], inputs, "inputs"))

    traces = [i for i in catalog.inputs if i.kind == "trace" and _has_rows(con, i.view("expert_load"))]
    if traces:
        body.append("<h2>Expert load</h2>")
        for inp in traces:
            body.append(_expert_plots(con, inp, values["ep"]))
        body.append(_report_table(con, catalog, "imbalance", values))
        body.append(_report_table(con, catalog, "expert-load", values))
    if catalog.has("comm") and _has_rows(con, "comm"):
        body.append("<h2>Communication</h2>")
        body.append(_report_table(con, catalog, "comm-summary", values))
        body.append(_comm_plots(con, catalog))
    if catalog.has("kernels") and _has_rows(con, "kernels"):
        body.append("<h2>Kernels</h2>")
        body.append(_report_table(con, catalog, "kernel-summary", {"by": "category"}))
        res = run_report(con, catalog, "kernel-summary", {"by": "name"})
        body.append(
            table(res.columns, res.rows[:25], "tracekit report kernel-summary --param by=name (first 25)")
        )
    if catalog.has("replay_steps") and _has_rows(con, "replay_steps"):
        body.append("<h2>Replay</h2>")
        body.append(_replay_plots(con, catalog))
        if catalog.has("replay_run") and catalog.has("replay_summary"):
            body.append(_report_table(con, catalog, "replay-compare", {}))
    if catalog.has("sweep_pareto") and _has_rows(con, "sweep_pareto"):
        body.append("<h2>Sweep</h2>")
        body.append(_pareto_plot(con, catalog))
        body.append(_report_table(con, catalog, "sweep-pareto", {}))
    title = "tracekit report: " + ", ".join(i.name for i in catalog.inputs)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        f"<style>{_CSS}</style></head>\n"
        f'<body data-report-ok="0"><h1>{escape(title)}</h1>'
        f'<p class="tk-note">tracekit {escape(__version__)}; parameters: '
        f"{escape(', '.join(f'{k}={v}' for k, v in values.items()))}</p>"
        '<pre id="tk-errors"></pre>\n' + "\n".join(body) + f"\n<script>{_SCRIPT}</script></body></html>\n"
    )


def write_html(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    memory_limit: str | None = None,
) -> Path:
    """Write the HTML report of ``inputs`` to ``out``; returns its path."""
    catalog = Catalog.from_paths(list(inputs))
    con = catalog.connect(memory_limit=memory_limit)
    try:
        page = build_html(con, catalog, params)
    finally:
        con.close()
    path = Path(out)
    if path.parent and not path.parent.exists():
        raise UsageError(f"--out {out}: folder {path.parent} does not exist; create it first")
    path.write_text(page, encoding="utf-8")
    return path
