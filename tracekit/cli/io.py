"""``tracekit import kineto|nsys|sglang|vllm`` and ``tracekit export perfetto``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from tracekit.importers._summary import KernelSummary
from tracekit.importers.kineto import (
    DEFAULT_LAYER_PATTERN,
    DEFAULT_STEP_PATTERN,
    EVENT_KINDS,
    RANK_SOURCES,
    FileReport,
    KinetoOptions,
    import_kineto,
)
from tracekit.schema import ModelArch


def _model(name: str | None) -> ModelArch | None:
    if name is None:
        return None
    from tracekit.models import get_model

    return get_model(name)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _echo_summary(summary: KernelSummary) -> None:
    """Kernel time by category, then the unclassified-kernels report."""
    total = summary.total_ns
    if total:
        parts = sorted(summary.time_ns_by_category.items(), key=lambda kv: (-kv[1], kv[0]))
        click.echo("kernel time by category: " + ", ".join(f"{c} {t / total:.1%}" for c, t in parts))
    for line in summary.lines():
        click.echo(line)


def _rules_option(fn: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--rules",
        "rules_file",
        type=click.Path(path_type=Path),
        default=None,
        help="TOML or JSON file of kernel classification rules, tried before the shipped ones.",
    )(fn)


def _marker_options(fn: Callable[..., None]) -> Callable[..., None]:
    for decorate in reversed(
        (
            click.option(
                "--step-pattern",
                default=DEFAULT_STEP_PATTERN,
                show_default=True,
                help="Regex over annotation / NVTX range names; group 1 is the step number.",
            ),
            click.option(
                "--layer-pattern",
                default=DEFAULT_LAYER_PATTERN,
                show_default=True,
                help="Regex over annotation / NVTX range names; group 1 is the decoder layer number.",
            ),
        )
    ):
        fn = decorate(fn)
    return fn


def _import_inputs(fn: Callable[..., None]) -> Callable[..., None]:
    """FILES, --out and --model: the arguments every importer takes."""
    for decorate in reversed(
        (
            click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path)),
            click.option(
                "--out", required=True, type=click.Path(path_type=Path), help="Trace directory to write."
            ),
            click.option(
                "--model",
                "model_name",
                default=None,
                help="Model that ran (catalog name or config.json path); "
                "without it the manifest records the placeholder architecture 'unknown'.",
            ),
        )
    ):
        fn = decorate(fn)
    return fn


@click.group("import")
def import_() -> None:
    """Import traces from profilers and serving engines (Kineto JSON, nsys SQLite, SGLang and vLLM
    expert loads)."""


@import_.command("kineto")
@_import_inputs
@click.option(
    "--rank-from",
    type=click.Choice(RANK_SOURCES),
    default="filename",
    show_default=True,
    help="Rank of each file: from 'rank<N>' in its name, or the order given.",
)
@_marker_options
@click.option(
    "--events",
    type=click.Choice(EVENT_KINDS),
    default="gpu",
    show_default=True,
    help="Rows from GPU kernels and copies, CPU operators, or both.",
)
@click.option(
    "--keep-pattern",
    default=None,
    metavar="REGEX",
    help="Keep only rows inside annotations matching REGEX (e.g. '\\(F\\)$': the forward chunks of a "
    "training profile) [every row].",
)
@_rules_option
@click.option("--force", is_flag=True, help="Replace OUT if it is an existing trace.")
def kineto(
    files: tuple[Path, ...],
    out: Path,
    model_name: str | None,
    rank_from: str,
    step_pattern: str,
    layer_pattern: str,
    events: str,
    keep_pattern: str | None,
    rules_file: Path | None,
    force: bool,
) -> None:
    """Import PyTorch profiler (Kineto) Chrome-trace JSON, plain or gzip, one FILE per rank."""
    from tracekit.importers.categories import load_rules

    model = _model(model_name)
    rules = load_rules(rules_file)

    def show(r: FileReport) -> None:
        line = (
            f"rank {r.rank}: {r.path}: {r.rows} rows, {r.step_markers} step and {r.layer_markers} "
            "layer markers"
        )
        if r.skipped:
            line += f"; skipped {sum(r.skipped.values())} events ({_counts(r.skipped)})"
        if r.escaped_names:
            line += f"; {r.escaped_names} names had non-UTF-8 bytes (kept as \\xNN)"
        click.echo(line)
        if r.ignored:
            click.echo(f"  not kernel rows: {_counts(r.ignored)}")
        if r.layers_note:
            click.echo(f"  {r.layers_note}")
        if r.truncated:
            click.echo(
                f"  warning: {r.path} is truncated ({r.truncated}); imported the complete events before it",
                err=True,
            )

    options = KinetoOptions(
        step_pattern=step_pattern,
        layer_pattern=layer_pattern,
        events=events,
        rank_from=rank_from,
        keep_pattern=keep_pattern,
    )
    report = import_kineto(
        list(files), out, model=model, options=options, overwrite=force, on_file=show, rules=rules
    )
    _echo_summary(report.summary)
    click.echo(
        f"wrote {report.out}: {report.rows} kernel rows from {len(report.files)} file(s)"
        + ("" if model else "; model unknown (pass --model NAME to make it re-timeable)")
    )


@import_.command("nsys")
@_import_inputs
@click.option(
    "--rank-by",
    type=click.Choice(("device", "process")),
    default="device",
    show_default=True,
    help="One rank per GPU of each file, or one per profiled process.",
)
@_marker_options
@_rules_option
@click.option("--force", is_flag=True, help="Replace OUT if it is an existing trace.")
def nsys(
    files: tuple[Path, ...],
    out: Path,
    model_name: str | None,
    rank_by: str,
    step_pattern: str,
    layer_pattern: str,
    rules_file: Path | None,
    force: bool,
) -> None:
    """Import Nsight Systems SQLite exports (nsys export --type sqlite REPORT.nsys-rep)."""
    from tracekit.importers.categories import load_rules
    from tracekit.importers.nsys import NsysFileReport, NsysOptions, import_nsys

    model = _model(model_name)
    rules = load_rules(rules_file)

    def show(r: NsysFileReport) -> None:
        ranks = ", ".join(f"{rank}={key}" for rank, key in r.ranks.items())
        click.echo(
            f"{r.path}: {r.rows} rows ({_counts(r.rows_by_table)}), ranks {ranks} (rank={rank_by}), "
            f"{r.step_markers} step and {r.layer_markers} layer ranges, {r.nccl_sizes} NCCL sizes"
        )
        if r.skipped:
            click.echo(f"  skipped {sum(r.skipped.values())} rows ({_counts(r.skipped)})")
        for rank, note in r.layers_notes.items():
            click.echo(f"  rank {rank}: {note}")

    options = NsysOptions(step_pattern=step_pattern, layer_pattern=layer_pattern, rank_by=rank_by)
    report = import_nsys(
        list(files), out, model=model, options=options, rules=rules, overwrite=force, on_file=show
    )
    _echo_summary(report.summary)
    click.echo(
        f"wrote {report.out}: {report.rows} kernel rows from {len(report.files)} file(s)"
        + ("" if model else "; model unknown (pass --model NAME to make it re-timeable)")
    )


@import_.command("vllm")
@_import_inputs
@click.option(
    "--world-size",
    type=int,
    default=None,
    help="EP ranks of the run (default: the ranks found in the files); sets the slots per rank.",
)
@click.option(
    "--rank-from",
    type=click.Choice(RANK_SOURCES),
    default="filename",
    show_default=True,
    help="Rank of each file: from 'rank<N>' in its name, or the order given.",
)
@click.option(
    "--loads-csv",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the loads summed over steps as CSV (one row per layer, one column per expert) "
    "for tracekit place --loads.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it is an existing trace.")
def vllm(
    files: tuple[Path, ...],
    out: Path,
    model_name: str | None,
    world_size: int | None,
    rank_from: str,
    loads_csv: Path | None,
    force: bool,
) -> None:
    """Import vLLM EPLB expert-load state (.pt, .safetensors or .npz; one FILE per rank)."""
    from tracekit.importers.vllm import import_vllm

    report = import_vllm(
        list(files),
        out,
        model=_model(model_name),
        world_size=world_size,
        rank_from=rank_from,
        loads_csv=loads_csv,
        overwrite=force,
    )
    for note in report.notes:
        click.echo(f"note: {note}")
    rows = ", ".join(f"{n} {t}" for t, n in report.rows.items() if n)
    click.echo(f"wrote {report.out}: {len(report.files)} file(s), {report.steps} step(s): {rows}")
    if report.loads_csv:
        click.echo(f"wrote {report.loads_csv}: loads per layer and expert (tracekit place --loads)")


@import_.command("sglang")
@_import_inputs
@click.option(
    "--world-size",
    type=int,
    default=None,
    help="Ranks of the run (default: the ranks found in the files); sets the placement's slots per rank.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it is an existing trace.")
def sglang(
    files: tuple[Path, ...], out: Path, model_name: str | None, world_size: int | None, force: bool
) -> None:
    """Import SGLang expert-distribution recorder dumps (.pt; stat, per_pass or per_token mode)."""
    from tracekit.importers.sglang import import_sglang

    report = import_sglang(list(files), out, model=_model(model_name), world_size=world_size, overwrite=force)
    for note in report.notes:
        click.echo(f"note: {note}")
    rows = ", ".join(f"{n} {t}" for t, n in report.rows.items() if n)
    click.echo(f"wrote {report.out}: {report.mode} mode, {len(report.files)} file(s): {rows or 'no rows'}")


@click.group("export")
def export() -> None:
    """Export timelines to Perfetto (protobuf .pftrace, or chrome://tracing JSON)."""


@export.command("perfetto")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="File to write (.pftrace, or .json for JSON).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pftrace", "json"]),
    default=None,
    help="pftrace (Perfetto protobuf) or json (Chrome trace) [default: json for a .json --out, else pftrace].",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def perfetto(source: Path, out: Path, fmt: str | None, force: bool) -> None:
    """Write a Perfetto timeline of SOURCE: a replay result directory (per-rank steps, layers, compute
    and comm tracks, flows between ranks, counters), a recorded trace (its steps and comm calls) or an
    imported trace (its kernels). Open it in ui.perfetto.dev or query it with the trace processor."""
    from tracekit.exporters.perfetto import export_perfetto

    report = export_perfetto(source, out, overwrite=force, fmt=fmt)
    extra = f", {report.flows} flows, {report.counters} counter values" if report.format == "pftrace" else ""
    click.echo(
        f"wrote {report.out}: {report.events} {'slices' if report.format == 'pftrace' else 'events'} "
        f"on {report.tracks} tracks{extra} ({report.kind}, {report.format})"
    )
