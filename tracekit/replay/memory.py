"""Memory of a deployment: weights per GPU, KV cache per token, the largest batch that fits."""

from __future__ import annotations

from dataclasses import dataclass

from tracekit.errors import DeploymentError
from tracekit.models import (
    attention_weight_bytes,
    dense_ffn_weight_bytes,
    expert_weight_bytes,
    kv_cache_bytes_per_token_all_layers,
    router_params,
    shared_expert_weight_bytes,
)
from tracekit.precision import bytes_per_param
from tracekit.replay.deployment import Precision
from tracekit.schema import ModelArch

#: Fraction of HBM usable for weights and KV cache (the rest: activations, workspace, CUDA context,
#: communication buffers). An assumption, in line with serving engines' defaults (0.85-0.9).
USABLE_HBM_FRACTION = 0.88


@dataclass(frozen=True, kw_only=True)
class MemoryPlan:
    """Bytes per GPU of one deployment."""

    hbm_bytes: float
    usable_bytes: float
    #: Weights per GPU: attention, dense FFN, shared experts, routers, embedding, LM head, routed
    #: experts of the rank's slots (redundant slots included).
    weight_bytes: float
    expert_weight_bytes: float
    #: KV-cache bytes per cached token on one GPU.
    kv_bytes_per_token: float
    #: Bytes left for the KV cache.
    free_bytes: float

    def max_batch(self, kv_len: float, tp: int = 1) -> int:
        """Largest number of sequences per GPU of ``kv_len`` tokens whose KV cache fits."""
        per_seq = self.kv_bytes_per_token * max(kv_len, 1.0) * tp
        return max(0, int(self.free_bytes // per_seq))


def memory_plan(
    arch: ModelArch,
    precision: Precision,
    *,
    hbm_bytes: float,
    slots_per_rank: int,
    tp: int,
    moe_tp: int = 1,
) -> MemoryPlan:
    """Weights and KV bytes per GPU (``slots_per_rank``: expert slots of the GPU's expert group, each
    held as a 1/``moe_tp`` slice)."""
    n_moe = len(arch.moe_layers)
    attn = arch.num_layers * attention_weight_bytes(arch, precision.attention) / tp
    dense = len(arch.dense_layers) * dense_ffn_weight_bytes(arch, precision.dense) / tp
    shared = n_moe * shared_expert_weight_bytes(arch, precision.dense) / tp
    routers = n_moe * router_params(arch) * 2.0
    emb = arch.vocab_size * arch.hidden_size * bytes_per_param(precision.dense)
    head = 0.0 if arch.tie_word_embeddings else emb
    experts = n_moe * slots_per_rank * expert_weight_bytes(arch, precision.experts) / moe_tp
    weights = attn + dense + shared + routers + (emb + head) / tp + experts
    kv = kv_cache_bytes_per_token_all_layers(arch, precision.kv_cache)
    if arch.attention.kind != "mla":
        kv /= min(tp, arch.attention.num_kv_heads)
    usable = hbm_bytes * USABLE_HBM_FRACTION
    plan = MemoryPlan(
        hbm_bytes=hbm_bytes,
        usable_bytes=usable,
        weight_bytes=weights,
        expert_weight_bytes=experts,
        kv_bytes_per_token=kv,
        free_bytes=usable - weights,
    )
    return plan


def check_weights_fit(plan: MemoryPlan, *, model: str, hw: str, ep: int) -> None:
    if plan.free_bytes <= 0:
        need = plan.weight_bytes / 1e9
        have = plan.usable_bytes / 1e9
        raise DeploymentError(
            f"{model} does not fit on {hw} with --ep {ep}: its weights need {need:.1f} GB per GPU "
            f"({plan.expert_weight_bytes / 1e9:.1f} GB of routed experts) but {have:.1f} GB of HBM are "
            f"usable ({USABLE_HBM_FRACTION:.0%} of {plan.hbm_bytes / 1e9:.0f} GB); raise --ep, use a "
            "smaller --precision (e.g. experts=fp4), or a larger GPU"
        )
