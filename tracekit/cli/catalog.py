"""``tracekit hw`` (hardware presets) and ``tracekit models`` (the model catalog)."""

from __future__ import annotations

from typing import Any

import click

from tracekit.cli._render import echo_json, format_option, render_rows
from tracekit.errors import UnknownNameError
from tracekit.hardware import field_units, get_hardware, hardware_names, parse_set_options
from tracekit.models import (
    attention_params,
    catalog_entry,
    expert_weight_bytes,
    get_model,
    kv_cache_bytes_per_token,
    model_names,
    moe_flops_per_token,
    param_counts,
)

PREFIX = {"FLOP/s": (1e12, "TFLOP/s"), "B/s": (1e9, "GB/s"), "B": (1e9, "GB"), "s": (1e-6, "us")}


def _human(value: Any, unit: str) -> str:
    if unit in PREFIX and isinstance(value, float | int) and not isinstance(value, bool):
        scale, shown = PREFIX[unit]
        return f"{value / scale:.4g} {shown}"
    if unit in ("fraction", "tokens", "GPUs", ""):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{value} {unit}"


@click.group()
def hw() -> None:
    """Hardware presets: list them, show one with units and sources."""


@hw.command("list")
@format_option()
def hw_list(fmt: str) -> None:
    """The built-in hardware presets."""
    rows = []
    for name in hardware_names():
        h = get_hardware(name)
        rows.append(
            [
                name,
                h.gpu,
                h.bf16_flops / 1e12,
                h.fp8_flops / 1e12,
                h.fp4_flops / 1e12 if h.fp4_flops else None,
                h.hbm_bytes / 1e9,
                h.hbm_bw / 1e12,
                h.scaleup_size,
                h.scaleup_bw / 1e9,
                h.scaleout_bw / 1e9,
            ]
        )
    cols = [
        "name",
        "gpu",
        "bf16_tflop_per_s",
        "fp8_tflop_per_s",
        "fp4_tflop_per_s",
        "hbm_gb",
        "hbm_tb_per_s",
        "nvlink_domain_gpus",
        "nvlink_gb_per_s_per_dir",
        "nic_gb_per_s",
    ]
    click.echo(render_rows(cols, rows, fmt))


@hw.command("show")
@click.argument("name")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", help="Override a field (repeatable).")
@format_option()
def hw_show(name: str, sets: tuple[str, ...], fmt: str) -> None:
    """Every value of preset NAME (or a preset file) with its unit and source."""
    h = get_hardware(name, parse_set_options(list(sets)))
    units = field_units()
    rows: list[list[Any]] = []
    for field, unit in units.items():
        if field in ("name", "description", "gpu", "comm", "sources", "calibration", "kernels", "scale") or (
            field.startswith("comm.")
        ):
            continue
        value = getattr(h, field)
        rows.append([field, value, unit, _human(value, unit), h.sources.get(field, "")])
    for impl, p in sorted(h.comm.items()):
        for field in units:
            if not field.startswith("comm.") or field == "comm.impl":
                continue
            attr = field.split(".", 1)[1]
            key = f"comm.{impl}.{attr}"
            unit = units[field]
            value = getattr(p, attr)
            rows.append([key, value, unit, _human(value, unit), h.sources.get(key, "")])
    curve_units = {"compute_eff": "fraction", "memory_eff": "fraction", "fixed_s": "s", "half_tiles": "CTAs",
                   "half_k": "elements", "per_seq_s": "s"}  # fmt: skip
    for (family, dtype), curve in sorted(h.kernels.items()):
        for attr, unit in curve_units.items():
            key = f"kernel.{family}.{dtype}.{attr}"
            value = getattr(curve, attr)
            rows.append([key, value, unit, _human(value, unit), h.sources.get(key, "")])
    for family, value in sorted(h.scale.items()):
        rows.append([f"scale.{family}", value, "x", _human(value, "x"), h.sources.get(f"scale.{family}", "")])
    if fmt == "json":
        echo_json(
            {
                "name": h.name,
                "description": h.description,
                "gpu": h.gpu,
                "fields": [
                    dict(zip(["field", "value", "unit", "shown", "source"], r, strict=True)) for r in rows
                ],
                "calibration": {k: v for k, v in h.calibration.items() if k != "residuals"},
            }
        )
        return
    title = f"{h.name}: {h.description}"
    click.echo(
        render_rows(
            ["field", "value", "unit", "shown", "source"], rows, fmt, title=title, kinds={"value": "text"}
        )
    )


