"""``tracekit replay``, ``tracekit compare`` and ``tracekit sweep``: thin wrappers over tracekit.replay."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tracekit.cli._backend import backend_options, open_backend
from tracekit.cli._render import echo_json, format_option, render_rows
from tracekit.cli._spec import spec_option
from tracekit.cli.profile import attach_profile, echo_profile, match_options
from tracekit.cost.measured_source import TIMING_MODES
from tracekit.errors import UsageError
from tracekit.hardware.comm_impls import COMM_IMPLS


def _ints(values: tuple[str, ...], name: str) -> list[int]:
    out: list[int] = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                n = int(part)
            except ValueError:
                raise UsageError(
                    f"{name} {part!r}: expected an integer or a comma-separated list of integers"
                ) from None
            if n < 1:
                raise UsageError(f"{name} {n}: must be >= 1")
            out.append(n)
    if values and not out:
        raise UsageError(
            f"{name} {','.join(values)!r}: no number given; write e.g. {name} 8,16 or leave it out"
        )
    return out


def _deployment_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", help="Override a hardware preset field."),
        click.option("--tp", type=click.IntRange(1), default=None, help="Attention tensor-parallel degree [1]."),
        click.option("--dp", type=click.IntRange(1), default=None, help="Attention data-parallel degree (ep = dp x tp)."),
        click.option(
            "--precision",
            "precisions",
            multiple=True,
            metavar="SPEC",
            help="fp8 (attention, dense, experts, dispatch) or PART=FORMAT for attention, dense, experts, "
            "dispatch, combine, kv_cache, attention_core (bf16, fp8, fp4/nvfp4, mxfp4, int4 for weights); "
            "comma-separated or repeated.",
        ),
        click.option("--impl", type=click.Choice(COMM_IMPLS), default=None, help="EP communication [deepep-normal for prefill, deepep-ll for decode]."),
        click.option("--tbo/--no-tbo", default=False, show_default=True, help="Two-batch overlap of communication with compute."),
        click.option("--placement", type=click.Path(path_type=Path), default=None, help="Placement file from tracekit place [contiguous]."),
        click.option("--redundant", type=click.IntRange(0), default=0, show_default=True, help="Redundant slots of the contiguous placement."),
        click.option("--model", default=None, help="Target model: catalog name or config.json [the trace's own]."),
        click.option("--prefill-tokens-per-gpu", type=click.IntRange(1), default=None, help="Prefill tokens per GPU per step."),
        click.option("--kv-len", type=click.IntRange(1), default=None, help="KV length of every decode token [from the trace]."),
        click.option("--kv-len-mean", type=click.IntRange(1), default=None, help="Scale the trace's decode KV lengths to this mean, keeping their spread over sequences and ranks."),
        click.option("--steps", type=click.IntRange(1), default=None, help="Replayed steps per phase [as many as the trace fills]."),
        click.option("--sbo", is_flag=True, help="Single-batch overlap: dispatch under the shared experts, combine under the down GEMM."),
        click.option("--cuda-graphs/--no-cuda-graphs", default=None, help="Kernels replayed from CUDA graphs (small launch gaps) or launched eagerly [graphs in decode, eager in prefill]."),
        click.option("--mtp", default=None, metavar="DRAFTS:ACCEPT", help="Multi-token prediction in decode: draft tokens per step and the acceptance rate of each, e.g. 1:0.85."),
        click.option("--aggregated", default=None, metavar="ISL:OSL", help="Aggregated serving: decode steps also run the prefill of new requests of ISL prompt and OSL output tokens."),
        click.option("--prefill-chunk", type=click.IntRange(1), default=None, help="With --aggregated: prompt tokens per prefill chunk [a whole prompt]."),
        click.option("--prefix-hit", type=click.FloatRange(0.0, 1.0, max_open=True), default=None, help="Share of every prompt read from the prefix cache (not computed in prefill)."),
        click.option("--timing", type=click.Choice(TIMING_MODES), default="analytic", show_default=True,
                     help="Price kernels from the preset's curves (analytic), from a measured kernel table where it "
                     "covers the shape (measured: a table is required), or measured when one is available (auto)."),
        click.option("--measured", default=None, metavar="FILE|aiconfigurator[:SYSTEM/FRAMEWORK]",
                     help="The measured table for --timing measured/auto [the preset's AIConfigurator database]."),
    ]  # fmt: skip
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _base(
    *,
    hw: str,
    sets: tuple[str, ...],
    ep: int | None,
    dp: int | None,
    tp: int | None,
    precisions: tuple[str, ...],
    impl: str | None,
    tbo: bool,
    placement: Path | None,
    redundant: int,
    model: str | None,
    batch_per_gpu: int | None,
    prefill_tokens_per_gpu: int | None,
    kv_len: int | None,
    steps: int | None,
    kv_len_mean: int | None = None,
    sbo: bool = False,
    cuda_graphs: bool | None = None,
    mtp: str | None = None,
    aggregated: str | None = None,
    prefill_chunk: int | None = None,
    prefix_hit: float | None = None,
    timing: str = "analytic",
    measured: str | None = None,
    merge_precisions: bool = True,
) -> Any:
    from tracekit.hardware import parse_set_options
    from tracekit.replay import Deployment, Precision

    if dp is not None:
        t = tp or 1
        if ep is not None and ep != dp * t:
            raise UsageError(f"--ep {ep} must equal --dp {dp} x --tp {t}; give two of the three")
        ep = dp * t
    return Deployment(
        hw=hw,
        hw_overrides=parse_set_options(list(sets)),
        ep=ep,
        tp=tp or 1,
        precision=Precision.parse(list(precisions)) if merge_precisions else Precision(),
        impl=impl,
        tbo=tbo,
        placement=str(placement) if placement else None,
        redundant=redundant,
        model=model,
        batch_per_gpu=batch_per_gpu,
        prefill_tokens_per_gpu=prefill_tokens_per_gpu,
        kv_len=kv_len,
        kv_len_mean=kv_len_mean,
        steps=steps,
        sbo=sbo,
        cuda_graphs=cuda_graphs,
        mtp=_pair("--mtp", mtp, "DRAFTS:ACCEPT, e.g. 1:0.85", int, float),
        aggregated=_pair("--aggregated", aggregated, "ISL:OSL, e.g. 1024:2048", int, int),
        prefill_chunk=prefill_chunk,
        prefix_hit=prefix_hit,
        timing=timing,
        measured=measured,
    )


def _pair(
    flag: str, text: str | None, form: str, first: Callable[[str], Any], second: Callable[[str], Any]
) -> Any:
    """``A:B`` of a flag as a typed pair (None when not given)."""
    if text is None:
        return None
    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (first(a), second(b))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected {form}") from None


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}{unit}"
    return f"{v}{unit}"


def _summary_rows(summary: Any) -> list[list[str]]:
    s = summary.to_dict()
    rows = [
        ["output tokens/s per GPU", _fmt(s.get("tokens_per_s_per_gpu"))],
        ["  p10-p90", _band(s.get("tokens_per_s_per_gpu_p10"), s.get("tokens_per_s_per_gpu_p90"))],
        ["tokens/s per user", _fmt(s.get("tokens_per_s_per_user"))],
        ["TPOT", _fmt(_ms(s.get("tpot_s")), " ms")],
        ["TTFT", _fmt(_ms(s.get("ttft_s")), " ms")],
        ["step time", _fmt(_ms(s.get("step_time_s")), " ms")],
        ["dominant bound", _fmt(s.get("bound"))],
        ["max batch per GPU", _fmt(s.get("max_batch_per_gpu"))],
        ["weights per GPU", _fmt((s.get("weight_bytes_per_gpu") or 0) / 1e9, " GB")],
    ]
    if s.get("trace_steps_replayed"):
        steps = f"{s['trace_step_first']}..{s['trace_step_last']} ({s['trace_steps_replayed']} steps)"
        if s.get("placement_from_step"):
            steps += f"; placement in force from step {s['placement_from_step']}"
        rows.append(["trace steps replayed", steps])
    if (s.get("placement_epochs") or 1) > 1:
        rows.append(["placement epochs", _fmt(s["placement_epochs"])])
        rows.append(
            ["expert migration", f"{s['moved_experts']} experts, {_fmt(s['migration_bytes'] / 1e9, ' GB')}"]
        )
    if s.get("measured_time_s") is not None:
        rows.append(["measured step time", _fmt(_ms(s["measured_time_s"]), " ms")])
    if s.get("disaggregated"):
        rows += [
            ["prefill GPUs", _fmt(s.get("prefill_gpus"))],
            ["decode GPUs", _fmt(s.get("decode_gpus"))],
            ["KV transfer", _fmt(_ms(s.get("kv_transfer_s")), " ms")],
        ]
    for k, v in (s.get("breakdown") or {}).items():
        rows.append([f"  {k}", _fmt(_ms(v), " ms")])
    return rows


def _progress() -> Callable[[str, int, int], None] | None:
    """A one-line progress display on stderr when it is a terminal."""
    import sys

    if not sys.stderr.isatty():
        return None

    def show(phase: str, done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        click.echo(f"\rreplaying {phase}: step {done}/{total}", err=True, nl=False)
        if end:
            click.echo("", err=True)

    return show


def _band(lo: Any, hi: Any, unit: str = "") -> str:
    """A p10-p90 band over the fitted parameters' spread ("-" when there is none)."""
    if lo is None or hi is None:
        return "-"
    return f"{_fmt(float(lo))}-{_fmt(float(hi))}{unit}"


