"""The timing stage: what every rank spends in each layer of a window of replayed steps.

:func:`time_window` prices each layer's kernels (:mod:`tracekit.replay.layer`: norms, projections,
the attention core, router, shared experts, routed experts, the small memory-bound kernels and the
launch gap of every kernel) per (micro-batch, step, target decoder layer, rank) and by stage, the
dispatch and combine of each micro-batch (:mod:`tracekit.cost.comm`, split into the NVLink and the
NIC part and the SMs they hold), the tensor-parallel all-reduce, and per (step, rank) the embedding
and the LM head. Under two-batch overlap the step's sequences and each expert's tokens are split
between two micro-batches, priced separately. :mod:`tracekit.replay.attribution` then decides what
overlaps what.

To add a cost component: price its kernels in :mod:`tracekit.replay.layer` under a component name,
and list that name in :data:`COMPONENTS`.

Shape legend: ``M`` micro-batches, ``W`` steps of the window, ``L`` trace MoE layers, ``T`` target
decoder layers, ``R`` ranks, ``S`` slots per rank, ``P`` sequences per (step, rank).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from tracekit.cost import EPTraffic, allreduce, gemm, link_loads, roofline
from tracekit.cost.comm import combine_from_loads, dispatch_from_loads
from tracekit.cost.kernels import GROUPED_TILE_ROWS, GroupedRows
from tracekit.cost.result import BOUNDS, CommCost
from tracekit.hardware import comm_impl
from tracekit.precision import bytes_per_param, wire_bytes_per_token
from tracekit.replay.counts import ExpertWindow
from tracekit.replay.layer import STAGES, LayerCosts, LayerPricer, LayerShape, Priced, grouped_rows
from tracekit.replay.schedule import AttentionLoad, WindowSequences
from tracekit.replay.setup import ReplaySetup

#: Components of a rank's time in a layer, in the order of the ``replay_ranks`` columns.
COMPONENTS = ("attention", "attn_proj", "expert_gemm", "dense", "fixed", "dispatch", "combine", "tp_comm")
#: The communication components (the rest is compute).
COMM_COMPONENTS = ("dispatch", "combine", "tp_comm")
#: Bound names, indexed by the int8 bound codes.
BOUND_NAMES = BOUNDS
_LATENCY = BOUND_NAMES.index("latency")

#: Timed is the priced pair the stages hand on (time and bound codes).
Timed = Priced


def bound_codes(bound: np.ndarray) -> np.ndarray:
    """int8 codes (indices into :data:`BOUND_NAMES`) of bound names."""
    out = np.zeros(bound.shape, dtype=np.int8)
    for i, name in enumerate(BOUND_NAMES):
        out[bound == name] = i
    return out


def bound_of_largest(times: list[np.ndarray], bounds: list[np.ndarray]) -> np.ndarray:
    """Element by element, the bound code of the largest of ``times`` (the first on ties, and the
    first NaN where there is one, as ``np.argmax`` over their stack)."""
    best, bound = times[0], bounds[0]
    for t, b in zip(times[1:], bounds[1:], strict=True):
        bound = np.where(t > best, b, bound)  # a later part wins only when strictly larger
        best = np.maximum(best, t)
    shape = np.shape(best)
    if np.isnan(best).any():
        first = np.argmax(np.stack(np.broadcast_arrays(*times)), axis=0)
        return np.choose(first, [np.broadcast_to(b, shape) for b in bounds]).astype(np.int8)
    return np.broadcast_to(bound, shape).astype(np.int8)


def _zero(shape: tuple[int, ...]) -> Priced:
    return Priced(time=np.zeros(shape), bound=np.full(shape, _LATENCY, dtype=np.int8))


def _halves(x: np.ndarray) -> np.ndarray:
    """Integer counts split between two micro-batches, stacked on a new first axis."""
    return np.stack([(x + 1) // 2, x // 2])


@dataclass(frozen=True, kw_only=True, eq=False)
class LayerMap:
    """From per-trace-MoE-layer arrays [..., L, R] and per-rank arrays [..., R] to per target
    decoder layer [..., T, R]."""

    #: int64 [T]: trace MoE layer replayed by each target layer (-1: a dense layer).
    source_of: np.ndarray
    W: int
    R: int

    @cached_property
    def moe_mask(self) -> np.ndarray:
        return self.source_of >= 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.W, self.source_of.size, self.R)

    @cached_property
    def _source(self) -> np.ndarray:
        return np.where(self.moe_mask, self.source_of, 0)

    def layers(self, moe_arr: np.ndarray, fill: float) -> np.ndarray:
        """[..., L, R] per trace MoE layer -> [..., T, R] (``fill`` for dense layers)."""
        taken = np.take(moe_arr, self._source, axis=-2)
        if self.moe_mask.all():
            return taken
        return np.where(self.moe_mask[:, None], taken, fill)

    def ranks(self, x: np.ndarray) -> np.ndarray:
        """[..., R] -> [..., T, R], the same in every layer."""
        return np.broadcast_to(x[..., None, :], (*x.shape[:-1], self.source_of.size, x.shape[-1]))

    def kinds(self, moe: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """[..., R] arrays of a MoE and a dense layer -> [..., T, R]."""
        return np.where(self.moe_mask[:, None], self.ranks(moe), self.ranks(dense))


@dataclass(frozen=True, kw_only=True, eq=False)
class CommTimes:
    """One collective per (micro-batch, step, target layer, rank): its duration and the GPU time its
    kernels take from compute running beside it (SMs held while in flight, its launch)."""

    span: np.ndarray
    busy: np.ndarray
    #: Kernel time not hidden by any overlap (send and receive kernels).
    launch: np.ndarray


@dataclass(frozen=True, kw_only=True, eq=False)
class RoutedWork:
    """What the routed experts of a window do per (step, trace MoE layer, rank) [W, L, R]."""

    #: [W, L, R, R] tokens each source rank sends each destination rank (once per destination; None
    #: when timed from counts without the per-peer matrices).
    peer_tokens: np.ndarray | None
    #: Token-expert pairs each rank's experts receive.
    tokens_recv: np.ndarray
    #: Experts with tokens on the rank.
    active_experts: np.ndarray
    #: Expert weight bytes read from HBM.
    weight_bytes: np.ndarray
    #: Dispatch bytes a rank sends to other ranks, and receives.
    dispatch_bytes: np.ndarray
    dispatch_recv_bytes: np.ndarray
    #: Combine bytes a rank sends back.
    combine_bytes: np.ndarray
    #: Bytes a rank sends over the NIC (dispatch and combine).
    network_bytes: np.ndarray


@dataclass(frozen=True, kw_only=True, eq=False)
class WindowCost:
    """Every priced part of a window."""

    layer_map: LayerMap
    #: Micro-batches (2 under two-batch overlap).
    M: int
    #: Per stage of :data:`tracekit.replay.layer.STAGES`: [M, W, T, R] compute seconds.
    stages: dict[str, np.ndarray]
    #: Per component of :data:`COMPONENTS`: [W, T, R] seconds over all micro-batches.
    components: dict[str, Priced]
    dispatch: CommTimes
    combine: CommTimes
    #: [M, W, T, R] tensor-parallel all-reduce.
    tp_comm: np.ndarray
    #: Fraction of the SMs the dispatch and combine kernels hold while they run.
    comm_sm_frac: float
    routed: RoutedWork
    #: Per (step, rank) [W, R]: the embedding read and the LM head.
    embedding: Priced
    lm_head: Priced
    #: Aggregated serving: [W, T] what a rank that also runs a prefill chunk spends on it per layer
    #: (the chunk's attention core, what its rows add to the rank's norms, projections, router and
    #: shared experts, and the extra dispatch and combine of its tokens), and the chance that some
    #: rank of the step does (0: no prefill beside the decode steps).
    chunk_s: np.ndarray | None = None
    chunk_prob: float = 0.0
    #: [W, T] what the chunks' tokens add to every rank's routed experts in a step with a chunk (the
    #: expected chunks of such a step, their expert pairs spread over the expert groups).
    chunk_moe_s: np.ndarray | None = None
    #: [T] what a step with a prefill chunk adds to every rank's layer when decode runs under CUDA
    #: graphs: engines capture decode-only batches, so such a step launches every kernel eagerly.
    chunk_eager_s: np.ndarray | None = None
    #: MTP: per (step, rank) [W, R] the draft passes of the step (None: no speculative decoding).
    draft: Priced | None = None


def time_window(
    setup: ReplaySetup,
    *,
    phase: str,
    counts: ExpertWindow,
    load: AttentionLoad,
    seqs: WindowSequences,
    lo: int,
    hi: int,
) -> WindowCost:
    """Price every component of replayed steps ``lo .. hi - 1`` of ``phase``. With MTP, each step
    verifies ``1 + drafts`` tokens per sequence: every sequence's query tokens, its tokens' expert
    pairs and its LM head rows are multiplied (the draft passes are :mod:`tracekit.replay.mtp`'s)."""
    dep = setup.dep
    q = dep.verify_tokens(phase)
    if q > 1:
        counts = counts.scaled(q)
        seqs = dataclasses.replace(seqs, new_tokens=seqs.new_tokens * q)
    M = 2 if dep.tbo else 1
    return time_counted(
        setup,
        phase=phase,
        shape=_shape(setup, phase, counts, seqs, M),
        routed=routed_counts(setup, phase, counts),
        peer_tokens=_gpu_peers(counts.peer_tokens.astype(np.float64), setup.dep.moe_tp),
        load=load,
        seqs=seqs,
        lo=lo,
        hi=hi,
    )


def time_counted(
    setup: ReplaySetup,
    *,
    phase: str,
    shape: LayerShape,
    routed: RoutedCounts,
    load: AttentionLoad,
    seqs: WindowSequences,
    lo: int,
    hi: int,
    peer_tokens: np.ndarray | None = None,
) -> WindowCost:
    """:func:`time_window` once the window's routing is counted: ``shape`` (:func:`layer_shape`) and
    ``routed`` per expert group, as a counted window gives them or as the planner's fast path counts
    them (``peer_tokens``, the per-peer matrix, only feeds the ``replay_peers`` table)."""
    dep = setup.dep
    q = dep.verify_tokens(phase)
    M = int(shape.tokens.shape[0])
    W, R = hi - lo, setup.num_ranks
    lm = LayerMap(source_of=setup.source_of, W=W, R=R)
    pricer = _pricer(setup, phase)
    attn, moe, dense, weight_read = _layer_costs(setup, pricer, shape, seqs)
    kinds = _kinds(setup, lm)
    stages = {s: _assemble(kinds, attn, moe, dense, s, M) for s in STAGES}
    comps = {c: _component(kinds, attn, moe, dense, c, M) for c in COMPONENTS if c not in COMM_COMPONENTS}
    routed_work, d, c = price_routed(setup, phase, routed, M, weight_read, peer_tokens=peer_tokens)
    tp, tp_measured = _tp_comm(setup, shape)
    comps["dispatch"] = _comm_component(lm, d, M)
    comps["combine"] = _comm_component(lm, c, M)
    # dense layers all-reduce after attention and after the FFN; MoE layers after the experts too
    # under MoE TP (each GPU holds a slice of every expert's output)
    tp_layers = lm.kinds(tp * (2.0 if dep.moe_tp > 1 else 1.0), 2.0 * tp)
    comps["tp_comm"] = Priced(
        time=tp_layers.sum(axis=0),
        bound=np.full(lm.shape, BOUND_NAMES.index("network"), np.int8),
        measured=None
        if tp_measured is None
        else lm.kinds(tp_measured * (2.0 if dep.moe_tp > 1 else 1.0), 2.0 * tp_measured).sum(axis=0),
    )
    outputs = load.outputs[lo:hi].astype(np.float64) * q
    tok = load.tokens[lo:hi].astype(np.float64) * q
    embedding, lm_head = _edges(setup, tok, _group_sum(outputs, dep.tp))
    chunk = _prefill_chunks(setup, phase, shape, lm, pricer=pricer, routed=routed)
    chunk_s, chunk_prob, chunk_moe_s = chunk if chunk is not None else (None, 0.0, None)
    return WindowCost(
        chunk_s=chunk_s,
        chunk_prob=chunk_prob,
        chunk_moe_s=chunk_moe_s,
        chunk_eager_s=_eager_penalty(setup, pricer, attn, moe, dense, M) if chunk_prob > 0 else None,
        layer_map=lm,
        M=M,
        stages=stages,
        components=comps,
        dispatch=_comm_layers(lm, d),
        combine=_comm_layers(lm, c),
        tp_comm=tp_layers,
        comm_sm_frac=setup.hw.comm_params(dep.impl_for(phase)).sm_frac_up,
        routed=routed_work,
        embedding=embedding,
        lm_head=lm_head,
    )


def _eager_penalty(
    setup: ReplaySetup,
    pricer: LayerPricer,
    attn: dict[Any, LayerCosts],
    moe: LayerCosts,
    dense: LayerCosts,
    M: int,
) -> np.ndarray | None:
    """[T] per target layer: its kernels x (eager - CUDA-graph launch gap), or None without graphs."""
    extra = setup.hw.launch_gap_eager_s - pricer.gap
    if extra <= 0:
        return None
    attn_n = np.array([sum(attn[w].kernels.values()) for w in setup.windows])
    moe_n, dense_n = sum(moe.kernels.values()), sum(dense.kernels.values())
    ffn_n = np.where(setup.source_of >= 0, moe_n, dense_n)
    return (attn_n + ffn_n) * M * extra


def _prefill_chunks(
    setup: ReplaySetup,
    phase: str,
    shape: LayerShape,
    lm: LayerMap,
    *,
    pricer: LayerPricer,
    routed: RoutedCounts,
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Aggregated serving: each layer's cost of one prefill chunk on the rank running it ([W, T]),
    the chance that at least one of the step's ranks runs one, and what the step's chunks add to
    every rank's routed experts ([W, T]); None without aggregated serving. Every rank's ``B``
    sequences are replaced at the rate they finish (``B / osl`` per step), each new one bringing
    ``isl`` prompt tokens in chunks of ``prefill_chunk``. The chunk's rows join the decode tokens'
    kernels (engines batch context and generation tokens into one pass: norms, projections, router,
    shared experts cost the rows they add, weights read once) and its own attention core runs beside
    the decode one. Its tokens go through the MoE layers like the decode tokens: the rank running it
    dispatches and combines them (:func:`_chunk_comm_s`), and their expert pairs land on every
    expert group (:func:`_chunk_experts_s`)."""
    dep = setup.dep
    if dep.aggregated is None or phase != "decode":
        return None
    isl, osl = dep.aggregated
    chunk = min(dep.prefill_chunk or isl, isl)
    chunks_per_prompt = -(-isl // chunk)
    # decode sequences per rank per step (a step verifies verify_tokens per sequence under MTP)
    batch = float(shape.tokens.sum(axis=0).mean()) / dep.verify_tokens(phase)
    p = min(1.0, batch * chunks_per_prompt / osl)
    groups = max(1, setup.num_ranks // dep.tp)
    prob = 1.0 - (1.0 - p) ** groups
    W = lm.W
    # tokens of the decode step on a rank (its attention group's, shared by its tp ranks)
    step_tokens = float(shape.tokens.sum(axis=0).mean())
    pre = _pricer(setup, "prefill")
    ctx = max(0.0, (isl - chunk) / 2.0)  # the chunk's mean earlier context
    # the chunk's own attention core, and what its rows add to the kernels it shares with the decode
    # tokens beside it (norms, projections, router, shared experts, a dense layer's FFN: one kernel
    # over all the rank's tokens, weights read once)
    _, core = _prefill_layer(setup, pre, float(chunk), ctx, W)
    both, both_core = _prefill_layer(setup, pre, step_tokens + chunk, ctx, W)
    alone, alone_core = _prefill_layer(setup, pre, step_tokens, ctx, W)
    per_layer = core + (both - both_core) - (alone - alone_core)
    comm = _chunk_comm_s(setup, phase, routed, chunk / dep.tp, step_tokens / dep.tp)  # [W, L]
    # expected chunks of a step that has at least one, every chunk's pairs spread over the groups
    chunks = groups * p / prob if prob > 0 else 0.0
    pairs = chunks * chunk * setup.arch.top_k / setup.ep_groups
    experts = _chunk_experts_s(setup, pricer, shape, pairs)  # [W, L]
    chunk_s = per_layer + lm.layers(comm[..., None], 0.0)[..., 0]
    return chunk_s, prob, lm.layers(experts[..., None], 0.0)[..., 0]


def _prefill_layer(
    setup: ReplaySetup, pricer: LayerPricer, tokens: float, context: float, W: int
) -> tuple[np.ndarray, np.ndarray]:
    """[W, T] one rank's layer in the prefill form for ``tokens`` rows of one sequence over
    ``context`` earlier tokens: its attention, router, shared experts and dense FFN, and the attention
    core's part of it."""
    dep = setup.dep
    rows = np.full((1, W, 1), tokens)
    shape = LayerShape(
        tokens=rows,
        new_tokens=rows[..., None],
        context_tokens=np.full((1, W, 1, 1), context),
        expert_tokens=np.zeros((1, W, 1, 1, 1)),
        phase="prefill",
        tp=dep.tp,
    )
    attn_costs: dict[Any, LayerCosts] = {}
    for w in setup.distinct_windows:
        costs = LayerCosts()
        pricer.attention_layer(shape, w, costs)
        attn_costs[w] = costs
    moe = LayerCosts()
    pricer.router(shape, moe)
    if pricer.has_shared():
        pricer.ffn(shape.tokens, pricer.shared_width(), "shared", moe, dep.tp)
    dense = LayerCosts()
    pricer.ffn(shape.tokens, float(setup.arch.intermediate_size or 0), "ffn", dense, dep.tp)
    one_rank = LayerMap(source_of=setup.source_of, W=W, R=1)
    kinds = _kinds(setup, one_rank)
    total = sum(
        (_assemble(kinds, attn_costs, moe, dense, s, 1) for s in ("attn0", "attn1", "shared", "ffn")),
        np.zeros((1, *one_rank.shape)),
    )
    core = _component(kinds, attn_costs, moe, dense, "attention", 1).time
    return total[0, :, :, 0], np.asarray(core, dtype=np.float64)[..., 0]


def _chunk_comm_s(
    setup: ReplaySetup, phase: str, routed: RoutedCounts, chunk_tokens: float, step_tokens: float
) -> np.ndarray:
    """[W, L] the extra dispatch and combine time of a rank that also sends ``chunk_tokens`` prompt
    tokens beside its ``step_tokens`` decode tokens: its sent bytes grow in proportion (each token
    reaches the peers the step's tokens reach on average), what it receives stays the step's. The
    mean rank's link loads, priced with the deployment's implementation."""
    dep, hw = setup.dep, setup.hw
    if step_tokens <= 0 or chunk_tokens <= 0:
        return np.zeros(next(iter(routed.loads.values())).shape[:2])
    impl = dep.impl_for(phase)
    grow = 1.0 + chunk_tokens / step_tokens
    G = setup.ep_groups
    out = np.zeros(next(iter(routed.loads.values())).shape[:2])
    for fn, payload, key in (
        (dispatch_from_loads, dep.precision.dispatch, "moe_dispatch"),
        (combine_from_loads, dep.precision.combine, "moe_combine"),
    ):
        bpt = wire_bytes_per_token(payload, setup.arch.hidden_size)
        base = {k: v.mean(axis=-1, keepdims=True) * bpt for k, v in routed.loads.items()}
        more = {k: v * grow if k.endswith("_sent") else v for k, v in base.items()}
        t0 = np.asarray(fn(hw, base, impl=impl, ranks=G).time_s)
        t1 = np.asarray(fn(hw, more, impl=impl, ranks=G).time_s)
        out += (t1 - t0)[..., 0] * hw.time_scale(key)
    return out


def _chunk_experts_s(setup: ReplaySetup, pricer: LayerPricer, shape: LayerShape, pairs: float) -> np.ndarray:
    """[W, L] the extra routed-expert time of a rank whose slots receive ``pairs`` more token-expert
    pairs beside the decode step's: the grouped GEMMs (and their activation) of the mean rank's rows
    with and without them, both spread evenly over its slots (the weights are read once either way)."""
    rows = grouped_rows(shape.expert_tokens).rows.sum(axis=0).mean(axis=-1)  # [W, L]
    if pairs <= 0:
        return np.zeros(rows.shape)
    slots = float(setup.placement.slots_per_rank)

    def cost(r: np.ndarray) -> np.ndarray:
        even = GroupedRows(
            rows=r,
            active=np.minimum(slots, np.ceil(r)),
            row_tiles={name: slots * np.ceil(r / slots / bm) for name, bm in GROUPED_TILE_ROWS.items()},
        )
        costs = LayerCosts()
        pricer.experts(dataclasses.replace(shape, expert_tokens=even), costs)
        return np.asarray(costs.stages["experts"], dtype=np.float64)

    return cost(rows + pairs) - cost(rows)


def _pricer(setup: ReplaySetup, phase: str) -> LayerPricer:
    dep = setup.dep
    p = dep.precision
    impl = comm_impl(dep.impl_for(phase))
    return LayerPricer(
        setup.hw,
        setup.arch,
        attention=p.attention,
        attention_core=p.attention_core,
        kv_cache=p.kv_cache,
        dense=p.dense,
        experts=p.experts,
        # low-latency all-to-alls hand the experts a masked [experts, max tokens] layout
        expert_layout="masked" if impl.dedup == "expert" else "contiguous",
        cuda_graphs=dep.cuda_graphs if dep.cuda_graphs is not None else phase == "decode",
        measured=setup.measured,
    )


def _group_sum(x: np.ndarray, tp: int) -> np.ndarray:
    """[..., R] per rank -> each rank's attention data-parallel group's sum (its TP ranks share it)."""
    if tp == 1:
        return x
    lead, R = x.shape[:-1], x.shape[-1]
    return np.repeat(x.reshape(*lead, R // tp, tp).sum(axis=-1), tp, axis=-1)


def _shape(setup: ReplaySetup, phase: str, counts: ExpertWindow, seqs: WindowSequences, M: int) -> LayerShape:
    """Per micro-batch: the group's tokens and sequences, and each slot's expert tokens."""
    W, L, _ = counts.recv.shape
    moe_tp = setup.dep.moe_tp
    local = counts.recv.reshape(W, L, setup.ep_groups, setup.placement.slots_per_rank)
    if moe_tp > 1:  # every GPU of an expert group computes all of the group's tokens (its slice)
        local = np.repeat(local, moe_tp, axis=2)
    return layer_shape(setup, phase, seqs, M, _halves(local) if M == 2 else local[None])


def layer_shape(
    setup: ReplaySetup, phase: str, seqs: WindowSequences, M: int, experts: np.ndarray | GroupedRows
) -> LayerShape:
    """The :class:`LayerShape` of a window: the attention side from its sequences (per micro-batch),
    ``experts`` the routed side ([M, W, L, R, S] tokens per slot, or their summary [M, W, L, R])."""
    tp = setup.dep.tp
    R = setup.num_ranks
    W = seqs.new_tokens.shape[0]
    new, ctx = seqs.new_tokens, seqs.context_tokens  # [W, R, P]
    if tp > 1:  # a DP group's ranks compute attention over the group's sequences, heads split tp ways
        groups = R // tp
        new = np.repeat(new.reshape(W, groups, -1), tp, axis=1)
        ctx = np.repeat(ctx.reshape(W, groups, -1), tp, axis=1)
    if M == 2:
        mb = (np.arange(new.shape[-1]) % 2)[None, None, :]
        new = np.stack([new * (mb == 0), new * (mb == 1)])
        ctx = np.stack([ctx * (mb == 0), ctx * (mb == 1)])
    else:
        new, ctx = new[None], ctx[None]
    return LayerShape(
        tokens=new.sum(axis=-1),
        new_tokens=new,
        context_tokens=ctx,
        expert_tokens=experts,
        phase=phase,
        tp=tp,
        moe_tp=setup.dep.moe_tp,
    )


def _layer_costs(
    setup: ReplaySetup, pricer: LayerPricer, shape: LayerShape, seqs: WindowSequences
) -> tuple[dict[Any, LayerCosts], LayerCosts, LayerCosts, np.ndarray]:
    """Costs per attention-window class (attention of every layer), of a MoE layer's router, shared
    and routed experts ([M, W, L, R] for the experts), and of a dense layer's FFN."""
    live = shape.tokens > 0
    gap = pricer.gap
    attn: dict[Any, LayerCosts] = {}
    for w in setup.distinct_windows:
        costs = LayerCosts()
        pricer.attention_layer(shape, w, costs)
        attn[w] = costs.with_gaps(gap, live)
    moe = LayerCosts()
    pricer.router(shape, moe)
    if pricer.has_shared():
        pricer.ffn(shape.tokens, pricer.shared_width(), "shared", moe, shape.tp)
    pricer.residual(shape, moe)
    moe.with_gaps(gap, live)
    routed = LayerCosts()
    rows = grouped_rows(shape.expert_tokens)  # summarised once: both grouped GEMMs and the gaps use it
    weight_read = pricer.experts(dataclasses.replace(shape, expert_tokens=rows), routed).sum(axis=0)
    routed.with_gaps(gap, rows.rows > 0)
    for stage, t in routed.stages.items():
        moe.stages[stage] = t  # [M, W, L, R]
    for comp, pr in routed.components.items():
        moe.components[f"routed:{comp}"] = pr
    for stage, n in routed.kernels.items():
        moe.kernels[f"routed:{stage}"] = n  # counted, never priced again
    dense = LayerCosts()
    pricer.ffn(shape.tokens, float(setup.arch.intermediate_size or 0), "ffn", dense, shape.tp)
    dense.with_gaps(gap, live)
    return attn, moe, dense, weight_read


@dataclass(frozen=True, kw_only=True, eq=False)
class _Kinds:
    """Where each target layer's costs come from: its attention-window class, MoE or dense."""

    lm: LayerMap
    #: The attention-window classes, in the order the costs are given.
    order: list[Any]
    #: [T] each target layer's class (index into ``order``).
    idx: np.ndarray

    def attention(self, by_class: list[np.ndarray]) -> np.ndarray:
        """[M, W, R] per class -> [M, W, T, R] (a read-only view when every layer is of one class)."""
        if len(by_class) == 1:
            x = by_class[0]
            return np.broadcast_to(x[..., None, :], (*x.shape[:-1], self.idx.size, x.shape[-1]))
        return np.moveaxis(np.stack(by_class)[self.idx], 0, -2)


def _kinds(setup: ReplaySetup, lm: LayerMap) -> _Kinds:
    order = list(setup.distinct_windows)
    return _Kinds(lm=lm, order=order, idx=np.array([order.index(w) for w in setup.windows]))


def _full(x: Any, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.asarray(x, dtype=np.float64), shape)


def _assemble(
    k: _Kinds, attn: dict[Any, LayerCosts], moe: LayerCosts, dense: LayerCosts, stage: str, M: int
) -> np.ndarray:
    """[M, W, T, R] compute seconds of ``stage`` in every target layer."""
    lm = k.lm
    shape = (M, lm.W, lm.R)
    out = np.zeros((M, *lm.shape))
    if any(stage in attn[w].stages for w in k.order):
        out = out + k.attention([_full(attn[w].stages.get(stage, 0.0), shape) for w in k.order])
    if stage == "experts":
        if stage in moe.stages:
            out = out + lm.layers(moe.stages[stage], 0.0)
    elif stage in moe.stages or stage in dense.stages:
        out = out + lm.kinds(
            _full(moe.stages.get(stage, 0.0), shape), _full(dense.stages.get(stage, 0.0), shape)
        )
    return out


def _priced(
    costs: LayerCosts, comp: str, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(time, bound, measured part or None) of one component of a layer kind, broadcast to ``shape``."""
    pr = costs.components.get(comp)
    if pr is None:
        return np.zeros(shape), np.full(shape, _LATENCY, np.int8), None
    measured = None if pr.measured is None else _full(pr.measured, shape)
    return _full(pr.time, shape), np.broadcast_to(pr.bound, shape), measured


def _measured(parts: list[np.ndarray | None], shape: tuple[int, ...]) -> list[np.ndarray] | None:
    """The measured parts, zeros where a part has none (None when none has)."""
    if all(m is None for m in parts):
        return None
    return [np.zeros(shape) if m is None else m for m in parts]


def _component(
    k: _Kinds, attn: dict[Any, LayerCosts], moe: LayerCosts, dense: LayerCosts, comp: str, M: int
) -> Priced:
    """[W, T, R] seconds of one component over the micro-batches, with the bound of its largest part."""
    lm = k.lm
    shape = (M, lm.W, lm.R)
    parts = [_priced(attn[w], comp, shape) for w in k.order]
    attn_measured = _measured([m for _, _, m in parts], shape)
    total = Priced(
        time=k.attention([t for t, _, _ in parts]),
        bound=k.attention([b for _, b, _ in parts]).astype(np.int8),
        measured=None if attn_measured is None else k.attention(attn_measured),
    )
    routed = moe.components.get(f"routed:{comp}")
    if routed is not None:
        total = total + Priced(
            time=lm.layers(np.asarray(routed.time, dtype=np.float64), 0.0),
            bound=lm.layers(routed.bound, _LATENCY).astype(np.int8),
            measured=None
            if routed.measured is None
            else lm.layers(np.asarray(routed.measured, dtype=np.float64), 0.0),
        )
    (mt, mb, mm), (dt, db, dm) = _priced(moe, comp, shape), _priced(dense, comp, shape)
    kind_measured = _measured([mm, dm], shape)
    total = total + Priced(
        time=lm.kinds(mt, dt),
        bound=lm.kinds(mb, db).astype(np.int8),
        measured=None if kind_measured is None else lm.kinds(*kind_measured),
    )
    return Priced(
        time=total.time.sum(axis=0),
        bound=bound_of_largest(list(total.time), list(total.bound)),
        measured=np.zeros(lm.shape) if total.measured is None else total.measured.sum(axis=0),
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class RoutedCounts:
    """What the routed experts' traffic and bytes depend on, per (step, trace MoE layer, expert
    group) ``[W, L, G]``, in tokens: from a window's per-peer matrices (:func:`routed_counts`), or
    counted straight from the routing by the planner's fast path (``tracekit.replay.workload``)."""

    #: :func:`tracekit.cost.link_loads` of the phase's implementation at one byte per token (each
    #: micro-batch then moves ``1 / M`` of it, at its payload's bytes per token).
    loads: dict[str, np.ndarray]
    #: Token-expert pairs the group's slots receive, and its slots with at least one.
    tokens_recv: np.ndarray
    active_experts: np.ndarray
    #: Tokens sent to other groups (once per destination group), and received from them.
    sent_tokens: np.ndarray
    recv_tokens: np.ndarray


def routed_counts(setup: ReplaySetup, phase: str, counts: ExpertWindow) -> RoutedCounts:
    """The :class:`RoutedCounts` of a counted window."""
    G = setup.ep_groups
    W, L, _ = counts.recv.shape
    local = counts.recv.reshape(W, L, G, setup.placement.slots_per_rank)
    peer = counts.peer_tokens.astype(np.float64)
    traffic = EPTraffic(
        rank_tokens=peer,
        expert_tokens=counts.rank_pairs.astype(np.float64),
        domain_tokens=counts.node_tokens.astype(np.float64),
        domain_size=setup.group_domain,
    )
    off = 1.0 - np.eye(G)
    return RoutedCounts(
        loads=link_loads(traffic, setup.dep.impl_for(phase), 1.0),
        tokens_recv=local.sum(axis=-1),
        active_experts=(local > 0).sum(axis=-1),
        sent_tokens=(peer * off).sum(axis=-1),
        recv_tokens=(peer * off).sum(axis=-2),
    )


def _gpu_peers(peer: np.ndarray, moe_tp: int) -> np.ndarray:
    """[W, L, G, G] tokens between expert groups -> [W, L, R, R] between GPUs: under MoE TP rank
    ``i`` of group ``a`` sends group ``a``'s tokens to rank ``i`` of each destination group."""
    if moe_tp == 1:
        return peer
    W, L, G, _ = peer.shape
    eye = np.eye(moe_tp)[None, None, None, :, None, :]
    return (peer[:, :, :, None, :, None] * eye).reshape(W, L, G * moe_tp, G * moe_tp)


def price_routed(
    setup: ReplaySetup,
    phase: str,
    rc: RoutedCounts,
    M: int,
    weight_read: np.ndarray,
    *,
    peer_tokens: np.ndarray | None = None,
) -> tuple[RoutedWork, CommTimes, CommTimes]:
    """:func:`_routed` from the counts: per GPU (a group's counts on each of its ``moe_tp`` GPUs),
    bytes at each payload's size, each micro-batch moving ``1 / M`` of the traffic."""
    hw, arch, dep = setup.hw, setup.arch, setup.dep
    prec = dep.precision
    G, moe_tp = setup.ep_groups, dep.moe_tp
    impl = dep.impl_for(phase)
    params = hw.comm_params(impl)
    bpt_dispatch = wire_bytes_per_token(prec.dispatch, arch.hidden_size)
    bpt_combine = wire_bytes_per_token(prec.combine, arch.hidden_size)

    def gpu(x: np.ndarray) -> np.ndarray:
        return x if moe_tp == 1 else np.repeat(x, moe_tp, axis=-1)

    if G == 1 and moe_tp > 1:  # pure tensor parallelism: every GPU holds a slice of every expert
        zero = np.zeros((*rc.tokens_recv.shape[:-1], setup.num_ranks))
        d = c = CommCost(
            time_s=zero,
            code=np.full(zero.shape, _LATENCY, np.int8),
            link_code=np.zeros(zero.shape, np.int8),  # LINKS[0]: none
            nvlink_bytes_sent=zero,
            nvlink_bytes_recv=zero,
            network_bytes_sent=zero,
            network_bytes_recv=zero,
            up_time_s=zero,
            out_time_s=zero,
        )
    else:  # each micro-batch moves its share of the traffic
        d = dispatch_from_loads(
            hw, {k: gpu(v) * (bpt_dispatch / M) for k, v in rc.loads.items()}, impl=impl, ranks=G
        )
        c = combine_from_loads(
            hw, {k: gpu(v) * (bpt_combine / M) for k, v in rc.loads.items()}, impl=impl, ranks=G
        )
    routed = RoutedWork(
        peer_tokens=peer_tokens,
        tokens_recv=gpu(rc.tokens_recv),
        active_experts=gpu(rc.active_experts),
        weight_bytes=weight_read,
        dispatch_bytes=gpu(rc.sent_tokens) * bpt_dispatch,
        dispatch_recv_bytes=gpu(rc.recv_tokens) * bpt_dispatch,
        combine_bytes=gpu(rc.recv_tokens) * bpt_combine,
        network_bytes=M * (d.network_bytes_sent + c.network_bytes_sent),
    )
    scale = {"d": hw.time_scale("moe_dispatch"), "c": hw.time_scale("moe_combine")}
    return (
        routed,
        _comm_times(d, params, M, scale["d"], hw.num_sms),
        _comm_times(c, params, M, scale["c"], hw.num_sms),
    )


def _comm_times(cost: Any, p: Any, M: int, scale: float, sms: int) -> CommTimes:
    span = np.asarray(cost.time_s) * scale
    up = np.asarray(cost.up_time_s) * scale
    out = np.asarray(cost.out_time_s) * scale
    busy = p.sm_frac_up * up + p.sm_frac * out
    shape = (M, *span.shape)
    return CommTimes(
        span=np.broadcast_to(span, shape),
        busy=np.broadcast_to(busy, shape),
        launch=np.broadcast_to(np.where(span > 0, p.launch_s, 0.0), shape),
    )


def _comm_layers(lm: LayerMap, c: CommTimes) -> CommTimes:
    return CommTimes(
        span=lm.layers(c.span, 0.0), busy=lm.layers(c.busy, 0.0), launch=lm.layers(c.launch, 0.0)
    )


def _comm_component(lm: LayerMap, c: CommTimes, M: int) -> Priced:
    t = lm.layers((c.span + c.launch).sum(axis=0), 0.0)
    return Priced(time=t, bound=np.full(t.shape, BOUND_NAMES.index("network"), np.int8))


def _tp_comm(setup: ReplaySetup, shape: LayerShape) -> tuple[np.ndarray, np.ndarray | None]:
    """[M, W, R] the attention output all-reduce of tensor-parallel attention, and its part priced
    from a measured table (None: none)."""
    tp = setup.dep.tp
    if tp == 1:
        return np.zeros(shape.tokens.shape), None
    nbytes = shape.tokens * setup.arch.hidden_size * 2.0
    cost = allreduce(setup.hw, nbytes=nbytes, ranks=tp)
    t = np.asarray(cost.time_s) * setup.hw.time_scale("collective")
    if setup.measured is None:
        return t, None
    priced = Priced(time=t, bound=np.zeros(t.shape, np.int8)).measured_where(
        setup.measured.all_reduce(nbytes, tp)
    )
    return priced.time, priced.measured


def _edges(setup: ReplaySetup, tok: np.ndarray, group_outputs: np.ndarray) -> tuple[Priced, Priced]:
    """[W, R]: the embedding read and the LM head of each rank."""
    hw, arch, dep = setup.hw, setup.arch, setup.dep
    dense = dep.precision.dense
    emb = roofline(hw, flops=0.0, hbm_bytes=tok * arch.hidden_size * bytes_per_param(dense) * 2.0)
    head = gemm(hw, m=group_outputs, n=arch.vocab_size // dep.tp, k=arch.hidden_size, precision=dense)
    return Priced.of(emb), Priced.of(head)
