"""The timing stage: what each component of a window of replayed steps costs on every rank.

:func:`time_window` prices, from the cost primitives of :mod:`tracekit.cost`, per (step, target
decoder layer, rank): attention (per attention-window class), routed-expert grouped GEMMs,
shared experts and router (or the dense FFN of a dense layer), dispatch and combine, and the
tensor-parallel all-reduce; and per (step, rank) the embedding and LM head. Under two-batch overlap
each micro-batch is priced separately and the two summed. The result, a :class:`WindowCost`, is
what :mod:`tracekit.replay.attribution` turns into layer and step times.

To add a cost component: price it here into ``WindowCost.components`` and name it in
:data:`COMPONENTS` (as compute or communication, :data:`COMM_COMPONENTS`).

Shape legend: ``W`` steps of the window, ``L`` trace MoE layers, ``T`` target decoder layers,
``R`` ranks, ``S`` slots per rank, ``P`` sequences per (step, rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from tracekit.cost import EPTraffic, allreduce, attention, combine, dispatch, gemm, grouped_gemm, roofline
from tracekit.cost.result import BOUNDS
from tracekit.models import expert_weight_bytes, shared_expert_params
from tracekit.models.work import shared_expert_width
from tracekit.precision import bytes_per_param, wire_bytes_per_token
from tracekit.replay.counts import ExpertWindow
from tracekit.replay.schedule import AttentionLoad, WindowSequences
from tracekit.replay.setup import ReplaySetup

#: Components of a rank's time in a layer, in the order of the ``replay_ranks`` columns.
COMPONENTS = ("attention", "expert_gemm", "dense", "dispatch", "combine", "tp_comm")
#: The communication components (the rest is compute).
COMM_COMPONENTS = ("dispatch", "combine", "tp_comm")
#: Bound names, indexed by the int8 bound codes of :class:`Timed`.
BOUND_NAMES = BOUNDS
_LATENCY = BOUND_NAMES.index("latency")


@dataclass(frozen=True, kw_only=True, eq=False)
class Timed:
    """Times (seconds) and the bound that set each one (int8 codes into :data:`BOUND_NAMES`)."""

    time: np.ndarray
    bound: np.ndarray

    @staticmethod
    def of(cost: Any) -> Timed:
        """A cost primitive's result (``time_s`` and bound names)."""
        return Timed(
            time=np.asarray(cost.time_s, dtype=np.float64), bound=bound_codes(np.asarray(cost.bound))
        )

    @staticmethod
    def zero(shape: tuple[int, ...]) -> Timed:
        return Timed(time=np.zeros(shape), bound=np.full(shape, _LATENCY, dtype=np.int8))

    def __add__(self, other: Timed) -> Timed:
        """Two costs one after the other: times add, the larger one's bound stays."""
        return Timed(
            time=self.time + other.time, bound=np.where(self.time >= other.time, self.bound, other.bound)
        )


def bound_codes(bound: np.ndarray) -> np.ndarray:
    """int8 codes (indices into :data:`BOUND_NAMES`) of bound names."""
    out = np.zeros(bound.shape, dtype=np.int8)
    for i, name in enumerate(BOUND_NAMES):
        out[bound == name] = i
    return out


