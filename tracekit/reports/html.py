"""``tracekit report html``: one self-contained HTML file with the key tables and plots.

No network: CSS, the small script and every plot (matplotlib SVG inlined, :mod:`tracekit.reports.plots`)
are in the file. Every string that comes from an input (kernel, model, file and input names) is escaped
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
from tracekit.reports import plots
from tracekit.reports.catalog import Catalog, CatalogInput
from tracekit.reports.display import ColumnDisplay
from tracekit.reports.registry import get_report
from tracekit.reports.run import execute, run_report

#: Parameters of the HTML report and their defaults.
HTML_PARAMS: dict[str, int] = {
    # EP ranks of the layer x rank heatmap and the imbalance table (contiguous placement); 0: each
    # trace's own EP (manifest, else placement table; a one-GPU trace is shown at EP 8)
    "ep": 0,
    "top": 3,  # hot experts listed per layer
}
#: EP shown for a trace recorded on one GPU (one HGX node).
DEFAULT_EP = 8
#: Steps shown at most in the step x rank plots.
MAX_TIMELINE_STEPS = 400
#: Rows shown at most per table.
MAX_TABLE_ROWS = 200

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1300px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px}
table.tk-table{border-collapse:collapse;font-size:12px;margin:8px 0 16px;max-width:100%}
table.tk-table th,table.tk-table td{border:1px solid #ddd;padding:3px 6px;text-align:right}
table.tk-table td{white-space:nowrap}
table.tk-table th{background:#f3f5f8;cursor:pointer;user-select:none;overflow-wrap:anywhere;vertical-align:bottom}
table.tk-table th.tk-text{text-align:left}
table.tk-table td.tk-text{text-align:left;white-space:normal;overflow-wrap:anywhere;max-width:38em}
table.tk-table th.tk-rowhead{text-align:left;background:#f8f9fb}
caption{text-align:left;font-weight:600;padding:4px 0}
.tk-note{font-size:11px;color:#666}
figure.tk-figure{margin:8px 0 16px}svg.tk-plot{display:block;max-width:100%;height:auto}
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


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str) -> str:
    """An HTML table (escaped), at most :data:`MAX_TABLE_ROWS` rows; numbers shown as in the terminal
    (units in the cells, right-aligned), text wrapped so the table fits the page."""
    shown = [ColumnDisplay(c, [r[i] for r in rows], None) for i, c in enumerate(columns)]
    out = [f'<div class="tk-scroll"><table class="tk-table"><caption>{escape(caption)}</caption><thead><tr>']
    out += [f"<th>{escape(str(c))}</th>" if s.numeric else f'<th class="tk-text">{escape(str(c))}</th>'
            for c, s in zip(columns, shown, strict=True)]  # fmt: skip
    out.append("</tr></thead><tbody>")
    for r in rows[:MAX_TABLE_ROWS]:
        out.append("<tr>")
        for s, v in zip(shown, r, strict=True):
            text = escape(s.text(v))
            out.append(f"<td>{text}</td>" if s.numeric else f'<td class="tk-text">{text}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    if len(rows) > MAX_TABLE_ROWS:
        out.append(
            f'<p class="tk-note">first {MAX_TABLE_ROWS} of {len(rows)} rows; see tracekit report for all</p>'
        )
    return "".join(out)


def transposed_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str, key: str) -> str:
    """One row per column and one column per input row, headed by ``key``'s values: a wide, short
    result (a few replays, many measures) read down the page."""
    k = list(columns).index(key)
    heads = [str(r[k]) for r in rows]
    if len(set(heads)) < len(heads):  # one input with several pools / phases: name them too
        extra = [i for i, c in enumerate(columns) if c in ("pool", "phase")]
        heads = [
            " ".join([str(r[k])] + [str(r[i]) for i in extra if r[i] not in (None, "all")]) for r in rows
        ]
    out = [f'<div class="tk-scroll"><table class="tk-table"><caption>{escape(caption)}</caption><thead><tr>']
    out += [f"<th>{escape(key)}</th>"] + [f"<th>{escape(h)}</th>" for h in heads]
    out.append("</tr></thead><tbody>")
    for i, c in enumerate(columns):
        if i == k:
            continue
        s = ColumnDisplay(c, [r[i] for r in rows], None)
        out.append(f'<tr><th class="tk-rowhead">{escape(c)}</th>')
        out += [f"<td>{escape(s.text(r[i]))}</td>" for r in rows]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _report_table(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, name: str, params: Mapping[str, Any]
) -> str:
    spec = get_report(name)
    res = run_report(
        con, catalog, name, {k: v for k, v in params.items() if any(p.name == k for p in spec.params)}
    )
    return f"<h3>{escape(spec.title)}</h3>" + table(res.columns, res.rows, f"tracekit report {name}")


def own_ep(con: duckdb.DuckDBPyConnection, inp: CatalogInput, override: int) -> int:
    """``override`` if given (> 0), else the trace's EP: the manifest's, else its placement table's
    ranks, else :data:`DEFAULT_EP` (a trace recorded on one GPU)."""
    if override > 0:
        return override
    ep = int(dict(inp.facts).get("ep_size") or 1)
    if ep > 1:
        return ep
    row = execute(con, f'SELECT count(DISTINCT rank) FROM "{inp.view("placement")}"').fetchone()
    ranks = int(row[0]) if row and row[0] else 0
    return ranks if ranks > 1 else DEFAULT_EP


def _expert_plots(con: duckdb.DuckDBPyConnection, inp: CatalogInput, ep_param: int) -> str:
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
    out = [
        plots.heatmap(
            vs_mean,
            row_labels=[str(x) for x in layers],
            col_labels=[str(x) for x in range(num_experts)],
            title=f"{inp.name}: expert load per layer (token-expert pairs / even share)",
            row_name="layer",
            col_name="expert",
            scale_label="x even share (1 = the layer's mean expert)",
            diverging_at=1.0,
        )
    ]
    ep = max(1, min(own_ep(con, inp, ep_param), num_experts))
    per_rank = -(-num_experts // ep)
    rank_tokens = np.zeros((layers.size, ep), dtype=np.int64)
    np.add.at(rank_tokens.T, np.arange(num_experts) // per_rank, tokens.T)
    rank_total = rank_tokens.sum(axis=1, keepdims=True)
    rank_vs_mean = np.divide(
        rank_tokens * ep, rank_total, out=np.zeros(rank_tokens.shape), where=rank_total > 0
    )
    out.append(
        plots.heatmap(
            rank_vs_mean,
            row_labels=[str(x) for x in layers],
            col_labels=[str(r) for r in range(ep)],
            title=f"{inp.name}: rank load per layer at EP {ep} (contiguous placement, all steps)",
            row_name="layer",
            col_name="EP rank",
            scale_label="x mean rank load (the busiest rank sets the layer's time)",
            diverging_at=1.0,
            annotate="{:.2f}" if layers.size * ep <= 256 else None,
        )
    )
    out.append(_step_timeline(con, inp))
    return "".join(out)


def _step_timeline(con: duckdb.DuckDBPyConnection, inp: CatalogInput) -> str:
    """Each rank's measured steps on one time axis, coloured by phase (traces with step times)."""
    rows = execute(
        con,
        f'SELECT rank, step, phase, start_ns, duration_ns FROM "{inp.view("steps")}" '
        "WHERE start_ns IS NOT NULL AND duration_ns > 0 ORDER BY rank, start_ns",
    ).fetchall()
    if not rows:
        return ""
    steps = sorted({int(r[1]) for r in rows})[:MAX_TIMELINE_STEPS]
    keep = set(steps)
    t0 = min(int(r[3]) for r in rows)
    bars = [
        (int(r[0]), (int(r[3]) - t0) / 1e6, int(r[4]) / 1e6, str(r[2])) for r in rows if int(r[1]) in keep
    ]
    ranks = sorted({b[0] for b in bars})
    kinds = [k for k in ("prefill", "mixed", "decode") if any(b[3] == k for b in bars)]
    kinds += sorted({b[3] for b in bars} - set(kinds))
    return plots.rank_timeline(
        ranks, bars, title=f"{inp.name}: measured steps per rank ({len(steps)} steps)", kinds=kinds
    )


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
        unit, scale = ("MB", 1e6) if m.max() >= 1e6 else ("kB", 1e3)
        out.append(
            plots.heatmap(
                m / scale,
                row_labels=[str(r) for r in ranks],
                col_labels=[str(r) for r in ranks],
                title=f"{name}: bytes sent, source rank (rows) to destination rank (columns)",
                row_name="from rank",
                col_name="to rank",
                scale_label=f"{unit} sent",
                annotate="{:.3g}",
                square=True,
            )
        )
    return "".join(out)


