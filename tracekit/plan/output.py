"""A plan's result directory: every point, the Pareto frontiers and the best deployments as Parquet,
``result.json``, and a plot of the frontiers (matplotlib, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from tracekit.errors import MissingDependencyError
from tracekit.plan.search import PlanResult
from tracekit.replay.results import prepare_dir, write_tables


def plan_meta(result: PlanResult) -> dict[str, Any]:
    """What ``result.json`` stores (and ``plan --json`` prints)."""
    i = result.inputs
    return {
        "kind": "plan",
        "systems": list(i.systems),
        "total_gpus": list(i.total_gpus),
        "model": i.model,
        "sla": {
            "isl": i.sla.isl,
            "osl": i.sla.osl,
            "ttft_s": i.sla.ttft_s,
            "tpot_s": i.sla.tpot_s,
            "tokens_per_s_per_user": i.sla.tokens_per_s_per_user,
        },
        "points": result.points.height,
        "best": result.best.to_dicts(),
        "notes": list(result.notes),
    }


def write_plan(result: PlanResult, out: str | Path, *, overwrite: bool = False, plot: bool = True) -> Path:
    """``plan_points.parquet``, ``plan_pareto.parquet``, ``plan_best.parquet``, ``result.json`` and
    ``pareto.png`` / ``pareto.svg``."""
    path = prepare_dir(out, overwrite=overwrite)
    if plot:
        plot_plan(result, path)
    tables = {"plan_points": result.points, "plan_pareto": result.pareto, "plan_best": result.best}
    return write_tables(path, tables, plan_meta(result))


def plot_plan(result: PlanResult, out: Path) -> list[Path]:
    """Tokens/s per GPU against tokens/s per user: every point faint, each (system, mode) frontier
    as a line, the TPOT target as a vertical line."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("matplotlib", "plot", "plotting the plan") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = result.pareto
    budget = max(result.inputs.total_gpus)
    for i, hw in enumerate(result.inputs.systems):
        for mode, style in (("aggregated", "-"), ("disaggregated", "--")):
            sel = (pl.col("hw") == hw) & (pl.col("mode") == mode) & (pl.col("total_gpus") == budget)
            pts = result.points.filter(sel)
            if not pts.height:
                continue
            ax.scatter(
                pts["tokens_per_s_per_user"], pts["tokens_per_s_per_gpu"], s=8, alpha=0.25, color=f"C{i}"
            )
            f = front.filter(sel)
            ax.plot(
                f["tokens_per_s_per_user"],
                f["tokens_per_s_per_gpu"],
                style,
                marker="o",
                markersize=3,
                color=f"C{i}",
                label=f"{hw} {mode}",
            )
    target = result.inputs.sla.tokens_per_s_per_user
    if target is not None:
        ax.axvline(target, color="grey", linestyle=":", linewidth=1, label="TPOT target")
    ax.set_xlabel("tokens/s per user")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title(f"Pareto frontiers, {budget} GPUs")
    ax.grid(True, alpha=0.3)
    if result.points.height:
        ax.legend(fontsize=8)
    paths = [out / "pareto.png", out / "pareto.svg"]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths
