"""Routing counts: the token-expert pairs of a window of replayed steps, counted from the trace's
routing rows under the placement.

Per (step, MoE layer) this gives the pairs each physical slot receives and, per source and
destination rank, the pairs sent plus those that DeepEP's per-rank and per-domain deduplication
removes, so the per-peer token matrices (dispatch volumes) follow exactly.

How a routing row is counted: the trace's tokens are laid out flat by (trace step, rank, token
index); for each copy of the token stream a window replays, one table gives each flat token its
counter cell, so a row costs one gather plus its layer's offset. The destination ranks of each row
are sorted (a sorting network over the top-k columns); a rank equal to the previous one is a pair
that per-rank deduplication removes (per domain likewise). Two bincounts then fill compact
counters: (step, layer, source rank, repeat state, destination rank) and (step, layer, slot).
Row groups are read and counted by ``WORKERS`` threads, each into its own counters (Parquet decoding
and most numpy kernels release the GIL); the counters are summed at the end.

Shape legend: ``W`` replayed steps of a window, ``L`` MoE layers of the trace, ``R`` ranks, ``S``
physical slots, ``Q`` scale-up domains, ``E`` experts, ``K`` top-k.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, cached_property

import numpy as np
import pyarrow as pa

from tracekit.errors import TraceError
from tracekit.placement import Placement, route_to_slots
from tracekit.replay.schedule import PhaseTokens, Schedule, TokenIndex
from tracekit.trace.reader import Trace
from tracekit.trace.rowgroups import Bounds, RowGroup, RowGroupReader, min_max

#: Routing rows counted at a time: small enough that the temporaries stay in cache.
ROWS_PER_BATCH = 32_768
#: Counter bins per window and worker (8 bytes each).
MAX_WINDOW_BINS = 8_000_000
#: Routing rows (tokens x MoE layers) replayed per window, about.
WINDOW_ROWS = 4_000_000
#: Threads reading and counting row groups.
WORKERS = 2
#: Counter cell of a row that is not replayed: far below zero, so that adding a layer's part to it
#: stays negative.
NO_CELL = -(2**50)

#: (counter cell, layer key or None, expert ids [n, K]) of routing rows; see ``expert_window``.
_Rows = tuple[np.ndarray, np.ndarray | None, np.ndarray]


@dataclass(frozen=True, kw_only=True, eq=False)
class RoutingSource:
    """The routing rows of a trace, read in bounded batches for one window of replayed steps."""

    trace: Trace
    #: Trace MoE layers whose routing is used (decoder layer ids), in order.
    layers: tuple[int, ...]
    top_k: int

    @cached_property
    def reader(self) -> RowGroupReader:
        files = tuple(str(f) for f in self.trace.files("routing"))
        if not files:
            raise TraceError(
                f"{self.trace.path}: the trace has no routing rows; the replay needs per-token routing "
                "(record with tracekit record, or synthesize with tracekit synth)"
            )
        return RowGroupReader(
            files=files,
            table="routing",
            columns=("rank", "step", "layer", "token_index", "expert_ids"),
            stat_columns=("rank", "step", "layer", "token_index", "expert_ids"),
            batch_rows=ROWS_PER_BATCH,
            keep=2 * WORKERS,
        )


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

    def scaled(self, factor: int) -> ExpertWindow:
        """The window with every token repeated ``factor`` times, routed alike (MTP verification:
        each sequence's draft tokens take its token's experts)."""
        if factor == 1:
            return self
        return dataclasses.replace(
            self,
            recv=self.recv * factor,
            rank_pairs=self.rank_pairs * factor,
            dup_rank=self.dup_rank * factor,
            dup_node=self.dup_node * factor,
        )

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


def sort_columns(cols: list[np.ndarray]) -> list[np.ndarray]:
    """Sort K equal-length columns element-wise across the columns (row-wise sort, column layout)."""
    cols = list(cols)
    for i, j in _sorting_network(len(cols)):
        a, b = cols[i], cols[j]
        cols[i] = np.minimum(a, b)
        cols[j] = np.maximum(a, b)
    return cols


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
    """
    epochs = (placement,) if isinstance(placement, Placement) else tuple(placement)
    counting = _WindowCounting.make(
        source, index, schedule, epochs, step_lo=step_lo, step_hi=step_hi, ranks_per_node=ranks_per_node
    )
    reader = source.reader
    ranges = _trace_step_ranges(tokens, counting.selection)
    jobs = list(enumerate(reader.row_groups_in(ranges))) if ranges else []
    if prefetch_next and step_hi < schedule.num_steps:  # the next window's row groups, in background
        ahead = _trace_step_ranges(
            tokens, _window_selection(schedule, step_hi, min(schedule.num_steps, step_hi + counting.W))
        )
        if ahead:
            mine = {item for _, item in jobs}
            reader.prefetch([item for item in reader.row_groups_in(ahead) if item not in mine])
    if len(jobs) > 1 and WORKERS > 1:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            list(pool.map(counting.work, jobs))
    else:
        for job in jobs:
            counting.work(job)
    return counting.result()


