"""``tracekit plan``: the best aggregated and disaggregated deployments per system for a GPU budget and
an SLA (a thin wrapper over tracekit.plan)."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from tracekit.cli._render import echo_json, render_rows
from tracekit.errors import UsageError

#: Synthesised routing for ``--synth``: decode tokens (one step) and prefill prompts (one step).
SYNTH_DECODE_TOKENS = 1024
SYNTH_PREFILL_PROMPTS = 2


def _ints(text: str | None, name: str) -> tuple[int, ...] | None:
    """``8,16`` or ``8-32`` (powers of two from 8 to 32) as integers; None when not given."""
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo < 1 or hi < lo:
                    raise ValueError
                n = lo
                while n <= hi:
                    out.append(n)
                    n *= 2
            elif part:
                out.append(int(part))
        except ValueError:
            raise UsageError(
                f"{name} {text!r}: write integers, comma-separated (8,16) or a range (8-64)"
            ) from None
    if not out or min(out) < 1:
        raise UsageError(f"{name} {text!r}: give one or more integers >= 1")
    return tuple(dict.fromkeys(out))


def _bools(choice: str | None) -> tuple[bool, ...] | None:
    return None if choice is None else {"off": (False,), "on": (True,), "both": (False, True)}[choice]


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""
    import sys

    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def show(what: str, done: int, total: int) -> None:
            bar.update(task, description=f"{label} {what}", completed=done, total=total)

        yield show


@click.command()
@click.argument("trace", type=click.Path(path_type=Path), required=False)
@click.option(
    "--synth",
    "synth_spec",
    metavar="SPEC",
    default=None,
    help="No trace: synthesise the model's routing (zipf:0.6, uniform, balanced, fitted:STATS).",
)
@click.option(
    "--prefill-trace",
    type=click.Path(path_type=Path),
    default=None,
    help="A trace with prefill tokens for the disaggregated prefill pool [TRACE's own].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML file with systems, total_gpus, [sla] and [grid] (flags override it).",
)
@click.option("--model", default=None, help="Target model: catalog name or config.json [the trace's own].")
@click.option("--hw", "hws", multiple=True, help="Systems (repeatable).")
@click.option(
    "--gpus", default=None, metavar="N[,N|LO-HI]", help="Total GPUs: one, a list or a range of powers of two."
)
@click.option("--isl", type=click.IntRange(1), default=None, help="Prompt tokens per request.")
@click.option("--osl", type=click.IntRange(1), default=None, help="Output tokens per request.")
@click.option("--ttft", type=float, default=None, help="Time-to-first-token target, seconds.")
@click.option("--tpot", type=float, default=None, help="Time-per-output-token target, seconds.")
@click.option(
    "--tokens-per-user", type=float, default=None, help="Target tokens/s per user (instead of --tpot)."
)
@click.option("--ep", default=None, metavar="LIST", help="GPUs per decode instance (EP degrees) [8,16].")
@click.option("--tp", default=None, metavar="LIST", help="Attention TP degrees [1,8].")
@click.option(
    "--moe-tp", type=click.Choice(["off", "on", "both"]), default=None, help="MoE TP (= attention TP) [both]."
)
@click.option("--batch", default=None, metavar="LIST", help="Batches per GPU [4,16,64,128].")
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    metavar="SPEC",
    help="Decode precisions (repeatable) [fp8 experts].",
)
@click.option(
    "--impl", "impls", multiple=True, help="Communication implementations (repeatable) [the system's]."
)
@click.option(
    "--tbo",
    "tbo_grid",
    type=click.Choice(["off", "on", "both"]),
    default=None,
    help="Two-batch overlap [both].",
)
@click.option("--redundant", default=None, metavar="LIST", help="Redundant expert slots [0].")
@click.option(
    "--prefill-chunk", default=None, metavar="LIST", help="Aggregated prefill chunk tokens [a whole prompt]."
)
@click.option("--prefill-ep", default=None, metavar="LIST", help="GPUs per prefill instance [8].")
@click.option(
    "--prefill-tokens", default=None, metavar="LIST", help="Prefill tokens per GPU per step [4096]."
)
@click.option(
    "--prefill-precision",
    "prefill_precisions",
    multiple=True,
    metavar="SPEC",
    help="Prefill precisions (repeatable).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Result directory (Parquet, result.json, plot).",
)
@click.option("--force", is_flag=True, help="Replace an existing result directory.")
@click.option("--no-plot", is_flag=True, help="Skip the PNG/SVG plot.")
@click.option("--json", "as_json", is_flag=True, help="Print the best deployments as JSON.")
def plan(trace: Path | None, synth_spec: str | None, prefill_trace: Path | None, config_path: Path | None,
         model: str | None, hws: tuple[str, ...], gpus: str | None, isl: int | None, osl: int | None,
         ttft: float | None, tpot: float | None, tokens_per_user: float | None, ep: str | None, tp: str | None,
         moe_tp: str | None, batch: str | None, precisions: tuple[str, ...], impls: tuple[str, ...],
         tbo_grid: str | None, redundant: str | None, prefill_chunk: str | None, prefill_ep: str | None,
         prefill_tokens: str | None, prefill_precisions: tuple[str, ...], out: Path | None, force: bool,
         no_plot: bool, as_json: bool) -> None:  # fmt: skip
    """Search deployments (EP, attention DP x TP, MoE TP, batch, precision, communication, TBO,
    redundant experts) of each system for the most tokens/s per GPU within a TTFT and TPOT target,
    aggregated and disaggregated; print the best, the ratio between systems, write the frontiers."""
    from tracekit.plan import Grid, PlanInputs, Sla, load_plan_toml, write_plan
    from tracekit.plan import plan as run_plan
    from tracekit.replay import Precision
    from tracekit.replay.fast import FastReplay
    from tracekit.replay.results import check_out_dir

    cfg: dict[str, Any] = load_plan_toml(config_path) if config_path is not None else {"sla": {}, "grid": {}}
    sla_cfg = dict(cfg["sla"])
    for key, value in (("isl", isl), ("osl", osl), ("ttft_s", ttft), ("tpot_s", tpot)):
        if value is not None:
            sla_cfg[key] = value
    if tokens_per_user is not None:
        sla_cfg["tokens_per_s_per_user"] = tokens_per_user
    per_user = sla_cfg.pop("tokens_per_s_per_user", None)
    if per_user is not None:
        if tpot is not None or (sla_cfg.get("tpot_s") is not None and tokens_per_user is None):
            raise UsageError("give --tpot or --tokens-per-user, not both")
        if not per_user > 0:
            raise UsageError(f"--tokens-per-user must be > 0, got {per_user}")
        sla_cfg["tpot_s"] = 1.0 / per_user
    for need in ("isl", "osl"):
        if need not in sla_cfg:
            raise UsageError(f"--{need} is required (or {need} in the [sla] table of --config)")
    sla = Sla(**sla_cfg)
    grid_cfg = dict(cfg["grid"])
    flags: dict[str, Any] = {
        "eps": _ints(ep, "--ep"),
        "tps": _ints(tp, "--tp"),
        "moe_tp": _bools(moe_tp),
        "batches": _ints(batch, "--batch"),
        "precisions": tuple(Precision.parse(p) for p in precisions) or None,
        "impls": tuple(None if i == "auto" else i for i in impls) or None,
        "tbos": _bools(tbo_grid),
        "redundant": tuple(int(x) for x in redundant.split(",")) if redundant else None,
        "prefill_chunks": _ints(prefill_chunk, "--prefill-chunk"),
        "prefill_eps": _ints(prefill_ep, "--prefill-ep"),
        "prefill_tokens": _ints(prefill_tokens, "--prefill-tokens"),
        "prefill_precisions": tuple(Precision.parse(p) for p in prefill_precisions) or None,
    }
    grid_cfg.update({k: v for k, v in flags.items() if v is not None})
    grid = Grid(**grid_cfg)
    systems = hws or cfg.get("systems") or ()
    if not systems:
        raise UsageError("name the systems: --hw NAME (repeatable) or systems = [...] in --config")
    budgets = _ints(gpus, "--gpus") or cfg.get("total_gpus")
    if not budgets:
        raise UsageError("give the GPU budget: --gpus N (or a list / range), or total_gpus in --config")
    model = model or cfg.get("model")
    if (trace is None) == (synth_spec is None):
        raise UsageError("give a TRACE or --synth SPEC (one of them)")
    if out is not None:
        check_out_dir(out, overwrite=force)
    inputs = PlanInputs(systems=tuple(systems), total_gpus=tuple(budgets), sla=sla, grid=grid, model=model)
    with contextlib.ExitStack() as stack:
        if synth_spec is not None:
            trace, prefill_trace = _synth(stack, synth_spec, model, sla)
        assert trace is not None
        fast = FastReplay(trace)
        pre = FastReplay(prefill_trace) if prefill_trace is not None else None
        with progress_bar("searching") as progress:
            result = run_plan(inputs, fast, prefill_trace=pre, progress=progress)
    if out is not None:
        write_plan(result, out, overwrite=force, plot=not no_plot)
    if as_json:
        from tracekit.plan.output import plan_meta

        echo_json(plan_meta(result))
        return
    _print(result)
    if out is not None:
        click.echo(f"wrote {out}")


def _synth(stack: contextlib.ExitStack, spec: str, model: str | None, sla: Any) -> tuple[Path, Path]:
    """Decode and prefill traces of ``model`` with ``spec`` routing, in a temporary directory."""
    from tracekit.models import get_model
    from tracekit.synth import SynthConfig, parse_spec, synthesize

    if model is None:
        raise UsageError("--synth needs --model (a catalog name or a config.json)")
    arch = get_model(model)
    routing = parse_spec(spec)
    tmp = Path(tempfile.mkdtemp(prefix="tracekit-plan-"))
    stack.callback(shutil.rmtree, tmp, True)
    common = {
        "arch": arch,
        "spec": routing,
        "steps": 1,
        "seed": 0,
        "gate_weights": False,
        "prompt_len": sla.isl,
    }
    decode = SynthConfig(phase="decode", tokens_per_step=SYNTH_DECODE_TOKENS, **common)
    prefill = dataclasses.replace(decode, phase="prefill", tokens_per_step=SYNTH_PREFILL_PROMPTS * sla.isl)
    synthesize(decode, tmp / "decode")
    synthesize(prefill, tmp / "prefill")
    return tmp / "decode", tmp / "prefill"


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _print(result: Any) -> None:
    """The best deployments as a table; a column that would say the same on every row (one system,
    one GPU budget, the ratio of a single system) moves into the title, so the table fits a terminal."""
    best = result.best
    systems = list(dict.fromkeys(best["hw"].to_list()))
    budgets = list(dict.fromkeys(best["total_gpus"].to_list()))
    cols = [
        "system",
        "mode",
        "GPUs",
        "decode",
        "prefill",
        "batch",
        "tok/s/gpu",
        "tok/s/user",
        "TTFT s",
        "ratio",
    ]
    keep = [len(systems) > 1, True, len(budgets) > 1, True, True, True, True, True, True, len(systems) > 1]
    rows = []
    for r in best.iter_rows(named=True):
        parts = f"EP{r['ep']} DP{r['dp']}xTP{r['tp']}" + (f" MoE-TP{r['moe_tp']}" if r["moe_tp"] > 1 else "")
        parts += (
            f" {r['precision_experts']}"
            + (" TBO" if r["tbo"] else "")
            + (f" +{r['redundant']}" if r["redundant"] else "")
        )
        decode = f"{r['decode_gpus']}: {parts}"
        prefill = f"{r['prefill_gpus']}: EP{r['prefill_ep']}" if r["mode"] == "disaggregated" else "in decode"
        row = [
            r["hw"], {"aggregated": "agg", "disaggregated": "disagg"}[r["mode"]], str(r["total_gpus"]), decode, prefill, str(r["batch_per_gpu"]),
            _fmt(r["tokens_per_s_per_gpu"]), _fmt(r["tokens_per_s_per_user"]), _fmt(r["ttft_s"], 2),
            _fmt(r["ratio"], 2),
        ]  # fmt: skip
        rows.append([v for v, k in zip(row, keep, strict=True) if k])
    sla = result.inputs.sla
    target = [f"ISL {sla.isl}, OSL {sla.osl}"]
    if sla.ttft_s is not None:
        target.append(f"TTFT <= {sla.ttft_s:g} s")
    if sla.tpot_s is not None:
        target.append(f"TPOT <= {sla.tpot_s * 1e3:g} ms")
    where = [*(systems if len(systems) == 1 else []), *([f"{budgets[0]} GPUs"] if len(budgets) == 1 else [])]
    title = f"Best of {result.points.height} points{' on ' + ', '.join(where) if where else ''}: {', '.join(target)}"
    click.echo(render_rows([c for c, k in zip(cols, keep, strict=True) if k], rows, "table", title=title))
    for note in result.notes:
        click.echo(f"note: {note}")
