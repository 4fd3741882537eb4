"""``tracekit place``: compute expert placements from a trace's loads (or a loads file) and compare
policies side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tracekit.cli._backend import backend_options, open_backend
from tracekit.cli._render import echo_json, format_option, human_bytes, render_rows
from tracekit.errors import UsageError


@click.command("place")
@click.argument("trace", required=False, type=click.Path())
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
    "--precision",
    "precisions",
    multiple=True,
    metavar="SPEC",
    help="Deployment precision as in tracekit replay (experts=... prices migrated experts and --hw "
    "replays) [experts=fp8].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Write the placement as Parquet (the trace's placement table schema). One policy only.",
)
@click.option("--force", is_flag=True, help="Replace an existing placement file at --out.")
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
@backend_options
def place(
    trace: str | None,
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
    precisions: tuple[str, ...],
    out: Path | None,
    force: bool,
    evaluate: bool,
    hw: str | None,
    model: str | None,
    as_json: bool,
    fmt: str,
    backend: str,
    address: str | None,
    ray_workers: int | None,
) -> None:
    """Compute an expert placement (physical slots per rank, per layer) from expert loads.

    \b
    tracekit place TRACE --ep 32 --redundant 32 --nodes 4 --policy eplb-global --out placement.parquet
    tracekit place TRACE --ep 32 --redundant 32 --nodes 4 --window 8 --evaluate
    tracekit place --loads loads.csv --groups 4 --nodes 2 --gpus 8 --slots 16 --json
    """
    from tracekit.placement import get_policy, write_placements
    from tracekit.replay import Precision
    from tracekit.replay.whatif import EVALUATE_DEFAULT, placement_whatif

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
    if out is not None and out.is_dir():
        raise UsageError(f"--out {out}: is a directory; give a file name such as {out / 'placement.parquet'}")
    if out is not None:  # refuse a bad --out before the work, not after
        from tracekit.placement.core import is_placement_file
        from tracekit.trace.outputs import Output

        Output(out, kind="file", force=force, what="placement file", is_ours=is_placement_file,
               inputs=(trace, loads_file, placement_file)).check()  # fmt: skip
    if hw is not None and not evaluate:
        raise UsageError("--hw is for --evaluate; add --evaluate or drop --hw")
    if model is not None and trace is None:
        raise UsageError("--model re-targets a trace's placement (migration bytes, replays); give a TRACE")
    if nodes is None:
        nodes = _default_nodes(num_ranks, hw)
    loads_experts = None if trace is not None else _loads_experts(loads_file)
    num_experts = loads_experts if loads_experts is not None else _trace_experts(trace)
    num_redundant = _redundant(num_experts, redundant, slots)
    import tracekit.limits as limits
    from tracekit.replay.setup import MAX_EP, MAX_REDUNDANT_PER_EXPERT

    limits.at_most("--ep", num_ranks, MAX_EP, "placements are per GPU (largest deployed EP: ~300)")
    limits.at_most(
        "--redundant",
        num_redundant,
        MAX_REDUNDANT_PER_EXPERT * num_experts,
        f"{MAX_REDUNDANT_PER_EXPERT} redundant slots per expert on average ({num_experts} experts)",
    )
    if backend != "local" and trace is None:
        raise UsageError("--backend ray counts a trace's loads and replays it; give a TRACE, not --loads")
    with open_backend(backend, address, ray_workers) as runner:
        whatif = placement_whatif(
            trace,
            loads_file=loads_file,
            num_ranks=num_ranks,
            policies=policies,
            num_redundant=num_redundant,
            num_nodes=nodes,
            num_groups=groups,
            window=window,
            recompute_every=recompute_every,
            placement_file=placement_file,
            precision=Precision.parse(list(precisions)),
            model=model,
            hw=hw,
            baseline=num_redundant > 0 or not evaluate,
            keep_going=evaluate and len(policies) > 1,
            backend=runner,
        )
    # the placement asked for: the last outcome (a baseline row, when there is one, comes first)
    chosen = whatif.outcomes[-1]
    if out is not None:
        write_placements(
            out, list(chosen.plan.epochs), force=force, inputs=(trace, loads_file, placement_file)
        )
    if evaluate:
        _print_comparison(whatif, list(whatif.outcomes), as_json, fmt)
        return
    res = chosen.plan
    p = res.placement
    if as_json:
        from tracekit.placement.eplb import log2phy_of

        obj: dict[str, Any] = {
            "policy": res.policy,
            "layers": list(p.layers),
            "num_experts": p.num_experts,
            "num_ranks": p.num_ranks,
            "num_nodes": nodes,
            "num_groups": whatif.num_groups,
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
    _print_comparison(whatif, list(whatif.outcomes), False, fmt)
    if out is not None:
        click.echo(f"wrote {out} ({len(res.epochs)} epoch(s), from_step {[e.from_step for e in res.epochs]})")


def _trace_experts(trace: str | None) -> int:
    from tracekit.trace import open_trace

    assert trace is not None
    return open_trace(trace).manifest.model.num_experts


def _loads_experts(loads_file: Path | None) -> int:
    from tracekit.placement import read_loads_file

    assert loads_file is not None
    return int(read_loads_file(loads_file)[1].shape[1])


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


def _print_comparison(whatif: Any, outcomes: list[Any], as_json: bool, fmt: str) -> None:
    import dataclasses

    recomputed = any(len(o.plan.epochs) > 1 for o in outcomes)
    replayed = any(o.replayed is not None for o in outcomes)
    if not replayed:
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
    for o in outcomes:
        res = o.plan
        s = res.score
        values: dict[str, Any] = {
            "policy": o.label,
            "imbalance_total": round(s.imbalance_total, 4),
            "imbalance_step": round(s.imbalance_step_mean, 4),
            "imbalance_step_max": round(s.imbalance_step_max, 4),
            "train_imbalance_total": round(res.train_score.imbalance_total, 4),
            "moved_experts": res.moved_experts,
            "migration": human_bytes(res.migration_bytes),
        }
        obj = {"policy": o.label, "num_slots": res.placement.num_slots, **_score_dict(res)}
        rep = o.replayed
        if rep is not None:
            values.update(
                {
                    "replay_imbalance": round(rep.replay_imbalance, 4),
                    "straggler_ms": round(rep.straggler_s * 1e3, 3),
                    "step_time_ms": round(rep.step_time_s * 1e3, 3),
                    "tokens_per_s_per_gpu": round(rep.tokens_per_s_per_gpu, 1),
                    "max_batch_per_gpu": rep.max_batch_per_gpu,
                }
            )
            obj.update(dataclasses.asdict(rep))
        rows.append([values[c] for c in columns])
        objs.append(obj)
    if as_json:
        echo_json({"policies": objs, "skipped": [{"policy": n, "reason": r} for n, r in whatif.skipped]})
        return
    first = outcomes[-1].plan
    loads = whatif.loads
    mode = (
        "in-sample"
        if first.eval_steps.size == loads.steps.size
        else f"out-of-sample after {first.train_steps} steps"
    )
    title = f"placement what-if: {whatif.description}; scored on {first.eval_steps.size} step(s), {mode}"
    if fmt == "table":
        click.echo(title)
    click.echo(render_rows(columns, rows, fmt, title=title if fmt == "markdown" else None))
    for name, reason in whatif.skipped:
        click.echo(f"skipped {name}: {reason}")
