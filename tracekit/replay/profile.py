"""A GPU profile of a real run beside its replay: measured time against predicted, per component.

A profile is the ``kernels`` table of an imported trace (``tracekit import kineto`` / ``nsys``; raw
Kineto JSON files are imported on the fly): every kernel with its category (the structured
classifier of :mod:`tracekit.importers.categories`), rank, stream, start, duration, step and layer.
Each kernel category counts to one *group*, the replay's component(s) it is measured against:

=====================================  =============  =============================================
kernel categories                      group          replay components
=====================================  =============  =============================================
attention                              attention      attention
dense_gemm                             gemm           attn_proj + dense (projections, router, shared
                                                      experts, dense FFN: one category in profiles)
expert_gemm                            expert_gemm    expert_gemm
elementwise, quantization, utility     elementwise    fixed, without its launch gaps
moe_dispatch, moe_layout               dispatch       dispatch
moe_combine                            combine        combine
collective                             tp_comm        tp_comm
memcpy, other                          unmatched      (none: reported, never dropped)
=====================================  =============  =============================================

Steps: the profile's k-th step is the replay's k-th (prefill steps first, as the replay orders
them), or with ``match="id"`` the replayed step whose first trace step has the profile's step
number (``auto``: by id when every profiled step is one). Layers: a kernel's layer annotation is
the decoder layer (``layer_offset`` is added: profiles that number their layers from 0 when only
some were profiled). Ranks: the same rank number in the replay.

Launch gaps: the idle time between consecutive compute kernels of one layer on one stream
(communication kernels excluded) is the profile's launch gap; the replay's are the gaps it adds
per kernel (``fixed`` minus the same replay's ``fixed`` without gaps). A step's measured time is
the span of its kernels on the rank; its predicted time the replay's step time, or, when the
profile holds only some of the layers, the sum of those layers' predicted times.

:func:`profile_table` builds ``replay_profile`` (``schemas/v1/results/replay_profile.json``): one
row per (step, layer, rank, component) with the measured seconds, the predicted seconds and the
error, plus per-step rows (``step``, ``edges``: kernels outside any layer against the embedding and
LM head, ``unmatched``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tracekit.errors import UsageError
from tracekit.replay.tables import frame

#: Kernel category -> group (see the module docstring); categories not listed are unmatched.
CATEGORY_GROUP: dict[str, str] = {
    "attention": "attention",
    "dense_gemm": "gemm",
    "expert_gemm": "expert_gemm",
    "elementwise": "elementwise",
    "quantization": "elementwise",
    "utility": "elementwise",
    "moe_dispatch": "dispatch",
    "moe_layout": "dispatch",
    "moe_combine": "combine",
    "collective": "tp_comm",
}
#: Groups in report order, and the replay_ranks columns each is predicted by.
GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "attention": ("attention_s",),
    "gemm": ("attn_proj_s", "dense_s"),
    "expert_gemm": ("expert_gemm_s",),
    "elementwise": ("fixed_s",),
    "dispatch": ("dispatch_s",),
    "combine": ("combine_s",),
    "tp_comm": ("tp_comm_s",),
}
GROUPS = tuple(GROUP_COLUMNS)
#: Groups whose kernels compute (their gaps are launch gaps).
COMPUTE_GROUPS = ("attention", "gemm", "expert_gemm", "elementwise")
MATCH_MODES = ("auto", "order", "id")
_PHASE_ORDER = {"prefill": 0, "mixed": 1, "decode": 2}


@dataclass(frozen=True, kw_only=True, eq=False)
class Profile:
    """The kernels of a profiled run, with their groups."""

    #: rank, stream, name, category, group (null: unmatched), start_ns, duration_ns, step, layer.
    kernels: pl.DataFrame
    #: The files or trace folders it was read from.
    sources: tuple[str, ...]


def _read_trace_kernels(path: Path) -> pl.DataFrame:
    from tracekit.trace import open_trace

    tr = open_trace(path)
    if "kernels" not in tr.tables:
        raise UsageError(
            f"{path}: the trace has no kernels table; give a profile imported with tracekit import kineto "
            "(or nsys), or the profiler's JSON files"
        )
    cols = ["rank", "stream", "name", "category", "start_ns", "duration_ns", "step", "layer"]
    return tr.scan("kernels").select(cols).collect()


def _import_json(paths: list[Path]) -> pl.DataFrame:
    """Kernels of Kineto files, each file's rank from its name (``rank<N>``; a single file without
    one is rank 0). Profiles of some ranks only (rank 0 not among them) are imported in file order
    and given their ranks back."""
    import re

    from tracekit.importers import KinetoOptions, import_kineto

    found = [re.findall(r"rank[-_.]?(\d+)", p.name, flags=re.IGNORECASE) for p in paths]
    named = [int(f[-1]) for f in found if f]
    order = len(named) == len(paths) and 0 not in named and len(set(named)) == len(named)
    with tempfile.TemporaryDirectory(prefix="tracekit-profile-") as tmp:
        out = Path(tmp) / "profile"
        import_kineto(paths, out, options=KinetoOptions(rank_from="order" if order else "filename"))
        kernels = _read_trace_kernels(out)
    if order:
        kernels = kernels.with_columns(
            pl.col("rank").replace_strict(dict(enumerate(named)), return_dtype=pl.Int32)
        )
    return kernels


def load_profile(paths: Sequence[str | os.PathLike[str]], *, layer_offset: int = 0) -> Profile:
    """The profile in ``paths``: one imported trace folder, or Kineto JSON files (one per rank,
    imported with the default step and layer patterns)."""
    ps = [Path(p) for p in paths]
    if not ps:
        raise UsageError("no profile given; pass the profiler's JSON files or a trace imported from them")
    for p in ps:
        if not p.exists():
            raise UsageError(
                f"{p}: no such file or folder; give the profile (Kineto JSON or an imported trace)"
            )
    if any(p.is_dir() for p in ps):
        if len(ps) > 1:
            raise UsageError(
                f"{', '.join(map(str, ps))}: give one imported trace folder, or the profiler's JSON files"
            )
        kernels = _read_trace_kernels(ps[0])
    else:
        kernels = _import_json(ps)
    if layer_offset:
        kernels = kernels.with_columns(pl.col("layer") + layer_offset)
    kernels = kernels.with_columns(
        pl.col("category").replace_strict(CATEGORY_GROUP, default=None).alias("group"),
        pl.col("start_ns").cast(pl.Int64),
        pl.col("duration_ns").cast(pl.Int64),
    )
    if kernels.is_empty():
        raise UsageError(f"{ps[0]}: the profile holds no kernels")
    return Profile(kernels=kernels, sources=tuple(str(p) for p in ps))


@dataclass(frozen=True, kw_only=True, eq=False)
class Matched:
    """A profile's kernels mapped onto a replay's steps, layers and ranks."""

    #: Per (g, layer, rank, group): measured_s, kernels; ``g`` indexes the replay's steps in order.
    cells: pl.DataFrame
    #: Per (g, layer, rank): launch_gaps_s (summed) and gap_count.
    gaps: pl.DataFrame
    #: Per (g, rank): span_s, edges_s (kernels outside layers), unmatched_s (their own step's).
    steps: pl.DataFrame
    #: The replay's steps: g, phase, step, trace_step_first, profile_step.
    step_map: pl.DataFrame
    #: Seconds of profile kernels left out, by reason.
    unmatched: dict[str, float]
    match: str
    #: Median launch gap per replayed phase (seconds), from the profile.
    median_gap_s: dict[str, float]


def _step_map(result_steps: pl.DataFrame, profile_steps: list[int], match: str) -> tuple[pl.DataFrame, str]:
    steps = result_steps.select("phase", "step", "trace_step_first").with_row_index("g")
    steps = steps.with_columns(pl.col("g").cast(pl.Int64))
    firsts = steps["trace_step_first"].to_list()
    if match == "auto":
        match = "id" if set(profile_steps) <= set(firsts) and len(set(firsts)) == len(firsts) else "order"
    if match == "id":
        missing = sorted(set(profile_steps) - set(firsts))
        if missing:
            raise UsageError(
                f"--match id: profiled steps {missing[:5]} are not replayed trace steps (the replay's first "
                f"trace steps: {firsts[:5]}...); use --match order"
            )
        mapping = pl.DataFrame({"trace_step_first": profile_steps, "profile_step": profile_steps})
        return steps.join(mapping, on="trace_step_first", how="left"), match
    n = min(len(profile_steps), steps.height)
    ps = pl.Series("profile_step", [*profile_steps[:n], *[None] * (steps.height - n)], dtype=pl.Int64)
    return steps.with_columns(ps), match


def _launch_gaps(in_layer: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, float]]:
    """Launch gaps per (step, layer, rank), and the median gap per phase: the idle time between
    consecutive compute kernels of a layer on one stream."""
    ns = 1e-9
    comp = in_layer.filter(pl.col("group").is_in(COMPUTE_GROUPS)).sort(
        "rank", "stream", "g", "layer", "start_ns"
    )
    comp = comp.with_columns(
        (pl.col("start_ns") - (pl.col("start_ns") + pl.col("duration_ns")).shift(1))
        .over("rank", "stream", "g", "layer")
        .alias("gap_ns")
    ).filter(pl.col("gap_ns").is_not_null())
    comp = comp.with_columns(pl.col("gap_ns").clip(lower_bound=0))
    gaps = (
        comp.group_by("g", "layer", "rank")
        .agg((pl.col("gap_ns").sum() * ns).alias("launch_gaps_s"), pl.len().alias("gap_count"))
        .with_columns(pl.col("layer").cast(pl.Int64), pl.col("rank").cast(pl.Int64))
    )
    median_gap = {
        str(ph): float(v) * ns
        for ph, v in comp.group_by("phase").agg(pl.col("gap_ns").median()).iter_rows()
        if v is not None
    }
    return gaps, median_gap


def match_profile(
    profile: Profile, result_steps: pl.DataFrame, *, num_ranks: int, match: str = "auto"
) -> Matched:
    """Map ``profile``'s kernels onto the replayed steps ``result_steps`` (a replay_steps frame)."""
    if match not in MATCH_MODES:
        raise UsageError(f"--match {match!r}: valid: {', '.join(MATCH_MODES)}")
    k = profile.kernels
    bad_rank = sorted(set(k["rank"].unique().to_list()) - set(range(num_ranks)))
    if bad_rank:
        raise UsageError(
            f"profile ranks {bad_rank[:5]} are not ranks of the replayed deployment ({num_ranks} GPUs); give "
            "the deployment the profiled run used (--ep)"
        )
    unmatched: dict[str, float] = {}
    no_step = k.filter(pl.col("step").is_null())
    if no_step.height:
        unmatched["outside any step"] = float(no_step["duration_ns"].sum()) / 1e9
    k = k.filter(pl.col("step").is_not_null())
    profile_steps = sorted(int(s) for s in k["step"].unique().to_list())
    if not profile_steps:
        raise UsageError(
            f"{profile.sources[0]}: no kernel falls in a step marker; import the profile with a --step-pattern "
            "that matches its step annotations"
        )
    step_map, match = _step_map(result_steps, profile_steps, match)
    used = step_map.filter(pl.col("profile_step").is_not_null()).select("g", "phase", "profile_step")
    k = k.join(used, left_on="step", right_on="profile_step", how="left")
    extra = k.filter(pl.col("g").is_null())
    if extra.height:
        unmatched["steps beyond the replay"] = float(extra["duration_ns"].sum()) / 1e9
    k = k.filter(pl.col("g").is_not_null())
    ns = 1e-9
    in_layer = k.filter(pl.col("layer").is_not_null())
    grouped = in_layer.filter(pl.col("group").is_not_null())
    cells = (
        grouped.group_by("g", "layer", "rank", "group")
        .agg((pl.col("duration_ns").sum() * ns).alias("measured_s"), pl.len().alias("kernels"))
        .with_columns(pl.col("layer").cast(pl.Int64), pl.col("rank").cast(pl.Int64))
    )
    no_group = in_layer.filter(pl.col("group").is_null())
    for cat, t in no_group.group_by("category").agg(pl.col("duration_ns").sum()).iter_rows():
        unmatched[f"kernels of category {cat}"] = unmatched.get(f"kernels of category {cat}", 0.0) + t * ns
    gaps, median_gap = _launch_gaps(in_layer)
    span = k.group_by("g", "rank").agg(
        ((pl.col("start_ns") + pl.col("duration_ns")).max() - pl.col("start_ns").min()).alias("span_ns"),
        pl.col("duration_ns").filter(pl.col("layer").is_null()).sum().alias("edges_ns"),
        pl.col("duration_ns")
        .filter(pl.col("group").is_null() & pl.col("layer").is_not_null())
        .sum()
        .alias("un_ns"),
    )
    steps = span.select(
        pl.col("g"),
        pl.col("rank").cast(pl.Int64),
        (pl.col("span_ns") * ns).alias("span_s"),
        (pl.col("edges_ns") * ns).alias("edges_s"),
        (pl.col("un_ns") * ns).alias("unmatched_s"),
    )
    return Matched(
        cells=cells,
        gaps=gaps,
        steps=steps,
        step_map=step_map,
        unmatched=unmatched,
        match=match,
        median_gap_s=median_gap,
    )


