"""Work per token and per layer: parameters, FLOPs and bytes of attention, dense FFN and experts.

Conventions:

- FLOPs count a multiply-add as 2. Every FFN and expert is a SwiGLU MLP: three matrices (gate and
  up: hidden x ffn, down: ffn x hidden), so ``6 * hidden * ffn`` FLOPs per token.
- gpt-oss experts also carry biases (gate_up: ``2 * ffn``, down: ``hidden``); they count as
  parameters and bytes (stored in bf16 even when the matrices are MXFP4).
- Attention FLOPs = projections (2 x projection parameters per token) + the core
  (QK^T and PV) per (query, key) pair. MLA in ``prefill`` uses the decompressed form
  (``qk_nope + qk_rope`` per head for QK, ``v`` for PV); MLA in ``decode`` uses the absorbed form
  (``kv_lora + qk_rope`` for QK, ``kv_lora`` for PV, over the cached latent).
- KV cache per token per layer: GQA/MHA ``2 * kv_heads * head_dim`` elements; MLA
  ``kv_lora + qk_rope`` elements (the compressed latent and the shared rotary key).
- Functions taking token or context counts accept numpy arrays and broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tracekit.errors import UsageError
from tracekit.precision import bytes_per_param
from tracekit.schema import ModelArch

#: Bytes of a bias element (biases stay in bf16 when the weights are quantised).
BIAS_BYTES = 2.0


def _has_expert_bias(arch: ModelArch) -> bool:
    return arch.architecture == "gpt_oss"


# ---- parameters -------------------------------------------------------------------------------------


def expert_matrix_params(arch: ModelArch) -> int:
    """Matrix parameters of one routed expert (gate, up, down)."""
    return 3 * arch.hidden_size * arch.moe_intermediate_size


def expert_bias_params(arch: ModelArch) -> int:
    """Bias parameters of one routed expert (gpt-oss: 2 x ffn + hidden; others: 0)."""
    if not _has_expert_bias(arch):
        return 0
    return 2 * arch.moe_intermediate_size + arch.hidden_size


def expert_params(arch: ModelArch) -> int:
    """Parameters of one routed expert, biases included."""
    return expert_matrix_params(arch) + expert_bias_params(arch)


def shared_expert_width(arch: ModelArch) -> int:
    """FFN width of all shared experts of one MoE layer together (0: none)."""
    if arch.num_shared_experts == 0:
        return 0
    if arch.shared_expert_intermediate_size is not None:
        return arch.shared_expert_intermediate_size
    return arch.num_shared_experts * arch.moe_intermediate_size


def shared_expert_params(arch: ModelArch) -> int:
    """Parameters of the shared expert(s) of one MoE layer."""
    return 3 * arch.hidden_size * shared_expert_width(arch)


def dense_ffn_params(arch: ModelArch) -> int:
    """Parameters of the FFN of one dense layer (0 when every layer is MoE)."""
    return 3 * arch.hidden_size * (arch.intermediate_size or 0) if arch.dense_layers else 0


def router_params(arch: ModelArch) -> int:
    """Router (gate) parameters of one MoE layer."""
    return arch.hidden_size * arch.num_experts + (arch.num_experts if _has_expert_bias(arch) else 0)


def attention_params(arch: ModelArch) -> int:
    """Projection parameters of one attention layer (q, k, v, o; MLA: q_a, q_b, kv_a, kv_b, o)."""
    a = arch.attention
    h = arch.hidden_size
    if a.kind == "mla":
        nope, rope, v = _mla_dims(arch)
        kv_lora = a.kv_lora_rank or 0
        qk = nope + rope
        q = h * a.q_lora_rank + a.q_lora_rank * a.num_heads * qk if a.q_lora_rank else h * a.num_heads * qk
        kv = h * (kv_lora + rope) + kv_lora * a.num_heads * (nope + v)
        return q + kv + a.num_heads * v * h
    q_width = a.num_heads * a.head_dim
    kv_width = a.num_kv_heads * a.head_dim
    return h * q_width + 2 * h * kv_width + q_width * h


def _mla_dims(arch: ModelArch) -> tuple[int, int, int]:
    a = arch.attention
    if a.qk_nope_head_dim is None or a.qk_rope_head_dim is None or a.v_head_dim is None or not a.kv_lora_rank:
        raise UsageError(
            f"model {arch.name}: MLA attention needs qk_nope/qk_rope/v head dims and kv_lora_rank"
        )
    return a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim


@dataclass(frozen=True, kw_only=True)
class ParamCounts:
    """Parameter counts of a whole model (norms left out: they are < 0.01%)."""

    embedding: int  # input embedding (a lookup: not counted as active)
    lm_head: int  # output projection (0 when tied to the embedding)
    attention: int  # all layers
    dense_ffn: int  # all dense layers
    routed_experts: int  # all MoE layers, all routed experts
    shared_experts: int  # all MoE layers
    routers: int  # all MoE layers
    total: int
    active: int  # per token: LM head, attention, dense FFN, top-k routed + shared experts, routers


def param_counts(arch: ModelArch) -> ParamCounts:
    """Total and active (per token) parameters of ``arch``.

    ``active`` leaves out the input embedding (a table lookup, no multiply) and counts the LM head,
    as the gpt-oss model card does; add ``embedding`` for the other convention.
    """
    n_moe = len(arch.moe_layers)
    emb = arch.vocab_size * arch.hidden_size
    head = 0 if arch.tie_word_embeddings else emb
    attn = arch.num_layers * attention_params(arch)
    dense = len(arch.dense_layers) * dense_ffn_params(arch)
    routed = n_moe * arch.num_experts * expert_params(arch)
    shared = n_moe * shared_expert_params(arch)
    routers = n_moe * router_params(arch)
    total = emb + head + attn + dense + routed + shared + routers
    active = (head or emb) + attn + dense + n_moe * arch.top_k * expert_params(arch) + shared + routers
    return ParamCounts(
        embedding=emb,
        lm_head=head,
        attention=attn,
        dense_ffn=dense,
        routed_experts=routed,
        shared_experts=shared,
        routers=routers,
        total=total,
        active=active,
    )


# ---- bytes of weights ------------------------------------------------------------------------------


def expert_weight_bytes(arch: ModelArch, precision: str) -> float:
    """Bytes of one routed expert's weights at ``precision`` (matrices) plus its biases in bf16."""
    return expert_matrix_params(arch) * bytes_per_param(precision) + expert_bias_params(arch) * BIAS_BYTES


