"""``tracekit bench``: measure this machine's kernels, import AIConfigurator's, inspect and query
measured tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from tracekit.cli._render import format_option, render_rows
from tracekit.errors import MissingDependencyError, UsageError


@click.group("bench")
def bench() -> None:
    """Measured kernel timings: a timing source for the cost model.

    \b
    Examples:
      tracekit bench run --device cuda --budget 5m --out h200.parquet
      tracekit bench import-aiconfigurator --system h200_sxm --out aic-h200.parquet
      tracekit bench show h200.parquet
      tracekit bench lookup h200.parquet gemm --dtype bf16 m=96 n=7168 k=2048
    """


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UsageError(f"--out {out}: exists; choose another --out or pass --force")
    if out.exists() and not out.is_file():
        raise UsageError(f"--out {out}: exists and is not a file; choose another --out")


@bench.command("run")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--budget", default="5m", show_default=True, help="Wall-clock budget (90s, 5m, 1h).")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Parquet file to write."
)
@click.option(
    "--shapes",
    type=click.Choice(["auto", "tiny", "moe"]),
    default="auto",
    show_default=True,
    help="tiny: CI-sized shapes; moe: MoE-model shapes; auto: moe on a GPU, tiny on the CPU.",
)
@click.option(
    "--comm-ranks",
    type=int,
    default=None,
    help="Processes for the collectives [default: every local GPU when there are several; none on the CPU].",
)
@click.option("--family", "families", multiple=True, help="Only these kernel families (repeatable).")
@click.option("--repeats", type=click.IntRange(3, 1000), default=20, show_default=True, help="Timed repeats.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def run(
    device: str,
    budget: str,
    out: Path,
    shapes: str,
    comm_ranks: int | None,
    families: tuple[str, ...],
    repeats: int,
    force: bool,
) -> None:
    """Microbenchmark this machine's device and write a measured table.

    HBM read/copy, GEMM (bf16; fp8 where torch has a scaled matmul), the MoE expert FFN as a grouped
    GEMM, attention decode/prefill at GQA and MLA shapes, RMSNorm, SwiGLU, and collectives across
    the local GPUs. The table prices kernels in `replay --timing measured --measured FILE`.
    """
    from tracekit.schema.measured import family_spec

    for f in families:
        family_spec(f)
    _check_out(out, force)
    for pkg in ("torch",):
        if importlib.util.find_spec(pkg) is None:
            raise MissingDependencyError(pkg, "torch", "tracekit bench run")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tracekit.collect.bench import BenchOptions, parse_budget, run_bench
    from tracekit.schema.measured import write_measured

    options = BenchOptions(
        device=device,
        budget_s=parse_budget(budget),
        tiny=None if shapes == "auto" else shapes == "tiny",
        comm_ranks=comm_ranks,
        families=families or None,
        repeats=repeats,
    )
    console = Console(stderr=True)
    with Progress(
        TextColumn("bench"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        result = run_bench(options, progress=progress)
    write_measured(result.frame, out)
    click.echo(
        f"measured {result.frame.height} kernel shapes in {result.elapsed_s:.1f} s on "
        f"{result.frame['device'][0]}; wrote {out}"
    )
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)}: " + "; ".join(result.skipped[:5]), err=True)


@bench.command("import-aiconfigurator")
@click.option("--system", default="h200_sxm", show_default=True, help="AIConfigurator system name.")
@click.option(
    "--framework",
    type=click.Choice(["trtllm", "sglang", "vllm"]),
    default="trtllm",
    show_default=True,
    help="Serving framework whose kernels were measured.",
)
@click.option(
    "--version", "version", default=None, help="Framework version [default: AIConfigurator's current]."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="AIConfigurator's systems/data folder [default: the installed aiconfigurator-core's].",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Parquet file to write."
)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def import_aiconfigurator(
    system: str, framework: str, version: str | None, data_dir: Path | None, out: Path, force: bool
) -> None:
    """Convert AIConfigurator's measured databases into a measured table (extra: aiconfigurator)."""
    from tracekit.importers.aiconfigurator import import_aiconfigurator as convert
    from tracekit.schema.measured import write_measured

    _check_out(out, force)
    result = convert(system=system, framework=framework, version=version, data_dir=data_dir)
    write_measured(result.frame, out)
    families = sorted(result.frame["family"].unique().to_list())
    click.echo(
        f"converted {result.frame.height} rows ({', '.join(families)}) from {len(result.files)} "
        f"AIConfigurator tables of {system}/{framework}; wrote {out}"
    )
    if result.dropped:
        click.echo(
            "left out (dtype, routing or window not in the measured table): "
            + ", ".join(f"{n} rows of {f}" for f, n in result.dropped.items()),
            err=True,
        )


@bench.command("show")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--family", default=None, help="Show the coverage of one family instead of the summary.")
@format_option()
def show(path: Path, family: str | None, fmt: str) -> None:
    """Summarise a measured table: per family, dtype and library, rows and achieved rates."""
    import polars as pl

    from tracekit.cost.measured import MeasuredTable

    table = MeasuredTable.load(path)
    if family is not None:
        cov = table.coverage(family)
        if cov.is_empty():
            raise UsageError(f"{path}: no {family} rows; families here: {', '.join(table.families())}")
        click.echo(render_rows(cov.columns, cov.rows(), fmt, title=f"{path.name}: {family}"))
        return
    summary = (
        table.frame.group_by("family", "dtype", "library", "device")
        .agg(
            pl.len().alias("rows"),
            pl.col("time_s").min().alias("min_time_s"),
            pl.col("time_s").max().alias("max_time_s"),
            (pl.col("flops_per_s").max() / 1e12).alias("max_TFLOP_per_s"),
            (pl.col("bytes_per_s").max() / 1e9).alias("max_GB_per_s"),
        )
        .sort("family", "dtype", "library", "device")
    )
    click.echo(render_rows(summary.columns, summary.rows(), fmt, title=str(path)))


@bench.command("lookup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("family")
@click.argument("shape", nargs=-1)
@click.option("--dtype", required=True, help="Element type (bf16, fp8, ...).")
@click.option("--library", default=None, help="One library [default: the fastest that covers the shape].")
def lookup(path: Path, family: str, shape: tuple[str, ...], dtype: str, library: str | None) -> None:
    """Price one shape from a measured table: KEY=VALUE for every shape key of FAMILY."""
    from tracekit.cost.measured import MeasuredTable

    values: dict[str, float] = {}
    for item in shape:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"shape {item!r}: give KEY=VALUE, for example m=128")
        try:
            values[key] = float(raw)
        except ValueError:
            raise UsageError(f"shape {item!r}: {raw!r} is not a number") from None
    t = float(MeasuredTable.load(path).time_s(family, dtype=dtype, library=library, **values))
    if t != t:
        click.echo(f"{family} {dtype}: not covered by {path} (outside the measured shapes)")
        raise SystemExit(1)
    click.echo(f"{family} {dtype}: {t * 1e6:.3f} us")
