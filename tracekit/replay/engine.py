"""The replay engine: re-time a trace's real routing on a hardware model under a deployment.

Per replayed step, decoder layer and rank the engine times attention, routed-expert grouped GEMMs,
shared experts / dense FFN, dispatch and combine (with the cost primitives of :mod:`tracekit.cost`),
sets each layer's time by its slowest rank and attributes it (mean load, straggler cost, exposed
communication). docs/replay.md describes the model and every output column.

Shape legend: ``W`` steps of a window, ``L`` trace MoE layers, ``T`` target decoder layers, ``R``
ranks, ``S`` slots, ``P`` sequences per cell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tracekit.cost import EPTraffic, allreduce, attention, combine, dispatch, gemm, grouped_gemm, roofline
from tracekit.errors import DeploymentError, UsageError
from tracekit.hardware import HardwareSpec, get_hardware
from tracekit.importers import is_unknown
from tracekit.models import expert_weight_bytes, get_model, layer_window, shared_expert_params
from tracekit.models.work import bytes_per_param, shared_expert_width
from tracekit.placement import Placement, read_placements
from tracekit.replay.deployment import Deployment, payload_bytes_per_token
from tracekit.replay.memory import MemoryPlan, check_weights_fit, memory_plan
from tracekit.replay.summary import attach_measured, peers_frame, phase_summary, run_frame, summary_dict
from tracekit.replay.workload import (
    AttentionLoad,
    ExpertWindow,
    PhaseTokens,
    RoutingSource,
    Schedule,
    TokenIndex,
    attention_load,
    expert_window,
    load_tokens,
    make_schedule,
    prefetch_window,
    window_size,
)
from tracekit.schema import ModelArch
from tracekit.trace.reader import Trace, open_trace

BOUND_NAMES = ("compute", "memory", "network", "latency")
#: Components of a rank's time, in the order of the ``replay_ranks`` columns.
COMPONENTS = ("attention", "expert_gemm", "dense", "dispatch", "combine", "tp_comm")


@dataclass(frozen=True, kw_only=True, eq=False)
class ReplayResult:
    """Every table of one replay (polars DataFrames) and its summary."""

    deployment: Deployment
    trace_path: str
    run: pl.DataFrame
    steps: pl.DataFrame
    layers: pl.DataFrame
    ranks: pl.DataFrame
    peers: pl.DataFrame
    summary_table: pl.DataFrame
    #: The decode summary (prefill's when the trace has no decode steps), as ``replay --json`` prints.
    summary: dict[str, Any]
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    #: The prefill pool's deployment of a disaggregated replay (``deployment`` is then the decode pool's).
    prefill_deployment: Deployment | None = None

    def all_tables(self) -> dict[str, pl.DataFrame]:
        return {
            "replay_run": self.run,
            "replay_steps": self.steps,
            "replay_layers": self.layers,
            "replay_ranks": self.ranks,
            "replay_peers": self.peers,
            "replay_summary": self.summary_table,
            **self.tables,
        }


# ---- set-up ---------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class _Setup:
    trace: Trace
    dep: Deployment
    hw: HardwareSpec
    arch: ModelArch  # target model
    trace_arch: ModelArch
    num_ranks: int
    #: The first placement epoch (slots per rank and the slot count are the same in every epoch).
    placement: Placement
    #: Placement epochs, ascending ``from_step`` (one unless a multi-epoch ``--placement`` file).
    epochs: tuple[Placement, ...]
    #: First trace step replayed: the placement file's first ``from_step`` (None: every step).
    from_step: int | None
    plan: MemoryPlan
    #: per target layer: -1 for dense, else index into the trace's MoE layers
    source_of: np.ndarray
    #: per target layer: its attention window (None: full)
    windows: tuple[int | None, ...]


def _target_model(trace: Trace, name: str | None) -> ModelArch:
    own = trace.manifest.model
    if is_unknown(own):
        if name is None:
            raise UsageError(
                f"{trace.path}: the trace was imported without a model (its architecture is the "
                "placeholder 'unknown'), so it cannot be re-timed; re-import it with --model NAME or pass "
                "--model NAME to the replay"
            )
        arch = get_model(name)
        # The routing itself says the top-k; the placeholder's expert count is the largest id + 1.
        if arch.top_k != own.top_k or arch.num_experts < own.num_experts:
            raise UsageError(
                f"--model {name}: {arch.num_experts} experts top-{arch.top_k} does not match the trace's "
                f"routing ({own.num_experts} experts seen, top-{own.top_k}); pick the model the trace was "
                "recorded with"
            )
        return arch
    if name is None:
        return own
    arch = get_model(name)
    if (arch.num_experts, arch.top_k) != (own.num_experts, own.top_k):
        raise UsageError(
            f"--model {name}: {arch.num_experts} experts top-{arch.top_k} cannot reuse the routing of "
            f"{own.name} ({own.num_experts} experts top-{own.top_k}); pick a model with the same expert "
            "count and top-k, or omit --model"
        )
    return arch


def _placements(
    dep: Deployment, layers: tuple[int, ...], num_experts: int, num_ranks: int
) -> tuple[Placement, ...]:
    """The placement epochs of the deployment: the ``--placement`` file's (every epoch checked
    against the trace and the deployment), or the contiguous layout."""
    if dep.placement is None:
        slots = num_experts + dep.redundant
        slots += (-slots) % num_ranks
        return (Placement.contiguous(layers, num_experts, num_ranks, num_redundant=slots - num_experts),)
    epochs = tuple(read_placements(dep.placement))
    for p in epochs:
        at = f" (epoch from step {p.from_step})" if len(epochs) > 1 else ""
        if p.num_ranks != num_ranks:
            raise DeploymentError(
                f"--placement {dep.placement}{at} places experts on {p.num_ranks} ranks but the deployment "
                f"has --ep {num_ranks}; compute the placement with tracekit place --ep {num_ranks}"
            )
        missing = [x for x in layers if x not in p.layers]
        if missing:
            raise DeploymentError(
                f"--placement {dep.placement}{at} has no slots for trace layers {missing}; compute it from "
                "this trace with tracekit place"
            )
        if p.num_experts != num_experts:
            raise DeploymentError(
                f"--placement {dep.placement}{at} places {p.num_experts} experts; the trace has {num_experts}"
            )
        if p.slots_per_rank != epochs[0].slots_per_rank:
            raise DeploymentError(
                f"--placement {dep.placement}: epoch from step {p.from_step} has {p.slots_per_rank} slots "
                f"per rank, the first epoch {epochs[0].slots_per_rank}; every epoch needs the same slot "
                "count (compute the file again with tracekit place)"
            )
    return epochs


def _setup(trace: Trace, dep: Deployment) -> _Setup:
    hw = get_hardware(dep.hw, dep.hw_overrides or None)
    trace_arch = trace.manifest.model
    arch = _target_model(trace, dep.model)
    if is_unknown(trace_arch):
        # The placeholder knows the routed layers and top-k; the expert count is the target's.
        trace_arch = dataclasses.replace(trace_arch, num_experts=arch.num_experts)
    num_ranks = dep.ep or max(trace.manifest.parallel.world_size, len(trace.ranks), 1)
    if num_ranks % dep.tp:
        raise UsageError(
            f"--tp {dep.tp} does not divide the deployment's {num_ranks} GPUs; pick --ep as a multiple"
        )
    src_layers = tuple(trace_arch.moe_layers)
    if not src_layers:
        raise DeploymentError(f"{trace.path}: the trace's model has no MoE layer; nothing to replay")
    epochs = _placements(dep, src_layers, trace_arch.num_experts, num_ranks)
    placement = epochs[0]
    plan = memory_plan(
        arch, dep.precision, hbm_bytes=hw.hbm_bytes, slots_per_rank=placement.slots_per_rank, tp=dep.tp
    )
    check_weights_fit(plan, model=arch.name, hw=hw.name, ep=num_ranks)
    moe_pos = {layer: i for i, layer in enumerate(arch.moe_layers)}
    source_of = np.array(
        [moe_pos[t] % len(src_layers) if t in moe_pos else -1 for t in range(arch.num_layers)], dtype=np.int64
    )
    windows = tuple(layer_window(arch, t) for t in range(arch.num_layers))
    return _Setup(
        trace=trace,
        dep=dep,
        hw=hw,
        arch=arch,
        trace_arch=trace_arch,
        num_ranks=num_ranks,
        placement=placement,
        epochs=epochs,
        from_step=placement.from_step if dep.placement is not None else None,
        plan=plan,
        source_of=source_of,
        windows=windows,
    )


# ---- timing helpers -------------------------------------------------------------------------------
def _bound_codes(bound: np.ndarray) -> np.ndarray:
    out = np.zeros(bound.shape, dtype=np.int8)
    for i, name in enumerate(BOUND_NAMES):
        out[bound == name] = i
    return out


def _halves(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split integer counts between two micro-batches."""
    return (x + 1) // 2, x // 2


