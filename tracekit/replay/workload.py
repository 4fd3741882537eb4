"""Counted workloads: a phase's routing read once, counted once per expert layout and batch, and
shared by every deployment that needs the same counts (the fast path of ``tracekit.replay.fast``).

A replay counts its routing window by window into per-peer matrices (:mod:`tracekit.replay.counts`);
the timing stage then reduces them to a few numbers per (step, layer, rank). Here those numbers are
counted straight from the routing, kept in memory as one ``[N, L, K]`` array of the phase's token
stream, so that a search over deployments pays for the routing once:

- :class:`RoutingStream`: the expert ids of each token of a phase, in stream order (trace step,
  rank, token index), read from the trace's row groups once;
- :class:`Workloads`: the counts of an expert layout (placement epochs on ``G`` expert groups,
  ``D`` groups per scale-up domain) under a re-batched schedule (``B`` tokens per group per step),
  cached by ``(layout, B, steps)``. The hardware, precision, communication implementation,
  two-batch overlap and the attention layout of a deployment do not change them: every deployment
  with the same layout and batch reuses one :class:`CountedWindow`;
- :class:`CountedWindow`: per (step, trace MoE layer, group) ``[W, L, G]``: what the grouped expert
  GEMMs depend on (:class:`tracekit.cost.kernels.GroupedRows`, also per two-batch-overlap half) and
  the link loads of each deduplication rule (:class:`tracekit.replay.timing.RoutedCounts`).

Replayed token ``g`` of the cyclically repeated stream is stream token ``g mod N`` on step
``g // (B G)`` and group ``(g // B) mod G``, as :func:`tracekit.replay.schedule.make_schedule` places
it; a destination of a token is its slot's group (``slot // slots per group``). Every count is a
``bincount`` of blocks of consecutive positions (a step's ``G B`` tokens, a source group's ``B``, a
domain's ``B D``) or a sum of such counts: the source side comes from each source group's block
counted by destination (``[W, G, L, G]``), and no Python loop runs per token. A schedule longer than
the stream repeats itself every ``P`` steps (:meth:`Workloads.period`): one period is counted.

Shape legend: ``N`` stream tokens, ``L`` trace MoE layers, ``K`` top-k, ``W`` replayed steps, ``G``
expert groups, ``B`` tokens per group per step, ``S`` physical slots, ``D`` groups per domain.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from tracekit.cost.kernels import GROUPED_TILE_ROWS, GroupedRows
from tracekit.errors import DeploymentError, TraceError
from tracekit.hardware import COMM_IMPL_REGISTRY, comm_impl
from tracekit.placement import Placement, route_to_slots
from tracekit.replay.counts import ROWS_PER_BATCH, expert_ids_array, sort_columns
from tracekit.replay.schedule import PhaseTokens, TokenIndex
from tracekit.replay.timing import RoutedCounts
from tracekit.trace.reader import Trace
from tracekit.trace.rowgroups import RowGroupReader, min_max

#: Largest routing array (bytes) a stream keeps in memory.
MAX_STREAM_BYTES = 4 * 2**30


@dataclass(frozen=True, kw_only=True, eq=False)
class RoutingStream:
    """The routing of one phase's token stream, in memory."""

    phase: str
    #: [N, L, K] expert ids of each stream token at each trace MoE layer (-1: no routing row).
    expert_ids: np.ndarray
    #: Trace MoE layers, in the order of the second axis.
    layers: tuple[int, ...]
    num_experts: int

    @property
    def num_tokens(self) -> int:
        return int(self.expert_ids.shape[0])

    @cached_property
    def complete(self) -> bool:
        """Every token has a routing row at every layer."""
        return bool((self.expert_ids[..., 0] >= 0).all())

    def suffix(self, start: int) -> RoutingStream:
        """The stream from token ``start`` on (a placement's ``from_step`` drops the tokens before it)."""
        if start == 0:
            return self
        return RoutingStream(
            phase=self.phase,
            expert_ids=self.expert_ids[start:],
            layers=self.layers,
            num_experts=self.num_experts,
        )


def load_stream(
    trace: Trace, index: TokenIndex, phase: str, *, layers: tuple[int, ...], top_k: int, num_experts: int
) -> RoutingStream:
    """Read the routing of ``phase``'s tokens (``index.stream_flat[phase]``) into an ``[N, L, K]``
    array, row group by row group (the rows of other phases and of layers not replayed are dropped)."""
    stream = index.stream_flat.get(phase, np.zeros(0, np.int64))
    N, L = int(stream.size), len(layers)
    need = N * L * top_k * 2
    if need > MAX_STREAM_BYTES:
        raise TraceError(
            f"{trace.path}: the {phase} routing ({N:,} tokens x {L} layers x top-{top_k}) needs "
            f"{need / 2**30:.1f} GiB in memory, more than the fast path keeps ({MAX_STREAM_BYTES / 2**30:.0f} "
            "GiB); plan on a shorter trace (tracekit synth --steps) or replay deployments one by one"
        )
    ids = np.full((N, L, top_k), -1, dtype=np.int16)
    position = np.full(int(index.offset[-1]), -1, dtype=np.int64)
    position[stream] = np.arange(N)
    layer_pos = np.full(max(layers) + 1, -1, dtype=np.int64)
    layer_pos[list(layers)] = np.arange(L)
    files = tuple(str(f) for f in trace.files("routing"))
    if not files:
        raise TraceError(
            f"{trace.path}: the trace has no routing rows; the replay needs per-token routing "
            "(record with tracekit record, or synthesize with tracekit synth)"
        )
    reader = RowGroupReader(
        files=files,
        table="routing",
        columns=("rank", "step", "layer", "token_index", "expert_ids"),
        stat_columns=("rank", "step", "layer", "token_index", "expert_ids"),
        batch_rows=ROWS_PER_BATCH,
        keep=0,
    )
    lo_id, hi_id = 0, -1
    for f, i, *_ in reader.row_groups:
        item = (f, i)
        bounds = reader.bounds.get(item, {})
        for batch in reader.read(item):
            if batch.num_rows == 0:
                continue
            layer = batch.column("layer").to_numpy().astype(np.int64)
            fl, ok = index.flat(
                batch.column("rank").to_numpy(),
                batch.column("step").to_numpy(),
                batch.column("token_index").to_numpy(),
                bounds,
            )
            inside = (layer >= 0) & (layer < layer_pos.size)
            lpos = np.where(inside, layer_pos[np.where(inside, layer, 0)], -1)
            p = position[fl]
            keep = (p >= 0) & (lpos >= 0)
            if ok is not None:
                keep &= ok
            sel = np.flatnonzero(keep)
            if not sel.size:
                continue
            chosen = expert_ids_array(batch.column("expert_ids"), top_k)[sel]
            a, b = min_max(chosen)
            lo_id, hi_id = min(lo_id, a), max(hi_id, b)
            ids[p[sel], lpos[sel]] = chosen
    if hi_id >= num_experts or lo_id < 0:
        raise TraceError(
            f"{trace.path}: routing holds expert ids {lo_id}..{hi_id} outside 0..{num_experts - 1}; the "
            "trace does not match its model's expert count"
        )
    return RoutingStream(phase=phase, expert_ids=ids, layers=tuple(layers), num_experts=num_experts)