def _kernel_tables(con: duckdb.DuckDBPyConnection) -> str:
    """GPU kernels (rows with a stream) by category and by name; CPU operators (no stream) by self
    time, since CPU operators nest (aten::linear holds aten::addmm) and their durations overlap."""
    out = []
    gpu = execute(
        con,
        "WITH k AS (SELECT * FROM kernels WHERE stream IS NOT NULL) "
        "SELECT input, category, count(*) AS kernels, count(DISTINCT rank) AS ranks, "
        "sum(duration_ns) / 1e9 AS time_s, sum(duration_ns) / sum(sum(duration_ns)) OVER (PARTITION BY input) AS share "
        "FROM k GROUP BY input, category ORDER BY input, time_s DESC, category",
    )
    cols = [d[0] for d in gpu.description or ()]
    rows = gpu.fetchall()
    if rows:
        out.append("<h3>GPU kernels</h3>")
        out.append(table(cols, rows, "GPU kernels and copies by category (summed time; streams may overlap)"))
        top = execute(
            con,
            "SELECT input, name, category, count(*) AS kernels, sum(duration_ns) / 1e9 AS time_s, "
            "avg(duration_ns) / 1e3 AS mean_us FROM kernels WHERE stream IS NOT NULL "
            "GROUP BY ALL ORDER BY input, time_s DESC, name LIMIT 25",
        )
        out.append(
            table([d[0] for d in top.description or ()], top.fetchall(), "GPU kernels by name (first 25)")
        )
    cpu = execute(
        con,
        "SELECT input, rank, name, start_ns, duration_ns FROM kernels WHERE stream IS NULL "
        "ORDER BY input, rank, start_ns, duration_ns DESC",
    ).fetchnumpy()
    if len(cpu["name"]):
        self_ns = _self_times(cpu["input"], cpu["rank"], cpu["start_ns"], cpu["duration_ns"])
        import polars as pl

        df = (
            pl.DataFrame(
                {"input": cpu["input"], "name": cpu["name"], "dur": cpu["duration_ns"], "self": self_ns}
            )
            .group_by("input", "name")
            .agg(
                calls=pl.len(),
                self_time_s=pl.col("self").sum() / 1e9,
                inclusive_time_s=pl.col("dur").sum() / 1e9,
            )
            .with_columns(self_share=pl.col("self_time_s") / pl.col("self_time_s").sum().over("input"))
            .sort(["input", "self_time_s", "name"], descending=[False, True, False])
            .head(25)
        )
        out.append("<h3>CPU operators</h3>")
        out.append(
            table(
                df.columns,
                df.rows(),
                "CPU operators by self time (their own time, nested operators subtracted; first 25)",
            )
        )
    return "".join(out)


