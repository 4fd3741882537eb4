"""The model catalog and per-layer work (parameters, FLOPs, bytes) of MoE architectures.

``get_model(name_or_path)`` returns a :class:`~tracekit.schema.ModelArch` from the catalog (data
files under ``tracekit/data/models/``) or from a transformers ``config.json``.
"""

from tracekit.models.catalog import CatalogEntry, catalog_entry, get_model, model_names
from tracekit.models.hf import from_hf_config
from tracekit.models.work import (
    ParamCounts,
    attended_pairs,
    attention_flops,
    attention_flops_per_pair,
    attention_kv_bytes,
    attention_params,
    attention_proj_flops_per_token,
    attention_weight_bytes,
    dense_ffn_flops_per_token,
    dense_ffn_params,
    dense_ffn_weight_bytes,
    expert_flops_per_token,
    expert_params,
    expert_weight_bytes,
    kv_cache_bytes_per_token,
    kv_cache_bytes_per_token_all_layers,
    layer_window,
    moe_flops_per_token,
    param_counts,
    router_params,
    shared_expert_flops_per_token,
    shared_expert_params,
    shared_expert_weight_bytes,
)

__all__ = [
    "CatalogEntry",
    "ParamCounts",
    "attended_pairs",
    "attention_flops",
    "attention_flops_per_pair",
    "attention_kv_bytes",
    "attention_params",
    "attention_proj_flops_per_token",
    "attention_weight_bytes",
    "catalog_entry",
    "dense_ffn_flops_per_token",
    "dense_ffn_params",
    "dense_ffn_weight_bytes",
    "expert_flops_per_token",
    "expert_params",
    "expert_weight_bytes",
    "from_hf_config",
    "get_model",
    "kv_cache_bytes_per_token",
    "kv_cache_bytes_per_token_all_layers",
    "layer_window",
    "model_names",
    "moe_flops_per_token",
    "param_counts",
    "router_params",
    "shared_expert_flops_per_token",
    "shared_expert_params",
    "shared_expert_weight_bytes",
]
