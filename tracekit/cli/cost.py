"""``tracekit cost OP``: one cost primitive's predicted time for given shapes; ``tracekit calibrate``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from tracekit.cli._render import FORMATS, echo_json, format_option, render_fields, render_rows
from tracekit.cli.profile import calibrate_profile_options
from tracekit.errors import UsageError
from tracekit.hardware import COMM_IMPLS, HardwareSpec, get_hardware, parse_set_options
from tracekit.precision import DEPLOYMENT_FORMATS, WIRE_FORMATS, compute_class, wire_bytes_per_token

#: Weight formats (int4 is weight-only) and payload formats, as the replay's --precision names them.
DTYPES = DEPLOYMENT_FORMATS


def _hw_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")(fn)
    fn = click.option(
        "--format",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        expose_value=False,
        callback=lambda ctx, _param, value: ctx.meta.__setitem__("tracekit.format", value),
        help="Output format: a table for people (units, see docs/glossary.md), csv, json or markdown.",
    )(fn)
    fn = click.option(
        "--set", "sets", multiple=True, metavar="FIELD=VALUE", help="Override a hardware field (repeatable)."
    )(fn)
    fn = click.option("--hw", "hw_name", required=True, help="Hardware preset name or preset .toml file.")(fn)
    return fn


def _hw(name: str, sets: tuple[str, ...]) -> HardwareSpec:
    return get_hardware(name, parse_set_options(list(sets)))


def _emit(result: dict[str, Any], as_json: bool) -> None:
    fmt = click.get_current_context().meta.get("tracekit.format", "table")
    if as_json or fmt == "json":
        echo_json(result)
        return
    click.echo(render_fields(list(result.items()), fmt))


@click.group()
def cost() -> None:
    """Predicted time of one cost primitive for given shapes on a hardware preset."""


def _ep_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--ep", type=click.IntRange(1), required=True, help="Expert-parallel ranks."),
        click.option("--tokens", type=click.IntRange(0), required=True, help="Tokens per rank."),
        click.option(
            "--hidden", type=click.IntRange(1), default=None, help="Hidden size (default: --model's)."
        ),
        click.option(
            "--topk", type=click.IntRange(1), default=None, help="Experts per token (default: --model's)."
        ),
        click.option(
            "--experts", type=click.IntRange(1), default=None, help="Routed experts (default: --model's)."
        ),
        click.option(
            "--model", default=None, help="Catalog model or config.json giving hidden/topk/experts."
        ),
        click.option("--dtype", type=click.Choice(WIRE_FORMATS), default=None, help="Payload dtype."),
        click.option(
            "--impl",
            type=click.Choice(COMM_IMPLS),
            default="deepep-normal",
            show_default=True,
            help="Implementation.",
        ),
        click.option(
            "--routing",
            "routing_path",
            type=click.Path(exists=True),
            default=None,
            help="Routing to use: a trace directory or a Parquet file with expert_ids (default: uniform random).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return _hw_options(fn)


def _ep_shape(
    model: str | None, hidden: int | None, topk: int | None, experts: int | None
) -> tuple[int, int, int]:
    if model is not None:
        from tracekit.models import get_model

        arch = get_model(model)
        hidden = hidden or arch.hidden_size
        topk = topk or arch.top_k
        experts = experts or arch.num_experts
    missing = [n for n, v in (("--hidden", hidden), ("--topk", topk), ("--experts", experts)) if v is None]
    if missing:
        raise UsageError(
            f"missing {', '.join(missing)}: give them, or --model NAME to take them from a model"
        )
    assert hidden is not None and topk is not None and experts is not None
    return hidden, topk, experts


def _routing_ids(path: str, needed: int, experts: int, topk: int) -> np.ndarray:
    import polars as pl

    p = Path(path)
    if p.is_dir():
        from tracekit.trace import open_trace

        frame = open_trace(p).scan("routing").select("expert_ids").head(needed).collect()
    else:
        frame = pl.scan_parquet(p).select("expert_ids").head(needed).collect()
    if frame.height == 0:
        raise UsageError(f"--routing {path}: no routing rows; pass a trace with a routing table")
    ids = np.asarray(frame["expert_ids"].to_list(), dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] != topk:
        raise UsageError(f"--routing {path}: expert_ids have top-k {ids.shape[-1]}, not --topk {topk}")
    if ids.max() >= experts:
        raise UsageError(f"--routing {path}: expert ids up to {ids.max()} but --experts is {experts}")
    reps = -(-needed // len(ids))
    return np.tile(ids, (reps, 1))[:needed]


def _comm(op: str, hw_name: str, sets: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    from tracekit.cost import (
        combine,
        contiguous_expert_to_rank,
        dispatch,
        ep_traffic,
        expected_uniform_traffic,
    )

    hw = _hw(hw_name, sets)
    hidden, topk, experts = _ep_shape(kw["model"], kw["hidden"], kw["topk"], kw["experts"])
    ep, tokens = kw["ep"], kw["tokens"]
    dtype = kw["dtype"] or ("fp8" if op == "dispatch" else "bf16")
    if experts % ep:
        raise UsageError(f"--experts {experts} cannot be split evenly over --ep {ep}; pick a divisor")
    if kw["routing_path"]:
        ids = _routing_ids(kw["routing_path"], ep * tokens, experts, topk)
        dst = contiguous_expert_to_rank(experts, ep)[ids]
        src = np.arange(ep * tokens) % ep
        traffic = ep_traffic(dst_rank=dst, src_rank=src, num_ranks=ep, domain_size=hw.scaleup_size)
        routing = f"file {kw['routing_path']}"
    else:
        traffic = expected_uniform_traffic(
            num_ranks=ep, tokens_per_rank=tokens, num_experts=experts, top_k=topk, domain_size=hw.scaleup_size
        )
        routing = "uniform (expected)"
    bpt = wire_bytes_per_token(dtype, hidden)
    fn = dispatch if op == "dispatch" else combine
    c = fn(hw, traffic, impl=kw["impl"], bytes_per_token=bpt)
    slow = c.slowest()
    _emit(
        {
            "op": op,
            "hw": hw.name,
            "impl": kw["impl"],
            "time_s": slow["time_s"],
            "bound": slow["bound"],
            "link": slow["link"],
            "mean_time_s": float(np.mean(c.time_s)),
            "crosses_network": bool(np.any(c.network_bytes_sent > 0)),
            "nvlink_bytes_sent": slow["nvlink_bytes_sent"],
            "network_bytes_sent": slow["network_bytes_sent"],
            "bytes_per_token": bpt,
            "ep": ep,
            "tokens_per_rank": tokens,
            "routing": routing,
        },
        as_json,
    )


@cost.command("dispatch")
@_ep_options
def dispatch_cmd(hw_name: str, sets: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Expert-parallel dispatch time (slowest rank). --dtype defaults to fp8."""
    _comm("dispatch", hw_name, sets, as_json, **kw)