def _self_times(inputs: np.ndarray, ranks: np.ndarray, start: np.ndarray, dur: np.ndarray) -> np.ndarray:
    """Each interval's duration minus its direct children's (intervals of one input and rank nest;
    rows come sorted by input, rank, start, longest first)."""
    start = start.astype(np.int64)
    end = start + dur.astype(np.int64)
    child_ns = np.zeros(start.size, dtype=np.int64)
    stack: list[int] = []
    prev: tuple[Any, Any] | None = None
    for i in range(start.size):  # one pass over the operators; a report shows few of them
        key = (inputs[i], ranks[i])
        if key != prev:
            stack.clear()
            prev = key
        while stack and end[stack[-1]] <= start[i]:
            stack.pop()
        if stack:
            child_ns[stack[-1]] += min(end[i], end[stack[-1]]) - start[i]
        stack.append(i)
    return np.maximum(dur.astype(np.int64) - child_ns, 0)


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
    out = [
        plots.stacked_barh(labels, components, values, title="Replay: mean step time by component", unit="ms")
    ]
    if catalog.has("replay_ranks"):
        for inp in catalog.inputs_with("replay_ranks"):
            out.append(_replay_rank_steps(con, inp))
    return "".join(out)


def _replay_rank_steps(con: duckdb.DuckDBPyConnection, inp: CatalogInput) -> str:
    """Replayed steps x ranks: each rank's work in the step over the mean rank's (stragglers)."""
    view = inp.view("replay_ranks")
    cols = {c[0] for c in execute(con, f'DESCRIBE "{view}"').fetchall()}
    if not {"step", "rank", "total_s"} <= cols:
        return ""
    phase = "phase" if "phase" in cols else "'all'"
    pool = "pool" if "pool" in cols else "'all'"
    data = execute(
        con,
        f'SELECT {pool} AS p, {phase} AS ph, step, rank, sum(total_s) AS busy_s FROM "{view}" '
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    ).fetchall()
    phase_order = {"prefill": 0, "mixed": 1, "decode": 2}
    keys = sorted(
        {(str(r[0]), str(r[1]), int(r[2])) for r in data},
        key=lambda k: (k[0], phase_order.get(k[1], 3), k[1], k[2]),
    )
    keys = keys[:MAX_TIMELINE_STEPS]
    ranks = sorted({int(r[3]) for r in data})
    if len(ranks) < 2 or not keys:
        return ""
    ki = {k: i for i, k in enumerate(keys)}
    ri = {r: i for i, r in enumerate(ranks)}
    busy = np.full((len(keys), len(ranks)), np.nan)
    for r in data:
        k = (str(r[0]), str(r[1]), int(r[2]))
        if k in ki:
            busy[ki[k], ri[int(r[3])]] = float(r[4])
    mean = np.nanmean(busy, axis=1, keepdims=True)
    ratio = np.divide(busy, mean, out=np.ones(busy.shape), where=mean > 0)
    pools = {k[0] for k in keys}
    labels = [f"{ph} {st}" if len(pools) == 1 else f"{pl_} {ph} {st}" for pl_, ph, st in keys]
    return plots.heatmap(
        ratio,
        row_labels=labels,
        col_labels=[str(r) for r in ranks],
        title=f"{inp.name}: replayed work per rank and step (x the step's mean rank)",
        row_name="step",
        col_name="rank",
        scale_label="x mean rank work (above 1: the rank others wait for)",
        diverging_at=1.0,
    )


