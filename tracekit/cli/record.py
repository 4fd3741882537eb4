"""``tracekit record``: run a real generate() on a prompt file and record its expert routing."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import click

from tracekit.errors import MissingDependencyError, UsageError

_DEFAULT_PROMPTS = "tracekit/data/prompts.txt (shipped)"


def _shipped_prompts() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "prompts.txt"


def _need_torch() -> None:
    for pkg in ("torch", "transformers"):
        if importlib.util.find_spec(pkg) is None:
            raise MissingDependencyError(pkg, "torch", "tracekit record")


@click.command("record")
@click.option(
    "--model",
    "model",
    required=True,
    help="Tiny preset name (tiny-mixtral, tiny-deepseek-v3, ...) or a local transformers model directory.",
)
@click.option(
    "--prompts",
    "prompts",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Text file, one prompt per line [default: {_DEFAULT_PROMPTS}].",
)
@click.option(
    "--max-new-tokens", type=int, default=32, show_default=True, help="Tokens to generate per prompt."
)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Prompts per generate() call.")
@click.option("--num-prompts", type=int, default=None, help="Use only the first N prompts of the file.")
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path), help="Trace directory to write."
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (cuda:N).")
@click.option("--dtype", default="float32", show_default=True, help="float32, bfloat16 or float16.")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the presets' random weights and of generation.",
)
@click.option(
    "--ep", type=int, default=1, show_default=True, help="Expert-parallel ranks (N > 1 runs the EP recorder)."
)
@click.option("--force", is_flag=True, help="Replace an existing trace at --out.")
def record(
    model: str,
    prompts: Path | None,
    max_new_tokens: int,
    batch_size: int,
    num_prompts: int | None,
    out: Path,
    device: str,
    dtype: str,
    seed: int,
    ep: int,
    force: bool,
) -> None:
    """Record expert routing from a real generate() run of an MoE model.

    \b
    Examples:
      tracekit record --model tiny-deepseek-v3 --max-new-tokens 16 --batch-size 8 --out traces/dsv3
      tracekit record --model ./Mixtral-8x7B --prompts my_prompts.txt --device cuda --dtype bfloat16 --out traces/mix
    """
    _need_torch()
    from tracekit.collect.run import check_model_name, read_prompts, record_generate

    check_model_name(model)
    prompt_file = prompts if prompts is not None else _shipped_prompts()
    texts = read_prompts(prompt_file)
    if num_prompts is not None:
        if num_prompts < 1:
            raise UsageError(f"--num-prompts must be at least 1, got {num_prompts}")
        texts = texts[:num_prompts]
    if ep < 1:
        raise UsageError(f"--ep must be at least 1, got {ep}")
    if ep > 1:
        from tracekit.collect.ep import check_ranks

        check_ranks(ep, device)
    if ep > 1:
        result_path = _record_ep(
            model=model,
            prompts=texts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            out=out,
            ep=ep,
            device=device,
            dtype=dtype,
            seed=seed,
            overwrite=force,
        )
        click.echo(f"recorded {len(texts)} prompts on {ep} expert-parallel ranks into {result_path}")
        return

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)

    with Progress(
        TextColumn("recording"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("record", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = record_generate(
            model=model,
            prompts=texts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            out=out,
            device=device,
            dtype=dtype,
            seed=seed,
            overwrite=force,
            progress=progress,
        )
    click.echo(
        f"recorded {result.num_prompts} prompts, {result.num_steps} steps, "
        f"{result.generated_tokens} generated tokens into {result.out}"
    )


def _record_ep(**kwargs: Any) -> Path:
    if importlib.util.find_spec("tracekit.collect.ep") is None:
        raise UsageError(
            "--ep > 1 needs the expert-parallel recorder (tracekit.collect.ep), which this installation "
            "does not have; record with --ep 1"
        )
    ep_module = importlib.import_module("tracekit.collect.ep")
    result = ep_module.record_ep(**kwargs)
    return Path(result)