@cost.command("combine")
@_ep_options
def combine_cmd(hw_name: str, sets: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Expert-parallel combine time (slowest rank). --dtype defaults to bf16."""
    _comm("combine", hw_name, sets, as_json, **kw)


@cost.command("alltoall")
@click.option("--bytes", "nbytes", type=float, required=True, help="Bytes each rank sends in all.")
@click.option("--ranks", type=click.IntRange(1), required=True, help="Ranks in the all-to-all.")
@click.option("--impl", type=click.Choice(COMM_IMPLS), default="nccl", show_default=True)
@_hw_options
def alltoall_cmd(
    hw_name: str, sets: tuple[str, ...], as_json: bool, nbytes: float, ranks: int, impl: str
) -> None:
    """A uniform all-to-all of --bytes per rank over --ranks ranks."""
    from tracekit.cost import alltoall

    hw = _hw(hw_name, sets)
    c = alltoall(hw, nbytes=nbytes, ranks=ranks, impl=impl).slowest()
    _emit({"op": "alltoall", "hw": hw.name, "impl": impl, **c, "bytes": nbytes, "ranks": ranks}, as_json)


def _collective_cmd(name: str, doc: str) -> click.Command:
    @click.option("--bytes", "nbytes", type=float, required=True, help="Buffer bytes per rank.")
    @click.option("--ranks", type=click.IntRange(1), required=True, help="Ranks in the collective.")
    @_hw_options
    def run(hw_name: str, sets: tuple[str, ...], as_json: bool, nbytes: float, ranks: int) -> None:
        import tracekit.cost as costs

        hw = _hw(hw_name, sets)
        fn = {
            "allreduce": costs.allreduce,
            "allgather": costs.allgather,
            "reduce-scatter": costs.reduce_scatter,
        }[name]
        c = fn(hw, nbytes=nbytes, ranks=ranks)
        _emit({"op": name, "hw": hw.name, **c.scalar(), "bytes": nbytes, "ranks": ranks}, as_json)

    run.__doc__ = doc
    return cost.command(name)(run)


_collective_cmd("allreduce", "NCCL all-reduce of --bytes per rank (hierarchical across domains).")
_collective_cmd("allgather", "NCCL all-gather whose gathered output is --bytes per rank.")
_collective_cmd("reduce-scatter", "NCCL reduce-scatter whose input is --bytes per rank.")


@cost.command("gemm")
@click.option("--m", type=click.IntRange(0), required=True, help="Rows (tokens).")
@click.option("--n", type=click.IntRange(1), required=True, help="Output columns.")
@click.option("--k", type=click.IntRange(1), required=True, help="Inner dimension.")
@click.option("--dtype", type=click.Choice(DTYPES), default="bf16", show_default=True, help="Compute dtype.")
@click.option(
    "--weight-dtype", type=click.Choice(DTYPES), default=None, help="Weight dtype (default: --dtype)."
)
@_hw_options
def gemm_cmd(
    hw_name: str,
    sets: tuple[str, ...],
    as_json: bool,
    m: int,
    n: int,
    k: int,
    dtype: str,
    weight_dtype: str | None,
) -> None:
    """Dense GEMM [m, k] x [k, n]."""
    from tracekit.cost import gemm

    hw = _hw(hw_name, sets)
    c = gemm(hw, m=m, n=n, k=k, precision=dtype, weight_precision=weight_dtype)
    _emit(
        {"op": "gemm", "hw": hw.name, **c.scalar(), "flops": float(c.flops), "hbm_bytes": float(c.hbm_bytes)},
        as_json,
    )


@cost.command("grouped-gemm")
@click.option("--tokens", type=click.IntRange(0), required=True, help="Tokens per rank before routing.")
@click.option("--ep", type=click.IntRange(1), default=1, show_default=True, help="Expert-parallel ranks.")
@click.option(
    "--model", default=None, help="Catalog model or config.json (hidden, expert ffn, experts, top-k)."
)
@click.option("--hidden", type=click.IntRange(1), default=None)
@click.option("--ffn", type=click.IntRange(1), default=None, help="Expert FFN width.")
@click.option("--experts", type=click.IntRange(1), default=None)
@click.option("--topk", type=click.IntRange(1), default=None)
@click.option("--dtype", type=click.Choice(DTYPES), default="bf16", show_default=True, help="Weight dtype.")
@_hw_options
def grouped_gemm_cmd(
    hw_name: str,
    sets: tuple[str, ...],
    as_json: bool,
    tokens: int,
    ep: int,
    model: str | None,
    hidden: int | None,
    ffn: int | None,
    experts: int | None,
    topk: int | None,
    dtype: str,
) -> None:
    """Grouped expert GEMM of one rank under uniform routing: tokens x top-k spread over the experts."""
    from tracekit.cost import grouped_gemm
    from tracekit.models import expert_weight_bytes, get_model

    wbytes = None
    if model is not None:
        arch = get_model(model)
        hidden, ffn = hidden or arch.hidden_size, ffn or arch.moe_intermediate_size
        experts, topk = experts or arch.num_experts, topk or arch.top_k
        wbytes = expert_weight_bytes(arch, dtype)
    missing = [
        n
        for n, v in (("--hidden", hidden), ("--ffn", ffn), ("--experts", experts), ("--topk", topk))
        if v is None
    ]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}: give them, or --model NAME")
    assert hidden is not None and ffn is not None and experts is not None and topk is not None
    if experts % ep:
        raise UsageError(f"--experts {experts} cannot be split evenly over --ep {ep}; pick a divisor")
    local = experts // ep
    per_expert = np.full(local, tokens * ep * topk / experts)  # every rank sends its tokens' expert copies
    compute = compute_class(dtype)  # int4 weights compute in bf16
    hw = _hw(hw_name, sets)
    c = grouped_gemm(
        hw,
        tokens_per_expert=per_expert,
        hidden_size=hidden,
        ffn_size=ffn,
        precision=compute,
        weight_precision=dtype,
        expert_weight_bytes=wbytes,
    )
    _emit(
        {
            "op": "grouped-gemm",
            "hw": hw.name,
            **c.scalar(),
            "active_experts": int(c.active_experts),
            "weight_bytes": float(c.weight_bytes),
            "flops": float(c.flops),
            "tokens_per_expert": float(per_expert[0]) if local else 0.0,
        },
        as_json,
    )


@cost.command("attention")
@click.option("--model", required=True, help="Catalog model or config.json.")
@click.option("--phase", type=click.Choice(["prefill", "decode"]), required=True)
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Sequences on the rank.")
@click.option(
    "--context",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Tokens already cached per sequence.",
)
@click.option(
    "--new-tokens", type=click.IntRange(0), default=None, help="New tokens per sequence (decode: 1)."
)
@click.option("--layer", type=click.IntRange(0), default=None, help="Layer (selects a sliding window).")
@click.option(
    "--tp", type=click.IntRange(1), default=1, show_default=True, help="Attention tensor-parallel degree."
)
@click.option(
    "--dtype", type=click.Choice(DTYPES), default="bf16", show_default=True, help="Compute and weight dtype."
)
@click.option("--kv-dtype", type=click.Choice(["bf16", "fp8"]), default="bf16", show_default=True)
@_hw_options
def attention_cmd(
    hw_name: str,
    sets: tuple[str, ...],
    as_json: bool,
    model: str,
    phase: str,
    batch: int,
    context: int,
    new_tokens: int | None,
    layer: int | None,
    tp: int,
    dtype: str,
    kv_dtype: str,
) -> None:
    """One attention layer of one rank for --batch sequences."""
    from tracekit.cost import attention
    from tracekit.models import get_model

    arch = get_model(model)
    q = new_tokens if new_tokens is not None else 1
    if phase == "prefill" and new_tokens is None:
        raise UsageError("--phase prefill needs --new-tokens (the prompt tokens per sequence)")
    hw = _hw(hw_name, sets)
    c = attention(
        hw,
        arch,
        new_tokens=np.full(batch, q),
        context_tokens=np.full(batch, context),
        phase=phase,
        kv_precision=kv_dtype,
        weight_precision=dtype,
        precision=dtype if dtype in ("bf16", "fp8") else "fp8",
        layer=layer,
        tp=tp,
    )
    _emit(
        {
            "op": "attention",
            "hw": hw.name,
            **c.scalar(),
            "flops": float(c.flops),
            "hbm_bytes": float(c.hbm_bytes),
        },
        as_json,
    )


@click.command()
@click.option("--no-fit", is_flag=True, help="Evaluate the presets as stored, without fitting.")
@click.option(
    "--kernels",
    is_flag=True,
    help="Also fit the compute-kernel curves to the published kernel tables (and the measured "
    "databases, when the aiconfigurator extra is installed), with leave-one-out errors.",
)
@click.option(
    "--no-database",
    is_flag=True,
    help="With --kernels: only the published tables, not the measured databases.",
)
@click.option(
    "--write",
    is_flag=True,
    help="Write the fitted values as user presets (one per system, inheriting the built-in one) into --out.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("calibrated-presets"),
    show_default=True,
    help="Directory for --write.",
)
@click.option("--force", is_flag=True, help="With --write: replace preset files already in --out.")
@format_option()
@calibrate_profile_options
def calibrate(
    no_fit: bool,
    kernels: bool,
    no_database: bool,
    write: bool,
    out_dir: Path,
    force: bool,
    fmt: str,
    from_profile: tuple[Path, ...],
    **profile_opts: Any,
) -> None:
    """Compare every published EP communication measurement with the model's prediction, and with
    --kernels every published kernel figure with the compute-kernel curves.

    Fits each implementation's efficiency and latency parameters (least squares in log space),
    prints one row per measurement with its error, and exits 1 if a row is off by more than 25%
    or the median error exceeds 10%. With --kernels, fits each kernel family's curve per system
    and prints its leave-one-out error (a fit without each row in turn, predicting it); families
    fitted to published tables must stay within 10% median and 25% worst. --write records the fits
    as user presets in --out (use one with --hw PATH); the built-in presets are never modified.

    With --from-profile PROFILE... --trace TRACE --hw HW and the profiled run's deployment: fit the
    kernel curves, launch gaps and communication multipliers to a GPU profile of that run
    (docs/calibration.md); --write records them as a user preset in --out, --report DIR writes the
    fitted replay with the profile measured beside it.
    """
    if from_profile:
        if kernels or no_fit or no_database:
            raise UsageError("--from-profile fits a profile: drop --kernels, --no-fit and --no-database")
        _from_profile(from_profile, write=write, out_dir=out_dir, force=force, fmt=fmt, **profile_opts)
        return
    given = [
        f"--{k.replace('_', '-')}"
        for k, v in profile_opts.items()
        if v not in (None, (), False, 0, "auto", "analytic") and k != "fit_gaps"
    ]
    if given:
        raise UsageError(f"{', '.join(given)} describe a profiled run: add --from-profile PROFILE")
    from tracekit.cost.calibration import (
        MAX_ABS_ERROR,
        MEDIAN_ABS_ERROR,
        report_rows,
        write_user_presets,
    )
    from tracekit.cost.calibration import (
        calibrate as run,
    )

    if write and no_fit:
        raise UsageError("--write records a fit: drop --no-fit")
    if no_database and not kernels:
        raise UsageError("--no-database applies to the kernel fits: add --kernels")
    report = run(fit=not no_fit)
    cols, rows = report_rows(report)
    fits: list[Any] = []
    kcols: list[str] = []
    krows: list[list[Any]] = []
    kernels_ok = True
    if kernels:
        from tracekit.cost.kernel_fit import calibrate_kernels, kernel_report_rows, kernels_passed

        fits = calibrate_kernels(with_database=not no_database, loo=True)
        kcols, krows = kernel_report_rows(fits)
        kernels_ok = kernels_passed(fits)
    passed = report.passed and kernels_ok
    if fmt == "json":
        echo_json(
            {
                "rows": [dict(zip(cols, r, strict=True)) for r in rows],
                "median_abs_error": report.median_abs_error,
                "max_abs_error": report.max_abs_error,
                "passed": passed,
                "fits": [
                    {
                        "hardware": f.hardware,
                        "impl": f.impl,
                        "rows": f.rows,
                        "rms_log_residual": f.rms_log_residual,
                        **{k: getattr(f.params, k) for k in f.spec.params},
                    }
                    for f in report.fits
                ],
                "kernels": [dict(zip(kcols, r, strict=True)) for r in krows],
            }
        )
    else:
        click.echo(render_rows(cols, rows, fmt))
        click.echo(
            f"\n{len(rows)} rows: median |error| {100 * report.median_abs_error:.1f}% "
            f"(limit {100 * MEDIAN_ABS_ERROR:.0f}%), max |error| {100 * report.max_abs_error:.1f}% "
            f"(limit {100 * MAX_ABS_ERROR:.0f}%): {'PASS' if report.passed else 'FAIL'}"
        )
        if kernels:
            from tracekit.cost.kernel_fit import LOO_MEDIAN_LIMIT, LOO_WORST_LIMIT

            click.echo("")
            click.echo(render_rows(kcols, krows, fmt))
            click.echo(
                f"\nkernel families on published tables: leave-one-out median <= "
                f"{100 * LOO_MEDIAN_LIMIT:.0f}%, worst <= {100 * LOO_WORST_LIMIT:.0f}%: "
                f"{'PASS' if kernels_ok else 'FAIL'}"
            )
    if write:
        sections: dict[str, str] = {}
        if kernels:
            from tracekit.cost.kernel_fit import kernel_sections, preset_curves

            sections = {p: kernel_sections(c) for p, c in preset_curves(fits).items()}
        for path in write_user_presets(report, sections, out_dir, force=force):
            click.echo(f"wrote {path} (use it with --hw {path})", err=True)
    if not passed:
        sys.exit(1)


def _from_profile(
    profile: tuple[Path, ...],
    *,
    write: bool,
    out_dir: Path,
    force: bool,
    fmt: str,
    trace: Path | None,
    hw_name: str | None,
    ep: int | None,
    batch_per_gpu: int | None,
    phases: tuple[str, ...],
    preset_name: str | None,
    report: Path | None,
    match: str,
    layer_offset: int,
    fit_gaps: bool,
    **deployment: Any,
) -> None:
    from tracekit.cli.profile import run_from_profile
    from tracekit.cli.replay import base_deployment as _base

    if hw_name is None:
        raise UsageError(
            "--from-profile needs --hw: the preset the profiled run is replayed on (e.g. h200-sxm)"
        )
    dep = _base(hw=hw_name, ep=ep, batch_per_gpu=batch_per_gpu, **deployment)
    run_from_profile(
        profile=profile,
        trace=trace,
        dep=dep,
        phases=phases,
        match=match,
        layer_offset=layer_offset,
        write=write,
        out_dir=out_dir,
        name=preset_name,
        force=force,
        report=report,
        fmt=fmt,
        fit_gaps=fit_gaps,
    )