def _halves(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split integer counts between two micro-batches."""
    return (x + 1) // 2, x // 2


@dataclass(frozen=True, kw_only=True, eq=False)
class LayerMap:
    """From per-trace-MoE-layer arrays [W, L, R] and per-rank arrays [W, R] to per target decoder
    layer [W, T, R]."""

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
        """[W, L, R] per trace MoE layer -> [W, T, R] (``fill`` for dense layers)."""
        if self.moe_mask.all():
            return moe_arr[:, self._source, :]
        return np.where(self.moe_mask[None, :, None], moe_arr[:, self._source, :], np.full(self.shape, fill))

    def ranks(self, x: np.ndarray) -> np.ndarray:
        """[W, R] -> [W, T, R], the same in every layer."""
        return np.broadcast_to(x[:, None, :], self.shape)


@dataclass(frozen=True, kw_only=True, eq=False)
class RoutedWork:
    """What the routed experts of a window do per (step, trace MoE layer, rank) [W, L, R]."""

    expert_gemm: Timed
    dispatch: Timed
    combine: Timed
    #: [W, L, R, R] tokens each source rank sends each destination rank (once per destination).
    peer_tokens: np.ndarray
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
    """Every priced component of a window: per (step, target layer, rank) and per (step, rank)."""

    layer_map: LayerMap
    #: Per component of :data:`COMPONENTS`: [W, T, R].
    components: dict[str, Timed]
    routed: RoutedWork
    #: Per (step, rank) [W, R]: the embedding read and the LM head.
    embedding: Timed
    lm_head: Timed


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
    """Price every component of replayed steps ``lo .. hi - 1`` of ``phase``."""
    lm = LayerMap(source_of=setup.source_of, W=hi - lo, R=setup.num_ranks)
    routed = routed_work(setup, phase, counts)
    tok = load.tokens[lo:hi].astype(np.float64)  # [W, R]
    outputs = load.outputs[lo:hi].astype(np.float64)
    group = _dp_groups(setup, tok, outputs, seqs)
    dense_moe, dense_ffn, tp_comm = _dense_work(setup, tok, group.tokens)
    moe = lm.moe_mask[None, :, None]
    components = {
        "attention": _attention(setup, phase, group),
        "expert_gemm": Timed(
            time=lm.layers(routed.expert_gemm.time, 0.0), bound=_layer_bound(lm, routed.expert_gemm)
        ),
        "dense": Timed(
            time=np.where(moe, lm.ranks(dense_moe.time), lm.ranks(dense_ffn.time)),
            bound=np.where(moe, lm.ranks(dense_moe.bound), lm.ranks(dense_ffn.bound)),
        ),
        "dispatch": Timed(time=lm.layers(routed.dispatch.time, 0.0), bound=_layer_bound(lm, routed.dispatch)),
        "combine": Timed(time=lm.layers(routed.combine.time, 0.0), bound=_layer_bound(lm, routed.combine)),
        # dense layers all-reduce twice (attention and FFN outputs), MoE layers once (attention)
        "tp_comm": Timed(
            time=lm.ranks(tp_comm.time) * np.where(lm.moe_mask, 1.0, 2.0)[None, :, None],
            bound=lm.ranks(tp_comm.bound),
        ),
    }
    embedding, lm_head = _edges(setup, tok, group.outputs)
    return WindowCost(
        layer_map=lm, components=components, routed=routed, embedding=embedding, lm_head=lm_head
    )


def _layer_bound(lm: LayerMap, t: Timed) -> np.ndarray:
    return lm.layers(t.bound, _LATENCY).astype(np.int8)


def routed_work(setup: ReplaySetup, phase: str, counts: ExpertWindow) -> RoutedWork:
    """Grouped GEMMs of each rank's experts and the dispatch and combine that feed them."""
    hw, arch, dep = setup.hw, setup.arch, setup.dep
    prec = dep.precision
    W, L, _ = counts.recv.shape
    R = setup.num_ranks
    local = counts.recv.reshape(W, L, R, setup.placement.slots_per_rank)
    gg_args: dict[str, Any] = {
        "hidden_size": arch.hidden_size,
        "ffn_size": arch.moe_intermediate_size,
        "precision": prec.experts,
        "weight_precision": prec.experts,
        "expert_weight_bytes": expert_weight_bytes(arch, prec.experts),
    }
    if dep.tbo:
        first, second = (grouped_gemm(hw, tokens_per_expert=h, **gg_args) for h in _halves(local))
        gemms = Timed.of(first) + Timed.of(second)
        weight_read = first.weight_bytes + second.weight_bytes
    else:
        whole = grouped_gemm(hw, tokens_per_expert=local, **gg_args)
        gemms = Timed.of(whole)
        weight_read = whole.weight_bytes
    peer = counts.peer_tokens.astype(np.float64)
    traffic = EPTraffic(
        rank_tokens=peer,
        expert_tokens=counts.rank_pairs.astype(np.float64),
        domain_tokens=counts.node_tokens.astype(np.float64),
        domain_size=hw.scaleup_size,
    )
    impl = dep.impl_for(phase)
    bpt_dispatch = wire_bytes_per_token(prec.dispatch, arch.hidden_size)
    bpt_combine = wire_bytes_per_token(prec.combine, arch.hidden_size)
    # under two-batch overlap each micro-batch moves half of the traffic, one after the other
    part, times = (traffic.scaled(0.5), 2.0) if dep.tbo else (traffic, 1.0)
    d = dispatch(hw, part, impl=impl, bytes_per_token=bpt_dispatch)
    c = combine(hw, part, impl=impl, bytes_per_token=bpt_combine)
    off = 1.0 - np.eye(R)
    disp_recv = (peer * off).sum(axis=-2) * bpt_dispatch
    return RoutedWork(
        expert_gemm=gemms,
        dispatch=Timed(time=times * d.time_s, bound=bound_codes(d.bound)),
        combine=Timed(time=times * c.time_s, bound=bound_codes(c.bound)),
        peer_tokens=peer,
        tokens_recv=local.sum(axis=-1),
        active_experts=(local > 0).sum(axis=-1),
        weight_bytes=weight_read,
        dispatch_bytes=(peer * off).sum(axis=-1) * bpt_dispatch,
        dispatch_recv_bytes=disp_recv,
        combine_bytes=disp_recv / bpt_dispatch * bpt_combine,
        network_bytes=times * (d.network_bytes_sent + c.network_bytes_sent),
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class _GroupWork:
    """Attention inputs per rank after tensor parallelism: a DP group's ranks share its sequences."""

    new_tokens: np.ndarray  # [W, R or groups, P]
    context_tokens: np.ndarray
    micro_batch: np.ndarray
    #: [W, R] tokens and output tokens of each rank's DP group.
    tokens: np.ndarray
    outputs: np.ndarray


def _dp_groups(setup: ReplaySetup, tok: np.ndarray, outputs: np.ndarray, seqs: WindowSequences) -> _GroupWork:
    tp = setup.dep.tp
    if tp == 1:
        return _GroupWork(
            new_tokens=seqs.new_tokens,
            context_tokens=seqs.context_tokens,
            micro_batch=seqs.micro_batch,
            tokens=tok,
            outputs=outputs,
        )
    # A DP group's ranks compute attention over the group's sequences, heads split tp ways.
    W, R, _ = seqs.new_tokens.shape
    groups = R // tp
    new = seqs.new_tokens.reshape(W, groups, -1)
    return _GroupWork(
        new_tokens=new,
        context_tokens=seqs.context_tokens.reshape(W, groups, -1),
        micro_batch=np.broadcast_to((np.arange(new.shape[-1]) % 2)[None, None, :], new.shape),
        tokens=np.repeat(tok.reshape(W, groups, tp).sum(axis=-1), tp, axis=-1),
        outputs=np.repeat(outputs.reshape(W, groups, tp).sum(axis=-1), tp, axis=-1),
    )


def _attention(setup: ReplaySetup, phase: str, group: _GroupWork) -> Timed:
    """[W, T, R] attention of every target layer, priced once per attention-window class."""
    hw, arch, dep = setup.hw, setup.arch, setup.dep
    prec = dep.precision
    tp = dep.tp
    windows = setup.distinct_windows
    by_window = []
    for w in windows:
        args: dict[str, Any] = {
            "phase": phase,
            "kv_precision": prec.kv_cache,
            "weight_precision": prec.attention,
            "precision": prec.attention,
            "layer": setup.windows.index(w),
            "tp": tp,
        }
        if dep.tbo:
            mb = group.micro_batch
            at = Timed.of(
                attention(
                    hw,
                    arch,
                    new_tokens=group.new_tokens * (mb == 0),
                    context_tokens=group.context_tokens * (mb == 0),
                    **args,
                )
            ) + Timed.of(
                attention(
                    hw,
                    arch,
                    new_tokens=group.new_tokens * (mb == 1),
                    context_tokens=group.context_tokens * (mb == 1),
                    **args,
                )
            )
        else:
            at = Timed.of(
                attention(hw, arch, new_tokens=group.new_tokens, context_tokens=group.context_tokens, **args)
            )
        if tp > 1:
            at = Timed(time=np.repeat(at.time, tp, axis=-1), bound=np.repeat(at.bound, tp, axis=-1))
        by_window.append(at)
    idx = np.array([windows.index(w) for w in setup.windows])
    time = np.stack([a.time for a in by_window])[idx]  # [T, W, R]
    bound = np.stack([a.bound for a in by_window])[idx]
    return Timed(time=np.moveaxis(time, 0, 1), bound=np.moveaxis(bound, 0, 1))


def _ffn(setup: ReplaySetup, width: int, rows: np.ndarray) -> Timed:
    """A SwiGLU FFN of ``width`` (split tp ways) over ``rows`` tokens per rank [W, R]."""
    if width == 0:
        return Timed.zero(rows.shape)
    hw, dep = setup.hw, setup.dep
    hidden = setup.arch.hidden_size

    def one(m: np.ndarray) -> Timed:
        up = gemm(hw, m=m, n=2 * width // dep.tp, k=hidden, precision=dep.precision.dense)
        down = gemm(hw, m=m, n=hidden, k=width // dep.tp, precision=dep.precision.dense)
        return Timed.of(up) + Timed.of(down)

    if dep.tbo:
        a, b = _halves(rows)
        return one(a) + one(b)
    return one(rows)


def _dense_work(setup: ReplaySetup, tok: np.ndarray, group_tokens: np.ndarray) -> tuple[Timed, Timed, Timed]:
    """[W, R]: a MoE layer's shared experts and router, a dense layer's FFN, and the TP all-reduce."""
    hw, arch = setup.hw, setup.arch
    router = Timed.of(gemm(hw, m=tok, n=arch.num_experts, k=arch.hidden_size, precision="bf16"))
    shared = (
        _ffn(setup, shared_expert_width(arch), group_tokens)
        if shared_expert_params(arch)
        else Timed.zero(tok.shape)
    )
    dense_ffn = _ffn(setup, arch.intermediate_size or 0, group_tokens)
    tp = setup.dep.tp
    if tp > 1:
        tp_comm = Timed.of(allreduce(hw, nbytes=group_tokens * arch.hidden_size * 2.0, ranks=tp))
    else:
        tp_comm = Timed.zero(tok.shape)
    return shared + router, dense_ffn, tp_comm


def _edges(setup: ReplaySetup, tok: np.ndarray, group_outputs: np.ndarray) -> tuple[Timed, Timed]:
    """[W, R]: the embedding read and the LM head of each rank."""
    hw, arch, dep = setup.hw, setup.arch, setup.dep
    dense = dep.precision.dense
    emb = roofline(hw, flops=0.0, hbm_bytes=tok * arch.hidden_size * bytes_per_param(dense) * 2.0)
    head = gemm(hw, m=group_outputs, n=arch.vocab_size // dep.tp, k=arch.hidden_size, precision=dense)
    return Timed.of(emb), Timed.of(head)
