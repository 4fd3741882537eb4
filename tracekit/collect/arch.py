"""Describe a live transformers model as a :class:`~tracekit.schema.ModelArch` for the manifest.

The MoE layer indices come from the hooks the collector actually placed (what ran), the sizes from
the model's config. Config attribute names differ between architectures; each field lists the
names tried, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tracekit.errors import ModelError
from tracekit.schema import AttentionSpec, ModelArch

_SIGMOID_ROUTERS = ("deepseek_v3", "deepseek_v32", "kimi_k2", "glm4_moe", "dots1")


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def attention_spec(config: Any) -> AttentionSpec:
    """Attention of the model's decoder layers (MLA when the config has a KV low-rank dimension)."""
    heads = int(_get(config, "num_attention_heads", default=1))
    kv_heads = int(_get(config, "num_key_value_heads", default=heads))
    window = _get(config, "sliding_window")
    layer_types = _get(config, "layer_types", default=()) or ()
    sliding = tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
    if _get(config, "kv_lora_rank") is not None:
        nope = int(_get(config, "qk_nope_head_dim", default=0))
        rope = int(_get(config, "qk_rope_head_dim", default=0))
        return AttentionSpec(
            kind="mla",
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=nope + rope,
            q_lora_rank=_get(config, "q_lora_rank"),
            kv_lora_rank=int(config.kv_lora_rank),
            qk_nope_head_dim=nope,
            qk_rope_head_dim=rope,
            v_head_dim=_get(config, "v_head_dim"),
        )
    hidden = int(_get(config, "hidden_size"))
    head_dim = int(_get(config, "head_dim", default=hidden // max(heads, 1)))
    return AttentionSpec(
        kind="mha" if kv_heads == heads else "gqa",
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        sliding_window=int(window) if window and sliding else None,
        sliding_window_layers=sliding if window else (),
    )


def model_arch(
    config: Any, *, name: str, moe_layers: Sequence[int], top_k: int, num_experts: int, dtype: str
) -> ModelArch:
    """A ModelArch from a transformers config plus what the collector found in the live model."""
    config = _text_config(config)
    model_type = str(_get(config, "model_type", default="unknown"))
    num_layers = int(_get(config, "num_hidden_layers", "num_layers", default=max(moe_layers, default=0) + 1))
    hidden = _get(config, "hidden_size", "d_model")
    if hidden is None:
        raise ModelError(f"model {name}: its config has no hidden_size; cannot describe it in the manifest")
    dense_ffn = _get(config, "intermediate_size")
    expert_ffn = _get(config, "moe_intermediate_size", "expert_intermediate_size", default=dense_ffn)
    shared = int(_get(config, "n_shared_experts", "num_shared_experts", default=0))
    shared_size = _get(config, "shared_expert_intermediate_size")
    if shared_size and not shared:
        shared = 1
    all_moe = len(moe_layers) == num_layers
    return ModelArch(
        name=name,
        architecture=model_type,
        num_layers=num_layers,
        moe_layers=tuple(sorted(moe_layers)),
        hidden_size=int(hidden),
        intermediate_size=None if all_moe or dense_ffn is None else int(dense_ffn),
        moe_intermediate_size=int(expert_ffn or 0),
        num_experts=num_experts,
        num_shared_experts=shared,
        shared_expert_intermediate_size=int(shared_size) if shared_size else None,
        top_k=top_k,
        num_expert_groups=int(_get(config, "n_group", "num_expert_group", default=1)),
        topk_groups=int(_get(config, "topk_group", default=1)),
        scoring="sigmoid" if model_type in _SIGMOID_ROUTERS else "softmax",
        norm_topk_prob=bool(_get(config, "norm_topk_prob", default=model_type in ("mixtral", "gpt_oss"))),
        routed_scaling_factor=float(_get(config, "routed_scaling_factor", default=1.0)),
        attention=attention_spec(config),
        vocab_size=int(_get(config, "vocab_size", default=0)),
        tie_word_embeddings=bool(_get(config, "tie_word_embeddings", default=False)),
        dtype=dtype,
    )
