"""Workload extraction: what each rank of a deployment does in each replayed step and MoE layer.

From a trace's ``tokens`` and ``routing`` tables and a deployment (EP ranks, batch per GPU,
placement), this module builds, per phase (prefill, decode):

- the *schedule*: which replayed step and rank each trace token lands on (as recorded, or re-packed
  into steps of ``batch_per_gpu x ranks`` tokens, reusing the trace's tokens from the start when it
  runs out);
- per (step, rank): tokens, their KV lengths and the keys read (attention work), and the tokens
  that produce an output (LM head);
- per (step, MoE layer, source rank, physical slot): token-expert pairs routed there under the
  placement, plus the duplicate pairs that DeepEP's per-rank and per-node deduplication removes, so
  the per-peer token matrices (dispatch volumes) follow exactly.

Shape legend: ``W`` replayed steps of a window, ``L`` MoE layers of the trace, ``R`` ranks, ``S``
physical slots, ``Q`` scale-up domains (nodes), ``N`` tokens, ``K`` top-k, ``C`` copies of the
trace's token stream. Everything is columnar: no Python loop runs per token or per routing choice.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.errors import DeploymentError, TraceError, UsageError
from tracekit.placement import Placement, route_to_slots
from tracekit.trace.reader import Trace

PHASES = ("prefill", "decode")

#: Routing rows counted at a time: small enough that the temporaries stay in cache.
ROWS_PER_BATCH = 131_072
#: Bins of the (step, layer, source rank, slot) counter per window and worker (8 bytes each).
MAX_WINDOW_BINS = 8_000_000
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
    """Maps a routing row's (rank, step, token_index) to its phase and stream position."""

    step_min: int
    num_steps: int
    #: Trace rank ids (sorted); a row's rank position is searchsorted into it.
    ranks: np.ndarray
    #: [num_steps * len(ranks) + 1] start of each (step, rank) block in the flat token order.
    offset: np.ndarray
    #: [flat] phase code (0 prefill, 1 decode, -1 no token) of each flat token.
    phase: np.ndarray
    #: [flat] stream position within its phase.
    position: np.ndarray
    #: trace steps with at least one token, per phase.
    steps_by_phase: dict[str, np.ndarray]

    def lookup(
        self, rank: np.ndarray, step: np.ndarray, token_index: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(phase code, stream position) of routing rows; phase -1 for rows without a token."""
        if self.ranks.size == 1:
            ri: np.ndarray | int = 0
            rank_ok = bool((rank == self.ranks[0]).all())
        else:
            ri = np.minimum(np.searchsorted(self.ranks, rank), self.ranks.size - 1)
            rank_ok = bool((self.ranks[ri] == rank).all())
        si = step.astype(np.int64) - self.step_min
        if rank_ok and si.size and si.min() >= 0 and si.max() < self.num_steps and token_index.min() >= 0:
            block = si * self.ranks.size + ri
            flat = self.offset[block] + token_index
            if (flat < self.offset[block + 1]).all():  # every row has its token: the fast path
                return self.phase[flat], self.position[flat]
        ok = (si >= 0) & (si < self.num_steps) & (token_index >= 0)
        if self.ranks.size == 1:
            ok &= rank == self.ranks[0]
        else:
            ok &= self.ranks[ri] == rank
        block = np.where(ok, si * self.ranks.size + ri, 0)
        flat = self.offset[block] + token_index.astype(np.int64)
        ok &= flat < self.offset[block + 1]
        flat = np.where(ok, flat, 0)
        return np.where(ok, self.phase[flat], -1), self.position[flat]


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
        tok = tok.join(steps.unique(["rank", "step"]), on=["rank", "step"], how="left")
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
    tok = tok.sort(["step", "rank", "token_index"])
    ranks = np.unique(tok["rank"].to_numpy()).astype(np.int64)
    step_min = int(tok["step"].min())  # type: ignore[arg-type]
    num_steps = int(tok["step"].max()) - step_min + 1  # type: ignore[arg-type]
    # Flat order: one block per (step, rank) of size max(token_index) + 1.
    blocks = tok.group_by(["step", "rank"]).agg(pl.col("token_index").max().alias("n"))
    bstep = blocks["step"].to_numpy().astype(np.int64) - step_min
    brank = np.searchsorted(ranks, blocks["rank"].to_numpy())
    sizes = np.zeros(num_steps * ranks.size, dtype=np.int64)
    sizes[bstep * ranks.size + brank] = blocks["n"].to_numpy().astype(np.int64) + 1
    offset = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=offset[1:])
    t_step = tok["step"].to_numpy().astype(np.int64)
    t_rank = tok["rank"].to_numpy().astype(np.int64)
    t_ti = tok["token_index"].to_numpy().astype(np.int64)
    flat = offset[(t_step - step_min) * ranks.size + np.searchsorted(ranks, t_rank)] + t_ti
    phase_flat = np.full(int(offset[-1]), -1, dtype=np.int8)
    pos_flat = np.zeros(int(offset[-1]), dtype=np.int64)
    is_prefill = tok["is_prefill"].to_numpy()
    position = tok["position"].to_numpy()
    request = tok["request_id"].fill_null(-1).to_numpy().astype(np.int64)
    last = tok["_last"].to_numpy()
    out: dict[str, PhaseTokens] = {}
    steps_by_phase: dict[str, np.ndarray] = {}
    for code, phase in enumerate(PHASES):
        sel = is_prefill if phase == "prefill" else ~is_prefill
        idx = np.nonzero(sel)[0]
        phase_flat[flat[idx]] = code
        pos_flat[flat[idx]] = np.arange(idx.size)
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
        steps_by_phase[phase] = np.unique(t_step[idx])
    index = TokenIndex(
        step_min=step_min,
        num_steps=num_steps,
        ranks=ranks,
        offset=offset,
        phase=phase_flat,
        position=pos_flat,
        steps_by_phase=steps_by_phase,
    )
    return out, index


def _token_frame(trace: Trace) -> pl.DataFrame:
    cols = ["rank", "step", "token_index", "request_id", "position", "is_prefill"]
    tok = trace.scan("tokens").select(cols).collect()
    if tok.height:
        return tok.unique(["rank", "step", "token_index"], keep="first")
    # No tokens table: the distinct tokens of the routing table's first layer.
    first = trace.scan("routing").select(pl.col("layer").min()).collect().item()
    if first is None:
        return tok
    return (
        trace.scan("routing")
        .filter(pl.col("layer") == first)
        .select("rank", "step", "token_index")
        .unique()
        .collect()
        .with_columns(
            pl.lit(None, pl.Int64).alias("request_id"),
            pl.lit(None, pl.Int32).alias("position"),
            pl.lit(None, pl.Boolean).alias("is_prefill"),
        )
        .select(cols)
    )


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
        """Every replayed token: (stream position, step, rank), in replay order."""
        c, p = np.nonzero(self.step >= 0)
        return p, self.step[c, p], self.rank[c, p]


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
    copy = np.nonzero(schedule.step >= 0)[0]
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

    ``pairs[W, L, R, S]`` counts token-expert pairs a source rank sends to each physical slot;
    ``dup_rank[W, L, R, R]`` the pairs beyond the first to the same destination rank (per token);
    ``dup_node[W, L, R, Q]`` the same per destination scale-up domain.
    """

    steps: np.ndarray
    pairs: np.ndarray
    dup_rank: np.ndarray
    dup_node: np.ndarray
    slots_per_rank: int
    ranks_per_node: int
    top_k: int

    @property
    def recv(self) -> np.ndarray:
        """[W, L, S] token-expert pairs per physical slot."""
        return self.pairs.sum(axis=2)

    @cached_property
    def rank_pairs(self) -> np.ndarray:
        """[W, L, R, R] token-expert pairs from source rank to destination rank (computed once:
        the per-peer token and domain counts derive from it)."""
        W, L, R, _ = self.pairs.shape
        flat = self.pairs.reshape(-1)
        # one reduceat over each rank's consecutive slots: faster than a sum over a short last axis
        out = np.add.reduceat(flat, np.arange(0, flat.size, self.slots_per_rank)) if flat.size else flat
        return out.reshape(W, L, R, R)

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


def _sorting_network(n: int) -> list[tuple[int, int]]:
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
    return out


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
        files = [str(f) for f in self.trace.files("routing")]
        if not files:
            raise TraceError(
                f"{self.trace.path}: the trace has no routing rows; the replay needs per-token routing "
                "(record with tracekit record, or synthesize with tracekit synth)"
            )
        out = []
        for f in files:
            md = pq.ParquetFile(f).metadata
            col = md.schema.names.index("step")
            for i in range(md.num_row_groups):
                st = md.row_group(i).column(col).statistics
                lo, hi = (
                    (int(st.min), int(st.max)) if st is not None and st.has_min_max else (-(2**31), 2**31)
                )
                out.append((f, i, lo, hi))
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
        table = pq.ParquetFile(item[0]).read_row_group(item[1], columns=cols, use_threads=False)
        return table.combine_chunks().to_batches(max_chunksize=ROWS_PER_BATCH)

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
    phase_code = PHASES.index(schedule.phase)
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
    shift = spr.bit_length() - 1 if spr & (spr - 1) == 0 else -1

    def new_counters() -> _Counters:
        return _Counters(
            pairs=np.zeros(W * L * R * S, dtype=np.int64),
            dup_rank=np.zeros(W * L * R * R, dtype=np.int64),
            dup_node=np.zeros(W * L * R * Q, dtype=np.int64),
            L=L,
            R=R,
            S=S,
            Q=Q,
            dst_of_slot=(np.arange(S) // spr).astype(slot_dtype),
            node_of_rank=(np.arange(R) // ranks_per_node).astype(slot_dtype),
            spr_shift=shift,
        )

    def rows(batch: pa.RecordBatch) -> _Rows | None:
        """(window step, layer key, replayed source rank, expert ids [n, K]) of a batch's rows; the
        layer key is ``epoch * L + layer position`` (the layer position with one epoch)."""
        layer = batch.column("layer").to_numpy()
        if int(layer.min()) < 0 or int(layer.max()) >= layer_pos.size:  # rows of layers not replayed
            inside = (layer >= 0) & (layer < layer_pos.size)
            lpos = np.where(inside, np.take(layer_pos, np.clip(layer, 0, layer_pos.size - 1)), -1)
        else:
            lpos = np.take(layer_pos, layer)
        trace_step = batch.column("step").to_numpy()
        code, pos = index.lookup(
            batch.column("rank").to_numpy(),
            trace_step,
            batch.column("token_index").to_numpy(),
        )
        if several:  # one searchsorted per batch: the epoch of each row's trace step
            epoch = np.maximum(np.searchsorted(from_steps, trace_step, side="right") - 1, 0)
            lpos = np.where(lpos >= 0, epoch * L + lpos, -1)
        keep = (code == phase_code) & (lpos >= 0)
        all_kept = bool(keep.all())
        if not all_kept:
            pos = np.where(keep, pos, 0)  # positions of other phases index another stream
        ids = batch.column("expert_ids").flatten().to_numpy().reshape(-1, K)
        parts: list[tuple[np.ndarray | None, np.ndarray, np.ndarray]] = []
        for c in range(schedule.step.shape[0]):
            st = np.take(schedule.step[c], pos)
            if not all_kept:
                st = np.where(keep, st, -1)
            if int(st.min()) >= step_lo and int(st.max()) < step_hi:  # the whole batch: no copy
                parts.append((None, st - step_lo, np.take(schedule.rank[c], pos)))
                continue
            sel = np.flatnonzero((st >= step_lo) & (st < step_hi))
            if sel.size:
                parts.append((sel, st[sel] - step_lo, schedule.rank[c, pos[sel]]))
        if not parts:
            return None
        if len(parts) == 1 and parts[0][0] is None:
            w, src, lrow, chosen = parts[0][1], parts[0][2], lpos, ids
        else:
            row = np.concatenate([np.arange(ids.shape[0]) if r is None else r for r, _, _ in parts])
            w = np.concatenate([x for _, x, _ in parts])
            src = np.concatenate([x for _, _, x in parts])
            lrow, chosen = lpos[row], ids[row]
        lo_id, hi_id = (int(chosen.min()), int(chosen.max())) if chosen.size else (0, 0)
        if lo_id < 0 or hi_id >= E:
            raise TraceError(
                f"{source.trace.path}: routing holds expert ids {lo_id}..{hi_id} outside 0..{E - 1}; "
                "the trace does not match its model's expert count"
            )
        return w, lrow, src, chosen

    local = threading.local()
    made: list[_Counters] = []
    stash: dict[int, list[_Rows]] = {}

    def work(job: tuple[int, tuple[str, int]]) -> None:
        order, item = job
        for batch in source.read(item):
            got = rows(batch)
            if got is None:
                continue
            w, lrow, src, chosen = got
            if not single:
                stash.setdefault(order, []).append(got)
                continue
            counters = getattr(local, "counters", None)
            if counters is None:
                counters = local.counters = new_counters()
                made.append(counters)
            ids_t = np.ascontiguousarray(chosen.T)  # [K, n]: one contiguous column per choice
            slots_t = ids_t if identity else slot_of[(lrow * E)[None, :] + ids_t]
            _count(counters, w, lrow % L if several else lrow, src, slots_t)

    ranges = _trace_step_ranges(tokens, schedule, step_lo, step_hi)
    jobs = list(enumerate(source.row_groups_in(ranges))) if ranges else []
    if prefetch_next and step_hi < schedule.num_steps:  # the next window's row groups, in background
        ahead = _trace_step_ranges(tokens, schedule, step_hi, min(schedule.num_steps, step_hi + W))
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
        for name in ("pairs", "dup_rank", "dup_node"):
            np.add(getattr(total, name), getattr(extra, name), out=getattr(total, name))
    if stash:
        # Replicas: one route_to_slots call per (step, epoch, layer) dispatch with all of its tokens
        # in (source rank, row) order, so the round-robin among replicas follows the documented rule.
        ordered = [x for key in sorted(stash) for x in stash[key]]
        w, lkey, src, chosen = (np.concatenate(x) for x in zip(*ordered, strict=True))
        slots = np.empty(chosen.shape, dtype=np.int64)
        order = np.lexsort((np.arange(w.size), src, lkey, w))
        group = (w * len(epochs) * L + lkey)[order]
        cuts = np.flatnonzero(np.diff(group)) + 1
        for part in np.split(order, cuts):
            ei, li = divmod(int(lkey[part[0]]), L)
            slots[part] = route_to_slots(
                epochs[ei], source.layers[li], chosen[part], src[part], ranks_per_node
            )
        _count(total, w, lkey % L, src, np.ascontiguousarray(slots.T))
    return ExpertWindow(
        steps=np.arange(step_lo, step_hi),
        pairs=total.pairs.reshape(W, L, R, S),
        dup_rank=total.dup_rank.reshape(W, L, R, R),
        dup_node=total.dup_node.reshape(W, L, R, Q),
        slots_per_rank=spr,
        ranks_per_node=ranks_per_node,
        top_k=K,
    )


#: (window step, layer key, replayed source rank, expert ids [n, K]) of routing rows.
_Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True, kw_only=True, eq=False)
class _Counters:
    pairs: np.ndarray
    dup_rank: np.ndarray
    dup_node: np.ndarray
    L: int
    R: int
    S: int
    Q: int
    dst_of_slot: np.ndarray
    node_of_rank: np.ndarray
    #: log2(slots_per_rank) when it is a power of two (rank = slot >> shift), else -1
    spr_shift: int


def _count(c: _Counters, w: np.ndarray, lrow: np.ndarray, src: np.ndarray, slots_t: np.ndarray) -> None:
    """Add routed rows (window step, layer position, source rank; ``slots_t[K, n]`` the slot of
    each choice) to the counters."""
    cell = (w * c.L + lrow) * c.R + src  # (step, layer, source rank)
    lo, hi = int(cell.min()), int(cell.max()) + 1
    rel = cell - lo  # count over the span of cells this batch touches only
    _add_counts(c.pairs, (rel * c.S)[None, :] + slots_t, lo * c.S, hi * c.S)
    # Sorting each token's destination ranks puts repeats side by side: a repeat of the previous
    # column is a pair the per-rank (and, for domains, per-node) deduplication removes.
    dst = np.right_shift(slots_t, c.spr_shift) if c.spr_shift >= 0 else np.take(c.dst_of_slot, slots_t)
    dst = np.stack(_sort_columns(list(dst)))
    n = rel.size
    # flat positions of the repeats in dst[1:] (one flatnonzero: cheaper than a 2-D nonzero)
    at = np.flatnonzero(dst[1:] == dst[:-1])
    if at.size:
        _add_counts(c.dup_rank, rel[at % n] * c.R + dst[1:].reshape(-1)[at], lo * c.R, hi * c.R)
    if c.Q > 1:
        node = np.take(c.node_of_rank, dst)
        at = np.flatnonzero(node[1:] == node[:-1])
        if at.size:
            _add_counts(c.dup_node, rel[at % n] * c.Q + node[1:].reshape(-1)[at], lo * c.Q, hi * c.Q)


def _add_counts(acc: np.ndarray, keys: np.ndarray, lo: int, hi: int) -> None:
    """``acc[lo + key] += 1`` for every key (keys relative to ``lo``, all below ``hi - lo``)."""
    counts = np.bincount(keys.reshape(-1), minlength=hi - lo)
    np.add(acc[lo:hi], counts, out=acc[lo:hi])


def _trace_step_ranges(
    tokens: PhaseTokens, schedule: Schedule, step_lo: int, step_hi: int
) -> list[tuple[int, int]]:
    """Inclusive trace-step ranges holding the stream tokens of replayed steps [step_lo, step_hi)."""
    out: list[tuple[int, int]] = []
    for c in range(schedule.step.shape[0]):
        sel = np.nonzero((schedule.step[c] >= step_lo) & (schedule.step[c] < step_hi))[0]
        if sel.size:
            ts = tokens.trace_step[sel]
            out.append((int(ts.min()), int(ts.max())))
    out.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in out:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def window_size(num_layers: int, num_ranks: int, num_slots: int) -> int:
    """Replayed steps per window so the counters stay within ``MAX_WINDOW_BINS`` bins."""
    return max(1, MAX_WINDOW_BINS // max(1, num_layers * num_ranks * num_slots))