def shared_expert_weight_bytes(arch: ModelArch, precision: str) -> float:
    """Bytes of the shared expert(s) of one MoE layer."""
    return shared_expert_params(arch) * bytes_per_param(precision)


def dense_ffn_weight_bytes(arch: ModelArch, precision: str) -> float:
    """Bytes of one dense layer's FFN."""
    return dense_ffn_params(arch) * bytes_per_param(precision)


def attention_weight_bytes(arch: ModelArch, precision: str) -> float:
    """Bytes of one layer's attention projections."""
    return attention_params(arch) * bytes_per_param(precision)


# ---- FLOPs per token ----------------------------------------------------------------------------------


def expert_flops_per_token(arch: ModelArch) -> float:
    """FLOPs of one token through one routed expert."""
    return 2.0 * expert_matrix_params(arch)


def shared_expert_flops_per_token(arch: ModelArch) -> float:
    """FLOPs of one token through the shared expert(s) of one MoE layer."""
    return 2.0 * shared_expert_params(arch)


def dense_ffn_flops_per_token(arch: ModelArch) -> float:
    """FLOPs of one token through one dense layer's FFN."""
    return 2.0 * dense_ffn_params(arch)


def moe_flops_per_token(arch: ModelArch) -> float:
    """FLOPs of one token through one MoE layer: router, top-k routed experts and shared experts."""
    return (
        2.0 * router_params(arch)
        + arch.top_k * expert_flops_per_token(arch)
        + shared_expert_flops_per_token(arch)
    )


def attention_proj_flops_per_token(arch: ModelArch) -> float:
    """FLOPs of one token through one layer's attention projections (same in MLA's absorbed form)."""
    return 2.0 * attention_params(arch)