def _profile_plot(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> str:
    """Per input and phase, two bars: the profile's measured time per step and rank by component,
    and the replay's prediction for the same steps and ranks."""
    res = run_report(con, catalog, "predicted-vs-measured", {"by": "component"})
    col = {c: i for i, c in enumerate(res.columns)}
    rows = [r for r in res.rows if r[col["component"]] != "step"]
    groups: list[tuple[str, str]] = []
    components: list[str] = []
    for r in rows:
        key = (str(r[col["input"]]), str(r[col["phase"]]))
        if key not in groups:
            groups.append(key)
        if r[col["component"]] not in components:
            components.append(str(r[col["component"]]))
    values = np.zeros((2 * len(groups), len(components)))
    for r in rows:
        g = groups.index((str(r[col["input"]]), str(r[col["phase"]])))
        c = components.index(str(r[col["component"]]))
        values[2 * g, c] = float(r[col["measured_s"]] or 0.0) * 1e3
        values[2 * g + 1, c] = float(r[col["predicted_s"]] or 0.0) * 1e3
    labels = [f"{i} {ph} {side}" for i, ph in groups for side in ("measured", "predicted")]
    return plots.stacked_barh(
        labels, components, values, title="Profile vs replay: time per step and rank by component", unit="ms"
    )


def _pareto_plot(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> str:
    rows = execute(
        con,
        "SELECT input, hw, tokens_per_s_per_user, tokens_per_s_per_gpu FROM sweep_pareto "
        "WHERE tokens_per_s_per_user IS NOT NULL AND tokens_per_s_per_gpu IS NOT NULL "
        "ORDER BY input, hw, tokens_per_s_per_user",
    ).fetchall()
    keys = sorted({(str(r[0]), str(r[1])) for r in rows})
    one_input = len({k[0] for k in keys}) == 1
    series = []
    for inp, hw in keys:
        pts = [r for r in rows if (r[0], r[1]) == (inp, hw)]
        label = hw if one_input else f"{inp}: {hw}"
        series.append((label, hw, [float(r[2]) for r in pts], [float(r[3]) for r in pts]))
    background = None
    if catalog.has("sweep_points"):
        bg = execute(
            con,
            "SELECT tokens_per_s_per_user, tokens_per_s_per_gpu FROM sweep_points "
            "WHERE tokens_per_s_per_user IS NOT NULL AND tokens_per_s_per_gpu IS NOT NULL ORDER BY ALL",
        ).fetchall()
        background = ([float(r[0]) for r in bg], [float(r[1]) for r in bg])
    return plots.pareto(
        series,
        title="Sweep: Pareto frontier per hardware (grey: every point that fits)",
        x_label="tokens/s per user",
        y_label="output tokens/s per GPU",
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
        if values[key] < (0 if key == "ep" else 1):
            raise UsageError(
                f"report html parameter {key}: must be at least {0 if key == 'ep' else 1}, got {values[key]}"
            )
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
        body.append(_kernel_tables(con))
    if catalog.has("replay_steps") and _has_rows(con, "replay_steps"):
        body.append("<h2>Replay</h2>")
        body.append(_replay_plots(con, catalog))
        if catalog.has("replay_run") and catalog.has("replay_summary"):
            res = run_report(con, catalog, "replay-compare", {})
            spec = get_report("replay-compare")
            body.append(
                f"<h3>{escape(spec.title)}</h3>"
                + transposed_table(res.columns, res.rows, "tracekit report replay-compare", "input")
            )
    if catalog.has("replay_profile") and _has_rows(con, "replay_profile"):
        body.append("<h2>Predicted vs measured</h2>")
        body.append(_profile_plot(con, catalog))
        body.append(_report_table(con, catalog, "predicted-vs-measured", {"by": "component"}))
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
        f"{escape(', '.join(f'{k}={v}' for k, v in values.items()))} (ep=0: each trace's own EP); "
        "times in ms, bytes in decimal units, shares in %</p>"
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
