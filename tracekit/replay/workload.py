"""Workload extraction: what each rank of a deployment does in each replayed step and MoE layer.

From a trace's ``tokens`` and ``routing`` tables and a deployment (EP ranks, batch per GPU,
placement), this module builds, per phase (prefill, decode):

- the *schedule*: which replayed step and rank each trace token lands on (as recorded, or re-packed
  into steps of ``batch_per_gpu x ranks`` tokens, reusing the trace's tokens from the start when it
  runs out);
- per (step, rank): tokens, their KV lengths and the keys read (attention work), and the tokens
  that produce an output (LM head);
- per (step, MoE layer): token-expert pairs each physical slot receives under the placement, and
  per source and destination rank the pairs sent plus those that DeepEP's per-rank and per-node
  deduplication removes, so the per-peer token matrices (dispatch volumes) follow exactly.

Shape legend: ``W`` replayed steps of a window, ``L`` MoE layers of the trace, ``R`` ranks, ``S``
physical slots, ``Q`` scale-up domains (nodes), ``N`` tokens, ``K`` top-k, ``C`` copies of the
trace's token stream. Everything is columnar: no Python loop runs per token or per routing choice.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.errors import DeploymentError, TraceError, UsageError, first_line
from tracekit.placement import Placement, route_to_slots
from tracekit.trace.reader import Trace

PHASES = ("prefill", "decode")

#: Routing rows counted at a time: small enough that the temporaries stay in cache.
ROWS_PER_BATCH = 32_768
#: Counter bins per window and worker (8 bytes each).
MAX_WINDOW_BINS = 8_000_000
#: Routing rows (tokens x MoE layers) replayed per window, about.
WINDOW_ROWS = 4_000_000
#: Threads reading and counting row groups.
WORKERS = 2


# ---- tokens --------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class PhaseTokens:
    """The trace's tokens of one phase, in stream order (trace step, rank, token index)."""

    phase: str
    #: [N] trace step of each token.
    trace_step: np.ndarray
    #: [N] trace rank of each token.
    trace_rank: np.ndarray
    #: [N] request id (-1 where unknown).
    request: np.ndarray
    #: [N] KV length the token attends over (position + 1, or the deployment's kv_len).
    kv_len: np.ndarray
    #: [N] True when the token yields an output token (every decode token; the last prompt token).
    output: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.trace_step.size)