@dataclass(frozen=True, kw_only=True, eq=False)
class Layout:
    """Where a deployment's experts sit, as the counts see it."""

    #: What identifies the placement (the counts of equal keys are shared): e.g. ``("contiguous",
    #: redundant slots)`` or a placement file's path.
    key: tuple[object, ...]
    #: Placement epochs over the expert groups (ascending ``from_step``).
    epochs: tuple[Placement, ...]
    #: Expert groups (GPUs, or groups of ``moe_tp`` GPUs).
    groups: int
    #: Groups per scale-up domain, as the all-to-all between groups sees it.
    domain: int

    @property
    def slots_per_group(self) -> int:
        return self.epochs[0].slots_per_rank

    @property
    def num_slots(self) -> int:
        return self.epochs[0].num_slots

    @property
    def replicated(self) -> bool:
        """Some expert has several slots (the token's source decides which one it uses)."""
        return any(bool((p.logcnt > 1).any()) for p in self.epochs)


@dataclass(kw_only=True, eq=False)
class CountedWindow:
    """The counts of one layout under one re-batched schedule, all replayed steps at once
    (``[W, L, G]`` arrays; see the module docstring). Link loads are computed per deduplication rule
    on first use and kept."""

    layout: Layout
    #: Tokens per group per step.
    batch: int
    num_steps: int
    top_k: int
    #: [W, L, S] token-expert pairs each physical slot receives.
    recv: np.ndarray
    #: Source side, [W, L, G]: valid pairs sent, distinct destination groups of the tokens (summed),
    #: pairs and tokens to the group itself.
    sent_pairs: np.ndarray
    sent_tokens: np.ndarray
    own_pairs: np.ndarray
    own_tokens: np.ndarray
    #: Destination side, [W, L, G]: tokens received once per destination group.
    recv_tokens: np.ndarray
    #: Several domains: pairs and tokens sent to the source's own domain, received from the
    #: destination's own domain (None in one domain).
    local_sent_pairs: np.ndarray | None = None
    local_sent_tokens: np.ndarray | None = None
    local_recv_pairs: np.ndarray | None = None
    local_recv_tokens: np.ndarray | None = None
    #: DeepEP normal across domains, from :meth:`_domain_loads` (set by the workloads on request).
    domain_loads: dict[str, np.ndarray] | None = None
    _loads: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    _rows: dict[int, GroupedRows] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.num_steps, int(self.recv.shape[1]), self.layout.groups)

    @cached_property
    def local(self) -> np.ndarray:
        """[W, L, G, S/G] pairs per slot of each group."""
        W, L, G = self.shape
        return self.recv.reshape(W, L, G, self.layout.slots_per_group)

    @cached_property
    def recv_pairs(self) -> np.ndarray:
        return self.local.sum(axis=-1)

    def grouped_rows(self, micro_batches: int) -> GroupedRows:
        """[M, W, L, G] what each group's grouped GEMMs depend on; under two-batch overlap (``M = 2``)
        each slot's pairs split ``ceil / floor`` between the micro-batches, as the timing stage splits them."""
        if micro_batches not in self._rows:
            t = self.local
            if micro_batches == 2:  # ceil and floor halves (counts may be uint8: no t + 1)
                self._rows[2] = _stack_rows([_rows_of(t // 2 + (t & 1)), _rows_of(t // 2)])
            else:
                self._rows[1] = _stack_rows([_rows_of(t)])
        return self._rows[micro_batches]

    def routed_counts(self, impl: str) -> RoutedCounts:
        """The :class:`RoutedCounts` of communication implementation ``impl`` (loads per token)."""
        return RoutedCounts(
            loads=self.link_loads(impl),
            tokens_recv=self.recv_pairs.astype(np.float64),
            active_experts=(self.local > 0).sum(axis=-1),
            sent_tokens=(self.sent_tokens - self.own_tokens).astype(np.float64),
            recv_tokens=(self.recv_tokens - self.own_tokens).astype(np.float64),
        )

    def link_loads(self, impl: str) -> dict[str, np.ndarray]:
        """Each group's NVLink and NIC tokens sent and received in one dispatch of ``impl``, as
        :func:`tracekit.cost.link_loads` gives them from the per-peer matrices (one byte per token)."""
        spec = comm_impl(impl)
        G, D = self.layout.groups, self.layout.domain
        key = f"{spec.dedup}:{spec.links}"
        if key in self._loads:
            return self._loads[key]
        if spec.dedup == "domain" and G > D:
            if self.domain_loads is None:
                raise RuntimeError("workload: DeepEP-normal loads were not counted")
            out = self.domain_loads
        else:
            if spec.dedup == "expert":
                sent, recv, own = self.sent_pairs, self.recv_pairs, self.own_pairs
                lsent, lrecv = self.local_sent_pairs, self.local_recv_pairs
            else:
                sent, recv, own = self.sent_tokens, self.recv_tokens, self.own_tokens
                lsent, lrecv = self.local_sent_tokens, self.local_recv_tokens
            if spec.links == "nic":
                lsent, lrecv = own, own
            elif G <= D or lsent is None or lrecv is None:
                lsent, lrecv = sent, recv
            f = np.float64
            out = {
                "nvlink_sent": (lsent - own).astype(f),
                "nvlink_recv": (lrecv - own).astype(f),
                "network_sent": (sent - lsent).astype(f),
                "network_recv": (recv - lrecv).astype(f),
            }
            if spec.links == "domain" and np.any(out["network_sent"] > 0):
                others = [c.name for c in COMM_IMPL_REGISTRY.values() if c.links != "domain"]
                raise DeploymentError(
                    f"{impl} runs inside one scale-up domain only; {G} ranks span {-(-G // D)} domains of "
                    f"{D}: use {', '.join(others)}, or fewer ranks"
                )
        self._loads[key] = out
        return out


def _tiled(win: CountedWindow, W: int) -> CountedWindow:
    """``win``'s counts repeated along the step axis to ``W`` steps (step ``w`` is step ``w mod P``)."""
    idx = np.arange(W) % win.num_steps

    def rep(x: np.ndarray | None) -> np.ndarray | None:
        return None if x is None else x[idx]

    return CountedWindow(
        layout=win.layout,
        batch=win.batch,
        num_steps=W,
        top_k=win.top_k,
        recv=win.recv[idx],
        sent_pairs=win.sent_pairs[idx],
        sent_tokens=win.sent_tokens[idx],
        own_pairs=win.own_pairs[idx],
        own_tokens=win.own_tokens[idx],
        recv_tokens=win.recv_tokens[idx],
        local_sent_pairs=rep(win.local_sent_pairs),
        local_sent_tokens=rep(win.local_sent_tokens),
        local_recv_pairs=rep(win.local_recv_pairs),
        local_recv_tokens=rep(win.local_recv_tokens),
        domain_loads=None if win.domain_loads is None else {k: v[idx] for k, v in win.domain_loads.items()},
    )


def _rows_of(t: np.ndarray) -> GroupedRows:
    """GroupedRows of integer slot counts ``t[..., S]`` (exactly what ``GroupedRows.of`` gives)."""
    return GroupedRows(
        rows=t.sum(axis=-1).astype(np.float64),
        active=(t > 0).sum(axis=-1).astype(np.float64),
        row_tiles={
            name: (t // bm + (t % bm > 0)).sum(axis=-1).astype(np.float64)
            for name, bm in GROUPED_TILE_ROWS.items()
        },
    )


def _stack_rows(parts: list[GroupedRows]) -> GroupedRows:
    return GroupedRows(
        rows=np.stack([p.rows for p in parts]),
        active=np.stack([p.active for p in parts]),
        row_tiles={k: np.stack([p.row_tiles[k] for p in parts]) for k in GROUPED_TILE_ROWS},
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class _Destinations:
    """Per token (of the stream, or of the replayed positions for a replicated layout) and layer, for
    one layout, as the chains count them ([n, L, K], uint8, or uint16 beyond 255 groups)."""

    #: Each choice's destination group, sorted ascending per token (``G``: no routing).
    groups: np.ndarray
    #: The group where the choice is the token's first to it, else ``G``.
    first: np.ndarray
    #: The destination domain where the choice is the token's first to it, else the number of
    #: domains (None in one domain).
    domain: np.ndarray | None


@dataclass(frozen=True, kw_only=True, eq=False)
class _ReplicaChoices:
    """A replicated layout's stream choices of experts with several slots, per trace MoE layer ``l``:
    token ``t``'s are ``experts[l][offsets[l, t] : offsets[l, t + 1]]``, in choice order."""

    offsets: np.ndarray
    experts: tuple[np.ndarray, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class _SingleBits:
    """Per trace MoE layer and stream token, the groups (and domains) its choices of experts with one
    slot go to: bit ``v % 64`` of word ``v // 64`` ([L, N, words] uint64)."""

    groups: np.ndarray
    #: None in one domain.
    domains: np.ndarray | None


def _first_of_token(
    value: np.ndarray, bits: np.ndarray, t: np.ndarray, which: np.ndarray, run: int
) -> np.ndarray:
    """Whether each replicated choice (to group or domain ``value``, of stream token ``t``, dispatched
    token ``which``) is its token's first to it: not among the token's single-slot destinations
    (``bits`` [N, words] of the layer) nor an earlier replicated choice's (a token's choices are
    consecutive, at most ``run`` of them)."""
    word = bits[t, value >> 6]
    new = ((word >> (value & 63).astype(np.uint64)) & np.uint64(1)) == 0
    for d in range(1, run):
        new[d:] &= (which[d:] != which[:-d]) | (value[d:] != value[:-d])
    return new


@dataclass(frozen=True, kw_only=True, eq=False)
class _ReplicaTally:
    """What a replicated layout's replicated choices add to a window, tallied layer by layer."""

    groups: int
    domain: int
    #: [W, L, S] choices per slot.
    recv: np.ndarray
    #: [W, L, G, 8] choices per source group by code: new + 2 (to itself) + 4 (to its own domain).
    by_src: np.ndarray
    #: [W, L, G, 4] choices per destination group by code: new + 2 (from its own domain).
    by_dst: np.ndarray
    #: DeepEP normal across domains: [W, G, L, G] new tokens per source and destination group, and
    #: [W, G, L, domains] per source group and destination domain (else None).
    tok: np.ndarray | None
    dom: np.ndarray | None

    @classmethod
    def empty(cls, layout: Layout, W: int, L: int, *, by_source: bool) -> _ReplicaTally:
        G, S, Q = layout.groups, layout.num_slots, -(-layout.groups // layout.domain)
        zeros = np.zeros
        return cls(
            groups=G,
            domain=layout.domain,
            recv=zeros((W, L, S), dtype=np.int64),
            by_src=zeros((W, L, G, 8), dtype=np.int64),
            by_dst=zeros((W, L, G, 4), dtype=np.int64),
            tok=zeros((W, G, L, G), dtype=np.int64) if by_source else None,
            dom=zeros((W, G, L, Q), dtype=np.int64) if by_source else None,
        )

    def add(
        self,
        li: int,
        *,
        w: np.ndarray,
        s: np.ndarray,
        g: np.ndarray,
        slot: np.ndarray,
        new: np.ndarray,
        newq: np.ndarray | None,
    ) -> None:
        """Layer ``li``'s choices: step ``w``, source group ``s``, slot and its group ``g``, whether
        each is its token's first to the group (``new``) and to the domain (``newq``)."""
        G, D = self.groups, self.domain
        W, S = self.recv.shape[0], self.recv.shape[2]
        same = (g // D) == (s // D)
        self.recv[:, li] += np.bincount(w * S + slot, minlength=W * S).reshape(W, S)
        code = new + 2 * (g == s) + 4 * same
        self.by_src[:, li] += np.bincount((w * G + s) * 8 + code, minlength=W * G * 8).reshape(W, G, 8)
        code = new + 2 * same
        self.by_dst[:, li] += np.bincount((w * G + g) * 4 + code, minlength=W * G * 4).reshape(W, G, 4)
        if self.tok is not None and self.dom is not None and newq is not None:
            Q = self.dom.shape[-1]
            key = ((w * G + s) * G + g)[new]
            self.tok[:, :, li] += np.bincount(key, minlength=W * G * G).reshape(W, G, G)
            key = ((w * G + s) * Q + g // D)[newq]
            self.dom[:, :, li] += np.bincount(key, minlength=W * G * Q).reshape(W, G, Q)

    def totals(self) -> dict[str, np.ndarray]:
        """``recv`` [W, L, S]; per source group [W, L, G] ``sent_pairs``, ``sent_tokens``,
        ``own_pairs``, ``own_tokens``, ``local_sent_pairs``, ``local_sent_tokens``; per destination
        group [W, L, G] ``recv_tokens``, ``local_recv_pairs``, ``local_recv_tokens``; with the
        by-source tallies ``tok`` and ``dom``."""
        src, dst = self.by_src, self.by_dst
        out = {
            "recv": self.recv,
            "sent_pairs": src.sum(axis=-1),
            "sent_tokens": src[..., 1::2].sum(axis=-1),
            "own_pairs": src[..., [2, 3, 6, 7]].sum(axis=-1),
            "own_tokens": src[..., [3, 7]].sum(axis=-1),
            "local_sent_pairs": src[..., 4:].sum(axis=-1),
            "local_sent_tokens": src[..., [5, 7]].sum(axis=-1),
            "recv_tokens": dst[..., [1, 3]].sum(axis=-1),
            "local_recv_pairs": dst[..., 2:].sum(axis=-1),
            "local_recv_tokens": dst[..., 3],
        }
        if self.tok is not None and self.dom is not None:
            out["tok"], out["dom"] = self.tok, self.dom
        return out


#: Choices sorted per part by :func:`_destinations` (the temporaries stay small).
CHOICES_PER_PART = 1 << 18


def _destinations(slots: np.ndarray, layout: Layout) -> _Destinations:
    """The destinations of ``slots`` [n, L, K] (``num_slots``: no routing), in parts of positions."""
    G, D, spg = layout.groups, layout.domain, layout.slots_per_group
    n, L, K = slots.shape
    dtype = np.uint8 if G < 255 else np.uint16
    Q = -(-G // D)
    groups = np.empty((n, L, K), dtype=dtype)
    first = np.empty_like(groups)
    domain = np.empty_like(groups) if G > D else None
    step = max(1, CHOICES_PER_PART // (L * K))
    for a in range(0, n, step):
        b = min(n, a + step)
        dst = np.minimum(slots[a:b] // spg, G).astype(dtype)
        g = np.stack(sort_columns([dst[..., k] for k in range(K)]), axis=-1)
        groups[a:b] = g
        valid = g < G
        new = np.ones(g.shape, dtype=bool)
        new[..., 1:] = g[..., 1:] != g[..., :-1]
        first[a:b] = np.where(new & valid, g, np.asarray(G, dtype=dtype))
        if domain is not None:
            dom = g // D
            new[..., 1:] = dom[..., 1:] != dom[..., :-1]
            domain[a:b] = np.where(new & valid, dom, np.asarray(Q, dtype=dtype))
    return _Destinations(groups=groups, first=first, domain=domain)


#: Counter bins filled by one ``bincount`` (the counts of larger block sets are made in parts).
MAX_BINS = 8_000_000
#: Choices counted by one ``bincount`` (larger blocks are counted in parts).
KEYS_PER_CALL = 1 << 20
#: Most counters of one block size a chain keeps for blocks that wrap around the stream.
MAX_CELLS = 64_000_000


@dataclass(kw_only=True, eq=False)
class _Chain:
    """Counts of one kind of choice per block of ``c`` consecutive replayed positions, by layer and
    destination (``[blocks, L, V]``), for several block sizes: a block of ``2c`` is two blocks of
    ``c``, so once one size is counted the larger ones are sums of pairs (:meth:`Workloads._blocks`)."""

    #: [n, L, K] destination of each choice over the stream (``V``: not counted).
    values: np.ndarray
    V: int
    #: Largest count one token adds to one (block, layer, destination).
    per_token: int
    #: Block size -> counts of the blocks computed so far (from position 0).
    sizes: dict[int, np.ndarray] = field(default_factory=dict)


def _count_dtype(bound: int) -> type[np.unsignedinteger] | type[np.signedinteger]:
    return np.uint8 if bound < 2**8 else np.uint16 if bound < 2**16 else np.int32  # type: ignore[return-value]


class Workloads:
    """The counted workloads of one phase of a trace (see the module docstring), cached."""

    def __init__(self, stream: RoutingStream, tokens: PhaseTokens, *, top_k: int) -> None:
        if stream.num_tokens != tokens.num_tokens:
            raise ValueError("workloads: routing stream and tokens differ in length")
        self.stream = stream
        self.tokens = tokens
        self.top_k = top_k
        self._lock = threading.RLock()
        self._slots: dict[tuple[object, ...], np.ndarray] = {}
        self._dest: dict[tuple[object, ...], _Destinations] = {}
        self._replicas: dict[tuple[object, ...], _ReplicaChoices] = {}
        self._bits: dict[tuple[object, ...], _SingleBits] = {}
        self._chains: dict[tuple[object, ...], _Chain] = {}
        self._windows: dict[tuple[object, ...], CountedWindow] = {}

    @property
    def N(self) -> int:
        return self.stream.num_tokens

    def release(self) -> None:
        """Drop every count kept per layout (the stream stays)."""
        with self._lock:
            for cache in (self._slots, self._dest, self._chains, self._windows, self._replicas, self._bits):
                cache.clear()

    @property
    def L(self) -> int:
        return len(self.stream.layers)

    # -- per layout -------------------------------------------------------------------------------
    def _epoch_of_token(self, epochs: tuple[Placement, ...]) -> np.ndarray | None:
        if len(epochs) == 1:
            return None
        from_steps = np.array([p.from_step for p in epochs], dtype=np.int64)
        return np.maximum(np.searchsorted(from_steps, self.tokens.trace_step, side="right") - 1, 0)

    def _slot_key(self, layout: Layout) -> tuple[object, ...]:
        """Layouts whose slots hold experts ``0 .. E-1`` in order share their slot counts."""
        E = self.stream.num_experts
        identity = all(p.num_slots == E and bool((p.phy2log == np.arange(E)).all()) for p in layout.epochs)
        return ("identity",) if identity else (*layout.key, layout.groups)

    def _replicated(self, layout: Layout) -> np.ndarray:
        """[epochs, L, E + 1] whether each expert has several slots (the last column: no routing row)."""
        E = self.stream.num_experts
        out = np.zeros((len(layout.epochs), self.L, E + 1), dtype=bool)
        for ei, p in enumerate(layout.epochs):
            for li, layer in enumerate(self.stream.layers):
                out[ei, li, :E] = np.bincount(p.row(layer), minlength=E) > 1
        return out

    def _per_choice(self, table: np.ndarray, epoch: np.ndarray | None, li: int) -> np.ndarray:
        """``table[epoch, layer, expert]`` ([epochs, L, E + 1]) at every choice of the stream at trace
        MoE layer ``li`` ([N, K]; a layer at a time, so that the temporaries stay small); ``epoch``:
        each token's placement epoch (:meth:`_epoch_of_token`)."""
        ids = self.stream.expert_ids[:, li].astype(np.int32)
        ids[ids < 0] = self.stream.num_experts
        return table[0, li][ids] if epoch is None else table[epoch[:, None], li, ids]

    def slots(self, layout: Layout) -> np.ndarray:
        """[N, L, K] physical slot of every choice to an expert with one slot (the token's source does
        not matter); ``num_slots`` where there is no routing row and, in a replicated layout, for the
        choices of experts with several slots (:meth:`_replica_counts` counts those per schedule)."""
        key = self._slot_key(layout)
        got = self._slots.get(key)
        if got is not None:
            return got
        epochs, L = layout.epochs, self.L
        E, S = self.stream.num_experts, layout.num_slots
        table = np.full((len(epochs), L, E + 1), S, dtype=np.int32)  # the last column: no routing row
        for ei, p in enumerate(epochs):
            for li, layer in enumerate(self.stream.layers):
                table[ei, li, p.row(layer)] = np.arange(S)
        if layout.replicated:
            table[self._replicated(layout)] = S
        out = np.empty((self.N, L, self.top_k), dtype=np.uint16 if S < 2**16 else np.int32)
        epoch = self._epoch_of_token(epochs)
        for li in range(L):
            out[:, li] = self._per_choice(table, epoch, li)
        self._slots[key] = out
        return out

    def _single_bits(self, layout: Layout) -> _SingleBits:
        """Which groups and domains each stream token's single-slot choices go to, as bits (cached)."""
        key = (*layout.key, layout.groups, layout.domain)
        got = self._bits.get(key)
        if got is None:
            dest = self._stream_destinations(layout)
            G, D = layout.groups, layout.domain
            Q = -(-G // D)

            def bits(values: np.ndarray, V: int) -> np.ndarray:  # values [N, L, K] in 0..V (V: none)
                N, L, K = values.shape
                out = np.zeros((L, N, V // 64 + 1), dtype=np.uint64)
                one, rows = np.uint64(1), np.arange(N)
                for li in range(L):
                    v = values[:, li].astype(np.uint64)
                    if V < 64:  # one word: the bits of a token's choices OR-ed at once
                        out[li, :, 0] = np.bitwise_or.reduce(one << v, axis=1)
                        continue
                    for k in range(K):  # one choice per token: no repeated index in the update
                        out[li, rows, (v[:, k] >> 6).astype(np.intp)] |= one << (v[:, k] & np.uint64(63))
                return out

            groups = bits(dest.groups, G)
            domains = None if G <= D else bits(np.where(dest.groups < G, dest.groups // D, Q), Q)
            got = self._bits[key] = _SingleBits(groups=groups, domains=domains)
        return got

    def _replica_choices(self, layout: Layout) -> _ReplicaChoices:
        """The stream's choices of experts with several slots in a replicated layout (cached)."""
        key = (*layout.key, layout.groups)
        got = self._replicas.get(key)
        if got is None:
            table = self._replicated(layout)
            epoch = self._epoch_of_token(layout.epochs)
            N, L = self.N, self.L
            offsets = np.zeros((L, N + 1), dtype=np.int64)
            experts = []
            for li in range(L):
                t, k = np.nonzero(self._per_choice(table, epoch, li))
                experts.append(self.stream.expert_ids[t, li, k].astype(np.int64))
                np.cumsum(np.bincount(t, minlength=N), out=offsets[li, 1:])
            got = self._replicas[key] = _ReplicaChoices(offsets=offsets, experts=tuple(experts))
        return got

    def _stream_destinations(self, layout: Layout) -> _Destinations:
        """Destinations of every stream token under ``layout`` (cached)."""
        key = (*layout.key, layout.groups, layout.domain)
        got = self._dest.get(key)
        if got is None:
            got = self._dest[key] = _destinations(self.slots(layout), layout)
        return got

    def _chain(
        self, key: tuple[object, ...], make: Callable[[], tuple[np.ndarray, int, int]], *, keep: bool = True
    ) -> _Chain:
        got = self._chains.get(key)
        if got is None:
            values, V, per_token = make()
            got = _Chain(values=values, V=V, per_token=per_token)
            if keep:
                self._chains[key] = got
        return got

    def _blocks(self, chain: _Chain, c: int, blocks: int) -> np.ndarray:
        """[blocks, L, V] counts of ``chain`` per block of ``c`` consecutive replayed positions (the
        chain's values repeated). Blocks that wrap around the values are sums of ``r`` consecutive
        blocks of ``g = gcd(c, n)`` positions, of which the ``n`` values hold ``n / g`` (counted once)."""
        n = chain.values.shape[0]
        if blocks * c <= n:
            return self._aligned_blocks(chain, c, blocks)
        g = math.gcd(c, n)
        r, m = c // g, n // g
        if m * self.L * chain.V > MAX_CELLS:  # tiny common blocks: count the wrapping blocks directly
            return self._count_blocks(chain, c, 0, blocks)
        base = self._aligned_blocks(chain, g, m)
        if r == 1:
            return base[np.arange(blocks) % m]
        idx = (np.arange(blocks)[:, None] * r + np.arange(r)[None, :]) % m
        return base[idx].sum(axis=1, dtype=_count_dtype(c * chain.per_token))

    def _aligned_blocks(self, chain: _Chain, c: int, blocks: int) -> np.ndarray:
        """:meth:`_blocks` for blocks within the values (``blocks * c <= n``), kept per size."""
        have = chain.sizes.get(c)
        if have is not None and have.shape[0] >= blocks:
            return have[:blocks]
        start = 0 if have is None else have.shape[0]
        # sums of pairs of the next smaller size (itself from the smallest counted), where that is
        # cheaper than counting: blocks of x positions hold L * V counters for x * L * K choices
        below = [
            x
            for x in chain.sizes
            if x < c and c % x == 0 and (c // x) & (c // x - 1) == 0 and x * self.top_k >= chain.V
        ]
        if below:
            half = self._aligned_blocks(chain, c // 2, 2 * blocks)[2 * start :]
            dtype = _count_dtype(c * chain.per_token)
            new = half[0::2].astype(dtype) + half[1::2].astype(dtype)
        else:
            new = self._count_blocks(chain, c, start, blocks)
        out = new if have is None else np.concatenate([have, new.astype(have.dtype)])
        chain.sizes[c] = out
        return out

    def _count_blocks(self, chain: _Chain, c: int, first: int, last: int) -> np.ndarray:
        """Blocks ``first .. last - 1`` of size ``c`` counted from the values: small blocks several to a
        ``bincount`` (at most ``MAX_BINS`` counters), a large block in parts of at most ``KEYS_PER_CALL``
        choices (the temporaries stay small and the counters in cache)."""
        L, V = self.L, chain.V
        dtype = _count_dtype(c * chain.per_token)
        out = np.zeros((last - first, L, V), dtype=dtype)
        cells = L * (V + 1)
        values = chain.values
        n, per_pos = values.shape[0], L * values.shape[2]
        lay = (np.arange(L, dtype=np.int32) * (V + 1))[None, :, None]

        def rows(a: int, b: int) -> np.ndarray:  # [b - a, L K] counters of positions a .. b - 1 (repeated)
            part = values[a:b] if b <= n else values[np.arange(a, b, dtype=np.int64) % n]
            return (part.astype(np.int32) + lay).reshape(b - a, per_pos)

        if c * per_pos > KEYS_PER_CALL:
            span = max(1, KEYS_PER_CALL // per_pos)
            for j in range(first, last):
                acc = np.zeros(cells, dtype=np.int64)
                for a in range(j * c, (j + 1) * c, span):
                    acc += np.bincount(rows(a, min((j + 1) * c, a + span)).reshape(-1), minlength=cells)
                out[j - first] = acc.reshape(L, V + 1)[:, :V]
            return out
        step = max(1, min(MAX_BINS // cells, KEYS_PER_CALL // (c * per_pos)))
        for j0 in range(first, last, step):
            j1 = min(last, j0 + step)
            part = rows(j0 * c, j1 * c)
            keys = part.reshape(j1 - j0, -1) + (np.arange(j1 - j0, dtype=np.int32) * cells)[:, None]
            counts = np.bincount(keys.reshape(-1), minlength=(j1 - j0) * cells)
            out[j0 - first : j1 - first] = counts.reshape(j1 - j0, L, V + 1)[..., :V]
        return out

    # -- per schedule -----------------------------------------------------------------------------
    def window(
        self, layout: Layout, *, batch: int, num_steps: int | None = None, deepep_normal: bool = False
    ) -> CountedWindow:
        """The counts of ``layout`` with ``batch`` tokens per group per step (cached); ``num_steps``
        as :func:`~tracekit.replay.schedule.make_schedule` takes it. ``deepep_normal``: also count the
        per-domain loads of DeepEP's normal kernels across domains."""
        G = layout.groups
        W = num_steps if num_steps is not None else max(1, -(-self.N // (batch * G)))
        P = self.period(batch * G)
        key = (*layout.key, G, layout.domain, batch, W)
        with self._lock:
            win = self._windows.get(key)
            if win is None:
                if W > P:  # the steps repeat every P: count one period and tile it
                    one = self.window(layout, batch=batch, num_steps=P, deepep_normal=deepep_normal)
                    win = _tiled(one, W)
                else:
                    win = self._count(layout, batch, W, deepep_normal=deepep_normal)
                self._windows[key] = win
            elif deepep_normal and win.domain_loads is None and layout.domain < G:
                # counted before without them: the domain loads alone
                if W > P:
                    one = self.window(layout, batch=batch, num_steps=P, deepep_normal=True)
                    idx = np.arange(W) % P
                    win.domain_loads = {k: v[idx] for k, v in (one.domain_loads or {}).items()}
                else:
                    win.domain_loads = self._domain_loads(layout, *self._source_counts(layout, batch, W))
        return win

    def period(self, per_step: int) -> int:
        """Steps after which a schedule of ``per_step`` tokens per step repeats itself: step ``w + P``
        replays the stream tokens of step ``w`` from the same groups in the same order (``P * per_step``
        is the least multiple of the stream's length), so its counts are step ``w``'s."""
        return self.N // math.gcd(per_step, self.N) if self.N else 1

    def _replica_counts(
        self, layout: Layout, B: int, W: int, *, by_source: bool = False
    ) -> dict[str, np.ndarray]:
        """What the choices of experts with several slots add to a replicated layout's window (its
        other choices are counted from the stream's chains, as any layout's). Such a choice's slot
        depends on the token's source and its order in the dispatch: ``route_to_slots`` routes them
        per layer over every (step, epoch) dispatch at once, each dispatch's tokens in (source group,
        stream position) order, as the replay's counting routes them. A choice adds a token to its
        group when the group is neither among the token's single-slot destinations nor an earlier
        replicated choice's. The counts: :meth:`_ReplicaTally.totals`."""
        G, D = layout.groups, layout.domain
        pos = np.arange(W * G * B, dtype=np.int64)
        p = pos % self.N
        src = (pos // B) % G
        step = pos // (G * B)
        order = np.lexsort((p, src, step))
        epoch = self._epoch_of_token(layout.epochs)
        choices = self._replica_choices(layout)
        single = self._single_bits(layout)
        tally = _ReplicaTally.empty(layout, W, self.L, by_source=by_source)
        for ei, placement in enumerate(layout.epochs):
            rows = order if epoch is None else order[epoch[p[order]] == ei]
            if not rows.size:
                continue
            tp, src_r, step_r = p[rows], src[rows], step[rows]
            index = np.arange(rows.size)
            for li, layer in enumerate(self.stream.layers):
                off = choices.offsets[li]
                a = off[tp]
                c = off[tp + 1] - a
                m = int(c.sum())
                if not m:
                    continue
                which = np.repeat(index, c)  # the dispatched token of each choice, in dispatch order
                ci = np.arange(m) + np.repeat(a - (np.cumsum(c) - c), c)
                s, w = src_r[which], step_r[which]
                experts = choices.experts[li][ci][:, None]
                slot = route_to_slots(placement, layer, experts, s, D, dispatch=w)[:, 0]
                g = slot // layout.slots_per_group
                t, run = tp[which], int(c.max())
                new = _first_of_token(g, single.groups[li], t, which, run)
                newq = None
                if tally.dom is not None and single.domains is not None:
                    newq = _first_of_token(g // D, single.domains[li], t, which, run)
                tally.add(li, w=w, s=s, g=g, slot=slot, new=new, newq=newq)
        return tally.totals()

    def _window_chains(self, layout: Layout, B: int, W: int) -> dict[str, _Chain]:
        """The chains a window of ``layout`` counts from: ``slots`` (V = slots), ``first`` (each
        token's first choice to a group, V = G), ``pairs`` (every valid choice, V = G) and, across
        domains, ``domain`` (each token's first choice to a domain, V = domains): the whole stream's,
        shared by every batch, but for a schedule shorter than the stream, which counts its own prefix
        (not kept: a search over small batches would hold one per batch). A replicated layout's are
        those of its choices of experts with one slot (:meth:`slots`); its other choices are counted
        per schedule (:meth:`_replica_counts`)."""
        G, D, K, S = layout.groups, layout.domain, self.top_k, layout.num_slots
        n = W * G * B
        keep = False
        if n < self.N:
            prefix = self.slots(layout)[:n]
            if layout.replicated:  # the stream's destinations are needed anyway (_replica_counts)
                whole = self._stream_destinations(layout)
                base = _Destinations(
                    groups=whole.groups[:n],
                    first=whole.first[:n],
                    domain=None if whole.domain is None else whole.domain[:n],
                )
            else:
                base = _destinations(prefix, layout)
            ckey: tuple[object, ...] = (*layout.key, G, D, n)
            slot_chain = self._chain(("slots", *ckey), lambda: (prefix, S, 1), keep=False)
        else:
            keep = True
            ckey = (*layout.key, G, D)
            slot_chain = self._chain(("slots", *self._slot_key(layout)), lambda: (self.slots(layout), S, 1))
            base = self._stream_destinations(layout)
        out = {
            "slots": slot_chain,
            "first": self._chain(("first", *ckey), lambda: (base.first, G, 1), keep=keep),
            "pairs": self._chain(("pairs", *ckey), lambda: (base.groups, G, K), keep=keep),
        }
        domain = base.domain
        if domain is not None:
            out["domain"] = self._chain(("domain", *ckey), lambda: (domain, -(-G // D), 1), keep=keep)
        return out

    def _by_source(self, chain: _Chain, B: int, W: int, G: int) -> np.ndarray:
        """[W, G, L, V] counts of ``chain`` per source group's ``B`` tokens of each step."""
        return self._blocks(chain, B, W * G).reshape(W, G, self.L, chain.V)

    def _count(self, layout: Layout, batch: int, W: int, *, deepep_normal: bool = False) -> CountedWindow:
        G, D, K = layout.groups, layout.domain, self.top_k
        B = batch
        by_source = deepep_normal and G > D
        chains = self._window_chains(layout, B, W)
        extra = self._replica_counts(layout, B, W, by_source=by_source) if layout.replicated else {}

        def plus(name: str, x: np.ndarray) -> np.ndarray:  # a replicated layout's other choices added
            return x + extra[name] if name in extra else x

        recv = self._blocks(chains["slots"], G * B, W)
        if "recv" in extra:  # a slot receives at most one choice per token: the sum keeps the dtype
            recv = (recv + extra["recv"]).astype(recv.dtype)
        recv_tokens = self._blocks(chains["first"], G * B, W)
        # source side, from each source group's B tokens of a step ([W, G src, L, G dst]): tokens with a
        # choice to each group, and valid choices to it
        tok = self._by_source(chains["first"], B, W, G)
        pairs = self._by_source(chains["pairs"], B, W, G)
        g = np.arange(G)

        def per_src(x: np.ndarray) -> np.ndarray:  # [W, G src, L] -> [W, L, G]
            return np.moveaxis(x, 1, 2).astype(np.int64)

        def own(x: np.ndarray) -> np.ndarray:  # [W, G, L, G] -> [W, L, G] where source = destination
            return x[:, g, :, g].transpose(1, 2, 0).astype(np.int64)

        win = CountedWindow(
            layout=layout,
            batch=B,
            num_steps=W,
            top_k=K,
            recv=recv,
            sent_pairs=plus("sent_pairs", per_src(pairs.sum(axis=-1, dtype=np.int64))),
            sent_tokens=plus("sent_tokens", per_src(tok.sum(axis=-1, dtype=np.int64))),
            own_pairs=plus("own_pairs", own(pairs)),
            own_tokens=plus("own_tokens", own(tok)),
            recv_tokens=plus("recv_tokens", recv_tokens.astype(np.int64)),
        )
        if G > D:  # what stays in the source's domain; a domain's tokens are B * D consecutive positions
            Q = -(-G // D)
            same = (g[:, None] // D == g[None, :] // D)[None, :, None, :]  # [1, G src, 1, G dst]
            win.local_sent_pairs = plus(
                "local_sent_pairs", per_src(np.where(same, pairs, 0).sum(axis=-1, dtype=np.int64))
            )
            win.local_sent_tokens = plus(
                "local_sent_tokens", per_src(np.where(same, tok, 0).sum(axis=-1, dtype=np.int64))
            )
            dom_of = np.arange(G) // D
            if G % D == 0:
                blocks = W * Q

                def local(chain: _Chain) -> np.ndarray:
                    x = self._blocks(chain, B * D, blocks).reshape(W, Q, self.L, G)
                    return np.take_along_axis(x, dom_of[None, None, None, :].repeat(W, 0), axis=1)[:, 0]

            else:  # the last domain is partial: count per step with the source's domain in the key

                def local(chain: _Chain) -> np.ndarray:
                    return self._local_partial(chain, B, W, G, D)

            win.local_recv_pairs = plus("local_recv_pairs", local(chains["pairs"]).astype(np.int64))
            win.local_recv_tokens = plus("local_recv_tokens", local(chains["first"]).astype(np.int64))
            if by_source:
                dom = self._by_source(chains["domain"], B, W, G)
                win.domain_loads = self._domain_loads(layout, plus("tok", tok), plus("dom", dom))
        return win

    def _source_counts(self, layout: Layout, B: int, W: int) -> tuple[np.ndarray, np.ndarray]:
        """[W, G, L, G] tokens of each source group with a choice to each group, and [W, G, L, domains]
        to each domain (with a replicated layout's replicated choices)."""
        G = layout.groups
        chains = self._window_chains(layout, B, W)
        tok = self._by_source(chains["first"], B, W, G)
        dom = self._by_source(chains["domain"], B, W, G)
        if layout.replicated:
            extra = self._replica_counts(layout, B, W, by_source=True)
            return tok + extra["tok"], dom + extra["dom"]
        return tok, dom

    def _local_partial(self, chain: _Chain, B: int, W: int, G: int, D: int) -> np.ndarray:
        """[W, L, G] of ``chain``'s counts from sources in the destination's own domain, when the groups
        do not fill whole domains (a bincount over the replayed positions)."""
        L, n = self.L, W * G * B
        pos = np.arange(n, dtype=np.int64) % chain.values.shape[0]
        vals = chain.values[pos].astype(np.int64)  # G: not counted
        src_dom = ((np.arange(n) // B) % G) // D
        keep = (vals < G) & ((vals // D) == src_dom[:, None, None])
        step = (np.arange(n) // (G * B))[:, None, None]
        keys = ((step * L + np.arange(L)[None, :, None]) * G + vals)[keep]
        return np.bincount(keys, minlength=W * L * G).reshape(W, L, G)

    def _domain_loads(self, layout: Layout, tok: np.ndarray, dom: np.ndarray) -> dict[str, np.ndarray]:
        """DeepEP normal across domains (as ``tracekit.cost.comm`` prices it from the matrices): NVLink
        carries every (token, group) pair whose local indices differ, forwarded inside the destination
        domain by the rank of the source's local index; the NIC one copy per (token, remote destination
        domain), received by that rank. From each source group's tokens with a choice to each group
        (``tok`` [W, G, L, G]) and to each domain (``dom`` [W, G, L, domains]), per step."""
        G, D, L = layout.groups, layout.domain, self.L
        W = tok.shape[0]
        if G % D:
            raise DeploymentError(
                f"deepep-normal across domains needs whole domains: {G} ranks is not a multiple of {D} per domain"
            )
        Q = G // D
        f = np.float64
        # sources (a, i) and destinations (q, k): domain and local index
        t6 = tok.reshape(W, Q, D, L, Q, D).astype(f)  # [w, a, i, l, q, k]
        h5 = dom.reshape(W, Q, D, L, Q).astype(f)  # [w, a, i, l, q]
        d = np.arange(D)
        q = np.arange(Q)
        to_k = t6.sum(axis=(1, 2))  # [w, l, q, k] from every source
        same_k = t6[:, :, d, :, :, d].sum(axis=2)  # [k, w, l, q]: sources of local index k
        nvl_recv = to_k - same_k.transpose(1, 2, 3, 0)
        by_i = t6.sum(axis=1)  # [w, i, l, q, k]
        nvl_sent = by_i.sum(axis=-1) - by_i[:, d, :, :, d].transpose(1, 0, 2, 3)  # [w, i, l, q]
        to_q = h5.sum(axis=1)  # [w, i, l, q]
        own_dom = h5[:, q, :, :, q]  # [q, w, i, l]: sources in the destination domain
        net_recv = to_q - own_dom.transpose(1, 2, 3, 0)  # [w, i, l, q]
        net_sent = h5.sum(axis=-1) - h5[:, q, :, :, q].transpose(1, 0, 2, 3)  # [w, a, i, l]

        def ranks(x: np.ndarray) -> np.ndarray:  # [w, l, q, i] -> [W, L, G]
            return x.reshape(W, L, G)

        return {
            "nvlink_sent": ranks(nvl_sent.transpose(0, 2, 3, 1)),
            "nvlink_recv": ranks(nvl_recv),
            "network_sent": np.moveaxis(net_sent.reshape(W, G, L), 1, 2),
            "network_recv": ranks(net_recv.transpose(0, 2, 3, 1)),
        }