def attention_flops_per_pair(arch: ModelArch, phase: str) -> float:
    """Core attention FLOPs (QK^T + PV, all heads) per (query token, attended key) pair."""
    a = arch.attention
    if a.kind == "mla":
        nope, rope, v = _mla_dims(arch)
        kv_lora = a.kv_lora_rank or 0
        if _phase(phase) == "decode":
            return 2.0 * a.num_heads * (kv_lora + rope) + 2.0 * a.num_heads * kv_lora
        return 2.0 * a.num_heads * (nope + rope) + 2.0 * a.num_heads * v
    return 4.0 * a.num_heads * a.head_dim


def _phase(phase: str) -> str:
    if phase not in ("prefill", "decode"):
        raise UsageError(f"phase must be prefill or decode, got {phase!r}")
    return phase


def attended_pairs(
    new_tokens: ArrayLike, context_tokens: ArrayLike, window: int | None = None
) -> NDArray[np.float64]:
    """Causal (query, key) pairs of a sequence that appends ``new_tokens`` to ``context_tokens``.

    Query ``i`` (1-based) attends to ``context + i`` keys, at most ``window`` of them.
    """
    q = np.asarray(new_tokens, dtype=np.float64)
    c = np.asarray(context_tokens, dtype=np.float64)
    if window is None:
        return q * c + q * (q + 1.0) / 2.0
    w = float(window)
    n0 = np.clip(w - c, 0.0, q)  # queries whose full history fits in the window
    return n0 * c + n0 * (n0 + 1.0) / 2.0 + (q - n0) * w


def layer_window(arch: ModelArch, layer: int) -> int | None:
    """The sliding window of ``layer`` (None: full attention)."""
    a = arch.attention
    return a.sliding_window if a.sliding_window and layer in a.sliding_window_layers else None


def attention_flops(
    arch: ModelArch, *, new_tokens: ArrayLike, context_tokens: ArrayLike, phase: str, layer: int | None = None
) -> NDArray[np.float64]:
    """FLOPs of one attention layer for one sequence (projections + core), per element of the inputs.

    ``layer`` selects the sliding window (gpt-oss); None means full attention.
    """
    window = layer_window(arch, layer) if layer is not None else None
    q = np.asarray(new_tokens, dtype=np.float64)
    pairs = attended_pairs(q, context_tokens, window)
    return q * attention_proj_flops_per_token(arch) + pairs * attention_flops_per_pair(arch, phase)


# ---- KV cache -----------------------------------------------------------------------------------------


def kv_cache_elements_per_token(arch: ModelArch) -> int:
    """Cached elements per token per layer."""
    a = arch.attention
    if a.kind == "mla":
        _, rope, _ = _mla_dims(arch)
        return (a.kv_lora_rank or 0) + rope
    return 2 * a.num_kv_heads * a.head_dim


def kv_cache_bytes_per_token(arch: ModelArch, kv_precision: str = "bf16") -> float:
    """KV-cache bytes per token per layer."""
    return kv_cache_elements_per_token(arch) * bytes_per_param(kv_precision)


def kv_cache_bytes_per_token_all_layers(arch: ModelArch, kv_precision: str = "bf16") -> float:
    """KV-cache bytes per token over all layers (what a sequence's cache grows by per token).

    Sliding-window layers count fully here; their cache stops growing at the window.
    """
    return arch.num_layers * kv_cache_bytes_per_token(arch, kv_precision)


def attention_kv_bytes(
    arch: ModelArch,
    *,
    new_tokens: ArrayLike,
    context_tokens: ArrayLike,
    kv_precision: str = "bf16",
    layer: int | None = None,
) -> NDArray[np.float64]:
    """KV-cache bytes one attention layer moves for one sequence: keys read (once) plus new keys written."""
    window = layer_window(arch, layer) if layer is not None else None
    q = np.asarray(new_tokens, dtype=np.float64)
    keys = q + np.asarray(context_tokens, dtype=np.float64)
    if window is not None:
        keys = np.minimum(keys, float(window))
    per_token = kv_cache_bytes_per_token(arch, kv_precision)
    return (keys + q) * per_token