def _ms(v: Any) -> float | None:
    return None if v is None else float(v) * 1e3


@click.command()
@click.argument("trace", type=click.Path())
@click.option("--hw", required=True, help="Hardware preset name or preset .toml file (tracekit hw list).")
@click.option(
    "--ep", type=click.IntRange(1), default=None, help="Expert-parallel degree = GPUs [the trace's]."
)
@click.option(
    "--batch-per-gpu",
    type=click.IntRange(1),
    default=None,
    help="Decode sequences per GPU per step [as recorded].",
)
@_deployment_options
@click.option(
    "--phase",
    "phases",
    multiple=True,
    type=click.Choice(["prefill", "decode"]),
    help="Replay only these phases.",
)
@click.option(
    "--disagg",
    is_flag=True,
    help="Prefill on a separate pool (--prefill-hw/--prefill-ep), decode on --hw/--ep.",
)
@click.option("--prefill-hw", default=None, help="Prefill pool preset [--hw].")
@click.option("--prefill-ep", type=click.IntRange(1), default=None, help="Prefill pool EP degree [--ep].")
@click.option(
    "--prefill-gpus", type=click.IntRange(1), default=None, help="Prefill pool GPUs [sized to feed decode]."
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="Result directory (Parquet tables + result.json), or a URI (s3://bucket/results/run).",
)
@click.option("--force", is_flag=True, help="Replace an existing result directory.")
@format_option()
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
@click.option(
    "--profile",
    "profile",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A GPU profile of this run (Kineto JSON per rank, repeatable, or an imported trace): measured "
    "beside the prediction per step, layer and component (table replay_profile).",
)
@match_options
@backend_options
@spec_option
def replay(trace: str, hw: str, ep: int | None, batch_per_gpu: int | None, phases: tuple[str, ...], disagg: bool,
           prefill_hw: str | None, prefill_ep: int | None, prefill_gpus: int | None, out: str | None, force: bool,
           fmt: str, as_json: bool, profile: tuple[Path, ...], match: str, layer_offset: int, backend: str,
           address: str | None, ray_workers: int | None, **opts: Any) -> None:  # fmt: skip
    """Re-time TRACE (a directory or a URI such as s3://bucket/trace) on a hardware model under a
    deployment, step by step, layer by layer, rank by rank."""
    from tracekit.replay import replay as run_replay
    from tracekit.replay import replay_disaggregated, write_result

    dep = _base(hw=hw, ep=ep, batch_per_gpu=batch_per_gpu, **opts)
    if disagg:
        if backend != "local":
            raise UsageError("--disagg replays here; drop --backend ray (or replay each pool on its own)")
        pre = dep.replace(hw=prefill_hw or hw, ep=prefill_ep or dep.ep)
        res = replay_disaggregated(trace, prefill=pre, decode=dep, prefill_gpus=prefill_gpus)
    else:
        if prefill_hw or prefill_ep or prefill_gpus:
            raise UsageError("--prefill-hw, --prefill-ep and --prefill-gpus need --disagg")
        if out is not None:
            from tracekit.replay.results import check_out_dir

            check_out_dir(out, overwrite=force)
        with open_backend(backend, address, ray_workers) as runner:
            res = run_replay(trace, dep, phases=list(phases) or None, progress=_progress(), backend=runner)
    if profile:
        if disagg:
            raise UsageError("--profile compares one pool's replay with its profile: drop --disagg")
        res = attach_profile(res, dep, trace, profile, match, layer_offset)
    elif match != "auto" or layer_offset:
        raise UsageError("--match and --layer-offset map a profile onto the replay: add --profile")
    if out is not None:
        write_result(res, out, overwrite=force)
    if as_json or fmt == "json":
        echo_json(res.summary.to_dict())
        return
    if fmt != "table":
        click.echo(render_rows(["quantity", "value"], _summary_rows(res.summary), fmt))
        return
    run = res.run.row(0, named=True)
    title = (
        f"{run['model']} on {run['hw']}: EP {run['ep']} (DP {run['dp']} x TP {run['tp']}), "
        f"batch/GPU {_fmt(run['batch_per_gpu'])}, experts {run['precision_experts']}, impl {run['impl']}, "
        f"TBO {'on' if run['tbo'] else 'off'}"
    )
    click.echo(title)
    click.echo(render_rows(["quantity", "value"], _summary_rows(res.summary), "table"))
    sources = res.tables.get("replay_sources")
    if sources is not None and dep.timing != "analytic":
        click.echo(render_rows(*_source_rows(sources), "table"))
    echo_profile(res)
    if out is not None:
        click.echo(f"wrote {out}")


