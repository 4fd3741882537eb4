"""The profile options of ``tracekit calibrate --from-profile`` and ``tracekit replay --profile``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tracekit.cli._render import echo_json, render_rows
from tracekit.errors import UsageError


def match_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """How a profile's steps and layers map onto the replay's."""
    opts = [
        click.option(
            "--match",
            "match",
            type=click.Choice(["auto", "order", "id"]),
            default="auto",
            show_default=True,
            help="Profiled steps to replayed steps: in order, or by trace step number (auto: by number "
            "when every profiled step is a replayed trace step).",
        ),
        click.option(
            "--layer-offset",
            type=int,
            default=0,
            show_default=True,
            help="Added to the profile's layer numbers (profiles that number the profiled layers from 0).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def calibrate_profile_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """calibrate --from-profile: the profile, the routing trace and the profiled run's deployment."""
    from tracekit.cli.replay import deployment_options as _deployment_options

    fn = match_options(fn)
    fn = _deployment_options(fn)
    opts = [
        click.option(
            "--from-profile",
            "from_profile",
            multiple=True,
            type=click.Path(path_type=Path),
            help="A GPU profile of a real run: the profiler's Kineto JSON files (one per rank; repeatable) "
            "or a trace imported from them. Fits the timing model to it.",
        ),
        click.option("--trace", type=click.Path(path_type=Path), default=None, help="With --from-profile: the routing trace to replay."),
        click.option("--hw", "hw_name", default=None, help="With --from-profile: the preset the run is replayed on."),
        click.option("--ep", type=click.IntRange(1), default=None, help="With --from-profile: the run's EP degree [the trace's]."),
        click.option("--batch-per-gpu", type=click.IntRange(1), default=None, help="With --from-profile: decode sequences per GPU."),
        click.option("--phase", "phases", multiple=True, type=click.Choice(["prefill", "decode"]), help="With --from-profile: replay only these phases."),
        click.option("--name", "preset_name", default=None, help="With --from-profile --write: preset name [<hw>-profile]."),
        click.option("--report", type=click.Path(path_type=Path), default=None, help="With --from-profile: write the fitted replay and the profile beside it (a result directory)."),
        click.option("--fit-gaps/--no-fit-gaps", default=True, show_default=True, help="With --from-profile: set the launch gaps from the profile's idle time between kernels (--no-fit-gaps: keep the preset's, when other work interleaves, as in a training profile)."),
    ]  # fmt: skip
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _pct(v: float) -> str:
    return f"{100 * v:+.1f}%"


def component_rows(table: Any) -> tuple[list[str], list[list[Any]]]:
    """Per phase and component of a replay_profile table: measured and predicted ms per profiled
    step and rank, and the error."""
    import polars as pl

    per = table.group_by("phase").agg(pl.struct("step", "rank").n_unique().alias("n"))
    agg = (
        table.group_by("phase", "component", maintain_order=True)
        .agg(
            pl.col("measured_s").sum(),
            pl.col("predicted_s").sum(),
            pl.col("predicted_s").is_null().all().alias("none"),
        )
        .join(per, on="phase")
    )
    rows = []
    for r in agg.iter_rows(named=True):
        meas = r["measured_s"] / r["n"] * 1e3
        pred = None if r["none"] else r["predicted_s"] / r["n"] * 1e3
        err = "-" if pred is None or meas <= 0 else _pct(pred / meas - 1.0)
        rows.append(
            [r["phase"], r["component"], round(meas, 4), "-" if pred is None else round(pred, 4), err]
        )
    return ["phase", "component", "measured ms", "predicted ms", "error"], rows


def _unmatched_lines(unmatched: dict[str, float]) -> list[str]:
    if not unmatched:
        return ["unmatched profile kernels: none"]
    return [f"unmatched profile kernels: {k}: {v * 1e3:.3f} ms" for k, v in sorted(unmatched.items())]


