"""The kernels of one decoder layer: what each rank launches, priced with the kernel curves.

A layer of a serving engine is a sequence of kernels, each priced by its family's curve
(:mod:`tracekit.cost.kernels`) at the shape the rank sees:

- attention before the core (stage ``attn0``): the fused input add-RMSNorm, activation
  quantisation before each FP8 GEMM, the query/KV down projection (MLA: ``q_a`` with ``kv_a``; GQA:
  the fused QKV projection), the q/kv norms and ``q_b`` (MLA), in decode the absorbed ``w_kc`` batched
  GEMM, RoPE and the KV-cache write;
- the core and after it (stage ``attn1``): the attention core (MLA or GQA kernel, decode or
  prefill, at the attention-core precision), in decode the ``w_vc`` batched GEMM (in prefill MLA's
  ``kv_b`` decompression sits in ``attn0``), the output projection, the post-attention add-RMSNorm,
  the router GEMM and its top-k;
- the shared experts (stage ``shared``): quantisation, gate-up GEMM, SiLU-and-mul, down GEMM;
- the routed experts (stage ``experts``): the grouped gate-up GEMM, SiLU-and-mul with quantisation,
  the grouped down GEMM (masked layout behind DeepEP's low-latency kernels, contiguous otherwise,
  where a permute and an unpermute of the received rows come with it), and the residual add;
- a dense layer's FFN (stage ``ffn``).

Every kernel adds one launch gap (CUDA graph or eager). Each kernel also belongs to a component of
the replay's breakdown (``attention``, ``attn_proj``, ``dense``, ``expert_gemm``, ``fixed`` for the
small memory-bound kernels and the launch gaps), and to a timing family a user's calibration can
scale (``[scale]`` of a preset).

With a measured source (``--timing measured|auto``, :mod:`tracekit.cost.measured_source`) the
GEMMs, the routed experts and the attention core are priced from the measured table wherever it
covers the shape (each :class:`Priced` keeps the measured part in ``measured``), and from the
curves elsewhere.

Shape legend: ``M`` micro-batches (1, or 2 under two-batch overlap), ``W`` steps, ``L`` trace MoE
layers, ``R`` ranks, ``S`` slots per rank, ``P`` sequences per (step, rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracekit.cost.kernels import (
    GroupedRows,
    attention_time,
    elementwise_time,
    gemm_time,
    grouped_gemm_time,
)
from tracekit.cost.measured_source import MeasuredTiming
from tracekit.cost.result import Cost
from tracekit.hardware import HardwareSpec
from tracekit.models import shared_expert_params
from tracekit.models.work import (
    attended_pairs,
    attention_flops_per_pair,
    kv_cache_bytes_per_token,
    shared_expert_width,
)
from tracekit.precision import bytes_per_param, compute_class
from tracekit.schema import ModelArch

LATENCY = 3  # bound code of "latency" (tracekit.cost.BOUNDS order)


@dataclass(frozen=True, kw_only=True, eq=False)
class Priced:
    """Seconds and the bound that set them (int8 codes into tracekit.cost.BOUNDS); ``measured``: the
    part of ``time`` priced from a measured table (None: none of it)."""

    time: np.ndarray
    bound: np.ndarray
    measured: np.ndarray | None = None

    @staticmethod
    def of(cost: Cost, scale: float = 1.0) -> Priced:
        return Priced(time=np.asarray(cost.time_s, dtype=np.float64) * scale, bound=cost.code)

    def __add__(self, other: Priced) -> Priced:
        a, b = self.time, other.time
        time = a + b
        measured: np.ndarray | None = None
        if self.measured is not None or other.measured is not None:
            total = (0.0 if self.measured is None else self.measured) + (
                0.0 if other.measured is None else other.measured
            )
            measured = np.broadcast_to(np.asarray(total, dtype=np.float64), time.shape)
        return Priced(time=time, bound=np.where(a >= b, self.bound, other.bound), measured=measured)

    def measured_where(self, t: np.ndarray) -> Priced:
        """This price with measured times ``t`` (NaN: not covered) in place of the analytic ones
        where they are finite and the kernel has work."""
        a, m = np.broadcast_arrays(np.asarray(self.time, dtype=np.float64), t)
        use = np.isfinite(m) & (a > 0)
        if not use.any():
            return self
        return Priced(
            time=np.where(use, m, a),
            bound=np.broadcast_to(self.bound, a.shape),
            measured=np.where(use, m, 0.0),
        )


def grouped_rows(expert_tokens: np.ndarray | GroupedRows) -> GroupedRows:
    """The summary of per-slot expert tokens ``[..., S]`` (given as is when already summarised)."""
    return expert_tokens if isinstance(expert_tokens, GroupedRows) else GroupedRows.of(expert_tokens)


#: Stages of a layer, in order.
STAGES = ("attn0", "attn1", "shared", "experts", "ffn")
#: Components of the breakdown each kernel counts to.
KERNEL_COMPONENTS = ("attention", "attn_proj", "dense", "expert_gemm", "fixed")
#: Timing family (a preset's ``[scale]`` key) of each kind of kernel.
FAMILY_OF = {
    "gemm": "dense_gemm",
    "grouped": "expert_gemm",
    "attention": "attention",
    "elementwise": "elementwise",
}


@dataclass(kw_only=True)
class LayerCosts:
    """Per stage and per component, the kernels of one layer kind: arrays ``[M, W, R]`` (every
    layer of the kind alike) or ``[M, W, L, R]`` (per trace MoE layer: the routed experts)."""

    stages: dict[str, np.ndarray] = field(default_factory=dict)
    components: dict[str, Priced] = field(default_factory=dict)
    #: Kernels launched per stage (their launch gaps are added by :meth:`with_gaps`).
    kernels: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, component: str, cost: Priced, *, kernels: float = 1.0) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + cost.time
        old = self.components.get(component)
        self.components[component] = cost if old is None else old + cost
        self.kernels[stage] = self.kernels.get(stage, 0.0) + kernels

    def with_gaps(self, gap_s: float, live: np.ndarray) -> LayerCosts:
        """The costs with one launch gap per kernel where the rank has work (``live``), in ``fixed``."""
        for stage, n in list(self.kernels.items()):
            gaps = np.where(live, n * gap_s, 0.0)
            self.add(
                stage, "fixed", Priced(time=gaps, bound=np.full(gaps.shape, LATENCY, np.int8)), kernels=0.0
            )
        return self


@dataclass(frozen=True, kw_only=True)
class LayerShape:
    """What a rank computes in one layer, per micro-batch ([M, W, R] unless said)."""

    #: Tokens of the rank's attention data-parallel group (its rows of the projections).
    tokens: np.ndarray
    #: Sequences' new tokens and context, [M, W, R, P] (the group's, heads split ``tp`` ways).
    new_tokens: np.ndarray
    context_tokens: np.ndarray
    #: Tokens each local expert slot receives, [M, W, L, R, S], or their summary [M, W, L, R] (what
    #: the grouped GEMMs depend on; the planner's fast path counts it directly).
    expert_tokens: np.ndarray | GroupedRows
    phase: str
    tp: int
    #: MoE tensor parallelism: each rank holds every local expert's 1/moe_tp slice (1: whole experts).
    moe_tp: int = 1


class LayerPricer:
    """Prices the kernels of a layer on one hardware preset (see the module docstring)."""

    def __init__(
        self,
        hw: HardwareSpec,
        arch: ModelArch,
        *,
        attention: str,
        attention_core: str,
        kv_cache: str,
        dense: str,
        experts: str,
        expert_layout: str,
        cuda_graphs: bool,
        measured: MeasuredTiming | None = None,
    ) -> None:
        self.hw, self.arch = hw, arch
        #: Measured kernel times asked first (``--timing measured|auto``); None: analytic only.
        self.measured = measured
        self.attn_prec, self.core_prec, self.kv_prec = attention, attention_core, kv_cache
        self.dense_prec, self.expert_prec = dense, experts
        self.expert_layout = expert_layout
        self.gap = hw.launch_gap_s if cuda_graphs else hw.launch_gap_eager_s

    # -- primitives, each with its family's scale --------------------------------------------------
    def gemm(self, m: np.ndarray, n: float, k: float, precision: str) -> Priced:
        cost = Priced.of(
            gemm_time(self.hw, m=m, n=n, k=k, precision=precision), self.hw.time_scale("dense_gemm")
        )
        if self.measured is None:
            return cost
        return cost.measured_where(self.measured.gemm(m, n, k, precision))

    def ew(self, hbm_bytes: np.ndarray, active: np.ndarray, kernels: float = 1.0) -> Priced:
        """``kernels`` memory-bound kernels moving ``hbm_bytes`` in all, where ``active``."""
        cost = elementwise_time(self.hw, hbm_bytes=np.where(active, hbm_bytes, 0.0), kernels=kernels)
        return Priced.of(cost, self.hw.time_scale("elementwise"))

    def quant(self, rows: np.ndarray, width: float, precision: str) -> Priced:
        """Activation quantisation before an FP8/FP4 GEMM (bf16 in, quantised out)."""
        if compute_class(precision) == "bf16":
            return Priced(time=np.zeros(rows.shape), bound=np.full(rows.shape, LATENCY, np.int8))
        return self.ew(rows * width * (2.0 + bytes_per_param(precision)), rows > 0)

    # -- the layer --------------------------------------------------------------------------------
    def attention_layer(self, shape: LayerShape, window: int | None, costs: LayerCosts) -> None:
        """Norms, projections and the core of one attention layer (stages ``attn0`` and ``attn1``)."""
        arch, a = self.arch, self.arch.attention
        H, tp = arch.hidden_size, shape.tp
        rows = shape.tokens
        live = rows > 0
        p = self.attn_prec
        costs.add("attn0", "fixed", self.ew(8.0 * rows * H, live))  # add + RMSNorm: 2 reads, 2 writes
        costs.add("attn0", "fixed", self.quant(rows, H, p), kernels=float(compute_class(p) != "bf16"))
        heads = a.num_heads / tp
        if a.kind == "mla":
            self._mla_projections(shape, costs)
        else:
            qkv = (a.num_heads + 2 * a.num_kv_heads) * a.head_dim / tp
            costs.add("attn0", "attn_proj", self.gemm(rows, qkv, H, p))
            costs.add("attn0", "fixed", self.ew(4.0 * rows * qkv, live))  # RoPE and the KV write
        costs.add("attn1", "attention", self.core(shape, window))
        v_width = heads * (a.v_head_dim or a.head_dim)
        costs.add("attn1", "fixed", self.quant(rows, v_width, p), kernels=float(compute_class(p) != "bf16"))
        costs.add("attn1", "attn_proj", self.gemm(rows, H, v_width, p))
        costs.add("attn1", "fixed", self.ew(8.0 * rows * H, live))  # post-attention add + RMSNorm

    def _mla_projections(self, shape: LayerShape, costs: LayerCosts) -> None:
        arch, a = self.arch, self.arch.attention
        H, tp = arch.hidden_size, shape.tp
        rows = shape.tokens
        live = rows > 0
        p = self.attn_prec
        q_lora, kv_lora = a.q_lora_rank or 0, a.kv_lora_rank or 0
        nope, rope, v = a.qk_nope_head_dim or 0, a.qk_rope_head_dim or 0, a.v_head_dim or 0
        heads = a.num_heads / tp
        costs.add("attn0", "attn_proj", self.gemm(rows, q_lora + kv_lora + rope, H, p))
        costs.add(
            "attn0", "fixed", self.ew(4.0 * rows * (q_lora + kv_lora), live, 2.0), kernels=2.0
        )  # q/kv norms
        if q_lora:
            costs.add(
                "attn0", "fixed", self.quant(rows, q_lora, p), kernels=float(compute_class(p) != "bf16")
            )
            costs.add("attn0", "attn_proj", self.gemm(rows, heads * (nope + rope), q_lora, p))
        if shape.phase == "decode":
            # absorbed form: q_nope x w_kc before the core, the core's output x w_vc after it
            costs.add("attn0", "attn_proj", self.gemm(rows, heads * kv_lora, nope, "bf16"))
            costs.add("attn1", "attn_proj", self.gemm(rows, heads * v, kv_lora, "bf16"))
        else:
            # decompressed form: the cached latent through kv_b to per-head keys and values
            costs.add("attn0", "attn_proj", self.gemm(rows, heads * (nope + v), kv_lora, p))
        costs.add(
            "attn0", "fixed", self.ew(4.0 * rows * (heads * rope + kv_lora + rope), live)
        )  # RoPE, KV write

    def core(self, shape: LayerShape, window: int | None) -> Priced:
        """[M, W, R] attention-core time of the rank's sequences."""
        arch, a = self.arch, self.arch.attention
        q, c = shape.new_tokens, shape.context_tokens
        pairs = attended_pairs(q, c, window).sum(axis=-1)
        keys = q + c if window is None else np.minimum(q + c, float(window))
        flops = pairs * attention_flops_per_pair(arch, shape.phase) / shape.tp
        kv = (keys + q).sum(axis=-1) * kv_cache_bytes_per_token(arch, self.kv_prec)
        if a.kind != "mla":
            kv = kv / shape.tp
        width = a.num_heads * (2 * (a.qk_nope_head_dim or a.head_dim) + (a.qk_rope_head_dim or 0))
        acts = q.sum(axis=-1) * width / shape.tp * 2.0
        seqs = (q > 0).sum(axis=-1)
        family = ("mla_" if a.kind == "mla" else "gqa_") + shape.phase
        cost = attention_time(
            self.hw, family=family, flops=flops, hbm_bytes=kv + acts, sequences=seqs, precision=self.core_prec
        )
        priced = Priced.of(cost, self.hw.time_scale("attention"))
        if self.measured is None:
            return priced
        t = self.measured.attention(
            family,
            arch,
            new_tokens=q,
            context_tokens=c,
            tp=shape.tp,
            kv_precision=self.kv_prec,
            core_precision=self.core_prec,
            window=window,
        )
        return priced.measured_where(t)

    def router(self, shape: LayerShape, costs: LayerCosts) -> None:
        arch = self.arch
        rows = shape.tokens / shape.tp  # each TP rank routes its own share of the group's tokens
        costs.add("attn1", "dense", self.gemm(rows, arch.num_experts, arch.hidden_size, "bf16"))
        costs.add("attn1", "fixed", self.ew(rows * arch.num_experts * 4.0 * 3.0, rows > 0))  # scores, top-k

    def ffn(self, rows: np.ndarray, width: float, stage: str, costs: LayerCosts, tp: int) -> None:
        """A SwiGLU FFN (shared experts or a dense layer's), ``width`` split ``tp`` ways."""
        if width <= 0:
            return
        H, p = self.arch.hidden_size, self.dense_prec
        w = width / tp
        live = rows > 0
        q = compute_class(p) != "bf16"
        costs.add(stage, "fixed", self.quant(rows, H, p), kernels=float(q))
        costs.add(stage, "dense", self.gemm(rows, 2 * w, H, p))
        costs.add(
            stage, "fixed", self.ew(rows * w * (4.0 + bytes_per_param(p)), live)
        )  # SiLU-and-mul (+quant)
        costs.add(stage, "dense", self.gemm(rows, H, w, p))

    def experts(self, shape: LayerShape, costs: LayerCosts) -> np.ndarray:
        """The routed experts of every trace MoE layer: stage ``experts`` [M, W, L, R]; returns the
        expert weight bytes read."""
        H, p = self.arch.hidden_size, self.expert_prec
        F = self.arch.moe_intermediate_size / shape.moe_tp  # each rank's slice of every expert
        g = grouped_rows(shape.expert_tokens)
        layout = self.expert_layout
        scale = self.hw.time_scale("expert_gemm")
        up = grouped_gemm_time(self.hw, tokens_per_expert=g, n=2 * F, k=H, precision=p, layout=layout)
        down = grouped_gemm_time(self.hw, tokens_per_expert=g, n=H, k=F, precision=p, layout=layout)
        gemms = Priced.of(up, scale) + Priced.of(down, scale)
        rows = g.rows
        live = rows > 0
        act = self.ew(rows * F * (4.0 + bytes_per_param(p)), live)  # SiLU-and-mul + quant
        if self.measured is not None:
            # one measurement holds both GEMMs and the activation between them
            gemms = gemms.measured_where(self.measured.experts(g, H, F, p))
            if gemms.measured is not None:
                act = Priced(time=np.where(gemms.measured > 0, 0.0, act.time), bound=act.bound)
        costs.add("experts", "expert_gemm", gemms, kernels=2.0)
        costs.add("experts", "fixed", act)
        if layout == "contiguous":  # rows permuted into expert order and back (normal all-to-all layouts)
            permute = rows * H * (2.0 * bytes_per_param(p) + 4.0)
            costs.add("experts", "fixed", self.ew(permute, live, 2.0), kernels=2.0)
        return np.asarray(g.active * 3.0 * H * F * bytes_per_param(p), dtype=np.float64)

    def residual(self, shape: LayerShape, costs: LayerCosts) -> None:
        """The MoE layer's output: shared and routed outputs added into the residual (SGLang runs it
        at the start of the next layer's attention)."""
        rows = shape.tokens
        costs.add("attn0", "fixed", self.ew(3.0 * rows * self.arch.hidden_size * 2.0, rows > 0))

    def has_shared(self) -> bool:
        return shared_expert_params(self.arch) > 0

    def shared_width(self) -> int:
        return shared_expert_width(self.arch)