def _source_rows(sources: Any) -> tuple[list[str], list[list[str]]]:
    """Which timing source priced each component (replay_sources), one row per phase and component."""
    rows = [
        [
            r["phase"],
            r["component"],
            r["source"],
            f"{100 * (r['measured_share'] or 0.0):.0f}%",
            r["table"] or "-",
        ]
        for r in sources.iter_rows(named=True)
    ]
    return ["phase", "component", "priced by", "measured share", "table"], rows


@click.command()
@click.argument("trace", type=click.Path())
@click.option(
    "--hw",
    "hws",
    multiple=True,
    required=True,
    help="A system to compare (repeat: --hw h200-sxm --hw gb200-nvl72).",
)
@click.option(
    "--ep",
    type=click.IntRange(1),
    default=None,
    help="EP degree for every system [per system: largest power of two in its NVLink domain that fits].",
)
@click.option(
    "--batch-per-gpu",
    type=click.IntRange(1),
    default=None,
    help="Decode sequences per GPU per step [the trace's].",
)
@_deployment_options
@click.option(
    "--deploy",
    "deploys",
    multiple=True,
    metavar="HW:KEY=VALUE,...",
    help="Per-system override, e.g. --deploy gb200-nvl72:ep=32,precision=experts=fp4 (keys: ep, tp, batch, precision, impl, tbo, redundant).",
)
@click.option(
    "--at-interactivity",
    type=float,
    default=None,
    metavar="TOKENS_PER_S",
    help="Best tokens/s per GPU of each system at >= this many tokens/s per user (each --precision is a choice).",
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="Write result.json and compare.parquet here (a directory or URI).",
)
@click.option("--force", is_flag=True, help="Replace an existing result directory.")
@format_option()
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
@backend_options
@spec_option
def compare(trace: str, hws: tuple[str, ...], ep: int | None, batch_per_gpu: int | None, deploys: tuple[str, ...],
            at_interactivity: float | None, out: str | None, force: bool, fmt: str, as_json: bool, backend: str,
            address: str | None, ray_workers: int | None, **opts: Any) -> None:  # fmt: skip
    """Replay TRACE on several systems and print them side by side with the throughput ratio."""
    from tracekit.replay import Precision, compare_at_interactivity, write_compare
    from tracekit.replay import compare as run_compare

    per_system = _parse_deploys(deploys, hws)
    precisions = opts["precisions"]
    bases = []
    for hw in hws:
        o = dict(opts)
        over = per_system.get(hw, {})
        if "precision" in over:
            o["precisions"] = (*precisions, over.pop("precision"))
        b = _base(hw=hw, ep=ep, batch_per_gpu=batch_per_gpu, merge_precisions=at_interactivity is None, **o)
        bases.append(_apply(b, over))
    if out is not None:
        from tracekit.replay.results import check_out_dir

        check_out_dir(out, overwrite=force)
    from tracekit.cli.plan import progress_bar

    with open_backend(backend, address, ray_workers) as runner:
        if at_interactivity is None:
            result = run_compare(trace, bases, backend=runner)
        else:
            choices = [Precision.parse(p) for p in precisions] or None
            with progress_bar("searching") as progress:
                result = compare_at_interactivity(
                    trace,
                    bases,
                    tokens_per_s_per_user=at_interactivity,
                    precisions=choices,
                    backend=runner,
                    progress=progress,
                )
    if out is not None:
        write_compare(result, out, overwrite=force)
    if as_json or fmt == "json":
        echo_json(result.to_dict())
        return
    _print_compare(result.system_dicts(), at_interactivity, fmt)