@dataclass(frozen=True, kw_only=True, eq=False)
class _Timed:
    time: np.ndarray
    bound: np.ndarray  # int8 codes


def _sum_timed(a: Any, b: Any) -> _Timed:
    t = a.time_s + b.time_s
    bound = np.where(a.time_s >= b.time_s, _bound_codes(a.bound), _bound_codes(b.bound))
    return _Timed(time=t, bound=bound)


def _bound_names(codes: np.ndarray) -> pl.Series:
    """Bound names of codes (indices into BOUND_NAMES), as a string column."""
    return pl.Series(BOUND_NAMES, dtype=pl.String).gather(codes.reshape(-1).astype(np.uint32))


def _one(c: Any) -> _Timed:
    return _Timed(time=np.asarray(c.time_s, dtype=np.float64), bound=_bound_codes(np.asarray(c.bound)))


def _zero(shape: tuple[int, ...]) -> _Timed:
    return _Timed(time=np.zeros(shape), bound=np.full(shape, 3, dtype=np.int8))


def _sequences(
    tokens: PhaseTokens, schedule: Schedule, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sequence attention inputs of steps [lo, hi): new tokens and context, [W, R, P] (zero padded),
    plus each sequence's micro-batch (0/1 by its index in the cell)."""
    sel = schedule.token_range(lo, hi)
    p, step, rank = (x[sel] for x in schedule.tokens)
    copy = schedule.token_copy[sel]
    R = schedule.num_ranks
    W = hi - lo
    req = tokens.request[p]
    copies = schedule.step.shape[0]
    seq = np.where(req >= 0, req * copies + copy, -1 - (copy * tokens.num_tokens + p))
    frame = pl.DataFrame({"cell": (step - lo) * R + rank, "seq": seq, "kv": tokens.kv_len[p]})
    per = frame.group_by(["cell", "seq"], maintain_order=True).agg(
        pl.len().alias("q"), pl.col("kv").min().alias("kmin")
    )
    per = per.with_columns(pl.int_range(pl.len()).over("cell").alias("i"))
    n_seq = int(per["i"].max() or 0) + 1 if per.height else 1  # type: ignore[arg-type]
    new = np.zeros((W * R, n_seq))
    ctx = np.zeros((W * R, n_seq))
    cells = per["cell"].to_numpy()
    idx = per["i"].to_numpy()
    new[cells, idx] = per["q"].to_numpy()
    ctx[cells, idx] = per["kmin"].to_numpy() - 1
    mb = np.broadcast_to((np.arange(n_seq) % 2)[None, :], new.shape)
    return new.reshape(W, R, n_seq), np.maximum(ctx, 0).reshape(W, R, n_seq), mb.reshape(W, R, n_seq)


# ---- one phase ------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class _PhaseOut:
    steps: list[pl.DataFrame] = field(default_factory=list)
    layers: list[pl.DataFrame] = field(default_factory=list)
    ranks: list[pl.DataFrame] = field(default_factory=list)
    peer_tokens: np.ndarray | None = None  # [L, R, R]
    peer_pairs: np.ndarray | None = None


def _window_steps(su: _Setup, schedule: Schedule, num_layers: int) -> int:
    """Replayed steps per window of a phase (see ``window_size``)."""
    rows_per_step = num_layers * schedule.tokens[0].size / max(1, schedule.num_steps)
    return window_size(num_layers, su.num_ranks, su.placement.num_slots, su.hw.scaleup_size, rows_per_step)


def _replay_phase(
    su: _Setup,
    *,
    phase: str,
    tokens: PhaseTokens,
    index: TokenIndex,
    schedule: Schedule,
    load: AttentionLoad,
    source: RoutingSource,
    pool: str,
    collect_ranks: bool,
    progress: Callable[[str, int, int], None] | None = None,
) -> _PhaseOut:
    hw, arch, dep = su.hw, su.arch, su.dep
    prec = dep.precision
    R = su.num_ranks
    tp = dep.tp
    spr = su.placement.slots_per_rank
    L = len(source.layers)
    T = arch.num_layers
    impl = dep.impl_for(phase)
    tbo = dep.tbo
    hidden = arch.hidden_size
    ewb = expert_weight_bytes(arch, prec.experts)
    bpt_dispatch = payload_bytes_per_token(prec.dispatch, hidden)
    bpt_combine = payload_bytes_per_token(prec.combine, hidden)
    out = _PhaseOut(peer_tokens=np.zeros((L, R, R)), peer_pairs=np.zeros((L, R, R)))
    wsize = _window_steps(su, schedule, L)
    moe_mask = su.source_of >= 0
    src_idx = np.where(moe_mask, su.source_of, 0)
    distinct_windows = sorted(set(su.windows), key=lambda w: -1 if w is None else w)
    rep_layer = {w: su.windows.index(w) for w in distinct_windows}
    win_idx = np.array([distinct_windows.index(w) for w in su.windows])
    shared_ffn = shared_expert_width(arch)

    def count(step_lo: int) -> ExpertWindow:
        return expert_window(
            source,
            index,
            tokens,
            schedule,
            su.epochs,
            step_lo=step_lo,
            step_hi=min(schedule.num_steps, step_lo + wsize),
            ranks_per_node=hw.scaleup_size,
            prefetch_next=True,
        )

    # Routing is counted one window ahead on a helper thread (itself using the counting workers),
    # so the timing and tables of a window overlap the counting of the next.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracekit-window") as ahead:
        counted = ahead.submit(count, 0) if schedule.num_steps > 0 else None
        for lo in range(0, schedule.num_steps, wsize):
            hi = min(schedule.num_steps, lo + wsize)
            W = hi - lo
            if progress is not None:
                progress(phase, lo, schedule.num_steps)
            if counted is None:  # submitted for every window before the loop reaches it
                raise RuntimeError("replay: window routing was not counted")
            ew = counted.result()
            if hi < schedule.num_steps:  # the next window's routing, counted while this one is timed
                counted = ahead.submit(count, hi)
            # -- routed experts, per trace MoE layer [W, L, R]
            local = ew.recv.reshape(W, L, R, spr)
            gg_kw: dict[str, Any] = {
                "hidden_size": hidden,
                "ffn_size": arch.moe_intermediate_size,
                "precision": prec.experts,
                "weight_precision": prec.experts,
                "expert_weight_bytes": ewb,
            }
            gg_full = grouped_gemm(hw, tokens_per_expert=local, **gg_kw)
            if tbo:
                a, b = _halves(local)
                ga, gb = (
                    grouped_gemm(hw, tokens_per_expert=a, **gg_kw),
                    grouped_gemm(hw, tokens_per_expert=b, **gg_kw),
                )
                g_t = _sum_timed(ga, gb)
                weight_read = ga.weight_bytes + gb.weight_bytes
            else:
                g_t = _one(gg_full)
                weight_read = gg_full.weight_bytes
            peer = ew.peer_tokens.astype(np.float64)
            pairs = ew.rank_pairs.astype(np.float64)
            traffic = EPTraffic(
                rank_tokens=peer,
                expert_tokens=pairs,
                domain_tokens=ew.node_tokens.astype(np.float64),
                domain_size=hw.scaleup_size,
            )
            out.peer_tokens += peer.sum(axis=0)  # type: ignore[operator]
            out.peer_pairs += pairs.sum(axis=0)  # type: ignore[operator]
            if tbo:
                half = traffic.scaled(0.5)
                d1 = dispatch(hw, half, impl=impl, bytes_per_token=bpt_dispatch)
                c1 = combine(hw, half, impl=impl, bytes_per_token=bpt_combine)
                d_t = _Timed(time=2 * d1.time_s, bound=_bound_codes(d1.bound))
                c_t = _Timed(time=2 * c1.time_s, bound=_bound_codes(c1.bound))
                net_sent = 2 * (d1.network_bytes_sent + c1.network_bytes_sent)
            else:
                d1 = dispatch(hw, traffic, impl=impl, bytes_per_token=bpt_dispatch)
                c1 = combine(hw, traffic, impl=impl, bytes_per_token=bpt_combine)
                d_t, c_t = _one(d1), _one(c1)
                net_sent = d1.network_bytes_sent + c1.network_bytes_sent
            off = 1.0 - np.eye(R)
            disp_sent = (peer * off).sum(axis=-1) * bpt_dispatch
            disp_recv = (peer * off).sum(axis=-2) * bpt_dispatch
            comb_sent = disp_recv / bpt_dispatch * bpt_combine
            recv = local.sum(axis=-1)
            active = (local > 0).sum(axis=-1)

            # -- per (W, R): attention per window class, shared experts, dense FFN, TP all-reduce
            tok = load.tokens[lo:hi].astype(np.float64)  # [W, R]
            outputs = load.outputs[lo:hi].astype(np.float64)
            new, ctx, mb = _sequences(tokens, schedule, lo, hi)
            dp_groups = R // tp
            if tp > 1:
                # A DP group's ranks compute attention over the group's sequences, heads split tp ways.
                new_g = new.reshape(W, dp_groups, tp * new.shape[-1])
                ctx_g = ctx.reshape(W, dp_groups, tp * ctx.shape[-1])
                mb_g = np.broadcast_to((np.arange(new_g.shape[-1]) % 2)[None, None, :], new_g.shape)
                tok_g = np.repeat(tok.reshape(W, dp_groups, tp).sum(axis=-1), tp, axis=-1)
                out_g = np.repeat(outputs.reshape(W, dp_groups, tp).sum(axis=-1), tp, axis=-1)
            else:
                new_g, ctx_g, mb_g, tok_g, out_g = new, ctx, mb, tok, outputs
            attn_by_window = []
            for w in distinct_windows:
                kw: dict[str, Any] = {
                    "phase": phase,
                    "kv_precision": prec.kv_cache,
                    "weight_precision": prec.attention,
                    "precision": prec.attention,
                    "layer": rep_layer[w],
                    "tp": tp,
                }
                if tbo:
                    a1 = attention(
                        hw, arch, new_tokens=new_g * (mb_g == 0), context_tokens=ctx_g * (mb_g == 0), **kw
                    )
                    a2 = attention(
                        hw, arch, new_tokens=new_g * (mb_g == 1), context_tokens=ctx_g * (mb_g == 1), **kw
                    )
                    at = _sum_timed(a1, a2)
                else:
                    at = _one(attention(hw, arch, new_tokens=new_g, context_tokens=ctx_g, **kw))
                if tp > 1:
                    at = _Timed(time=np.repeat(at.time, tp, axis=-1), bound=np.repeat(at.bound, tp, axis=-1))
                attn_by_window.append(at)
            attn_t = np.stack([a.time for a in attn_by_window])[win_idx]  # [T, W, R]
            attn_b = np.stack([a.bound for a in attn_by_window])[win_idx]

            def ffn(width: int, m: np.ndarray) -> _Timed:
                if width == 0:
                    return _zero(m.shape)

                def one(rows: np.ndarray) -> _Timed:
                    up = gemm(hw, m=rows, n=2 * width // tp, k=hidden, precision=prec.dense)
                    down = gemm(hw, m=rows, n=hidden, k=width // tp, precision=prec.dense)
                    return _sum_timed(up, down)

                if tbo:
                    a, b = _halves(m)
                    ta, tb = one(a), one(b)
                    return _Timed(
                        time=ta.time + tb.time, bound=np.where(ta.time >= tb.time, ta.bound, tb.bound)
                    )
                return one(m)

            router = gemm(hw, m=tok, n=arch.num_experts, k=hidden, precision="bf16")
            shared = ffn(shared_ffn, tok_g) if shared_expert_params(arch) else _zero(tok.shape)
            moe_dense = _Timed(
                time=shared.time + router.time_s,
                bound=np.where(shared.time >= router.time_s, shared.bound, _bound_codes(router.bound)),
            )
            dense_ffn = ffn(arch.intermediate_size or 0, tok_g)
            if tp > 1:
                ar = allreduce(hw, nbytes=tok_g * hidden * 2.0, ranks=tp)
                ar_t = _Timed(time=np.asarray(ar.time_s), bound=_bound_codes(np.asarray(ar.bound)))
            else:
                ar_t = _zero(tok.shape)

            # -- assemble per target layer [W, T, R]
            def by_layer(
                moe_arr: np.ndarray, fill: float, shape: tuple[int, int, int] = (W, T, R)
            ) -> np.ndarray:
                # [W, L, R] per trace MoE layer -> [W, T, R] per target layer (fill for dense layers)
                return np.where(moe_mask[None, :, None], moe_arr[:, src_idx, :], np.full(shape, fill))

            def wtr(
                x: np.ndarray, shape: tuple[int, int, int] = (W, T, R)
            ) -> np.ndarray:  # [W, R] -> [W, T, R]
                return np.broadcast_to(x[:, None, :], shape)

            times = {
                "attention": np.moveaxis(attn_t, 0, 1),
                "expert_gemm": by_layer(g_t.time, 0.0),
                "dense": np.where(moe_mask[None, :, None], wtr(moe_dense.time), wtr(dense_ffn.time)),
                "dispatch": by_layer(d_t.time, 0.0),
                "combine": by_layer(c_t.time, 0.0),
                "tp_comm": wtr(ar_t.time) * np.where(moe_mask, 1.0, 2.0)[None, :, None],
            }
            bounds = {
                "attention": np.moveaxis(attn_b, 0, 1),
                "expert_gemm": by_layer(g_t.bound, 3).astype(np.int8),
                "dense": np.where(moe_mask[None, :, None], wtr(moe_dense.bound), wtr(dense_ffn.bound)),
                "dispatch": by_layer(d_t.bound, 3).astype(np.int8),
                "combine": by_layer(c_t.bound, 3).astype(np.int8),
                "tp_comm": wtr(ar_t.bound),
            }
            compute = times["attention"] + times["expert_gemm"] + times["dense"]
            comm = times["dispatch"] + times["combine"] + times["tp_comm"]
            exposed = np.maximum(comm - compute, 0.0) if tbo else comm
            total = compute + exposed
            stack = np.stack([times[c] for c in COMPONENTS])  # [6, W, T, R]
            largest = stack.argmax(axis=0)
            bstack = np.stack([bounds[c] for c in COMPONENTS])
            rank_bound = np.take_along_axis(bstack, largest[None], axis=0)[0]

            # layer level
            layer_time = total.max(axis=-1)
            slowest = total.argmax(axis=-1)
            mean_load = total.mean(axis=-1)
            straggler = layer_time - mean_load
            share = np.divide(exposed, comm, out=np.zeros_like(comm), where=comm > 0)
            exposed_parts = {c: times[c] * share for c in ("dispatch", "combine", "tp_comm")}
            layer_bound = np.take_along_axis(rank_bound, slowest[..., None], axis=-1)[..., 0]
            recv_t = by_layer(recv.astype(np.float64), 0.0)
            sent_t = by_layer(disp_sent, 0.0)
            net_t = by_layer(net_sent, 0.0)

            # embedding and LM head, per rank
            emb = roofline(hw, flops=0.0, hbm_bytes=tok * hidden * bytes_per_param(prec.dense) * 2.0)
            head = gemm(hw, m=out_g, n=arch.vocab_size // tp, k=hidden, precision=prec.dense)
            edge = emb.time_s + head.time_s
            edge_mean = edge.mean(axis=-1)
            step_time = layer_time.sum(axis=-1) + edge.max(axis=-1)
            step_bound = _step_bound(
                layer_time, layer_bound, edge.max(axis=-1), _bound_codes(head.bound).max(axis=-1)
            )

            steps_idx = np.arange(lo, hi, dtype=np.int32)
            mean = {c: times[c].mean(axis=-1).sum(axis=-1) for c in ("attention", "expert_gemm", "dense")}
            mexp = {c: exposed_parts[c].mean(axis=-1).sum(axis=-1) for c in exposed_parts}
            out.steps.append(
                pl.DataFrame(
                    {
                        "pool": [pool] * W,
                        "step": steps_idx,
                        "phase": [phase] * W,
                        "trace_step_first": load.trace_step_first[lo:hi].astype(np.int32),
                        "trace_step_last": load.trace_step_last[lo:hi].astype(np.int32),
                        "num_tokens": tok.sum(axis=-1).astype(np.int64),
                        "num_requests": load.requests[lo:hi].astype(np.int64),
                        "output_tokens": outputs.sum(axis=-1).astype(np.int64),
                        "kv_len_mean": np.divide(
                            load.pairs[None][lo:hi].sum(axis=-1),
                            tok.sum(axis=-1),
                            out=np.zeros(W),
                            where=tok.sum(axis=-1) > 0,
                        ),
                        "step_time_s": step_time,
                        "attention_s": mean["attention"],
                        "expert_gemm_s": mean["expert_gemm"],
                        "dense_s": mean["dense"],
                        "dispatch_s": mexp["dispatch"],
                        "combine_s": mexp["combine"],
                        "tp_comm_s": mexp["tp_comm"],
                        "straggler_s": straggler.sum(axis=-1) + edge.max(axis=-1) - edge_mean,
                        "embedding_s": emb.time_s.mean(axis=-1),
                        "lm_head_s": head.time_s.mean(axis=-1),
                        "hidden_comm_s": (comm - exposed).mean(axis=-1).sum(axis=-1),
                        "dispatch_bytes": sent_t.sum(axis=(-1, -2)).astype(np.int64),
                        "network_bytes": net_t.sum(axis=(-1, -2)).astype(np.int64),
                        "bound": _bound_names(step_bound),
                    }
                )
            )
            wi, ti = np.meshgrid(np.arange(W), np.arange(T), indexing="ij")
            recv_mean = recv_t.mean(axis=-1)
            recv_max = recv_t.max(axis=-1)
            out.layers.append(
                pl.DataFrame(
                    {
                        "pool": [pool] * (W * T),
                        "step": (steps_idx[wi]).reshape(-1),
                        "phase": [phase] * (W * T),
                        "layer": ti.reshape(-1).astype(np.int16),
                        "kind": np.where(moe_mask[ti], "moe", "dense").reshape(-1),
                        "source_layer": pl.Series(
                            np.where(moe_mask, np.asarray(source.layers)[src_idx], -1)[ti]
                            .reshape(-1)
                            .astype(np.int16)
                        ).replace(-1, None),
                        "time_s": layer_time.reshape(-1),
                        "mean_load_s": mean_load.reshape(-1),
                        "straggler_s": straggler.reshape(-1),
                        "exposed_comm_s": exposed.mean(axis=-1).reshape(-1),
                        "hidden_comm_s": (comm - exposed).mean(axis=-1).reshape(-1),
                        **{f"{c}_s": times[c].mean(axis=-1).reshape(-1) for c in COMPONENTS},
                        "slowest_rank": slowest.reshape(-1).astype(np.int32),
                        "tokens_recv_max": recv_max.reshape(-1).astype(np.int64),
                        "tokens_recv_mean": recv_mean.reshape(-1),
                        "imbalance": np.divide(
                            recv_max - recv_mean, recv_mean, out=np.zeros_like(recv_mean), where=recv_mean > 0
                        ).reshape(-1),
                        "dispatch_bytes": sent_t.sum(axis=-1).reshape(-1).astype(np.int64),
                        "network_bytes": net_t.sum(axis=-1).reshape(-1).astype(np.int64),
                        "bound": _bound_names(layer_bound),
                    }
                )
            )
            if collect_ranks:
                n = W * T * R
                wi3, ti3, ri3 = np.meshgrid(np.arange(W), np.arange(T), np.arange(R), indexing="ij")
                kv_sum = np.stack([load.pairs[w][lo:hi] for w in distinct_windows])[win_idx]  # [T, W, R]
                out.ranks.append(
                    pl.DataFrame(
                        {
                            "pool": [pool] * n,
                            "step": steps_idx[wi3].reshape(-1),
                            "phase": [phase] * n,
                            "layer": ti3.reshape(-1).astype(np.int16),
                            "rank": ri3.reshape(-1).astype(np.int32),
                            "tokens": wtr(tok).reshape(-1).astype(np.int64),
                            "kv_tokens": np.moveaxis(kv_sum, 0, 1).reshape(-1).astype(np.int64),
                            "tokens_recv": recv_t.reshape(-1).astype(np.int64),
                            "active_experts": by_layer(active.astype(np.float64), 0.0)
                            .reshape(-1)
                            .astype(np.int32),
                            "weight_bytes": by_layer(weight_read, 0.0).reshape(-1).astype(np.int64),
                            "dispatch_bytes": sent_t.reshape(-1).astype(np.int64),
                            "dispatch_recv_bytes": by_layer(disp_recv, 0.0).reshape(-1).astype(np.int64),
                            "network_bytes": net_t.reshape(-1).astype(np.int64),
                            "combine_bytes": by_layer(comb_sent, 0.0).reshape(-1).astype(np.int64),
                            **{f"{c}_s": times[c].reshape(-1) for c in COMPONENTS},
                            "compute_s": compute.reshape(-1),
                            "comm_s": comm.reshape(-1),
                            "exposed_comm_s": exposed.reshape(-1),
                            "total_s": total.reshape(-1),
                            "bound": _bound_names(rank_bound),
                        }
                    )
                )
    return out


def _step_bound(
    layer_time: np.ndarray, layer_bound: np.ndarray, edge: np.ndarray, edge_bound: np.ndarray
) -> np.ndarray:
    """Per step: the bound carrying the most time over its layers (and embedding / LM head)."""
    W = layer_time.shape[0]
    acc = np.zeros((W, len(BOUND_NAMES)))
    for b in range(len(BOUND_NAMES)):
        acc[:, b] = np.where(layer_bound == b, layer_time, 0.0).sum(axis=-1) + np.where(
            edge_bound == b, edge, 0.0
        )
    return acc.argmax(axis=-1)


# ---- the replay -----------------------------------------------------------------------------------
def _default_batch(tokens: PhaseTokens) -> int:
    """The trace's own tokens per rank per step (mean, rounded up)."""
    cells = np.unique(tokens.trace_step * 1_000_003 + tokens.trace_rank).size
    return max(1, -(-tokens.num_tokens // max(cells, 1)))


def replay(
    trace: str | Path | Trace,
    deployment: Deployment,
    *,
    phases: Iterable[str] | None = None,
    pool: str = "all",
    collect_ranks: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> ReplayResult:
    """Re-time ``trace`` under ``deployment``; see docs/replay.md for the model and the tables.

    ``progress(phase, steps_done, steps_total)`` is called before each window of replayed steps."""
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    su = _setup(tr, deployment)
    dep = su.dep
    tokens, index = load_tokens(tr, kv_len=dep.kv_len, min_step=su.from_step)
    wanted = tuple(phases) if phases is not None else tuple(tokens)
    wanted = tuple(p for p in ("prefill", "decode") if p in wanted and p in tokens)
    if not wanted:
        have = ", ".join(tokens) or "none"
        if su.from_step:
            raise UsageError(
                f"{tr.path}: no {'/'.join(phases or [])} tokens at or after trace step {su.from_step}, where "
                f"--placement {dep.placement} comes into force (the steps before it are the ones it was "
                f"computed from and are not replayed); phases left to replay: {have}"
            )
        raise UsageError(f"{tr.path}: no {'/'.join(phases or [])} tokens to replay (the trace has: {have})")
    source = RoutingSource(trace=tr, layers=tuple(su.trace_arch.moe_layers), top_k=su.trace_arch.top_k)
    R = su.num_ranks
    trace_ranks = index.ranks
    as_recorded_ok = trace_ranks.size == R and trace_ranks.max() < R
    step_frames, layer_frames, rank_frames, summaries, peer_frames = [], [], [], [], []
    info: dict[str, Any] = {"rebatched": False, "token_reuse": 1.0, "batch": {}, "num_steps": 0}
    replayed_steps: list[np.ndarray] = []
    for phase in wanted:
        ptok = tokens[phase]
        given = dep.prefill_tokens_per_gpu if phase == "prefill" else dep.batch_per_gpu
        batch = given if given is not None or as_recorded_ok else _default_batch(ptok)
        schedule = make_schedule(ptok, num_ranks=R, batch_per_gpu=batch, num_steps=dep.steps)
        # the first window's routing decodes in the background while the attention load is summed
        prefetch_window(
            source,
            ptok,
            schedule,
            step_lo=0,
            step_hi=min(schedule.num_steps, _window_steps(su, schedule, len(source.layers))),
        )
        load = attention_load(
            ptok, schedule, tuple(sorted(set(su.windows), key=lambda w: -1 if w is None else w))
        )
        _check_kv(su, phase, load)
        out = _replay_phase(
            su,
            phase=phase,
            tokens=ptok,
            index=index,
            schedule=schedule,
            load=load,
            source=source,
            pool=pool,
            collect_ranks=collect_ranks,
            progress=progress,
        )
        if progress is not None:
            progress(phase, schedule.num_steps, schedule.num_steps)
        steps = pl.concat(out.steps)
        steps = attach_measured(su, steps, schedule)
        step_frames.append(steps)
        layer_frames.append(pl.concat(out.layers))
        if out.ranks:
            rank_frames.append(pl.concat(out.ranks))
        peer_frames.append(peers_frame(su, out, pool, phase))
        summaries.append(phase_summary(su, steps, phase, pool, ptok, schedule, load))
        info["rebatched"] = info["rebatched"] or schedule.rebatched
        info["token_reuse"] = max(info["token_reuse"], schedule.token_reuse)
        info["batch"][phase] = schedule.batch_per_gpu
        info["num_steps"] += schedule.num_steps
        replayed_steps.append(np.unique(ptok.trace_step[schedule.tokens[0]]))
    info.update(_steps_and_migration(su, np.unique(np.concatenate(replayed_steps))))
    steps_df = pl.concat(step_frames)
    summary_table = pl.DataFrame(summaries)
    run = run_frame(su, info, str(tr.path))
    ranks_df = pl.concat(rank_frames) if rank_frames else pl.DataFrame()
    main = summaries[-1]
    summary = summary_dict(main, summaries)
    summary.update({k: info[k] for k in RUN_STEP_FIELDS})
    return ReplayResult(
        deployment=dep,
        trace_path=str(tr.path),
        run=run,
        steps=steps_df,
        layers=pl.concat(layer_frames),
        ranks=ranks_df,
        peers=pl.concat(peer_frames),
        summary_table=summary_table,
        summary=summary,
    )


#: Fields of ``replay_run`` and the summary saying which trace steps were replayed and how the
#: placement changed over them (docs/replay.md).
RUN_STEP_FIELDS = (
    "trace_step_first",
    "trace_step_last",
    "trace_steps_replayed",
    "placement_from_step",
    "placement_epochs",
    "moved_experts",
    "migration_bytes",
)


def epoch_of(from_steps: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Index of the placement epoch in force at each trace step (as ``placement_at``: the last
    epoch with ``from_step <= step``, the first before any)."""
    return np.maximum(np.searchsorted(from_steps, steps, side="right") - 1, 0)


def _steps_and_migration(su: _Setup, trace_steps: np.ndarray) -> dict[str, Any]:
    """Replayed trace steps, placement epochs in force over them and the expert weights moved
    between consecutive ones.

    Each (target MoE layer, rank) copies in one expert's weights per replica it gains at an epoch
    change (as ``tracekit.placement.moved_replicas``); a target layer moves what its trace source
    layer moves, at the target's expert size and ``--precision experts``."""
    from_steps = np.array([p.from_step for p in su.epochs], dtype=np.int64)
    used = np.unique(epoch_of(from_steps, trace_steps)) if trace_steps.size else np.zeros(1, np.int64)
    src_layers = tuple(su.trace_arch.moe_layers)
    per_source = np.zeros(len(src_layers), dtype=np.int64)
    held = None
    for e in used:
        p = su.epochs[int(e)]
        now = p.expert_ranks()[[p.layers.index(x) for x in src_layers]]  # [L, E, R]
        if held is not None:
            per_source += np.clip(now - held, 0, None).sum(axis=(1, 2))
        held = now
    moe_targets = su.source_of[su.source_of >= 0]
    moved = int(per_source[moe_targets].sum())
    return {
        "trace_step_first": int(trace_steps.min()) if trace_steps.size else None,
        "trace_step_last": int(trace_steps.max()) if trace_steps.size else None,
        "trace_steps_replayed": int(trace_steps.size),
        "placement_from_step": su.from_step,
        "placement_epochs": int(used.size),
        "moved_experts": moved,
        "migration_bytes": moved * int(expert_weight_bytes(su.arch, su.dep.precision.experts)),
    }


def _check_kv(su: _Setup, phase: str, load: AttentionLoad) -> None:
    held = load.keys[None]  # [T, R] KV tokens per rank (one entry per sequence: its longest KV)
    if su.dep.tp > 1:
        t, r = held.shape
        held = np.repeat(held.reshape(t, r // su.dep.tp, su.dep.tp).sum(axis=-1), su.dep.tp, axis=-1)
    need = float(held.max()) * su.plan.kv_bytes_per_token if held.size else 0.0
    if need > su.plan.free_bytes:
        seqs = max(1.0, float(load.tokens.max()) if phase == "decode" else 1.0)
        kv_mean = float(held.max()) / seqs
        fit = su.plan.max_batch(kv_mean, su.dep.tp)
        raise DeploymentError(
            f"the {phase} batch does not fit on {su.hw.name} with --ep {su.num_ranks}: its KV cache needs "
            f"{need / 1e9:.1f} GB per GPU but {max(su.plan.free_bytes, 0) / 1e9:.1f} GB are left after "
            f"{su.plan.weight_bytes / 1e9:.1f} GB of weights; at this KV length at most {fit} sequences per "
            "GPU fit: lower --batch-per-gpu or --kv-len, or raise --ep"
        )
