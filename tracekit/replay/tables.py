"""The tables stage: a replay's output frames, their columns declared as schema data.

Every result table's columns (name, type, unit, meaning) live in ``schemas/v1/results/*.json``
(shown by ``tracekit schema``); :func:`frame` builds a table from named columns, refusing a column
set that does not match its declaration and casting each column to its declared type. The
functions below fill ``replay_steps``, ``replay_layers`` and ``replay_ranks`` from one window of a
phase, and ``replay_peers`` from a phase's summed peer matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl

from tracekit.precision import wire_bytes_per_token
from tracekit.replay.attribution import Attribution
from tracekit.replay.schedule import AttentionLoad
from tracekit.replay.setup import ReplaySetup
from tracekit.replay.timing import BOUND_NAMES, COMM_COMPONENTS, COMPONENTS, WindowCost
from tracekit.schema import result_spec

_POLARS = {
    "bool": pl.Boolean,
    "int16": pl.Int16,
    "int32": pl.Int32,
    "int64": pl.Int64,
    "float64": pl.Float64,
    "string": pl.String,
}


def polars_schema(table: str) -> dict[str, Any]:
    """The declared polars type of every column of result table ``table``."""
    return {c.name: _POLARS[c.type] for c in result_spec(table).columns}


def frame(table: str, columns: Mapping[str, Any]) -> pl.DataFrame:
    """Result table ``table`` from its columns (arrays, series or lists), each cast to its declared
    type. The names must be the declared columns, in order."""
    schema = polars_schema(table)
    if list(columns) != list(schema):
        raise ValueError(
            f"replay table {table}: built with columns {list(columns)}, declared {list(schema)} "
            "(schemas/v1/results)"
        )
    df = pl.DataFrame(dict(columns))
    built = df.schema
    casts = [pl.col(n).cast(t) for n, t in schema.items() if built[n] != t]
    return df.with_columns(casts) if casts else df


_BOUND_OBJECTS = np.asarray(BOUND_NAMES, dtype=object)
#: Longer columns are gathered by polars (whose gather costs a tenth of a millisecond at any length).
_GATHER_FROM = 4096


def bound_names(codes: np.ndarray) -> pl.Series:
    """Bound names of int8 codes (indices into BOUND_NAMES), as a string column."""
    flat = codes.reshape(-1)
    if flat.size < _GATHER_FROM:
        return pl.Series(_BOUND_OBJECTS[flat], dtype=pl.String)
    return pl.Series(BOUND_NAMES, dtype=pl.String).gather(flat.astype(np.uint32))


@dataclass(frozen=True, kw_only=True, eq=False)
class Window:
    """One window of replayed steps ``lo .. hi - 1`` of a phase, priced and attributed."""

    setup: ReplaySetup
    phase: str
    pool: str
    lo: int
    hi: int
    load: AttentionLoad
    cost: WindowCost
    att: Attribution

    @property
    def W(self) -> int:
        return self.hi - self.lo

    def mean(self, name: str) -> np.ndarray:
        """[W, T] mean-rank time of component ``name``."""
        return self.cost.components[name].time.mean(axis=-1)

    def exposed(self, name: str) -> np.ndarray:
        """[W, T] mean-rank exposed time of communication component ``name``."""
        return self.att.layers.exposed_parts[name].mean(axis=-1)

    # per (step, target layer, rank) [W, T, R], shared by the tables
    @cached_property
    def dispatch_bytes(self) -> np.ndarray:
        return self.cost.layer_map.layers(self.cost.routed.dispatch_bytes, 0.0)

    @cached_property
    def network_bytes(self) -> np.ndarray:
        return self.cost.layer_map.layers(self.cost.routed.network_bytes, 0.0)

    @cached_property
    def tokens_recv(self) -> np.ndarray:
        return self.cost.layer_map.layers(self.cost.routed.tokens_recv.astype(np.float64), 0.0)


def steps_frame(w: Window) -> pl.DataFrame:
    W, lo, hi, load = w.W, w.lo, w.hi, w.load
    tok = load.tokens[lo:hi].astype(np.float64)
    hidden = np.maximum(w.att.ranks.comm - w.att.ranks.exposed, 0.0).mean(axis=-1).sum(axis=-1)
    return frame(
        "replay_steps",
        {
            "pool": [w.pool] * W,
            "step": np.arange(lo, hi, dtype=np.int32),
            "phase": [w.phase] * W,
            "trace_step_first": load.trace_step_first[lo:hi].astype(np.int32),
            "trace_step_last": load.trace_step_last[lo:hi].astype(np.int32),
            "num_tokens": tok.sum(axis=-1).astype(np.int64),
            "num_requests": load.requests[lo:hi].astype(np.int64),
            "output_tokens": np.rint(
                load.outputs[lo:hi].astype(np.float64).sum(axis=-1) * w.setup.dep.accepted_tokens(w.phase)
            ).astype(np.int64),
            "kv_len_mean": np.divide(
                load.pairs[None][lo:hi].sum(axis=-1),
                tok.sum(axis=-1),
                out=np.zeros(W),
                where=tok.sum(axis=-1) > 0,
            ),
            "step_time_s": w.att.steps.time,
            **{f"{c}_s": w.mean(c).sum(axis=-1) for c in COMPONENTS if c not in COMM_COMPONENTS},
            **{f"{c}_s": w.exposed(c).sum(axis=-1) for c in COMM_COMPONENTS},
            "straggler_s": w.att.steps.straggler,
            "embedding_s": w.cost.embedding.time.mean(axis=-1),
            "lm_head_s": w.cost.lm_head.time.mean(axis=-1),
            "mtp_s": np.zeros(W) if w.cost.draft is None else w.cost.draft.time.mean(axis=-1),
            "hidden_comm_s": hidden,
            "dispatch_bytes": w.dispatch_bytes.sum(axis=(-1, -2)).astype(np.int64),
            "network_bytes": w.network_bytes.sum(axis=(-1, -2)).astype(np.int64),
            "bound": bound_names(w.att.steps.bound),
            "measured_time_s": pl.Series([None] * W, dtype=pl.Float64),
        },
    )


def layers_frame(w: Window) -> pl.DataFrame:
    setup, W = w.setup, w.W
    lm = w.cost.layer_map
    T = lm.source_of.size
    lt = w.att.layers
    wi, ti = np.meshgrid(np.arange(W), np.arange(T), indexing="ij")
    recv = w.tokens_recv
    recv_mean, recv_max = recv.mean(axis=-1), recv.max(axis=-1)
    src = np.where(
        lm.moe_mask, np.asarray(setup.trace_arch.moe_layers)[np.where(lm.moe_mask, lm.source_of, 0)], -1
    )
    ranks = w.att.ranks
    return frame(
        "replay_layers",
        {
            "pool": [w.pool] * (W * T),
            "step": np.arange(w.lo, w.hi, dtype=np.int32)[wi].reshape(-1),
            "phase": [w.phase] * (W * T),
            "layer": ti.reshape(-1).astype(np.int16),
            "kind": np.where(lm.moe_mask[ti], "moe", "dense").reshape(-1),
            "source_layer": pl.Series(src[ti].reshape(-1).astype(np.int16)).replace(-1, None),
            "time_s": lt.time.reshape(-1),
            "mean_load_s": lt.mean_load.reshape(-1),
            "straggler_s": lt.straggler.reshape(-1),
            "exposed_comm_s": ranks.exposed.mean(axis=-1).reshape(-1),
            "hidden_comm_s": np.maximum(ranks.comm - ranks.exposed, 0.0).mean(axis=-1).reshape(-1),
            **{f"{c}_s": w.mean(c).reshape(-1) for c in COMPONENTS},
            "slowest_rank": lt.slowest_rank.reshape(-1).astype(np.int32),
            "tokens_recv_max": recv_max.reshape(-1).astype(np.int64),
            "tokens_recv_mean": recv_mean.reshape(-1),
            "imbalance": np.divide(
                recv_max - recv_mean, recv_mean, out=np.zeros_like(recv_mean), where=recv_mean > 0
            ).reshape(-1),
            "dispatch_bytes": w.dispatch_bytes.sum(axis=-1).reshape(-1).astype(np.int64),
            "network_bytes": w.network_bytes.sum(axis=-1).reshape(-1).astype(np.int64),
            "bound": bound_names(lt.bound),
        },
    )


def ranks_frame(w: Window) -> pl.DataFrame:
    setup, W, lo, hi = w.setup, w.W, w.lo, w.hi
    lm = w.cost.layer_map
    T, R = lm.source_of.size, lm.R
    r = w.cost.routed
    ranks = w.att.ranks
    n = W * T * R
    wi, ti, ri = np.meshgrid(np.arange(W), np.arange(T), np.arange(R), indexing="ij")
    windows = setup.distinct_windows
    idx = np.array([windows.index(x) for x in setup.windows])
    kv_sum = np.stack([w.load.pairs[x][lo:hi] for x in windows])[idx]  # [T, W, R]
    comps = w.cost.components
    return frame(
        "replay_ranks",
        {
            "pool": [w.pool] * n,
            "step": np.arange(lo, hi, dtype=np.int32)[wi].reshape(-1),
            "phase": [w.phase] * n,
            "layer": ti.reshape(-1).astype(np.int16),
            "rank": ri.reshape(-1).astype(np.int32),
            "tokens": lm.ranks(w.load.tokens[lo:hi].astype(np.float64)).reshape(-1).astype(np.int64),
            "kv_tokens": np.moveaxis(kv_sum, 0, 1).reshape(-1).astype(np.int64),
            "tokens_recv": w.tokens_recv.reshape(-1).astype(np.int64),
            "active_experts": lm.layers(r.active_experts.astype(np.float64), 0.0)
            .reshape(-1)
            .astype(np.int32),
            "weight_bytes": lm.layers(r.weight_bytes, 0.0).reshape(-1).astype(np.int64),
            "dispatch_bytes": w.dispatch_bytes.reshape(-1).astype(np.int64),
            "dispatch_recv_bytes": lm.layers(r.dispatch_recv_bytes, 0.0).reshape(-1).astype(np.int64),
            "network_bytes": w.network_bytes.reshape(-1).astype(np.int64),
            "combine_bytes": lm.layers(r.combine_bytes, 0.0).reshape(-1).astype(np.int64),
            **{f"{c}_s": comps[c].time.reshape(-1) for c in COMPONENTS},
            "compute_s": ranks.compute.reshape(-1),
            "comm_s": ranks.comm.reshape(-1),
            "exposed_comm_s": ranks.exposed.reshape(-1),
            "total_s": ranks.total.reshape(-1),
            "bound": bound_names(ranks.bound),
        },
    )


def peers_frame(setup: ReplaySetup, peer_tokens: np.ndarray, pool: str, phase: str) -> pl.DataFrame:
    """Per target MoE layer, source and destination rank: ``peer_tokens[L, R, R]`` summed over the
    phase's steps, with the bytes they carry and the link they cross."""
    arch = setup.arch
    R = setup.num_ranks
    moe_t = np.nonzero(setup.moe_mask)[0]
    toks = peer_tokens[setup.source_of[moe_t]]  # [Tm, R, R]
    n = moe_t.size * R * R
    ti, si, di = np.meshgrid(moe_t, np.arange(R), np.arange(R), indexing="ij")
    dom = setup.hw.scaleup_size
    link = np.where(si == di, "local", np.where(si // dom == di // dom, "nvlink", "network"))
    sent = si != di  # a rank does not send to itself: local pairs carry no bytes
    bpd = wire_bytes_per_token(setup.dep.precision.dispatch, arch.hidden_size)
    bpc = wire_bytes_per_token(setup.dep.precision.combine, arch.hidden_size)
    return frame(
        "replay_peers",
        {
            "pool": [pool] * n,
            "phase": [phase] * n,
            "layer": ti.reshape(-1).astype(np.int16),
            "src_rank": si.reshape(-1).astype(np.int32),
            "dst_rank": di.reshape(-1).astype(np.int32),
            "tokens": toks.reshape(-1).astype(np.int64),
            "dispatch_bytes": (toks * sent * bpd).reshape(-1).astype(np.int64),
            "combine_bytes": (toks * sent * bpc).reshape(-1).astype(np.int64),
            "link": link.reshape(-1),
        },
    )


def sources_frame(w: Window) -> pl.DataFrame:
    """Per component of one window: seconds summed over its steps (mean rank, all layers) and the
    part priced from measurements; :func:`sources_table` turns a phase's windows into
    ``replay_sources``."""
    R = w.cost.layer_map.R
    rows: dict[str, list[Any]] = {
        "pool": [],
        "phase": [],
        "component": [],
        "time_s": [],
        "measured_s": [],
        "steps": [],
    }
    for c in COMPONENTS:
        pr = w.cost.components[c]
        rows["pool"].append(w.pool)
        rows["phase"].append(w.phase)
        rows["component"].append(c)
        rows["time_s"].append(float(np.sum(pr.time)) / R)
        rows["measured_s"].append(0.0 if pr.measured is None else float(np.sum(pr.measured)) / R)
        rows["steps"].append(w.W)
    return pl.DataFrame(rows)


def sources_table(windows: list[pl.DataFrame], setup: ReplaySetup) -> pl.DataFrame:
    """``replay_sources`` from the windows' :func:`sources_frame` rows."""
    measured = setup.measured
    if not windows:
        return frame("replay_sources", {name: [] for name in polars_schema("replay_sources")})
    agg = (
        pl.concat(windows)
        .group_by("pool", "phase", "component", maintain_order=True)
        .agg(pl.col("time_s").sum(), pl.col("measured_s").sum(), pl.col("steps").sum())
    )
    steps = agg["steps"].to_numpy().astype(np.float64)
    time = agg["time_s"].to_numpy() / np.maximum(steps, 1.0)
    meas = agg["measured_s"].to_numpy() / np.maximum(steps, 1.0)
    share = np.divide(meas, time, out=np.zeros_like(time), where=time > 0)
    source = np.where(share >= 1.0 - 1e-9, "measured", np.where(share > 0.0, "mixed", "analytic"))
    n = agg.height
    return frame(
        "replay_sources",
        {
            "pool": agg["pool"],
            "phase": agg["phase"],
            "component": agg["component"],
            "source": source,
            "measured_share": share,
            "time_s": time,
            "measured_s": meas,
            "timing": [setup.dep.timing] * n,
            "table": pl.Series(
                [measured.label if measured and s != "analytic" else None for s in source], dtype=pl.String
            ),
        },
    )