def _print_compare(systems: list[dict[str, Any]], at: float | None, fmt: str = "table") -> None:
    cols = ["", *[s["hw"] for s in systems]]

    def dep(s: dict[str, Any], key: str) -> str:
        d = s["deployment"]
        if not d:
            return "-"
        if key == "precision":
            return f"experts={d['precision']['experts']},attn={d['precision']['attention']}"
        return _fmt(d.get(key) if key != "impl" else (d.get("impl") or "auto"))

    rows = [
        ["EP (GPUs)", *[dep(s, "ep") for s in systems]],
        ["TP", *[dep(s, "tp") for s in systems]],
        ["batch per GPU", *[dep(s, "batch_per_gpu") for s in systems]],
        ["precision", *[dep(s, "precision") for s in systems]],
        ["impl", *[dep(s, "impl") for s in systems]],
        ["TBO", *[dep(s, "tbo") for s in systems]],
        ["output tokens/s per GPU", *[_fmt(s["tokens_per_s_per_gpu"]) for s in systems]],
        [
            "  p10-p90",
            *[_band(s["tokens_per_s_per_gpu_p10"], s["tokens_per_s_per_gpu_p90"]) for s in systems],
        ],
        ["tokens/s per user", *[_fmt(s["tokens_per_s_per_user"]) for s in systems]],
        ["TPOT", *[_fmt(_ms(s["tpot_s"]), " ms") for s in systems]],
        ["TTFT", *[_fmt(_ms(s["ttft_s"]), " ms") for s in systems]],
        ["dominant bound", *[_fmt(s["bound"]) for s in systems]],
        ["max batch per GPU", *[_fmt(s["max_batch_per_gpu"]) for s in systems]],
        [f"ratio vs {systems[0]['hw']}", *[_fmt(s["ratio"], "x") for s in systems]],
        ["  p10-p90", *[_band(s["ratio_p10"], s["ratio_p90"], "x") for s in systems]],
    ]
    title = "compare" if at is None else f"best deployment at >= {at:g} tokens/s per user"
    if fmt != "table":  # csv, markdown: the table alone
        click.echo(render_rows(["quantity", *cols[1:]], rows, fmt))
        return
    click.echo(render_rows(cols, rows, "table", title=title))
    for s in systems:
        if s["note"]:
            click.echo(s["note"])
    if len(systems) > 1 and systems[-1]["ratio"] is not None:
        last = systems[-1]
        band = f" (p10-p90 {last['ratio_p10']:.2f}-{last['ratio_p90']:.2f}x)" if last["ratio_p10"] else ""
        click.echo(f"{last['hw']} / {systems[0]['hw']}: {last['ratio']:.2f}x output tokens/s per GPU{band}")