def predicted_cells(
    ranks: pl.DataFrame, step_map: pl.DataFrame, *, gap_free: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Per (g, layer, rank, group): the replay's predicted seconds (``ranks``: replay_ranks), with
    ``elementwise`` taken from ``gap_free`` (the same replay without launch gaps) when given, and a
    ``launch_gaps`` group (``fixed`` minus the gap-free ``fixed``)."""
    keys = step_map.select("g", "phase", "step")
    r = ranks.join(keys, on=["phase", "step"]).with_columns(
        pl.col("layer").cast(pl.Int64), pl.col("rank").cast(pl.Int64)
    )
    parts = []
    for group, cols in GROUP_COLUMNS.items():
        parts.append(
            r.select(
                "g",
                "layer",
                "rank",
                pl.lit(group).alias("group"),
                pl.sum_horizontal(cols).alias("predicted_s"),
            )
        )
    out = pl.concat(parts)
    if gap_free is not None:
        free = gap_free.join(keys, on=["phase", "step"]).select(
            "g",
            pl.col("layer").cast(pl.Int64),
            pl.col("rank").cast(pl.Int64),
            pl.col("fixed_s").alias("free_s"),
        )
        fixed = r.select("g", "layer", "rank", "fixed_s").join(free, on=["g", "layer", "rank"])
        out = pl.concat(
            [
                out.filter(pl.col("group") != "elementwise"),
                fixed.select(
                    "g",
                    "layer",
                    "rank",
                    pl.lit("elementwise").alias("group"),
                    pl.col("free_s").alias("predicted_s"),
                ),
                fixed.select(
                    "g",
                    "layer",
                    "rank",
                    pl.lit("launch_gaps").alias("group"),
                    (pl.col("fixed_s") - pl.col("free_s")).alias("predicted_s"),
                ),
            ]
        )
    return out


def _error(pred: pl.Expr, meas: pl.Expr) -> pl.Expr:
    return pl.when(meas > 0).then(pred / meas - 1.0).otherwise(None)


def _step_rows(result: Any, m: Matched, profiled: pl.DataFrame) -> pl.DataFrame:
    """The per-step rows of ``replay_profile``: step (span against the step time), edges (kernels
    outside any layer against embedding + LM head) and unmatched."""
    # a profile of some layers only is held against those layers' predicted times (the layer's
    # time: its slowest rank); embedding and LM head count when every layer was profiled
    num_layers = int(result.layers["layer"].max()) + 1
    covered = (
        profiled.join(m.step_map.select("g", "phase", "step"), on="g")
        .join(
            result.layers.select(
                "phase", "step", pl.col("layer").cast(pl.Int64), pl.col("time_s").alias("lt")
            ),
            on=["phase", "step", "layer"],
        )
        .group_by("g", "rank")
        .agg(pl.col("lt").sum(), pl.col("layer").n_unique().alias("nl"))
    )
    steps = result.steps.select("phase", "step", "step_time_s", "embedding_s", "lm_head_s")
    step_rows = (
        m.steps.join(m.step_map.select("g", "phase", "step"), on="g")
        .join(steps, on=["phase", "step"])
        .join(covered, on=["g", "rank"], how="left")
        .with_columns(
            pl.when(pl.col("nl") == num_layers)
            .then(pl.col("step_time_s"))
            .otherwise(pl.col("lt"))
            .alias("step_time_s")
        )
        .select(
            "g",
            "rank",
            pl.struct(
                pl.lit("step").alias("group"),
                pl.col("span_s").alias("measured_s"),
                pl.col("step_time_s").alias("predicted_s"),
            ).alias("a"),
            pl.struct(
                pl.lit("edges").alias("group"),
                pl.col("edges_s").alias("measured_s"),
                (pl.col("embedding_s") + pl.col("lm_head_s")).alias("predicted_s"),
            ).alias("b"),
            pl.struct(
                pl.lit("unmatched").alias("group"),
                pl.col("unmatched_s").alias("measured_s"),
                pl.lit(None, dtype=pl.Float64).alias("predicted_s"),
            ).alias("c"),
        )
    )
    step_long = (
        pl.concat([step_rows.select("g", "rank", pl.col(c).alias("x")).unnest("x") for c in ("a", "b", "c")])
        .with_columns(
            pl.lit(None, dtype=pl.Int64).alias("layer"), pl.lit(None, dtype=pl.Int64).alias("kernels")
        )
        .filter((pl.col("group") != "unmatched") | (pl.col("measured_s") > 0))
    )
    return step_long


def profile_table(
    result: Any,
    profile: Profile,
    *,
    gap_free: Any = None,
    match: str = "auto",
    pool: str = "all",
) -> pl.DataFrame:
    """``replay_profile`` of a replay ``result`` (and the same replay without launch gaps,
    ``gap_free``, for the elementwise and launch-gap rows) against ``profile``."""
    num_ranks = int(result.run["num_gpus"][0])
    m = match_profile(profile, result.steps, num_ranks=num_ranks, match=match)
    pred = predicted_cells(result.ranks, m.step_map, gap_free=None if gap_free is None else gap_free.ranks)
    meas = pl.concat(
        [
            m.cells.select("g", "layer", "rank", "group", "measured_s", "kernels"),
            m.gaps.select(
                "g",
                "layer",
                "rank",
                pl.lit("launch_gaps").alias("group"),
                pl.col("launch_gaps_s").alias("measured_s"),
                pl.col("gap_count").alias("kernels"),
            ),
        ]
    ).with_columns(pl.col("kernels").cast(pl.Int64))
    if gap_free is None:  # fixed holds the gaps: measure it with them
        meas = (
            meas.with_columns(pl.col("group").replace("launch_gaps", "elementwise"))
            .group_by("g", "layer", "rank", "group")
            .agg(pl.col("measured_s").sum(), pl.col("kernels").sum())
        )
    profiled = m.cells.select("g", "layer", "rank").unique()
    cells = (
        pred.join(profiled, on=["g", "layer", "rank"])
        .join(meas, on=["g", "layer", "rank", "group"], how="full", coalesce=True)
        .with_columns(pl.col("measured_s").fill_null(0.0), pl.col("kernels").fill_null(0))
        .filter((pl.col("measured_s") > 0) | (pl.col("predicted_s").fill_null(0.0) > 0))
    )
    step_long = _step_rows(result, m, profiled)
    rows = pl.concat(
        [
            cells.select("g", "layer", "rank", "group", "measured_s", "predicted_s", "kernels"),
            step_long.select("g", "layer", "rank", "group", "measured_s", "predicted_s", "kernels"),
        ]
    ).join(m.step_map.select("g", "phase", "step", "profile_step"), on="g")
    order = {g: i for i, g in enumerate([*GROUPS, "launch_gaps", "unmatched", "edges", "step"])}
    rows = rows.with_columns(pl.col("group").replace_strict(order, default=99).alias("_o")).sort(
        "g", pl.col("layer").fill_null(1 << 30), "rank", "_o"
    )
    n = rows.height
    return frame(
        "replay_profile",
        {
            "pool": [pool] * n,
            "phase": rows["phase"],
            "step": rows["step"],
            "profile_step": rows["profile_step"],
            "layer": rows["layer"],
            "rank": rows["rank"],
            "component": rows["group"],
            "measured_s": rows["measured_s"],
            "predicted_s": rows["predicted_s"],
            "error": rows.select(_error(pl.col("predicted_s"), pl.col("measured_s")))[:, 0],
            "kernels": rows["kernels"],
        },
    )


def unmatched_summary(
    profile: Profile, result_steps: pl.DataFrame, *, num_ranks: int, match: str = "auto"
) -> dict[str, float]:
    """Seconds of profile kernels that no replay component is measured against, by reason."""
    return match_profile(profile, result_steps, num_ranks=num_ranks, match=match).unmatched


def step_errors(table: pl.DataFrame) -> np.ndarray:
    """predicted / measured - 1 of every profiled step (rank by rank) of a ``replay_profile`` table."""
    s = table.filter(pl.col("component") == "step")
    return s["error"].to_numpy()