def attach_profile(
    result: Any, dep: Any, trace: str | Path, profile: tuple[Path, ...], match: str, layer_offset: int
) -> Any:
    """``result`` with a ``replay_profile`` table: ``profile`` measured beside the replay (a second
    replay without launch gaps gives the small kernels' own time)."""
    import dataclasses

    from tracekit.replay import replay
    from tracekit.replay.profile import load_profile, profile_table

    prof = load_profile(profile, layer_offset=layer_offset)
    phases = list(dict.fromkeys(result.steps["phase"].to_list()))
    over = {**dict(dep.hw_overrides), "launch_gap_s": 0.0, "launch_gap_eager_s": 0.0}
    free = replay(trace, dep.replace(hw_overrides=over), phases=phases)
    table = profile_table(result, prof, gap_free=free, match=match)
    return dataclasses.replace(result, tables={**result.tables, "replay_profile": table})


def echo_profile(result: Any) -> None:
    table = result.tables.get("replay_profile")
    if table is None:
        return
    click.echo(render_rows(*component_rows(table), "table"))


def run_from_profile(
    *,
    profile: tuple[Path, ...],
    trace: Path | None,
    dep: Any,
    phases: tuple[str, ...],
    match: str,
    layer_offset: int,
    write: bool,
    out_dir: Path,
    name: str | None,
    force: bool,
    report: Path | None,
    fmt: str,
    fit_gaps: bool = True,
) -> None:
    """``tracekit calibrate --from-profile``: fit, print, write the preset (and the report)."""
    from tracekit.replay import write_result
    from tracekit.replay.profile import load_profile
    from tracekit.replay.profile_fit import fit_profile, fit_rows, write_profile_preset
    from tracekit.replay.results import check_out_dir

    if trace is None:
        raise UsageError(
            "--from-profile needs --trace: the routing of the profiled run (or one like it) to replay"
        )
    if dep.timing != "analytic":
        raise UsageError("--from-profile fits the analytic kernel curves; drop --timing")
    if report is not None:
        check_out_dir(report, overwrite=force)
    prof = load_profile(profile, layer_offset=layer_offset)

    def show(msg: str) -> None:
        if sys.stderr.isatty():
            click.echo(f"\r{msg} ", err=True, nl=False)

    fit = fit_profile(
        trace, dep, prof, phases=list(phases) or None, match=match, fit_gaps=fit_gaps, progress=show
    )
    if sys.stderr.isatty():
        click.echo("", err=True)
    cols, rows = fit_rows(fit)
    before, after = fit.step_errors("before"), fit.step_errors("after")
    med_before, med_after = np_median_abs(before), np_median_abs(after)
    worst = float(max(abs(x) for x in after)) if len(after) else 0.0
    summary = {
        "step_error_median_before": med_before,
        "step_error_median_after": med_after,
        "step_error_worst_after": worst,
        "replays": fit.replays,
        "step_match": fit.match,
    }
    if fmt == "json":
        echo_json(
            {
                "parameters": [dict(zip(cols, r, strict=True)) for r in rows],
                "overrides": fit.overrides,
                "unmatched_s": fit.unmatched,
                **summary,
            }
        )
    else:
        click.echo(render_rows(cols, rows, fmt))
        click.echo(
            f"\nstep time, predicted / measured - 1 (median |error| over {len(after)} profiled steps x ranks): "
            f"{100 * med_before:.1f}% with {fit.base.name}, {100 * med_after:.1f}% fitted (worst {100 * worst:.1f}%); "
            f"{fit.replays} replays, steps matched by {fit.match}"
        )
        for line in _unmatched_lines(fit.unmatched):
            click.echo(line)
        click.echo("")
        click.echo(render_rows(*component_rows(fit.table_after), fmt))
    if write:
        path = write_profile_preset(fit, out_dir, name=name, force=force)
        click.echo(f"wrote {path} (use it with --hw {path})", err=True)
    if report is not None:
        import dataclasses

        res = dataclasses.replace(fit.after, tables={**fit.after.tables, "replay_profile": fit.table_after})
        write_result(res, report, overwrite=force)
        click.echo(f"wrote {report} (tracekit report predicted-vs-measured {report})", err=True)


def np_median_abs(values: Any) -> float:
    import numpy as np

    a = np.abs(np.asarray(values, dtype=np.float64))
    return float(np.median(a)) if a.size else 0.0