def _parse_deploys(items: tuple[str, ...], hws: tuple[str, ...]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        hw, sep, rest = item.partition(":")
        if not sep or hw not in hws:
            raise UsageError(
                f"--deploy {item!r}: expected HW:KEY=VALUE,... with HW one of the --hw systems ({', '.join(hws)})"
            )
        d = out.setdefault(hw, {})
        # precision=... may itself contain '=' and ','; it takes the rest of the item.
        parts = rest.split(",")
        i = 0
        while i < len(parts):
            key, eq, value = parts[i].partition("=")
            if not eq:
                raise UsageError(f"--deploy {item!r}: {parts[i]!r} is not KEY=VALUE")
            key = key.strip()
            if key == "precision":
                d["precision"] = ",".join([value, *parts[i + 1 :]])
                break
            d[key] = value.strip()
            i += 1
    return out


def _apply(dep: Any, over: dict[str, str]) -> Any:
    changes: dict[str, Any] = {}
    for key, value in over.items():
        if key in ("ep", "tp", "redundant", "kv_len", "steps", "batch", "batch_per_gpu"):
            try:
                number = int(value)
            except ValueError:
                raise UsageError(
                    f"--deploy {key}={value!r}: {key} must be an integer, e.g. {key}=8"
                ) from None
            changes["batch_per_gpu" if key == "batch" else key] = number
        elif key == "impl":
            changes["impl"] = value
        elif key == "tbo":
            changes["tbo"] = value.lower() in ("1", "true", "on", "yes")
        elif key == "model":
            changes["model"] = value
        else:
            raise UsageError(
                f"--deploy key {key!r}: valid keys are ep, tp, batch, precision, impl, tbo, redundant, kv_len, steps"
            )
    try:
        return dep.replace(**changes)
    except ValueError as exc:
        raise UsageError(f"--deploy: {exc}") from None


@click.command()
@click.argument("trace", type=click.Path())
@click.option("--hw", "hws", multiple=True, required=True, help="Systems (repeatable).")
@click.option("--ep", "eps", multiple=True, help="EP degrees (repeatable or comma-separated).")
@click.option(
    "--batch-per-gpu", "batches", multiple=True, help="Batches per GPU (repeatable or comma-separated)."
)
@_deployment_options
@click.option(
    "--tbo-grid", type=click.Choice(["off", "on", "both"]), default=None, help="Sweep two-batch overlap too."
)
@click.option(
    "--impls",
    multiple=True,
    type=click.Choice(COMM_IMPLS),
    help="Sweep these communication implementations.",
)
@click.option("--jobs", type=click.IntRange(1), default=None, help="Worker processes [CPU count].")
@click.option("--out", type=click.Path(), required=True, help="Sweep directory (or URI: s3://...).")
@click.option("--force", is_flag=True, help="Replace an existing sweep directory.")
@click.option("--no-plot", is_flag=True, help="Skip the PNG/SVG plot.")
@format_option()
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
@backend_options
@spec_option
def sweep(trace: str, hws: tuple[str, ...], eps: tuple[str, ...], batches: tuple[str, ...], tbo_grid: str | None,
          impls: tuple[str, ...], jobs: int | None, out: str, force: bool, no_plot: bool, fmt: str,
          as_json: bool, backend: str, address: str | None, ray_workers: int | None, **opts: Any) -> None:  # fmt: skip
    """Replay a grid of deployments (in parallel here, or one task per deployment on a Ray cluster),
    write every point and the Pareto frontier, plot it."""
    from tracekit.replay import Precision, grid, run_sweep, write_sweep
    from tracekit.replay.sweep import pareto

    precisions = [Precision.parse(p) for p in opts["precisions"]] or [Precision()]
    base = _base(hw=hws[0], ep=None, batch_per_gpu=None, merge_precisions=False, **opts)
    tbos = {"off": [False], "on": [True], "both": [False, True]}[tbo_grid] if tbo_grid else [base.tbo]
    ep_list: list[int | None] = list(_ints(eps, "--ep")) or [None]
    batch_list: list[int | None] = list(_ints(batches, "--batch-per-gpu")) or [None]
    points = grid(
        base,
        hws=hws,
        eps=ep_list,
        batches=batch_list,
        precisions=precisions,
        tbos=tbos,
        impls=list(impls) or [base.impl],
    )
    # user mistakes fail here in one line, not as a sweep whose every point failed
    from tracekit.hardware import get_hardware
    from tracekit.replay.results import check_out_dir
    from tracekit.replay.setup import check_deployment_sizes, target_model
    from tracekit.trace import open_trace

    check_out_dir(out, overwrite=force)
    for hw in dict.fromkeys(hws):
        get_hardware(hw, base.hw_overrides or None)
    opened = open_trace(trace)
    target_model(opened, base.model)
    for point in points:
        check_deployment_sizes(opened, point)
    if backend != "local" and jobs is not None:
        raise UsageError(
            "--jobs sizes the local process pool; with --backend ray the cluster's CPUs run the points"
        )
    from tracekit.cli.plan import progress_bar

    click.echo(f"sweeping {len(points)} deployments ...", err=True)
    with open_backend(backend, address, ray_workers) as runner, progress_bar("replaying") as progress:
        df = run_sweep(trace, points, jobs=jobs, backend=runner, progress=progress)
    write_sweep(out, trace, df, overwrite=force, plot=not no_plot)
    front = pareto(df)
    if as_json or fmt == "json":
        echo_json({"kind": "sweep", "points": df.height, "pareto": front.to_dicts()})
        return
    cols = [
        "hw",
        "ep",
        "batch_per_gpu",
        "precision_experts",
        "tbo",
        "tokens_per_s_per_gpu",
        "tokens_per_s_per_user",
        "bound",
    ]
    if fmt != "table":  # csv, markdown: the frontier alone
        click.echo(render_rows(cols, front.select(cols).rows(), fmt))
        return
    click.echo(
        render_rows(
            cols,
            front.select(cols).rows(),
            "table",
            title=f"Pareto frontier ({front.height} of {df.height} points)",
        )
    )
    bad = df.filter(~df["fits"])
    if bad.height:
        click.echo(f"{bad.height} points do not fit or failed; see sweep_points.parquet (column error)")
    click.echo(f"wrote {out}")


#: The deployment options and their parsing, shared with ``calibrate --from-profile``.
deployment_options = _deployment_options
base_deployment = _base