@dataclass(frozen=True, kw_only=True, eq=False)
class TokenIndex:
    """Places a routing row's (rank, step, token_index) in the flat token order: one block per
    (trace step, trace rank), blocks in (step, rank) order, tokens by token index within a block."""

    step_min: int
    num_steps: int
    #: Trace rank ids (sorted); a row's rank position is searchsorted into it.
    ranks: np.ndarray
    #: [num_steps * len(ranks) + 1] start of each (step, rank) block in the flat token order.
    offset: np.ndarray
    #: Per phase: [N] flat position of each token of the phase's stream.
    stream_flat: dict[str, np.ndarray]
    #: trace steps with at least one token, per phase.
    steps_by_phase: dict[str, np.ndarray]

    @cached_property
    def block_size(self) -> np.ndarray:
        """[num_steps * len(ranks)] slots of each (step, rank) block (its largest token index + 1)."""
        return np.diff(self.offset)

    def flat(
        self, rank: np.ndarray, step: np.ndarray, token_index: np.ndarray, bounds: Bounds
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Flat position of routing rows, and a mask of the rows that have a token (None: all do).

        ``bounds``: known (min, max) of the columns (from the row group's statistics); a column
        without one is scanned."""
        rk = self.ranks.size
        r_lo, r_hi = bounds.get("rank") or _min_max(rank)
        s_lo, s_hi = _min_max(step)  # per batch: most batches hold one step (a scalar block below)
        t_lo, t_hi = bounds.get("token_index") or _min_max(token_index)
        ri: np.ndarray | int
        if r_lo == r_hi:  # one rank in the row group: a scalar rank position
            ri = int(np.searchsorted(self.ranks, r_lo))
            rank_ok: np.ndarray | bool = ri < rk and int(self.ranks[ri]) == r_lo
            first, stride = ri, rk
        else:
            ri = np.minimum(np.searchsorted(self.ranks, rank), rk - 1)
            known = self.ranks[ri] == rank
            rank_ok = True if bool(known.all()) else known
            first, stride = 0, 1
        if rank_ok is True and s_lo >= self.step_min and s_hi < self.step_min + self.num_steps and t_lo >= 0:
            lo = (s_lo - self.step_min) * rk + first
            hi = (s_hi - self.step_min) * rk + (first if stride == rk else rk - 1)
            if t_hi < int(self.block_size[lo : hi + 1 : stride].min()):  # every row has its token
                if lo == hi:  # one (step, rank) block
                    return token_index + self.offset[lo], None
                return self.offset[(step.astype(np.int64) - self.step_min) * rk + ri] + token_index, None
        si = step.astype(np.int64) - self.step_min
        block = si * rk + ri
        ok = (si >= 0) & (si < self.num_steps) & (token_index >= 0) & rank_ok
        block = np.where(ok, block, 0)
        ok &= token_index < self.block_size[block]
        return np.where(ok, self.offset[block] + token_index, 0), ok


#: Known (min, max) of routing columns of a row group, by column name (from Parquet statistics).
Bounds = dict[str, tuple[int, int]]


def _min_max(a: np.ndarray) -> tuple[int, int]:
    return (int(a.min()), int(a.max())) if a.size else (0, -1)


def load_tokens(
    trace: Trace, *, kv_len: int | None = None, min_step: int | None = None
) -> tuple[dict[str, PhaseTokens], TokenIndex]:
    """The trace's tokens split by phase, and the index that maps routing rows onto them.

    ``min_step``: drop the tokens of trace steps before it (a placement's ``from_step``: the steps
    it was computed from are not replayed); their routing rows then map to no token."""
    tok = _token_frame(trace)
    if tok.height == 0:
        raise TraceError(
            f"{trace.path}: the trace has no tokens and no routing rows; record or synthesize a trace "
            "with routing before replaying it"
        )
    steps = trace.scan("steps").select("rank", "step", "phase").collect()
    if steps.height:
        tok = tok.join(steps.unique(["rank", "step"]), on=["rank", "step"], how="left", maintain_order="left")
    else:
        tok = tok.with_columns(pl.lit(None, pl.String).alias("phase"))
    tok = tok.with_columns(
        pl.when(pl.col("is_prefill").is_not_null())
        .then(pl.col("is_prefill"))
        .otherwise(pl.col("phase") == "prefill")
        .fill_null(False)
        .alias("is_prefill")
    )
    if kv_len is None and tok["position"].null_count():
        raise TraceError(
            f"{trace.path}: {tok['position'].null_count()} tokens have no position, so their KV length "
            "is unknown; pass --kv-len N to give one"
        )
    # The last prompt token of a request (in prefill) produces the first output token.
    tok = tok.with_columns(
        pl.when(pl.col("request_id").is_null())
        .then(pl.lit(True))
        .otherwise(pl.col("position") == pl.col("position").max().over(["request_id", "is_prefill"]))
        .fill_null(True)
        .alias("_last"),
    )
    if min_step is not None:
        last_step = int(tok["step"].max())  # type: ignore[arg-type]
        tok = tok.filter(pl.col("step") >= min_step)
        if tok.height == 0:
            raise UsageError(
                f"{trace.path}: every trace step (the last is {last_step}) comes before step {min_step}, "
                "where the placement comes into force; nothing is left to replay: compute the placement "
                "with a shorter --window, or replay without --placement"
            )
    # tok is in (step, rank, token_index) order, each token once (_token_frame)
    t_step = tok["step"].to_numpy().astype(np.int64)
    t_rank = tok["rank"].to_numpy().astype(np.int64)
    t_ti = tok["token_index"].to_numpy().astype(np.int64)
    ranks = np.sort(tok["rank"].unique().to_numpy()).astype(np.int64)
    step_min = int(t_step[0])
    num_steps = int(t_step[-1]) - step_min + 1
    # Flat order: one block per (step, rank) of size max(token_index) + 1 (its last token's + 1).
    ends = np.flatnonzero(np.concatenate([(np.diff(t_step) != 0) | (np.diff(t_rank) != 0), [True]]))
    sizes = np.zeros(num_steps * ranks.size, dtype=np.int64)
    sizes[(t_step[ends] - step_min) * ranks.size + np.searchsorted(ranks, t_rank[ends])] = t_ti[ends] + 1
    offset = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=offset[1:])
    flat = offset[(t_step - step_min) * ranks.size + np.searchsorted(ranks, t_rank)] + t_ti
    is_prefill = tok["is_prefill"].to_numpy()
    position = tok["position"].to_numpy()
    request = tok["request_id"].fill_null(-1).to_numpy().astype(np.int64)
    last = tok["_last"].to_numpy()
    out: dict[str, PhaseTokens] = {}
    steps_by_phase: dict[str, np.ndarray] = {}
    stream_flat: dict[str, np.ndarray] = {}
    for phase in PHASES:
        sel = is_prefill if phase == "prefill" else ~is_prefill
        idx = np.nonzero(sel)[0]
        stream_flat[phase] = flat[idx]
        if not idx.size:
            continue
        if (kv_len is not None and phase == "decode") or (
            kv_len is not None and np.isnan(position[idx].astype(np.float64)).any()
        ):
            kv = np.full(idx.size, kv_len, dtype=np.int64)
        else:
            kv = position[idx].astype(np.int64) + 1
        out[phase] = PhaseTokens(
            phase=phase,
            trace_step=t_step[idx],
            trace_rank=t_rank[idx],
            request=request[idx],
            kv_len=kv,
            output=np.ones(idx.size, dtype=bool) if phase == "decode" else last[idx].astype(bool),
        )
        ts = t_step[idx]  # ascending
        steps_by_phase[phase] = ts[np.concatenate([[True], np.diff(ts) != 0])]
    index = TokenIndex(
        step_min=step_min,
        num_steps=num_steps,
        ranks=ranks,
        offset=offset,
        stream_flat=stream_flat,
        steps_by_phase=steps_by_phase,
    )
    return out, index


def _token_frame(trace: Trace) -> pl.DataFrame:
    """The trace's tokens in (step, rank, token index) order, each once (its first row)."""
    cols = ["rank", "step", "token_index", "request_id", "position", "is_prefill"]
    tok = trace.scan("tokens").select(cols).collect()
    if tok.height:
        return _sorted_unique(tok)
    # No tokens table: the distinct tokens of the routing table's first layer.
    first = trace.scan("routing").select(pl.col("layer").min()).collect().item()
    if first is None:
        return tok
    return _sorted_unique(
        trace.scan("routing")
        .filter(pl.col("layer") == first)
        .select("rank", "step", "token_index")
        .collect()
        .with_columns(
            pl.lit(None, pl.Int64).alias("request_id"),
            pl.lit(None, pl.Int32).alias("position"),
            pl.lit(None, pl.Boolean).alias("is_prefill"),
        )
        .select(cols)
    )


def _sorted_unique(tok: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted by (step, rank, token_index), the first of equal keys kept (a trace written
    step by step is in that order already within a rank: only then checked, not sorted)."""
    keys = ["step", "rank", "token_index"]

    def steps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.diff(tok[k].to_numpy().astype(np.int64)) for k in keys)  # type: ignore[return-value]

    d_step, d_rank, d_tok = steps()
    if not bool(((d_step > 0) | ((d_step == 0) & ((d_rank > 0) | ((d_rank == 0) & (d_tok >= 0))))).all()):
        tok = tok.sort(keys, maintain_order=True)  # stable: the first of equal keys stays first
        d_step, d_rank, d_tok = steps()
    repeat = (d_step == 0) & (d_rank == 0) & (d_tok == 0)
    if repeat.any():
        tok = tok.filter(pl.Series(np.concatenate([[True], ~repeat])))
    return tok


# ---- schedule ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Schedule:
    """Where each token of a phase's stream is replayed: step and rank, per copy of the stream."""

    phase: str
    num_steps: int
    num_ranks: int
    rebatched: bool
    #: Tokens per rank per step when re-batched (None: as recorded).
    batch_per_gpu: int | None
    #: [C, N] replayed step of copy c of stream token p (-1: not replayed).
    step: np.ndarray
    #: [C, N] replayed rank.
    rank: np.ndarray
    #: Replayed tokens / distinct trace tokens.
    token_reuse: float

    @cached_property
    def tokens(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every replayed token: (stream position, step, rank), in replay order (steps ascending:
        copy by copy, each in stream order)."""
        c, p = np.nonzero(self.step >= 0)
        return p, self.step[c, p], self.rank[c, p]

    @cached_property
    def token_copy(self) -> np.ndarray:
        """The copy of the stream each replayed token (in the order of ``tokens``) comes from."""
        return np.nonzero(self.step >= 0)[0]

    def token_range(self, step_lo: int, step_hi: int) -> slice:
        """The replayed tokens (a slice of ``tokens``) of steps ``step_lo .. step_hi - 1``."""
        step = self.tokens[1]
        return slice(int(np.searchsorted(step, step_lo)), int(np.searchsorted(step, step_hi)))


def make_schedule(
    tokens: PhaseTokens,
    *,
    num_ranks: int,
    batch_per_gpu: int | None,
    num_steps: int | None = None,
    trace_ranks: np.ndarray | None = None,
) -> Schedule:
    """Place a phase's tokens on replayed steps and ranks.

    ``batch_per_gpu=None`` keeps the recorded steps and ranks (the trace's ranks must then be
    ``num_ranks`` ranks). Otherwise token ``g`` of the (cyclically repeated) stream goes to step
    ``g // (batch_per_gpu * num_ranks)`` and rank ``(g mod (batch_per_gpu * num_ranks)) // batch_per_gpu``.
    """
    n = tokens.num_tokens
    if batch_per_gpu is None:
        rank_ids = np.unique(tokens.trace_rank) if trace_ranks is None else trace_ranks
        if rank_ids.size > num_ranks or (rank_ids.size and rank_ids.max() >= num_ranks):
            raise DeploymentError(
                f"the trace's {tokens.phase} tokens were recorded on ranks {rank_ids.tolist()[:8]}..., "
                f"which a {num_ranks}-rank deployment cannot keep as recorded; pass --batch-per-gpu to "
                "re-batch them"
            )
        uniq, step = np.unique(tokens.trace_step, return_inverse=True)
        steps = int(uniq.size)
        if num_steps is not None:
            keep = step < num_steps
            step = np.where(keep, step, -1)
            steps = min(steps, num_steps)
        return Schedule(
            phase=tokens.phase,
            num_steps=steps,
            num_ranks=num_ranks,
            rebatched=False,
            batch_per_gpu=None,
            step=step.astype(np.int64)[None, :],
            rank=tokens.trace_rank.astype(np.int64)[None, :],
            token_reuse=float((step >= 0).sum()) / max(n, 1),
        )
    if batch_per_gpu < 1:
        raise UsageError(f"--batch-per-gpu must be >= 1, got {batch_per_gpu}")
    per_step = batch_per_gpu * num_ranks
    steps = num_steps if num_steps is not None else max(1, -(-n // per_step))
    total = steps * per_step
    copies = -(-total // n)
    g = np.arange(n, dtype=np.int64)[None, :] + n * np.arange(copies, dtype=np.int64)[:, None]
    live = g < total
    step = np.where(live, g // per_step, -1)
    rank = np.where(live, (g % per_step) // batch_per_gpu, -1)
    return Schedule(
        phase=tokens.phase,
        num_steps=steps,
        num_ranks=num_ranks,
        rebatched=True,
        batch_per_gpu=batch_per_gpu,
        step=step,
        rank=rank,
        token_reuse=total / n,
    )


# ---- attention load ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class AttentionLoad:
    """Per (step, rank) attention work of one phase; arrays [T, R]."""

    tokens: np.ndarray
    #: Query-key pairs (sum of KV lengths), per attention window (None: full attention).
    pairs: dict[int | None, np.ndarray]
    #: Keys read from the KV cache (per request and step: its longest KV length), per window.
    keys: dict[int | None, np.ndarray]
    #: Tokens that produce an output token (LM head rows).
    outputs: np.ndarray
    #: [T] distinct requests per step.
    requests: np.ndarray
    #: [T] first and last trace step feeding each replayed step.
    trace_step_first: np.ndarray
    trace_step_last: np.ndarray


def attention_load(tokens: PhaseTokens, schedule: Schedule, windows: tuple[int | None, ...]) -> AttentionLoad:
    """Aggregate a phase's tokens into per (step, rank) attention work."""
    p, step, rank = schedule.tokens
    T, R = schedule.num_steps, schedule.num_ranks
    cell = step * R + rank
    nbins = T * R
    kv = tokens.kv_len[p].astype(np.float64)
    out_tokens = np.bincount(cell, minlength=nbins).reshape(T, R)
    outputs = np.bincount(cell, weights=tokens.output[p].astype(np.float64), minlength=nbins).reshape(T, R)
    # Copies of a request in different replayed positions are distinct sequences.
    copy = schedule.token_copy
    copies = schedule.step.shape[0]
    req = tokens.request[p]
    seq = np.where(req >= 0, req * copies + copy, -1 - (copy * tokens.num_tokens + p))
    frame = pl.DataFrame({"cell": cell, "seq": seq, "kv": kv, "step": step})
    per_seq = frame.group_by(["cell", "seq"]).agg(pl.col("kv").max().alias("kmax"))
    cells = per_seq["cell"].to_numpy()
    kmax = per_seq["kmax"].to_numpy()
    pairs: dict[int | None, np.ndarray] = {}
    keys: dict[int | None, np.ndarray] = {}
    for w in windows:
        kvw = kv if w is None else np.minimum(kv, float(w))
        km = kmax if w is None else np.minimum(kmax, float(w))
        pairs[w] = np.bincount(cell, weights=kvw, minlength=nbins).reshape(T, R)
        keys[w] = np.bincount(cells, weights=km, minlength=nbins).reshape(T, R)
    reqs = frame.group_by("step").agg(pl.col("seq").n_unique().alias("n")).sort("step")
    requests = np.zeros(T, dtype=np.int64)
    requests[reqs["step"].to_numpy()] = reqs["n"].to_numpy()
    tstep = tokens.trace_step[p]
    first = np.full(T, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(T, -1, dtype=np.int64)
    np.minimum.at(first, step, tstep)
    np.maximum.at(last, step, tstep)
    return AttentionLoad(
        tokens=out_tokens,
        pairs=pairs,
        keys=keys,
        outputs=outputs,
        requests=requests,
        trace_step_first=first,
        trace_step_last=last,
    )


# ---- routing -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class ExpertWindow:
    """Routing of a window of replayed steps ``steps[0] .. steps[-1]`` (consecutive) of one phase.

    ``recv[W, L, S]`` counts the token-expert pairs each physical slot receives;
    ``rank_pairs[W, L, R, R]`` the pairs a source rank sends to each destination rank;
    ``dup_rank[W, L, R, R]`` those beyond a token's first to the same destination rank;
    ``dup_node[W, L, R, Q]`` those beyond a token's first to the same destination scale-up domain.
    """

    steps: np.ndarray
    recv: np.ndarray
    rank_pairs: np.ndarray
    dup_rank: np.ndarray
    dup_node: np.ndarray
    slots_per_rank: int
    ranks_per_node: int
    top_k: int

    @property
    def peer_tokens(self) -> np.ndarray:
        """[W, L, R, R] tokens sent from source to destination rank (once per destination rank)."""
        return self.rank_pairs - self.dup_rank

    @property
    def node_tokens(self) -> np.ndarray:
        """[W, L, R, Q] tokens sent from a source rank to a scale-up domain (once per domain)."""
        W, L, R, _ = self.dup_rank.shape
        q = self.dup_node.shape[-1]
        rp = self.rank_pairs
        if q == 1:  # one domain: every token reaches it once, with its top_k pairs
            return rp.sum(axis=-1, keepdims=True) // self.top_k
        pad = q * self.ranks_per_node - R
        if pad:
            rp = np.concatenate([rp, np.zeros((W, L, R, pad), dtype=rp.dtype)], axis=-1)
        return rp.reshape(W, L, R, q, self.ranks_per_node).sum(axis=-1) - self.dup_node


@cache
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators of Batcher's odd-even merge sort for ``n`` inputs (pruned to indices < n)."""
    out: list[tuple[int, int]] = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        out.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(out)


def _sort_columns(cols: list[np.ndarray]) -> list[np.ndarray]:
    """Sort K equal-length columns element-wise across the columns (row-wise sort, column layout)."""
    cols = list(cols)
    for i, j in _sorting_network(len(cols)):
        a, b = cols[i], cols[j]
        cols[i] = np.minimum(a, b)
        cols[j] = np.maximum(a, b)
    return cols


@dataclass(frozen=True, kw_only=True, eq=False)
class RoutingSource:
    """The routing rows of a trace, read in bounded batches for one window of replayed steps."""

    trace: Trace
    #: Trace MoE layers whose routing is used (decoder layer ids), in order.
    layers: tuple[int, ...]
    top_k: int

    @cached_property
    def row_groups(self) -> list[tuple[str, int, int, int]]:
        """Every row group of the routing files: (file, index, min step, max step)."""
        return [(f, i, *b.get("step", (-(2**31), 2**31))) for (f, i), b in self.bounds.items()]

    @cached_property
    def bounds(self) -> dict[tuple[str, int], Bounds]:
        """(min, max) of the routing columns of every row group, from its Parquet statistics (a
        column without statistics is left out: it is scanned instead)."""
        files = [str(f) for f in self.trace.files("routing")]
        if not files:
            raise TraceError(
                f"{self.trace.path}: the trace has no routing rows; the replay needs per-token routing "
                "(record with tracekit record, or synthesize with tracekit synth)"
            )
        wanted = {"rank", "step", "layer", "token_index", "expert_ids"}
        out: dict[tuple[str, int], Bounds] = {}
        for f in files:
            md = pq.ParquetFile(f).metadata
            # leaf columns by top-level name (expert_ids has one leaf, its list element)
            leaves: dict[str, int | None] = {}
            for col in range(md.num_columns):
                name = md.schema.column(col).path.split(".")[0]
                if name in wanted:
                    leaves[name] = None if name in leaves else col  # more than one leaf: no bounds
            for i in range(md.num_row_groups):
                rg = md.row_group(i)
                b: Bounds = {}
                for name, leaf in leaves.items():
                    st = rg.column(leaf).statistics if leaf is not None else None
                    if st is not None and st.has_min_max:
                        b[name] = (int(st.min), int(st.max))
                out[(f, i)] = b
        return out

    def row_groups_in(self, step_ranges: list[tuple[int, int]]) -> list[tuple[str, int]]:
        """(file, row group) of the row groups whose steps overlap one of the inclusive ranges
        (the caller drops the rows outside them)."""
        return [
            (f, i) for f, i, lo, hi in self.row_groups if any(lo <= b and hi >= a for a, b in step_ranges)
        ]

    @cached_property
    def _recent(self) -> tuple[threading.Lock, dict[tuple[str, int], list[pa.RecordBatch]]]:
        return threading.Lock(), {}

    @cached_property
    def _pending(self) -> dict[tuple[str, int], Future[list[pa.RecordBatch]]]:
        """Row groups handed to a prefetch thread, not yet taken by :meth:`read` (under the lock)."""
        return {}

    def _decode(self, item: tuple[str, int]) -> list[pa.RecordBatch]:
        cols = ["rank", "step", "layer", "token_index", "expert_ids"]
        # decoded batch by batch: no whole-row-group columns to concatenate
        try:
            batches = pq.ParquetFile(item[0], page_checksum_verification=True).iter_batches(
                batch_size=ROWS_PER_BATCH, row_groups=[item[1]], columns=cols, use_threads=False
            )
            return list(batches)
        except (pa.ArrowException, OSError) as exc:
            raise TraceError(
                f"{item[0]}: routing row group {item[1]} cannot be decoded ({first_line(exc)}); the file "
                "is damaged: run tracekit validate on the trace, then re-record it or remove the part"
            ) from None

    def read(self, item: tuple[str, int]) -> list[pa.RecordBatch]:
        """The routing columns of one row group, in batches of at most ``ROWS_PER_BATCH`` rows.

        The last few row groups read are kept: a row group that straddles two windows of replayed
        steps is decoded once, not once per window. A row group being prefetched is waited for; one
        queued for prefetch but not started is taken back and decoded here."""
        lock, recent = self._recent
        with lock:
            hit = recent.get(item)
            fut = self._pending.pop(item, None) if hit is None else None
            # not started yet: cancel it (the prefetch thread then skips it) and decode here
            wait = fut is not None and not fut.cancel()
        if hit is not None:
            return hit
        batches = fut.result() if wait and fut is not None else self._decode(item)
        with lock:
            recent[item] = batches
            while len(recent) > 2 * WORKERS:
                recent.pop(next(iter(recent)))
        return batches

    def prefetch(self, items: list[tuple[str, int]]) -> None:
        """Decode ``items`` on a background thread, in order, for later :meth:`read` calls (the next
        window's row groups, decoded while this window is counted and timed)."""
        lock, recent = self._recent
        todo: list[tuple[tuple[str, int], Future[list[pa.RecordBatch]]]] = []
        with lock:
            for item in items:
                if item not in recent and item not in self._pending:
                    fut: Future[list[pa.RecordBatch]] = Future()
                    self._pending[item] = fut
                    todo.append((item, fut))
        if not todo:
            return

        def run() -> None:
            for item, fut in todo:
                with lock:  # read() cancels a future it takes back before this starts it
                    if not fut.set_running_or_notify_cancel():
                        continue
                try:
                    fut.set_result(self._decode(item))
                except BaseException as exc:  # handed to the read() that waits for it
                    fut.set_exception(exc)

        threading.Thread(target=run, name="tracekit-routing-prefetch", daemon=True).start()


def expert_window(
    source: RoutingSource,
    index: TokenIndex,
    tokens: PhaseTokens,
    schedule: Schedule,
    placement: Placement | Sequence[Placement],
    *,
    step_lo: int,
    step_hi: int,
    ranks_per_node: int,
    prefetch_next: bool = False,
) -> ExpertWindow:
    """Count the routing of replayed steps ``step_lo .. step_hi - 1`` of one phase.

    ``placement``: one placement, or placement epochs (ascending ``from_step``, same ranks, slots
    and experts): each routing row then uses the epoch in force at its trace step (``placement_at``).

    ``prefetch_next``: start decoding the row groups of the next window of as many steps
    (``step_hi .. 2 * step_hi - step_lo - 1``) on a background thread, for the next call.

    Row groups are read and counted by ``WORKERS`` threads, each into its own counters (Parquet
    decoding and most numpy kernels release the GIL); the counters are summed at the end.
    """
    epochs = (placement,) if isinstance(placement, Placement) else tuple(placement)
    placement = epochs[0]
    # Epoch of a trace step: the last with from_step <= step (the first before any), as placement_at.
    from_steps = np.array([p.from_step for p in epochs], dtype=np.int64)
    several = len(epochs) > 1
    W = step_hi - step_lo
    L = len(source.layers)
    R = schedule.num_ranks
    spr = placement.slots_per_rank
    S = R * spr
    Q = -(-R // ranks_per_node)
    K = source.top_k
    layer_pos = np.full(max(source.layers) + 1, -1, dtype=np.int64)
    layer_pos[list(source.layers)] = np.arange(L)
    E = placement.num_experts
    sources = [[p.layers.index(layer) for layer in source.layers] for p in epochs]
    single = all(bool((p.logcnt[rows_of] == 1).all()) for p, rows_of in zip(epochs, sources, strict=True))
    # Without replicas a slot lookup table per epoch and layer, slot_of[(epoch * L + l) * E + expert];
    # none at all when every layer's slots hold experts 0..E-1 in order (the contiguous layout).
    identity = (
        single
        and S == E
        and all(
            (p.phy2log[pi] == np.arange(E)).all()
            for p, rows_of in zip(epochs, sources, strict=True)
            for pi in rows_of
        )
    )
    slot_dtype = np.int16 if S < 2**15 else np.int32
    slot_of = np.zeros(len(epochs) * L * E, dtype=slot_dtype)
    if single:
        for ei, (p, rows_of) in enumerate(zip(epochs, sources, strict=True)):
            for li, pi in enumerate(rows_of):
                slot_of[(ei * L + li) * E + p.phy2log[pi]] = np.arange(S)
    states = 2 if Q == 1 else 3
    LR = L * R
    # Per trace layer: its (layer position * R) part of a row's counter cell, NO_CELL if not replayed.
    layer_cell = np.where(layer_pos >= 0, layer_pos * R, NO_CELL)

    def new_counters() -> _Counters:
        return _Counters(
            ranks=np.zeros(W * LR * states * R, dtype=np.int64),
            slots=np.zeros(W * L * S, dtype=np.int64),
            R=R,
            S=S,
            states=states,
            spr_shift=spr.bit_length() - 1 if spr & (spr - 1) == 0 else -1,
            rank_of_slot=(np.arange(S) // spr).astype(slot_dtype),
            node_of_rank=(np.arange(R) // ranks_per_node).astype(slot_dtype),
        )

    def by_layer(table: np.ndarray, layer: np.ndarray, bounds: Bounds, missing: int) -> np.ndarray:
        """``table[layer]`` per row (``missing`` for layers past the table)."""
        lo, hi = bounds.get("layer") or _min_max(layer)
        if lo >= 0 and hi < table.size:
            return np.take(table, layer)
        inside = (layer >= 0) & (layer < table.size)
        return np.where(inside, np.take(table, np.clip(layer, 0, table.size - 1)), missing)

    selection = _window_selection(schedule, step_lo, step_hi)
    copies = _cell_tables(index, schedule, selection, step_lo, LR)
    ranges = _trace_step_ranges(tokens, selection)

    def rows(batch: pa.RecordBatch, bounds: Bounds) -> list[_Rows]:
        """The batch's rows replayed in this window, once per copy of the stream that has tokens
        here: (counter cell ``(window step * L + layer position) * R + source rank``, layer key
        ``epoch * L + layer position`` when slots are looked up (else None), expert ids [n, K])."""
        if batch.num_rows == 0:
            return []
        layer = batch.column("layer").to_numpy()
        trace_step = batch.column("step").to_numpy()
        fl, has_token = index.flat(
            batch.column("rank").to_numpy(), trace_step, batch.column("token_index").to_numpy(), bounds
        )
        lcell = by_layer(layer_cell, layer, bounds, NO_CELL)
        lkey = None
        if not identity:
            lkey = by_layer(layer_pos, layer, bounds, -1)
            if several:  # one searchsorted per batch: the epoch of each row's trace step
                epoch = np.maximum(np.searchsorted(from_steps, trace_step, side="right") - 1, 0)
                lkey = np.where(lkey >= 0, epoch * L + lkey, -1)
        lists = batch.column("expert_ids")
        if isinstance(lists, pa.FixedSizeListArray):  # the values of its rows, without a copy
            ids = lists.values.slice(lists.offset * K, len(lists) * K).to_numpy().reshape(-1, K)
        else:
            ids = lists.flatten().to_numpy().reshape(-1, K)
        id_lo, id_hi = bounds.get("expert_ids", (-1, -1))  # no statistics: check the rows below
        ids_checked = id_lo >= 0 and id_hi < E
        fl_lo, fl_hi = _min_max(fl)
        out: list[_Rows] = []
        for f0, table in copies:
            at = fl - f0
            if has_token is None and fl_lo >= f0 and fl_hi < f0 + table.size:  # every row in the table
                cell = np.take(table, at)
            else:
                inside = (at >= 0) & (at < table.size)
                if has_token is not None:
                    inside &= has_token
                cell = np.where(inside, np.take(table, np.where(inside, at, 0)), NO_CELL)
            cell += lcell
            if int(cell.min()) >= 0:  # every row is replayed in this window: no copy
                out.append((cell, lkey, ids))
                continue
            sel = np.flatnonzero(cell >= 0)
            if sel.size:
                out.append((cell[sel], None if lkey is None else lkey[sel], ids[sel]))
        if not ids_checked:
            for _, _, chosen in out:
                lo_id, hi_id = _min_max(chosen)
                if chosen.size and (lo_id < 0 or hi_id >= E):
                    raise TraceError(
                        f"{source.trace.path}: routing holds expert ids {lo_id}..{hi_id} outside "
                        f"0..{E - 1}; the trace does not match its model's expert count"
                    )
        return out

    local = threading.local()
    made: list[_Counters] = []
    stash: dict[int, list[_Rows]] = {}

    def work(job: tuple[int, tuple[str, int]]) -> None:
        order, item = job
        bounds = source.bounds.get(item, {})
        for batch in source.read(item):
            for got in rows(batch, bounds):
                if not single:
                    stash.setdefault(order, []).append(got)
                    continue
                counters = getattr(local, "counters", None)
                if counters is None:
                    counters = local.counters = new_counters()
                    made.append(counters)
                cell, lkey, chosen = got
                if lkey is not None:  # slot lookup per (epoch, layer) and expert
                    chosen = slot_of[(lkey * E)[:, None] + chosen]
                _count(counters, cell, chosen)

    jobs = list(enumerate(source.row_groups_in(ranges))) if ranges else []
    if prefetch_next and step_hi < schedule.num_steps:  # the next window's row groups, in background
        ahead = _trace_step_ranges(
            tokens, _window_selection(schedule, step_hi, min(schedule.num_steps, step_hi + W))
        )
        if ahead:
            mine = {item for _, item in jobs}
            source.prefetch([item for item in source.row_groups_in(ahead) if item not in mine])
    if len(jobs) > 1 and WORKERS > 1:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            list(pool.map(work, jobs))
    else:
        for job in jobs:
            work(job)
    total = made[0] if made else new_counters()
    for extra in made[1:]:
        np.add(total.ranks, extra.ranks, out=total.ranks)
        np.add(total.slots, extra.slots, out=total.slots)
    if stash:
        # Replicas: one route_to_slots call per (step, epoch, layer) dispatch with all of its tokens
        # in (source rank, row) order, so the round-robin among replicas follows the documented rule.
        ordered = [x for key in sorted(stash) for x in stash[key]]
        cell = np.concatenate([c for c, _, _ in ordered])
        lkey = np.concatenate([k for _, k, _ in ordered])  # type: ignore[misc]
        chosen = np.concatenate([x for _, _, x in ordered])
        w, src = cell // LR, cell % R
        slots = np.empty(chosen.shape, dtype=np.int64)
        order = np.lexsort((np.arange(w.size), src, lkey, w))
        group = (w * len(epochs) * L + lkey)[order]
        cuts = np.flatnonzero(np.diff(group)) + 1
        for part in np.split(order, cuts):
            ei, li = divmod(int(lkey[part[0]]), L)
            slots[part] = route_to_slots(
                epochs[ei], source.layers[li], chosen[part], src[part], ranks_per_node
            )
        _count(total, cell, slots)
    # ranks[cell, state, destination rank] -> pairs and repeats per destination rank and domain
    by_state = total.ranks.reshape(W * LR, states, R)
    if states == 3:
        per_rank = by_state[:, 1] + by_state[:, 2]  # repeats of the domain (the rank's included)
        pad = Q * ranks_per_node - R
        if pad:
            per_rank = np.concatenate([per_rank, np.zeros((W * LR, pad), dtype=per_rank.dtype)], axis=1)
        dup_node = per_rank.reshape(W, L, R, Q, ranks_per_node).sum(axis=-1)
    else:
        dup_node = np.zeros((W, L, R, Q), dtype=np.int64)
    return ExpertWindow(
        steps=np.arange(step_lo, step_hi),
        recv=total.slots.reshape(W, L, S),
        rank_pairs=by_state.sum(axis=1).reshape(W, L, R, R),
        dup_rank=np.ascontiguousarray(by_state[:, states - 1]).reshape(W, L, R, R),
        dup_node=dup_node,
        slots_per_rank=spr,
        ranks_per_node=ranks_per_node,
        top_k=K,
    )


#: Counter cell of a row that is not replayed: far below zero, so that adding a layer's part to it
#: stays negative.
NO_CELL = -(2**50)

#: (counter cell, layer key or None, expert ids [n, K]) of routing rows; see ``expert_window``.
_Rows = tuple[np.ndarray, np.ndarray | None, np.ndarray]


@dataclass(frozen=True, kw_only=True, eq=False)
class _Counters:
    #: [cells, states, R] token-expert pairs by (cell, repeat state, destination rank): state 0 a
    #: token's first pair to the destination's domain, 1 (with several domains) a repeat of the
    #: domain on another rank, the last a repeat of the destination rank.
    ranks: np.ndarray
    #: [W, L, S] token-expert pairs by (window step, layer position, physical slot).
    slots: np.ndarray
    R: int
    S: int
    states: int
    #: log2(slots_per_rank) when it is a power of two (rank = slot >> shift), else -1
    spr_shift: int
    rank_of_slot: np.ndarray
    node_of_rank: np.ndarray


def _count(c: _Counters, cell: np.ndarray, slots: np.ndarray) -> None:
    """Add routed rows to the counters: ``cell[n]`` their counter cells, ``slots[n, K]`` the slot
    of each choice.

    The destination ranks of each row are sorted, so a pair whose rank (domain: ranks of a domain
    are consecutive) equals the previous pair's is one that DeepEP's per-rank (per-domain)
    deduplication removes. Two bincounts then count (cell, repeat state, destination rank) and
    (step and layer, slot)."""
    R, S, states = c.R, c.S, c.states
    lo, hi = int(cell.min()), int(cell.max()) + 1  # count over the span of cells the rows touch
    sl_lo, sl_hi = lo // R, (hi - 1) // R + 1
    wide = np.int16 if max(S, states * R) < 2**15 else np.int32
    slots = slots.astype(wide, copy=False)
    # (step and layer, slot) keys, one row of keys per choice
    slot_keys = np.empty(slots.shape[::-1], dtype=np.int64)
    np.add(((cell // R - sl_lo) * S)[None, :], slots.T, out=slot_keys)
    _add_counts(c.slots, slot_keys, sl_lo * S, sl_hi * S)
    rank = np.right_shift(slots, c.spr_shift) if c.spr_shift >= 0 else np.take(c.rank_of_slot, slots)
    rank = np.stack(_sort_columns(list(rank.astype(wide, copy=False).T)))  # [K, n], rows ascending
    repeat = (rank[1:] == rank[:-1]).astype(wide)
    if states == 3:
        node = np.take(c.node_of_rank, rank)
        repeat += node[1:] == node[:-1]
    repeat *= wide(R)
    rank[1:] += repeat  # state * R + rank
    rank_keys = ((cell - lo) * (states * R))[None, :] + rank
    _add_counts(c.ranks, rank_keys, lo * states * R, hi * states * R)


def _add_counts(acc: np.ndarray, keys: np.ndarray, lo: int, hi: int) -> None:
    """``acc[lo + key] += 1`` for every key (keys relative to ``lo``, all below ``hi - lo``)."""
    span = acc[lo:hi]
    np.add(span, np.bincount(keys.reshape(-1), minlength=hi - lo), out=span)


def _window_selection(schedule: Schedule, step_lo: int, step_hi: int) -> list[tuple[int, np.ndarray]]:
    """Per copy of the stream with tokens in replayed steps [step_lo, step_hi): (copy, the stream
    positions of those tokens)."""
    out = []
    for c in range(schedule.step.shape[0]):
        sel = np.flatnonzero((schedule.step[c] >= step_lo) & (schedule.step[c] < step_hi))
        if sel.size:
            out.append((c, sel))
    return out


def _trace_step_ranges(tokens: PhaseTokens, selection: list[tuple[int, np.ndarray]]) -> list[tuple[int, int]]:
    """The trace-step ranges (inclusive, merged) the selected tokens come from."""
    out = sorted(
        (int(tokens.trace_step[sel].min()), int(tokens.trace_step[sel].max())) for _, sel in selection
    )
    merged: list[tuple[int, int]] = []
    for lo, hi in out:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _cell_tables(
    index: TokenIndex,
    schedule: Schedule,
    selection: list[tuple[int, np.ndarray]],
    step_lo: int,
    cells_per_step: int,
) -> list[tuple[int, np.ndarray]]:
    """Per selected copy ``(f0, table)``: ``table[f - f0]`` is the counter cell part
    ``window step * cells_per_step + replayed rank`` of the token at flat position ``f`` (NO_CELL
    for tokens of the range that this copy does not replay in the window: other phase, other step)."""
    flat = index.stream_flat[schedule.phase]
    copies = []
    for c, sel in selection:
        where = flat[sel]  # ascending: the stream is in flat order
        f0 = int(where[0])
        table = np.full(int(where[-1]) - f0 + 1, NO_CELL, dtype=np.int64)
        table[where - f0] = (schedule.step[c, sel] - step_lo) * cells_per_step + schedule.rank[c, sel]
        copies.append((f0, table))
    return copies


def prefetch_window(
    source: RoutingSource,
    tokens: PhaseTokens,
    schedule: Schedule,
    *,
    step_lo: int,
    step_hi: int,
) -> None:
    """Start decoding, on a background thread, the routing row groups that replayed steps
    ``step_lo .. step_hi - 1`` of a phase read (``expert_window`` then takes them)."""
    ranges = _trace_step_ranges(tokens, _window_selection(schedule, step_lo, step_hi))
    if ranges:
        source.prefetch(source.row_groups_in(ranges))


def window_size(
    num_layers: int, num_ranks: int, num_slots: int, ranks_per_node: int, rows_per_step: float
) -> int:
    """Replayed steps per window: the counters stay within ``MAX_WINDOW_BINS`` bins, and a window
    holds about ``WINDOW_ROWS`` routing rows (``rows_per_step`` a step), so that counting the next
    window overlaps the timing of this one."""
    states = 2 if num_ranks <= ranks_per_node else 3
    by_bins = MAX_WINDOW_BINS // max(1, num_layers * (num_ranks * num_ranks * states + num_slots))
    return max(1, min(by_bins, int(WINDOW_ROWS // max(1.0, rows_per_step))))