def _slot_tables(epochs: tuple[Placement, ...], layers: tuple[int, ...]) -> tuple[bool, bool, np.ndarray]:
    """(single, identity, slot_of) of placement epochs over trace MoE ``layers``: ``single`` when no
    expert has replicas (a slot per expert: ``slot_of[(epoch * L + layer position) * E + expert]``),
    ``identity`` when every layer's slots hold experts 0..E-1 in order (no lookup at all)."""
    L = len(layers)
    S = epochs[0].num_slots
    E = epochs[0].num_experts
    rows = [[p.layers.index(layer) for layer in layers] for p in epochs]
    single = all(bool((p.logcnt[r] == 1).all()) for p, r in zip(epochs, rows, strict=True))
    identity = (
        single
        and S == E
        and all((p.phy2log[pi] == np.arange(E)).all() for p, r in zip(epochs, rows, strict=True) for pi in r)
    )
    slot_of = np.zeros(len(epochs) * L * E, dtype=np.int16 if S < 2**15 else np.int32)
    if single:
        for ei, (p, r) in enumerate(zip(epochs, rows, strict=True)):
            for li, pi in enumerate(r):
                slot_of[(ei * L + li) * E + p.phy2log[pi]] = np.arange(S)
    return single, identity, slot_of


@dataclass(kw_only=True, eq=False)
class _WindowCounting:
    """The counting of one window: fixed tables, then :meth:`work` per row group (on worker
    threads, each into its own counters), then :meth:`result`."""

    source: RoutingSource
    index: TokenIndex
    epochs: tuple[Placement, ...]
    step_lo: int
    W: int
    R: int
    Q: int
    ranks_per_node: int
    single: bool
    identity: bool
    slot_of: np.ndarray
    #: int64 [epochs]: each epoch's first trace step.
    from_steps: np.ndarray
    #: int64 [max layer + 1]: each trace layer's position among the replayed layers (-1: none).
    layer_pos: np.ndarray
    #: Per trace layer: its (layer position * R) part of a row's counter cell, NO_CELL if not replayed.
    layer_cell: np.ndarray
    #: Per copy of the stream with tokens in the window: (copy, stream positions).
    selection: list[tuple[int, np.ndarray]]
    #: Per selected copy: (first flat position, counter cell of each flat token from it).
    copies: list[tuple[int, np.ndarray]]
    #: Each worker thread's counters (created on its first counted rows), and all of them.
    local: threading.local = field(default_factory=threading.local)
    made: list[_Counters] = field(default_factory=list)
    #: Rows of experts with replicas, by row-group order, counted at the end (:meth:`_count_replicas`).
    stash: dict[int, list[_Rows]] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        source: RoutingSource,
        index: TokenIndex,
        schedule: Schedule,
        epochs: tuple[Placement, ...],
        *,
        step_lo: int,
        step_hi: int,
        ranks_per_node: int,
    ) -> _WindowCounting:
        L = len(source.layers)
        R = schedule.num_ranks
        layer_pos = np.full(max(source.layers) + 1, -1, dtype=np.int64)
        layer_pos[list(source.layers)] = np.arange(L)
        single, identity, slot_of = _slot_tables(epochs, source.layers)
        selection = _window_selection(schedule, step_lo, step_hi)
        return cls(
            source=source,
            index=index,
            epochs=epochs,
            step_lo=step_lo,
            W=step_hi - step_lo,
            R=R,
            Q=-(-R // ranks_per_node),
            ranks_per_node=ranks_per_node,
            single=single,
            identity=identity,
            slot_of=slot_of,
            from_steps=np.array([p.from_step for p in epochs], dtype=np.int64),
            layer_pos=layer_pos,
            layer_cell=np.where(layer_pos >= 0, layer_pos * R, NO_CELL),
            selection=selection,
            copies=_cell_tables(index, schedule, selection, step_lo, L * R),
        )

    @property
    def L(self) -> int:
        return len(self.source.layers)

    @property
    def S(self) -> int:
        return self.epochs[0].num_slots

    @property
    def states(self) -> int:
        return 2 if self.Q == 1 else 3

    def new_counters(self) -> _Counters:
        spr = self.epochs[0].slots_per_rank
        W, L, R, S, states = self.W, self.L, self.R, self.S, self.states
        return _Counters(
            ranks=np.zeros(W * L * R * states * R, dtype=np.int64),
            slots=np.zeros(W * L * S, dtype=np.int64),
            R=R,
            S=S,
            states=states,
            spr_shift=spr.bit_length() - 1 if spr & (spr - 1) == 0 else -1,
            rank_of_slot=(np.arange(S) // spr).astype(self.slot_of.dtype),
            node_of_rank=(np.arange(R) // self.ranks_per_node).astype(self.slot_of.dtype),
        )

    def rows(self, batch: pa.RecordBatch, bounds: Bounds) -> list[_Rows]:
        """The batch's rows replayed in this window, once per copy of the stream that has tokens
        here: (counter cell ``(window step * L + layer position) * R + source rank``, layer key
        ``epoch * L + layer position`` when slots are looked up (else None), expert ids [n, K])."""
        if batch.num_rows == 0:
            return []
        layer = batch.column("layer").to_numpy()
        trace_step = batch.column("step").to_numpy()
        fl, has_token = self.index.flat(
            batch.column("rank").to_numpy(), trace_step, batch.column("token_index").to_numpy(), bounds
        )
        lcell = _by_layer(self.layer_cell, layer, bounds, NO_CELL)
        lkey = None
        if not self.identity:
            lkey = _by_layer(self.layer_pos, layer, bounds, -1)
            if len(self.epochs) > 1:  # one searchsorted per batch: the epoch of each row's trace step
                epoch = np.maximum(np.searchsorted(self.from_steps, trace_step, side="right") - 1, 0)
                lkey = np.where(lkey >= 0, epoch * self.L + lkey, -1)
        ids = expert_ids_array(batch.column("expert_ids"), self.source.top_k)
        out = _replayed_rows(self.copies, fl, has_token, lcell, lkey, ids)
        id_lo, id_hi = bounds.get("expert_ids", (-1, -1))  # no statistics: check the rows
        E = self.epochs[0].num_experts
        if not (id_lo >= 0 and id_hi < E):
            for _, _, chosen in out:
                lo_id, hi_id = min_max(chosen)
                if chosen.size and (lo_id < 0 or hi_id >= E):
                    raise TraceError(
                        f"{self.source.trace.path}: routing holds expert ids {lo_id}..{hi_id} outside "
                        f"0..{E - 1}; the trace does not match its model's expert count"
                    )
        return out

    def work(self, job: tuple[int, RowGroup]) -> None:
        """Count one row group (``job``: its order among the window's row groups, and the row group)."""
        order, item = job
        reader = self.source.reader
        bounds = reader.bounds.get(item, {})
        for batch in reader.read(item):
            for got in self.rows(batch, bounds):
                if not self.single:
                    self.stash.setdefault(order, []).append(got)
                    continue
                counters = getattr(self.local, "counters", None)
                if counters is None:
                    counters = self.local.counters = self.new_counters()
                    self.made.append(counters)
                cell, lkey, chosen = got
                if lkey is not None:  # slot lookup per (epoch, layer) and expert
                    chosen = self.slot_of[(lkey * self.epochs[0].num_experts)[:, None] + chosen]
                _count(counters, cell, chosen)

    def _count_replicas(self, total: _Counters) -> None:
        """Rows of experts with replicas: one ``route_to_slots`` call per (step, epoch, layer)
        dispatch with all of its tokens in (source rank, row) order, so the round-robin among
        replicas follows the documented rule."""
        L, R = self.L, self.R
        ordered = [x for key in sorted(self.stash) for x in self.stash[key]]
        cell = np.concatenate([c for c, _, _ in ordered])
        lkey = np.concatenate([k for _, k, _ in ordered])  # type: ignore[misc]
        chosen = np.concatenate([x for _, _, x in ordered])
        w, src = cell // (L * R), cell % R
        slots = np.empty(chosen.shape, dtype=np.int64)
        order = np.lexsort((np.arange(w.size), src, lkey, w))
        group = (w * len(self.epochs) * L + lkey)[order]
        cuts = np.flatnonzero(np.diff(group)) + 1
        for part in np.split(order, cuts):
            ei, li = divmod(int(lkey[part[0]]), L)
            slots[part] = route_to_slots(
                self.epochs[ei], self.source.layers[li], chosen[part], src[part], self.ranks_per_node
            )
        _count(total, cell, slots)

    def result(self) -> ExpertWindow:
        """The window's counts, summed over the workers' counters."""
        W, L, R, Q, states, rpn = self.W, self.L, self.R, self.Q, self.states, self.ranks_per_node
        total = self.made[0] if self.made else self.new_counters()
        for extra in self.made[1:]:
            np.add(total.ranks, extra.ranks, out=total.ranks)
            np.add(total.slots, extra.slots, out=total.slots)
        if self.stash:
            self._count_replicas(total)
        # ranks[cell, state, destination rank] -> pairs and repeats per destination rank and domain
        by_state = total.ranks.reshape(W * L * R, states, R)
        if states == 3:
            per_rank = by_state[:, 1] + by_state[:, 2]  # repeats of the domain (the rank's included)
            pad = Q * rpn - R
            if pad:
                per_rank = np.concatenate(
                    [per_rank, np.zeros((W * L * R, pad), dtype=per_rank.dtype)], axis=1
                )
            dup_node = per_rank.reshape(W, L, R, Q, rpn).sum(axis=-1)
        else:
            dup_node = np.zeros((W, L, R, Q), dtype=np.int64)
        return ExpertWindow(
            steps=np.arange(self.step_lo, self.step_lo + W),
            recv=total.slots.reshape(W, L, self.S),
            rank_pairs=by_state.sum(axis=1).reshape(W, L, R, R),
            dup_rank=np.ascontiguousarray(by_state[:, states - 1]).reshape(W, L, R, R),
            dup_node=dup_node,
            slots_per_rank=self.epochs[0].slots_per_rank,
            ranks_per_node=rpn,
            top_k=self.source.top_k,
        )


def _by_layer(table: np.ndarray, layer: np.ndarray, bounds: Bounds, missing: int) -> np.ndarray:
    """``table[layer]`` per row (``missing`` for layers past the table)."""
    lo, hi = bounds.get("layer") or min_max(layer)
    if lo >= 0 and hi < table.size:
        return np.take(table, layer)
    inside = (layer >= 0) & (layer < table.size)
    return np.where(inside, np.take(table, np.clip(layer, 0, table.size - 1)), missing)


def expert_ids_array(lists: pa.Array, K: int) -> np.ndarray:
    """[n, K] expert ids of a routing batch's list column."""
    if isinstance(lists, pa.FixedSizeListArray):  # the values of its rows, without a copy
        return lists.values.slice(lists.offset * K, len(lists) * K).to_numpy().reshape(-1, K)
    return lists.flatten().to_numpy().reshape(-1, K)


def _replayed_rows(
    copies: list[tuple[int, np.ndarray]],
    fl: np.ndarray,
    has_token: np.ndarray | None,
    lcell: np.ndarray,
    lkey: np.ndarray | None,
    ids: np.ndarray,
) -> list[_Rows]:
    """The rows (flat token positions ``fl``) that a window replays, once per copy of the stream."""
    fl_lo, fl_hi = min_max(fl)
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
    return out


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
    rank = np.stack(sort_columns(list(rank.astype(wide, copy=False).T)))  # [K, n], rows ascending
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
        source.reader.prefetch(source.reader.row_groups_in(ranges))


def window_size(
    num_layers: int, num_ranks: int, num_slots: int, ranks_per_node: int, rows_per_step: float
) -> int:
    """Replayed steps per window: the counters stay within ``MAX_WINDOW_BINS`` bins, and a window
    holds about ``WINDOW_ROWS`` routing rows (``rows_per_step`` a step), so that counting the next
    window overlaps the timing of this one."""
    states = 2 if num_ranks <= ranks_per_node else 3
    by_bins = MAX_WINDOW_BINS // max(1, num_layers * (num_ranks * num_ranks * states + num_slots))
    return max(1, min(by_bins, int(WINDOW_ROWS // max(1.0, rows_per_step))))
