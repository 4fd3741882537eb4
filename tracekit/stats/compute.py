"""``compute_stats``: routing statistics of a trace, as polars tables written to Parquet.

Loads come from the ``expert_load`` table (or from ``routing`` when a trace has no loads), read one
layer at a time as a dense [steps, experts] matrix. Co-activation and cross-layer correlation need
per-token choices: they use the ``routing`` rows of an evenly spaced subset of steps, capped at
``max_routing_tokens`` tokens per layer, so memory stays bounded for traces of any length.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from tracekit.errors import NotATraceError, SchemaError, UsageError
from tracekit.stats import metrics as m
from tracekit.trace import Trace, open_trace
from tracekit.trace.loads import expert_loads
from tracekit.trace.store import (
    Location,
    RemotePath,
    check_remote_output,
    location,
    read_table,
    write_parquet,
)

if TYPE_CHECKING:
    from tracekit.backends import Backend

#: File names of the tables ``write`` produces (views named by the file stem).
TABLE_FILES = {
    "layers": "stats_layers.parquet",
    "experts": "stats_experts.parquet",
    "ranks": "stats_ranks.parquet",
    "windows": "stats_windows.parquet",
    "pairs": "stats_pairs.parquet",
}
META_FILE = "stats.json"
#: Most frequent co-activated expert pairs kept per layer in ``stats_pairs``.
TOP_PAIRS = 32
DEFAULT_MAX_ROUTING_TOKENS = 65_536


def hot_set_size(num_experts: int, top_k: int) -> int:
    """Experts counted as the hot set in drift measures: max(top_k, experts / 8), below the total."""
    return max(1, min(num_experts - 1, max(top_k, num_experts // 8)))


@dataclass(frozen=True, kw_only=True)
class RoutingStats:
    """Routing statistics of one trace: five tables and the facts they were computed from."""

    #: One row per MoE layer over the whole trace (see docs/synth.md for every column).
    layers: pl.DataFrame
    #: One row per layer and expert: total tokens and share.
    experts: pl.DataFrame
    #: One row per layer and EP rank: total tokens and per-step imbalance.
    ranks: pl.DataFrame
    #: One row per layer and window of steps: skew and hot-set drift.
    windows: pl.DataFrame
    #: The most frequent co-activated expert pairs per layer.
    pairs: pl.DataFrame
    #: Facts: source trace, model shape, EP, window, sample sizes.
    meta: Mapping[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pl.DataFrame]:
        return {
            "layers": self.layers,
            "experts": self.experts,
            "ranks": self.ranks,
            "windows": self.windows,
            "pairs": self.pairs,
        }

    def write(
        self, out: str | os.PathLike[str], *, overwrite: bool = False, inputs: tuple[str, ...] = ()
    ) -> Location:
        """Write the tables as ``stats_*.parquet`` and the facts as ``stats.json`` into directory ``out``.

        The files go to a staging sibling that is renamed into place when complete (``stats.json``
        last), under the output's lock; ``overwrite`` replaces earlier statistics only then.
        """
        from tracekit.trace.outputs import Output

        def is_stats(p: Any) -> bool:
            return (p / META_FILE).exists()

        dest = location(out)
        if isinstance(dest, RemotePath):  # each file one upload, stats.json last
            check_remote_output(dest, force=overwrite, what="statistics folder", is_ours=is_stats)
            if overwrite:
                dest.remove_tree()
            for name, df in self.tables().items():
                write_parquet(df.to_arrow(), dest / TABLE_FILES[name], compression="zstd")
            (dest / META_FILE).write_text(json.dumps(dict(self.meta), indent=2, sort_keys=True) + "\n")
            return dest
        with Output(
            out, kind="dir", force=overwrite, what="statistics folder", is_ours=is_stats, inputs=inputs
        ) as o:
            for name, df in self.tables().items():
                df.write_parquet(o.target / TABLE_FILES[name], compression="zstd", statistics=True)
            (o.target / META_FILE).write_text(json.dumps(dict(self.meta), indent=2, sort_keys=True) + "\n")
        return Path(out)


def read_stats(path: str | os.PathLike[str] | RemotePath) -> RoutingStats:
    """Read statistics written by ``RoutingStats.write`` (a directory or a URI)."""
    root = location(path)
    if not (root / META_FILE).is_file():
        raise NotATraceError(
            f"{root}: no {META_FILE}; give a directory written by 'tracekit stats --out' or a trace"
        )
    try:
        meta = json.loads((root / META_FILE).read_text())
        tables = {name: _read_frame(root / fname) for name, fname in TABLE_FILES.items()}
    except (OSError, json.JSONDecodeError, pl.exceptions.PolarsError, pa.ArrowException) as exc:
        raise SchemaError(
            f"{root}: statistics are damaged ({exc}); recompute them with tracekit stats"
        ) from None
    return RoutingStats(meta=meta, **tables)


def _read_frame(f: Location) -> pl.DataFrame:
    if isinstance(f, RemotePath):
        return pl.DataFrame(pl.from_arrow(read_table(f)))
    return pl.read_parquet(f, glob=False)


def load_stats_or_trace(path: str | os.PathLike[str], **kwargs: Any) -> RoutingStats:
    """Statistics from a stats directory, or computed from a trace directory (or URIs of them)."""
    root = location(path)
    if (root / META_FILE).is_file():
        return read_stats(root)
    return compute_stats(open_trace(root), **kwargs)


# -- computing ----------------------------------------------------------------------------------------


def compute_stats(
    trace: Trace | str | os.PathLike[str],
    *,
    ep: int | None = None,
    slot_experts: Mapping[int, npt.ArrayLike] | None = None,
    window_steps: int | None = None,
    max_routing_tokens: int = DEFAULT_MAX_ROUTING_TOKENS,
    backend: Backend | None = None,
) -> RoutingStats:
    """Routing statistics of ``trace``.

    ``ep``: ranks for the per-rank measures (default: the trace's recorded EP degree). ``slot_experts``: per layer, the logical expert of each
    physical slot (slots numbered rank by rank); contiguous placement when None. ``window_steps``:
    steps per window for the drift measures (default: the steps split into up to 8 windows).
    ``backend``: where the loads are counted (``tracekit.backends``; default here).
    """
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    arch = tr.manifest.model
    num_experts, top_k = arch.num_experts, arch.top_k
    if ep is None:
        recorded = tr.manifest.parallel.ep_size
        ep = recorded if recorded >= 1 and num_experts % recorded == 0 else 1
    if ep < 1:
        raise UsageError(f"--ep must be at least 1, got {ep}")
    if max_routing_tokens < 1:
        raise UsageError(
            f"--max-routing-tokens must be at least 1, got {max_routing_tokens}; "
            f"leave it out for the default ({DEFAULT_MAX_ROUTING_TOKENS})"
        )
    has_load, has_routing = tr.has("expert_load"), tr.has("routing")
    if not has_load and not has_routing:
        raise UsageError(f"{tr.path}: has neither routing nor expert_load rows; statistics need one of them")
    load_source = "expert_load" if has_load else "routing"
    con = duckdb.connect()
    # per (step, layer, expert): here one query, on a distributed backend partial counts per part file group
    con.register("loads_arrow", expert_loads(tr, backend=backend))
    con.execute("CREATE TEMP TABLE loads AS SELECT layer, step, expert, n FROM loads_arrow")
    con.unregister("loads_arrow")
    steps_all = np.array(
        [r[0] for r in con.execute("SELECT DISTINCT step FROM loads ORDER BY step").fetchall()],
        dtype=np.int64,
    )
    layers = [int(r[0]) for r in con.execute("SELECT DISTINCT layer FROM loads ORDER BY layer").fetchall()]
    bad = con.execute(f"SELECT count(*) FROM loads WHERE expert < 0 OR expert >= {num_experts}").fetchone()
    if bad and bad[0]:
        raise SchemaError(
            f"{tr.path}: {load_source} names experts outside 0..{num_experts - 1} of the manifest"
        )
    num_steps = len(steps_all)
    if window_steps is None:
        window_steps = max(1, math.ceil(num_steps / 8))
    if window_steps < 1:
        raise UsageError(f"--window must be at least 1 step, got {window_steps}")
    hot_n = hot_set_size(num_experts, top_k)

    layer_rows: list[dict[str, Any]] = []
    expert_frames: list[pl.DataFrame] = []
    rank_frames: list[pl.DataFrame] = []
    window_rows: list[dict[str, Any]] = []
    for layer in layers:
        rows = con.execute(
            "SELECT step, expert, n FROM loads WHERE layer = ? ORDER BY step, expert", [layer]
        ).fetchnumpy()
        dense = np.zeros((num_steps, num_experts), dtype=np.float64)
        np.add.at(
            dense, (np.searchsorted(steps_all, rows["step"]), rows["expert"].astype(np.int64)), rows["n"]
        )
        slots = (
            np.asarray(slot_experts[layer])
            if slot_experts and layer in slot_experts
            else m.contiguous_slots(num_experts, ep)
        )
        lr, ef, rf, wr = _layer_load_stats(layer, dense, steps_all, slots, ep, window_steps, hot_n, top_k)
        layer_rows.append(lr)
        expert_frames.append(ef)
        rank_frames.append(rf)
        window_rows.extend(wr)
    con.close()

    pair_frame, coact, cross, sampled = _routing_stats(tr, layers, steps_all, num_experts, max_routing_tokens)
    for lr in layer_rows:
        lr["coact_nmi"] = coact.get(lr["layer"], {}).get("nmi")
        lr["top_pair_lift"] = coact.get(lr["layer"], {}).get("top_lift")
        nxt = cross.get(lr["layer"])
        lr["next_layer"] = nxt[0] if nxt else None
        lr["cross_layer_nmi"] = nxt[1] if nxt else None
        lr["routing_tokens_sampled"] = sampled.get(lr["layer"], 0)
    tokens_per_step = _tokens_per_step(tr)
    meta = {
        "kind": "stats",
        "trace": str(tr.path),
        "trace_id": tr.manifest.trace_id,
        "source": tr.manifest.source,
        "model": arch.name,
        "num_experts": num_experts,
        "top_k": top_k,
        "num_expert_groups": arch.num_expert_groups,
        "topk_groups": arch.topk_groups,
        "moe_layers": layers,
        "ep": ep,
        "placement": "given" if slot_experts else "contiguous",
        "num_steps": num_steps,
        "window_steps": window_steps,
        "hot_set_size": hot_n,
        "tokens_per_step": tokens_per_step,
        "load_source": load_source,
        "max_routing_tokens": max_routing_tokens,
    }
    return RoutingStats(
        layers=pl.DataFrame(layer_rows, schema=_LAYER_SCHEMA),
        experts=pl.concat(expert_frames) if expert_frames else pl.DataFrame(schema=_EXPERT_SCHEMA),
        ranks=pl.concat(rank_frames) if rank_frames else pl.DataFrame(schema=_RANK_SCHEMA),
        windows=pl.DataFrame(window_rows, schema=_WINDOW_SCHEMA),
        pairs=pair_frame,
        meta=meta,
    )


_LAYER_SCHEMA: dict[str, Any] = {
    "layer": pl.Int16,
    "num_steps": pl.Int32,
    "num_tokens": pl.Int64,
    "num_assignments": pl.Int64,
    "active_experts": pl.Int32,
    "mean_load": pl.Float64,
    "max_load": pl.Int64,
    "min_load": pl.Int64,
    "max_over_mean": pl.Float64,
    "imbalance": pl.Float64,
    "cv": pl.Float64,
    "gini": pl.Float64,
    "entropy_bits": pl.Float64,
    "norm_entropy": pl.Float64,
    "step_max_over_mean": pl.Float64,
    "step_gini": pl.Float64,
    "ep": pl.Int32,
    "rank_max_over_mean": pl.Float64,
    "rank_imbalance": pl.Float64,
    "step_rank_imbalance": pl.Float64,
    "step_rank_imbalance_max": pl.Float64,
    "hot_set_size": pl.Int32,
    "hot_jaccard": pl.Float64,
    "coact_nmi": pl.Float64,
    "top_pair_lift": pl.Float64,
    "next_layer": pl.Int16,
    "cross_layer_nmi": pl.Float64,
    "routing_tokens_sampled": pl.Int64,
}
_EXPERT_SCHEMA: dict[str, Any] = {
    "layer": pl.Int16,
    "expert": pl.Int16,
    "num_tokens": pl.Int64,
    "share": pl.Float64,
    "load_over_mean": pl.Float64,
    "hot_rank": pl.Int32,
}
_RANK_SCHEMA: dict[str, Any] = {
    "layer": pl.Int16,
    "rank": pl.Int32,
    "num_tokens": pl.Float64,
    "share": pl.Float64,
    "load_over_mean": pl.Float64,
    "step_load_over_mean": pl.Float64,
    "steps_max": pl.Int32,
}
_WINDOW_SCHEMA: dict[str, Any] = {
    "layer": pl.Int16,
    "window": pl.Int32,
    "step_start": pl.Int32,
    "step_end": pl.Int32,
    "num_assignments": pl.Int64,
    "max_over_mean": pl.Float64,
    "imbalance": pl.Float64,
    "cv": pl.Float64,
    "gini": pl.Float64,
    "entropy_bits": pl.Float64,
    "rank_imbalance": pl.Float64,
    "hot_jaccard_prev": pl.Float64,
    "hot_jaccard_first": pl.Float64,
    "load_corr_prev": pl.Float64,
}
_PAIR_SCHEMA: dict[str, Any] = {
    "layer": pl.Int16,
    "expert_a": pl.Int16,
    "expert_b": pl.Int16,
    "num_tokens": pl.Int64,
    "token_share": pl.Float64,
    "expected_tokens": pl.Float64,
    "lift": pl.Float64,
}


def _f(x: Any) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


def _nanmean(x: npt.ArrayLike) -> float | None:
    a = np.asarray(x, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else None


def _layer_load_stats(
    layer: int,
    dense_SE: npt.NDArray[np.float64],
    steps: npt.NDArray[np.int64],
    slots: npt.NDArray[Any],
    ep: int,
    window_steps: int,
    hot_n: int,
    top_k: int,
) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame, list[dict[str, Any]]]:
    num_experts = dense_SE.shape[1]
    total_E = dense_SE.sum(axis=0)
    ranks_SR = m.rank_loads(dense_SE, slots, ep)
    ranks_R = ranks_SR.sum(axis=0)
    busy = dense_SE.sum(axis=1) > 0
    step_rank_imb = m.imbalance(ranks_SR[busy])
    assignments = int(total_E.sum())
    row = {
        "layer": layer,
        "num_steps": int(busy.sum()),
        "num_tokens": assignments // top_k,
        "num_assignments": assignments,
        "active_experts": int((total_E > 0).sum()),
        "mean_load": float(total_E.mean()),
        "max_load": int(total_E.max()),
        "min_load": int(total_E.min()),
        "max_over_mean": _f(m.max_over_mean(total_E)),
        "imbalance": _f(m.imbalance(total_E)),
        "cv": _f(m.cv(total_E)),
        "gini": _f(m.gini(total_E)),
        "entropy_bits": _f(m.entropy_bits(total_E)),
        "norm_entropy": _f(m.entropy_bits(total_E) / math.log2(num_experts)) if num_experts > 1 else None,
        "step_max_over_mean": _nanmean(m.max_over_mean(dense_SE[busy])),
        "step_gini": _nanmean(m.gini(dense_SE[busy])),
        "ep": ep,
        "rank_max_over_mean": _f(m.max_over_mean(ranks_R)),
        "rank_imbalance": _f(m.imbalance(ranks_R)),
        "step_rank_imbalance": _nanmean(step_rank_imb),
        "step_rank_imbalance_max": float(np.nanmax(step_rank_imb)) if step_rank_imb.size else None,
        "hot_set_size": hot_n,
    }
    order = np.lexsort((np.arange(num_experts), -total_E))
    hot_rank = np.empty(num_experts, dtype=np.int32)
    hot_rank[order] = np.arange(1, num_experts + 1, dtype=np.int32)
    mean_e = total_E.mean()
    experts = pl.DataFrame(
        {
            "layer": np.full(num_experts, layer, np.int16),
            "expert": np.arange(num_experts, dtype=np.int16),
            "num_tokens": total_E.astype(np.int64),
            "share": total_E / assignments if assignments else np.full(num_experts, np.nan),
            "load_over_mean": total_E / mean_e if mean_e else np.full(num_experts, np.nan),
            "hot_rank": hot_rank,
        },
        schema=_EXPERT_SCHEMA,
    )
    step_means = ranks_SR[busy].mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        step_over = np.where(step_means > 0, ranks_SR[busy] / step_means, np.nan)
    is_max = ranks_SR[busy] == ranks_SR[busy].max(axis=1, keepdims=True)
    mean_r = ranks_R.mean()
    ranks = pl.DataFrame(
        {
            "layer": np.full(ep, layer, np.int16),
            "rank": np.arange(ep, dtype=np.int32),
            "num_tokens": ranks_R,
            "share": ranks_R / assignments if assignments else np.full(ep, np.nan),
            "load_over_mean": ranks_R / mean_r if mean_r else np.full(ep, np.nan),
            "step_load_over_mean": np.nanmean(step_over, axis=0) if step_over.size else np.full(ep, np.nan),
            "steps_max": is_max.sum(axis=0).astype(np.int32),
        },
        schema=_RANK_SCHEMA,
    )
    windows: list[dict[str, Any]] = []
    prev_hot: npt.NDArray[np.int64] | None = None
    first_hot: npt.NDArray[np.int64] | None = None
    prev_load: npt.NDArray[np.float64] | None = None
    jac: list[float] = []
    for w, start in enumerate(range(0, len(steps), window_steps)):
        block = dense_SE[start : start + window_steps]
        load = block.sum(axis=0)
        if load.sum() <= 0:
            continue
        hot = m.hot_set(load, hot_n)
        jp = m.jaccard(hot, prev_hot) if prev_hot is not None else None
        if jp is not None:
            jac.append(jp)
        windows.append(
            {
                "layer": layer,
                "window": w,
                "step_start": int(steps[start]),
                "step_end": int(steps[min(start + window_steps, len(steps)) - 1]),
                "num_assignments": int(load.sum()),
                "max_over_mean": _f(m.max_over_mean(load)),
                "imbalance": _f(m.imbalance(load)),
                "cv": _f(m.cv(load)),
                "gini": _f(m.gini(load)),
                "entropy_bits": _f(m.entropy_bits(load)),
                "rank_imbalance": _f(m.imbalance(m.rank_loads(load, slots, ep))),
                "hot_jaccard_prev": jp,
                "hot_jaccard_first": m.jaccard(hot, first_hot) if first_hot is not None else None,
                "load_corr_prev": _f(m.pearson(load, prev_load)) if prev_load is not None else None,
            }
        )
        prev_hot, prev_load = hot, load
        if first_hot is None:
            first_hot = hot
    row["hot_jaccard"] = float(np.mean(jac)) if jac else None
    return row, experts, ranks, windows


def _tokens_per_step(tr: Trace) -> float | None:
    if not tr.has("steps"):
        return None
    con = tr.duckdb()
    got = con.execute(
        "SELECT avg(t) FROM (SELECT step, sum(num_tokens) AS t FROM steps GROUP BY step)"
    ).fetchone()
    con.close()
    return float(got[0]) if got and got[0] is not None else None


def _sample_steps(tr: Trace, steps: npt.NDArray[np.int64], max_tokens: int) -> npt.NDArray[np.int64]:
    """Evenly spaced steps whose routing rows (on the first MoE layer) stay within ``max_tokens``."""
    counts = (
        tr.scan("routing")
        .group_by("step", "layer")
        .agg(pl.len().alias("n"))
        .group_by("step")
        .agg(pl.col("n").max())
        .sort("step")
        .collect()
    )
    if counts.height == 0:
        return np.zeros(0, dtype=np.int64)
    total = int(counts["n"].sum())
    if total <= max_tokens:
        return counts["step"].to_numpy().astype(np.int64)
    stride = max(1, math.ceil(total / max_tokens))
    picked = counts[::stride]
    cum = np.cumsum(picked["n"].to_numpy())
    return (
        picked["step"]
        .to_numpy()[: max(1, int(np.searchsorted(cum, max_tokens, side="right")))]
        .astype(np.int64)
    )


def _routing_stats(
    tr: Trace,
    layers: list[int],
    steps: npt.NDArray[np.int64],
    num_experts: int,
    max_tokens: int,
) -> tuple[pl.DataFrame, dict[int, dict[str, float]], dict[int, tuple[int, float]], dict[int, int]]:
    empty = pl.DataFrame(schema=_PAIR_SCHEMA)
    if not tr.has("routing"):
        return empty, {}, {}, {}
    picked = _sample_steps(tr, steps, max_tokens)
    table = (
        tr.scan("routing")
        .filter(pl.col("step").is_in(picked.tolist()))
        .select("rank", "step", "layer", "token_index", "expert_ids")
        .sort("layer", "rank", "step", "token_index")
        .collect()
        .to_arrow()
    )
    top_k = tr.manifest.model.top_k
    col = table.column("expert_ids").combine_chunks()
    if not isinstance(col, pa.FixedSizeListArray):
        raise SchemaError(f"{tr.path}: routing.expert_ids is not a fixed-size list")
    ids_all = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, top_k)
    layer_col = table.column("layer").to_numpy().astype(np.int64)
    key = (
        (table.column("rank").to_numpy().astype(np.int64) << 44)
        | (table.column("step").to_numpy().astype(np.int64) << 22)
        | table.column("token_index").to_numpy().astype(np.int64)
    )
    bounds = {int(ly): (int(a), int(b)) for ly, a, b in _runs(layer_col)}
    pair_frames, coact, cross, sampled = [], {}, {}, {}
    routed_layers = [ly for ly in layers if ly in bounds]
    for i, layer in enumerate(routed_layers):
        a, b = bounds[layer]
        ids = ids_all[a:b].astype(np.int64)
        sampled[layer] = int(b - a)
        cm = m.coactivation_counts(ids, num_experts)
        coact[layer] = {"nmi": m.normalized_mutual_information(cm)}
        pf = _top_pairs(layer, cm, ids, num_experts)
        if pf.height:
            coact[layer]["top_lift"] = float(pf["lift"][0])
        pair_frames.append(pf)
        if i + 1 < len(routed_layers):
            nxt = routed_layers[i + 1]
            c, d = bounds[nxt]
            _, ia, ib = np.intersect1d(key[a:b], key[c:d], assume_unique=True, return_indices=True)
            if ia.size:
                tm = m.transition_counts(ids[ia], ids_all[c:d][ib], num_experts)
                cross[layer] = (nxt, m.normalized_mutual_information(tm))
    pairs = pl.concat(pair_frames) if pair_frames else empty
    return pairs, coact, cross, sampled


def _runs(values: npt.NDArray[np.int64]) -> list[tuple[int, int, int]]:
    if values.size == 0:
        return []
    edges = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [values.size]])
    return [(int(values[s]), int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def _top_pairs(
    layer: int, cm: npt.NDArray[np.int64], ids: npt.NDArray[np.int64], num_experts: int
) -> pl.DataFrame:
    n = ids.shape[0]
    a_idx, b_idx = np.triu_indices(num_experts, 1)
    counts = cm[a_idx, b_idx]
    nz = np.flatnonzero(counts)
    if nz.size == 0 or n == 0:
        return pl.DataFrame(schema=_PAIR_SCHEMA)
    order = nz[np.lexsort((nz, -counts[nz]))][:TOP_PAIRS]
    freq = np.bincount(ids.reshape(-1), minlength=num_experts) / n
    ea, eb = a_idx[order], b_idx[order]
    expected = n * freq[ea] * freq[eb]
    return pl.DataFrame(
        {
            "layer": np.full(order.size, layer, np.int16),
            "expert_a": ea.astype(np.int16),
            "expert_b": eb.astype(np.int16),
            "num_tokens": counts[order].astype(np.int64),
            "token_share": counts[order] / n,
            "expected_tokens": expected,
            "lift": counts[order] / expected,
        },
        schema=_PAIR_SCHEMA,
    )
