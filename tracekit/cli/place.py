"""``tracekit place``: compute expert placements from a trace's loads (or a loads file) and compare
policies side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from tracekit.cli._render import echo_json, format_option, human_bytes, render_rows
from tracekit.errors import UsageError

#: Policies compared by --evaluate when no --policy is given (``eplb`` repeats one of the two eplb-*).
#: Label of the default layout without redundant slots, the row every comparison starts from.
BASELINE_LABEL = "contiguous, 0 redundant"
EVALUATE_DEFAULT = ("contiguous", "round-robin", "greedy", "eplb-hierarchical", "eplb-global")


@click.command("place")
@click.argument("trace", required=False, type=click.Path(path_type=Path))
@click.option(
    "--loads",
    "loads_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="CSV or Parquet loads (one row per layer, one column per logical expert, optional 'layer' "
    "column) instead of a trace.",
)
@click.option("--ep", "--gpus", "num_ranks", type=int, metavar="N", help="Expert-parallel ranks (GPUs).")
@click.option(
    "--redundant", type=int, metavar="R", help="Redundant slots beyond one per expert [default: 0]."
)
@click.option("--slots", type=int, metavar="S", help="Physical slots in all (experts + redundant).")
@click.option(
    "--nodes", type=int, default=1, metavar="M", help="Nodes (scale-up domains), dividing --ep [default: 1]."
)
@click.option("--groups", type=int, metavar="G", help="Expert groups [default: the model's, or 1].")
@click.option(
    "--policy",
    "policies",
    multiple=True,
    metavar="POLICY",
    help="contiguous, round-robin, greedy, eplb-hierarchical, eplb-global, eplb (EPLB's own choice) or "
    "file. Repeatable with --evaluate. Default: eplb; with --evaluate, all but eplb and file.",
)
@click.option(
    "--placement-file", type=click.Path(path_type=Path), metavar="FILE", help="Placement for --policy file."
)
@click.option(
    "--window",
    type=int,
    metavar="STEPS",
    help="Compute from the first STEPS steps; the placement is in force (from_step) from the next step "
    "and scored only on the steps after the window.",
)
@click.option(
    "--recompute-every",
    type=int,
    metavar="STEPS",
    help="Recompute every STEPS steps from the previous STEPS (placement epochs), counting "
    "weight-migration bytes.",
)
@click.option(
    "--bytes-per-param",
    type=float,
    metavar="B",
    help="Expert weight bytes per parameter for migration bytes [default: from the model's dtype].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Write the placement as Parquet (the trace's placement table schema). One policy only.",
)
@click.option("--evaluate", is_flag=True, help="Compare policies side by side (replayed when --hw is given).")
@click.option("--hw", metavar="NAME", help="Hardware preset for --evaluate replays (tracekit hw list).")
@click.option(
    "--model",
    metavar="NAME",
    help="Target model (catalog name or config.json) for migration bytes and --hw replays; its MoE "
    "layers reuse the trace's cyclically [default: the trace's model].",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the plan (phy2log, logcnt, log2phy, scores) as JSON."
)
@format_option()
def place(
    trace: Path | None,
    loads_file: Path | None,
    num_ranks: int | None,
    redundant: int | None,
    slots: int | None,
    nodes: int | None,
    groups: int | None,
    policies: tuple[str, ...],
    placement_file: Path | None,
    window: int | None,
    recompute_every: int | None,
    bytes_per_param: float | None,
    out: Path | None,
    evaluate: bool,
    hw: str | None,
    model: str | None,
    as_json: bool,
    fmt: str,
) -> None:
    """Compute an expert placement (physical slots per rank, per layer) from expert loads.

    \b
    tracekit place TRACE --ep 32 --redundant 32 --nodes 4 --policy eplb-global --out placement.parquet
    tracekit place TRACE --ep 32 --redundant 32 --nodes 4 --window 8 --evaluate
    tracekit place --loads loads.csv --groups 4 --nodes 2 --gpus 8 --slots 16 --json
    """
    from tracekit.placement import (
        StepLoads,
        expert_weight_bytes,
        get_policy,
        plan,
        read_loads_file,
        trace_loads,
        write_placements,
    )
    from tracekit.placement.eplb import log2phy_of
    from tracekit.placement.plan import bytes_per_param as dtype_bytes

    if (trace is None) == (loads_file is None):
        raise UsageError("give a TRACE directory or --loads FILE (one of them)")
    if num_ranks is None:
        raise UsageError("give the expert-parallel size: --ep N (or --gpus N)")
    for name in policies:
        get_policy(name)
    if not policies:
        policies = EVALUATE_DEFAULT if evaluate else ("eplb",)
        if evaluate and placement_file is not None:
            policies = (*policies, "file")
    if len(policies) > 1 and not evaluate:
        raise UsageError(
            "several --policy values need --evaluate (to compare them); give one to compute a plan"
        )
    if out is not None and len(policies) > 1:
        raise UsageError("--out writes one placement; give a single --policy with --out")
    if hw is not None and not evaluate:
        raise UsageError("--hw is for --evaluate; add --evaluate or drop --hw")
    if model is not None and trace is None:
        raise UsageError("--model re-targets a trace's placement (migration bytes, replays); give a TRACE")
    if nodes is None:
        nodes = _default_nodes(num_ranks, hw)

    expert_bytes = 0
    layer_copies = None
    if loads_file is not None:
        if window is not None or recompute_every is not None:
            raise UsageError("--window and --recompute-every need per-step loads: give a TRACE, not --loads")
        if hw is not None:
            raise UsageError("--hw replays a trace; give a TRACE, not --loads")
        layers, totals = read_loads_file(loads_file)
        loads = StepLoads(steps=np.zeros(1, dtype=np.int64), layers=layers, loads=totals[None])
        num_groups = groups or 1
    else:
        assert trace is not None
        from tracekit.trace import open_trace

        arch = open_trace(trace).manifest.model
        loads = trace_loads(trace)
        num_groups = groups or arch.num_expert_groups
        layer_copies = np.ones(len(loads.layers), dtype=np.int64)
        if model is not None:
            from tracekit.models import get_model

            target = get_model(model)
            if target.num_experts != arch.num_experts:
                raise UsageError(
                    f"--model {model} has {target.num_experts} routed experts but the trace's model has "
                    f"{arch.num_experts}; choose a model with the same expert count"
                )
            # As the replay does: target MoE layer i reuses trace MoE layer i mod (trace MoE layers).
            layer_copies = np.bincount(
                np.arange(len(target.moe_layers)) % len(loads.layers), minlength=len(loads.layers)
            )
            arch = target
        bpp = bytes_per_param if bytes_per_param is not None else dtype_bytes(arch.dtype)
        expert_bytes = expert_weight_bytes(arch.hidden_size, arch.moe_intermediate_size, bpp)

    num_redundant = _redundant(loads.num_experts, redundant, slots)
    setup = (
        f"{loads.num_experts} experts x {len(loads.layers)} MoE layers on EP {num_ranks} "
        f"({nodes} node{'s' if nodes > 1 else ''}), {num_redundant} redundant slots"
    )
    results = []
    skipped: list[tuple[str, str]] = []
    for name in policies:
        try:
            results.append(
                plan(
                    loads,
                    policy=name,
                    num_ranks=num_ranks,
                    num_redundant=num_redundant,
                    num_nodes=nodes,
                    num_groups=num_groups,
                    window=window,
                    recompute_every=recompute_every,
                    expert_bytes=expert_bytes,
                    file=placement_file,
                )
            )
        except UsageError as exc:
            if not evaluate or len(policies) == 1:
                raise
            skipped.append((name, str(exc)))

    if layer_copies is not None and model is not None:
        results = [_retarget(r, layer_copies, expert_bytes) for r in results]
    if out is not None:
        write_placements(out, list(results[0].epochs))

    baseline = (
        None
        if loads.num_experts % num_ranks
        else plan(
            loads,
            policy="contiguous",
            num_ranks=num_ranks,
            num_nodes=nodes,
            num_groups=num_groups,
            window=window,
            recompute_every=recompute_every,
            expert_bytes=expert_bytes,
        )
    )
    # The default layout needs the experts to split evenly over the ranks without redundant slots.
    fits = loads.num_experts % num_ranks == 0
    base_entry = [(BASELINE_LABEL, baseline)] if fits and (num_redundant > 0 or not evaluate) else []
    if evaluate:
        entries = base_entry + [(r.policy, r) for r in results]
        replayed = _replay_each(trace, entries, hw, num_ranks, model) if hw is not None else None
        _print_comparison(entries, skipped, replayed, loads, as_json, fmt, setup)
        return

    res = results[0]
    p = res.placement
    if as_json:
        obj: dict[str, Any] = {
            "policy": res.policy,
            "layers": list(p.layers),
            "num_experts": p.num_experts,
            "num_ranks": p.num_ranks,
            "num_nodes": nodes,
            "num_groups": num_groups,
            "slots_per_rank": p.slots_per_rank,
            "num_slots": p.num_slots,
            "from_step": p.from_step,
            "phy2log": p.phy2log.tolist(),
            "logcnt": p.logcnt.tolist(),
            "log2phy": log2phy_of(p.phy2log, p.num_experts).tolist(),
            "score": _score_dict(res),
        }
        if len(res.epochs) > 1:
            obj["epochs"] = [{"from_step": e.from_step, "phy2log": e.phy2log.tolist()} for e in res.epochs]
        if out is not None:
            obj["out"] = str(out)
        click.echo(_compact_json(obj))
        return
    _print_comparison([*base_entry, (res.policy, res)], [], None, loads, False, fmt, setup)
    if out is not None:
        click.echo(f"wrote {out} ({len(res.epochs)} epoch(s), from_step {[e.from_step for e in res.epochs]})")


def _compact_json(obj: Any, indent: int = 0) -> str:
    """JSON with two-space indentation, but each list of numbers (a layer's row) on one line."""
    pad = "  " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}{json.dumps(str(k))}: {_compact_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(obj, list | tuple):
        if all(not isinstance(v, dict | list | tuple) for v in obj):
            return json.dumps(list(obj), default=_json_scalar)
        return (
            "[\n" + ",\n".join(pad + _compact_json(v, indent + 1) for v in obj) + "\n" + "  " * indent + "]"
        )
    return json.dumps(obj, default=_json_scalar)


def _json_scalar(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def _score_dict(res: Any) -> dict[str, Any]:
    s = res.score
    return {
        "imbalance": s.imbalance_step_mean,
        "imbalance_total": s.imbalance_total,
        "imbalance_max": s.imbalance_step_max,
        "max_over_mean": s.max_over_mean,
        "tokens_max": s.tokens_max_mean,
        "eval_steps": s.num_steps,
        "train_steps": res.train_steps,
        "train_imbalance": res.train_score.imbalance_step_mean,
        "train_imbalance_total": res.train_score.imbalance_total,
        "moved_experts": res.moved_experts,
        "migration_bytes": res.migration_bytes,
    }


def _problem(loads: Any, num_ranks: int, num_redundant: int, nodes: int, groups: int) -> Any:
    from tracekit.placement import PlacementProblem

    return PlacementProblem(
        layers=loads.layers,
        loads=loads.total(),
        num_ranks=num_ranks,
        num_redundant=num_redundant,
        num_nodes=nodes,
        num_groups=groups,
    )


def _retarget(res: Any, layer_copies: np.ndarray, expert_bytes: int) -> Any:
    """Migration counted on the target model's MoE layers (each a copy of a trace layer's placement)."""
    import dataclasses

    moved = res.moved_per_layer * layer_copies
    return dataclasses.replace(
        res,
        moved_experts=int(moved.sum()),
        moved_per_layer=moved,
        migration_bytes=int(moved.sum()) * expert_bytes,
    )


def _default_nodes(num_ranks: int, hw: str | None) -> int:
    """One node, or with --hw as many as the preset's scale-up domains the EP ranks span."""
    if hw is None:
        return 1
    from tracekit.hardware import get_hardware

    size = get_hardware(hw).scaleup_size
    if num_ranks <= size or num_ranks % size:
        return 1
    return num_ranks // size


def _redundant(num_experts: int, redundant: int | None, slots: int | None) -> int:
    if redundant is not None and slots is not None:
        if slots != num_experts + redundant:
            raise UsageError(
                f"--slots {slots} and --redundant {redundant} disagree ({num_experts} experts); give one of them"
            )
        return redundant
    if slots is not None:
        if slots < num_experts:
            raise UsageError(
                f"--slots {slots} is fewer than the {num_experts} logical experts; give >= {num_experts}"
            )
        return slots - num_experts
    if redundant is not None and redundant < 0:
        raise UsageError(f"--redundant must be >= 0, got {redundant}")
    return redundant or 0


def _replay_each(
    trace: Path | None, entries: list[tuple[str, Any]], hw: str, num_ranks: int, model: str | None
) -> dict[str, dict[str, Any]]:
    """Replay the trace under each policy's placement epochs and keep the scored steps.

    Each epoch is replayed with its own placement and contributes the replayed steps whose trace
    steps lie in its range (``from_step`` up to the next epoch's) and in the scored steps. Returns,
    per policy: exact per-rank imbalance (the replay routes every token with ``route_to_slots``),
    straggler seconds, step time, throughput per GPU and the largest batch that fits (redundant
    slots' weights reduce the KV cache).
    """
    import tempfile

    import polars as pl

    from tracekit.placement import write_placements
    from tracekit.replay import Deployment, replay

    assert trace is not None
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tracekit-place-") as tmp:
        for label, res in entries:
            first_scored = int(res.eval_steps[0]) if res.eval_steps.size else 0
            steps_parts, layer_parts, summaries = [], [], []
            bounds = [e.from_step for e in res.epochs[1:]] + [None]
            for i, (epoch, end) in enumerate(zip(res.epochs, bounds, strict=True)):
                lo = max(epoch.from_step, first_scored)
                if end is not None and end <= lo:
                    continue
                path = Path(tmp) / f"{len(out)}-{i}.parquet"
                write_placements(path, [epoch.with_(from_step=0)])
                rr = replay(trace, Deployment(hw=hw, ep=num_ranks, placement=str(path), model=model))
                keep = pl.col("trace_step_first") >= lo
                if end is not None:
                    keep = keep & (pl.col("trace_step_last") < end)
                steps = rr.steps.filter((pl.col("pool") == "all") & keep)
                steps_parts.append(steps)
                kept = steps.select("phase", "step")
                layer_parts.append(rr.layers.filter(pl.col("pool") == "all").join(kept, on=["phase", "step"]))
                summaries.append(rr.summary)
            out[label] = _replay_metrics(label, steps_parts, layer_parts, summaries, num_ranks)
    return out


def _replay_metrics(
    policy: str,
    steps_parts: list[Any],
    layer_parts: list[Any],
    summaries: list[dict[str, Any]],
    num_gpus: int,
) -> dict[str, Any]:
    import polars as pl

    if not steps_parts or sum(p.height for p in steps_parts) == 0:
        raise UsageError(
            f"policy {policy}: no replayed step lies entirely in the scored trace steps; use a smaller "
            "--window (or none)"
        )
    steps = pl.concat(steps_parts)
    layers = pl.concat(layer_parts)
    phase = "decode" if (steps.get_column("phase") == "decode").any() else "prefill"
    steps = steps.filter(pl.col("phase") == phase)
    moe = layers.filter((pl.col("phase") == phase) & (pl.col("kind") == "moe"))
    time_s = float(steps.get_column("step_time_s").sum())
    produced = (
        float(steps.get_column("output_tokens").sum())
        if phase == "decode"
        else float(steps.get_column("num_tokens").sum())
    )
    batches = [int(s["max_batch_per_gpu"]) for s in summaries if s.get("max_batch_per_gpu") is not None]
    return {
        "phase": phase,
        "replayed_steps": steps.height,
        "replay_imbalance": float(moe.get_column("imbalance").mean() or 0.0) if moe.height else 0.0,
        "straggler_s": float(steps.get_column("straggler_s").mean() or 0.0),
        "step_time_s": time_s / steps.height,
        "tokens_per_s_per_gpu": produced / time_s / num_gpus if time_s > 0 else 0.0,
        "max_batch_per_gpu": min(batches) if batches else None,
        "weight_bytes_per_gpu": max(int(s["weight_bytes_per_gpu"]) for s in summaries),
    }


def _print_comparison(
    entries: list[tuple[str, Any]],
    skipped: list[tuple[str, str]],
    replayed: dict[str, dict[str, Any]] | None,
    loads: Any,
    as_json: bool,
    fmt: str,
    setup: str,
) -> None:
    recomputed = any(len(res.epochs) > 1 for _, res in entries)
    if replayed is None:
        columns = [
            "policy",
            "imbalance_total",
            "imbalance_step",
            "imbalance_step_max",
            "train_imbalance_total",
        ]
    else:
        columns = ["policy", "imbalance_total", "train_imbalance_total", "replay_imbalance", "straggler_ms"]
        columns += ["step_time_ms", "tokens_per_s_per_gpu", "max_batch_per_gpu"]
    if recomputed:
        columns += ["moved_experts", "migration"]
    rows = []
    objs = []
    for label, res in entries:
        s = res.score
        values: dict[str, Any] = {
            "policy": label,
            "imbalance_total": round(s.imbalance_total, 4),
            "imbalance_step": round(s.imbalance_step_mean, 4),
            "imbalance_step_max": round(s.imbalance_step_max, 4),
            "train_imbalance_total": round(res.train_score.imbalance_total, 4),
            "moved_experts": res.moved_experts,
            "migration": human_bytes(res.migration_bytes),
        }
        obj = {"policy": label, "num_slots": res.placement.num_slots, **_score_dict(res)}
        if replayed is not None:
            rep = replayed[label]
            values.update(
                {
                    "replay_imbalance": round(rep["replay_imbalance"], 4),
                    "straggler_ms": round(rep["straggler_s"] * 1e3, 3),
                    "step_time_ms": round(rep["step_time_s"] * 1e3, 3),
                    "tokens_per_s_per_gpu": round(rep["tokens_per_s_per_gpu"], 1),
                    "max_batch_per_gpu": rep["max_batch_per_gpu"],
                }
            )
            obj.update(rep)
        rows.append([values[c] for c in columns])
        objs.append(obj)
    if as_json:
        echo_json({"policies": objs, "skipped": [{"policy": n, "reason": r} for n, r in skipped]})
        return
    first = entries[-1][1]
    mode = (
        "in-sample"
        if first.eval_steps.size == loads.steps.size
        else f"out-of-sample after {first.train_steps} steps"
    )
    title = f"placement what-if: {setup}; scored on {first.eval_steps.size} step(s), {mode}"
    if fmt == "table":
        click.echo(title)
    click.echo(render_rows(columns, rows, fmt, title=title if fmt == "markdown" else None))
    for name, reason in skipped:
        click.echo(f"skipped {name}: {reason}")
