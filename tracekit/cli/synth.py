"""``tracekit stats`` (routing statistics of a trace) and ``tracekit synth`` (synthetic traces)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click

from tracekit.cli._backend import backend_options, open_backend
from tracekit.cli._render import echo_json, format_option, render_fields, render_rows
from tracekit.errors import UsageError
from tracekit.schema.manifest import ModelArch

_SHOWN = [
    ("layer", "layer"),
    ("num_tokens", "tokens"),
    ("max_over_mean", "max/mean"),
    ("cv", "cv"),
    ("gini", "gini"),
    ("norm_entropy", "entropy"),
    ("step_rank_imbalance", "rank imb"),
    ("hot_jaccard", "hot jacc"),
    ("coact_nmi", "coact nmi"),
    ("cross_layer_nmi", "x-layer nmi"),
]


@click.command()
@click.argument("trace", type=click.Path())
@click.option(
    "--ep",
    type=int,
    default=None,
    help="EP ranks for the per-rank measures [the trace's EP degree, or the placement's].",
)
@click.option(
    "--placement",
    "placement_file",
    type=click.Path(),
    default=None,
    help="Placement Parquet file (from tracekit place) instead of contiguous placement.",
)
@click.option(
    "--window",
    "window_steps",
    type=int,
    default=None,
    help="Steps per window for drift measures (default: up to 8 windows).",
)
@click.option(
    "--max-routing-tokens",
    type=int,
    default=65_536,
    show_default=True,
    help="Tokens per layer sampled from routing for co-activation and cross-layer measures.",
)
@click.option(
    "--out", type=click.Path(), default=None, help="Directory (or URI) for stats_*.parquet and stats.json."
)
@click.option("--force", is_flag=True, help="Replace the statistics already in --out.")
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
@format_option()
@backend_options
def stats(
    trace: str,
    ep: int | None,
    placement_file: str | None,
    window_steps: int | None,
    max_routing_tokens: int,
    out: str | None,
    force: bool,
    as_json: bool,
    fmt: str,
    backend: str,
    address: str | None,
    ray_workers: int | None,
) -> None:
    """Routing statistics of TRACE per MoE layer: load skew per expert and per EP rank (max/mean,
    CV, Gini, entropy), co-activation, cross-layer correlation and hot-set drift.

    With --out, writes stats_layers / stats_experts / stats_ranks / stats_windows / stats_pairs
    Parquet files (see docs/synth.md); the directory also works as --routing fitted:DIR for synth.
    """
    from tracekit.stats import compute_stats
    from tracekit.trace import open_trace

    if out is not None:
        from tracekit.trace.outputs import check_not_input
        from tracekit.trace.store import is_uri

        if not is_uri(out):
            check_not_input(out, [trace, placement_file])
        elif out.rstrip("/") == trace.rstrip("/"):
            raise UsageError(f"--out {out}: it is also the input trace; write the statistics somewhere else")
    tr = open_trace(trace)
    slot_experts = None
    if placement_file is not None:
        from tracekit.placement import read_placement

        placement = read_placement(placement_file)
        if ep is not None and ep != placement.num_ranks:
            raise UsageError(
                f"--ep {ep} differs from the {placement.num_ranks} ranks of placement {placement_file}; "
                "drop --ep or give a placement for that EP"
            )
        ep = placement.num_ranks
        slot_experts = {layer: placement.row(layer) for layer in placement.layers}
    with open_backend(backend, address, ray_workers) as runner:
        result = compute_stats(
            tr,
            ep=ep,
            slot_experts=slot_experts,
            window_steps=window_steps,
            max_routing_tokens=max_routing_tokens,
            backend=runner,
        )
    if out is not None:
        result.write(out, overwrite=force, inputs=(trace,))
    layers = result.layers
    if as_json or fmt == "json":
        echo_json(layers.to_dicts())
    else:
        rows = [[row[c] for c, _ in _SHOWN] for row in layers.iter_rows(named=True)]
        title = (
            f"{tr.manifest.model.name}: {result.meta['num_steps']} steps, EP {result.meta['ep']} "
            f"({result.meta['placement']}), window {result.meta['window_steps']} steps"
        )
        click.echo(render_rows([h for _, h in _SHOWN], rows, fmt=fmt, title=title))
    if out is not None:
        click.echo(f"wrote {out}/stats_*.parquet and stats.json", err=True)


def _is_trace(path: Any) -> bool:
    return (path / "manifest.json").is_file()


def _resolve_model(name: str) -> ModelArch:
    path = Path(name)
    if path.is_dir() and (path / "manifest.json").is_file():
        from tracekit.trace import open_trace

        return open_trace(path).manifest.model
    from tracekit.models import get_model

    return get_model(name)


@click.command()
@click.option(
    "--model",
    "model_name",
    required=True,
    help="Catalog model (tracekit models), a config.json / model directory, or a trace directory.",
)
@click.option(
    "--phase", type=click.Choice(["prefill", "decode"]), required=True, help="Step kind to synthesise."
)
@click.option(
    "--tokens-per-step",
    type=int,
    required=True,
    help="Tokens per forward step (decode: concurrent requests; prefill: prompt tokens).",
)
@click.option("--steps", type=int, required=True, help="Forward steps.")
@click.option(
    "--routing",
    "routing_spec",
    default="uniform",
    show_default=True,
    help="uniform, zipf:ALPHA, balanced or fitted:STATS_DIR_OR_TRACE.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed; the same seed gives byte-identical Parquet."
)
@click.option(
    "--out", type=click.Path(), required=True, help="Trace directory (or URI: s3://bucket/trace) to write."
)
@click.option(
    "--prompt-len",
    type=int,
    default=1024,
    show_default=True,
    help="Prompt tokens per request (decode: KV already cached at step 0).",
)
@click.option(
    "--ep", type=int, default=None, help="EP degree whose per-rank imbalance is measured and recorded."
)
@click.option(
    "--target-imbalance",
    type=float,
    default=None,
    help="Per-rank (max-mean)/mean to reach at --ep (solves the skew of zipf or fitted routing).",
)
@click.option(
    "--burst",
    type=float,
    default=0.0,
    show_default=True,
    help="Per-step variation of which experts are hot (zipf and uniform routing): token clusters with "
    "their own expert preferences, mixed in proportions that change every step. 0.5 leaves DeepSeek-R1 "
    "decode's published imbalance after EPLB (docs/synth.md).",
)
@click.option("--no-gate-weights", is_flag=True, help="Leave routing.gate_weights null (smaller, faster).")
@click.option(
    "--rows-per-part",
    type=click.IntRange(1),
    default=None,
    help="Rows per Parquet part file [1,000,000]; each part is one upload on an object store.",
)
@click.option("--force", is_flag=True, help="Replace an existing trace at --out.")
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
@format_option()
def synth(
    model_name: str,
    phase: str,
    tokens_per_step: int,
    steps: int,
    routing_spec: str,
    seed: int,
    out: str,
    prompt_len: int,
    ep: int | None,
    target_imbalance: float | None,
    burst: float,
    no_gate_weights: bool,
    rows_per_part: int | None,
    force: bool,
    as_json: bool,
    fmt: str,
) -> None:
    """Write a synthetic trace (steps, tokens, routing, expert_load, requests) for any model at full
    scale, with uniform, zipf, balanced or fitted routing. The manifest says source "synthetic" and
    records the spec and seed."""
    from tracekit.synth import SynthConfig, parse_spec, synthesize

    arch = _resolve_model(model_name)
    config = SynthConfig(
        arch=arch,
        spec=parse_spec(routing_spec),
        phase=phase,
        tokens_per_step=tokens_per_step,
        steps=steps,
        seed=seed,
        prompt_len=prompt_len,
        ep=ep,
        target_imbalance=target_imbalance,
        gate_weights=not no_gate_weights,
        burst=burst,
    )
    from tracekit.synth.generate import check_size
    from tracekit.trace.outputs import check_output

    config.check()
    check_size(config, out)
    inputs = [model_name, config.spec.source]
    check_output(out, kind="dir", force=force, what="trace", is_ours=_is_trace, inputs=inputs)
    shown = [0]

    def progress(done: int, total: int) -> None:
        if not sys.stderr.isatty():  # a progress line only on a terminal, never in a log or a pipe
            return
        tenth = done * 10 // total
        if tenth > shown[0] or done == total:
            shown[0] = tenth
            click.echo(f"\rsynthesising: step {done}/{total}", nl=done == total, err=True)

    result = synthesize(config, out, overwrite=force, progress=progress, rows_per_part=rows_per_part)
    rows = result.rows.get("routing", 0)
    summary: dict[str, Any] = {
        "trace": str(result.path),
        "model": arch.name,
        "spec": str(config.spec),
        "seed": seed,
        "rows": result.rows,
        "seconds": result.seconds,
        "routing_rows_per_s": rows / result.seconds if result.seconds > 0 else None,
    }
    for key in ("target_imbalance", "rank_imbalance", "model_params"):
        if key in result.detail:
            summary[key] = result.detail[key]
    if "fit" in result.detail:
        fit = result.detail["fit"]
        summary["fit"] = {k: v for k, v in fit.items() if k not in ("layer_map",)}
    if as_json or fmt == "json":
        echo_json(summary)
        return
    if fmt in ("csv", "markdown"):
        click.echo(render_fields(_flatten(summary), fmt))
        return
    click.echo(
        f"wrote {result.path}: {arch.name} {phase}, {steps} steps x {tokens_per_step} tokens, routing {config.spec} "
        f"(seed {seed}); {rows:,} routing rows in {result.seconds:.1f} s"
    )
    if "target_imbalance" in result.detail:
        t = result.detail["target_imbalance"]
        knob = (
            f"zipf alpha {t['zipf_alpha']:.4f}"
            if "zipf_alpha" in t
            else f"logit scale {t['logit_scale']:.4f}"
        )
        click.echo(f"target imbalance {t['target']:g} at EP {t['ep']}: solved {knob}")
    if "rank_imbalance" in result.detail:
        click.echo(
            f"per-rank (max-mean)/mean at EP {result.detail['ep']} (contiguous, mean over steps and layers): "
            f"{result.detail['rank_imbalance']:.4f}"
        )
    if "fit" in result.detail:
        fit = result.detail["fit"]
        lines = []
        for key in ("max_over_mean", "gini"):
            src, got = fit[key]["source"], fit[key]["fitted"]
            lines.append(f"{key}: source {_fmt(src)} fitted {_fmt(got)}")
        for key in ("coact_nmi", "cross_layer_nmi", "hot_jaccard"):
            if key in fit:
                lines.append(f"{key}: source {fit[key]['source']:.4f} fitted {fit[key]['fitted']:.4f}")
        click.echo("fit (per source layer): " + "; ".join(lines))


def _flatten(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested summary fields as dotted ``(field, value)`` pairs."""
    out: list[tuple[str, Any]] = []
    for key, value in obj.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join("nan" if math.isnan(v) else f"{v:.3f}" for v in values) + "]"