@click.group()
def models() -> None:
    """The model catalog: list it, show one model's architecture and per-layer work."""


@models.command("list")
@format_option()
def models_list(fmt: str) -> None:
    """Catalog models with their computed and published parameter counts."""
    rows = []
    for name in model_names():
        e = catalog_entry(name)
        a = e.arch
        c = param_counts(a)
        rows.append(
            [
                name,
                a.architecture,
                f"{a.num_layers} ({len(a.dense_layers)}+{len(a.moe_layers)})",
                a.hidden_size,
                a.num_experts,
                a.num_shared_experts,
                a.top_k,
                a.attention.kind,
                round(c.total / 1e9, 1),
                round(c.active / 1e9, 1),
                round(e.reported_total_params / 1e9, 1),
                round(e.reported_active_params / 1e9, 1),
            ]
        )
    cols = [
        "name",
        "type",
        "layers (dense+moe)",
        "hidden",
        "experts",
        "shared",
        "top_k",
        "attention",
        "total_params_billion",
        "active_params_billion",
        "published_total_billion",
        "published_active_billion",
    ]
    click.echo(render_rows(cols, rows, fmt))


@models.command("show")
@click.argument("name")
@format_option()
def models_show(name: str, fmt: str) -> None:
    """Architecture and per-layer work of NAME (a catalog name or a config.json / model directory)."""
    try:
        entry = catalog_entry(name)
        arch = entry.arch
        source, precision = entry.source, entry.native_expert_precision
    except UnknownNameError:  # not a catalog name: a config.json path (get_model raises the right error)
        arch = get_model(name)
        source, precision = "config.json", "bf16"
    c = param_counts(arch)
    a = arch.attention
    rows: list[list[Any]] = [
        ["architecture", arch.architecture, ""],
        ["layers", arch.num_layers, f"{len(arch.dense_layers)} dense + {len(arch.moe_layers)} MoE"],
        ["hidden_size", arch.hidden_size, ""],
        ["dense ffn", arch.intermediate_size, ""],
        ["expert ffn", arch.moe_intermediate_size, ""],
        ["routed experts", arch.num_experts, f"top-{arch.top_k}, {arch.scoring}"],
        ["shared experts", arch.num_shared_experts, ""],
        ["expert groups", arch.num_expert_groups, f"top {arch.topk_groups} groups"],
        ["attention", a.kind, f"{a.num_heads} q / {a.num_kv_heads} kv heads, head dim {a.head_dim}"],
        ["vocab", arch.vocab_size, ""],
        ["params total", round(c.total / 1e9, 2), "billion parameters"],
        [
            "params active",
            round(c.active / 1e9, 2),
            "billion parameters per token (input embedding excluded)",
        ],
        [
            "expert weights",
            round(expert_weight_bytes(arch, precision) / 1e6, 2),
            f"MB per expert at {precision}",
        ],
        ["expert weights bf16", round(expert_weight_bytes(arch, "bf16") / 1e6, 2), "MB per expert"],
        ["attention params", round(attention_params(arch) / 1e6, 2), "million parameters per layer"],
        ["kv cache", round(kv_cache_bytes_per_token(arch)), "bytes per token per layer (bf16)"],
        ["moe flops", round(moe_flops_per_token(arch) / 1e6, 1), "MFLOP per token per MoE layer"],
        ["source", source, ""],
    ]
    click.echo(render_rows(["field", "value", "note"], rows, fmt, title=arch.name))
