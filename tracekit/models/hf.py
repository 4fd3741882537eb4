"""Reading a transformers ``config.json`` into a :class:`~tracekit.schema.ModelArch`.

One reader per ``model_type`` family, each naming the keys it reads (with the defaults transformers
uses when a key is absent). The catalog's data files hold the same keys, so the catalog and a user's
``config.json`` go through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tracekit.errors import ModelError
from tracekit.schema import AttentionSpec, ModelArch

Config = Mapping[str, Any]


def _req(config: Config, key: str, name: str) -> Any:
    if key not in config or config[key] is None:
        raise ModelError(
            f"model {name}: config.json has no {key!r} (model_type {config.get('model_type')!r}); "
            "pass a complete transformers config.json"
        )
    return config[key]


def _int(config: Config, key: str, name: str, default: int | None = None) -> int:
    value = config.get(key, default) if default is not None else _req(config, key, name)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"model {name}: config.json key {key!r} must be an integer, got {value!r}")
    return int(value)


def _head_dim(config: Config, name: str) -> int:
    heads = _int(config, "num_attention_heads", name)
    hd = config.get("head_dim")
    if hd is None:
        return _int(config, "hidden_size", name) // heads
    return int(hd)


def _gqa(
    config: Config, name: str, *, sliding: tuple[int | None, tuple[int, ...]] = (None, ())
) -> AttentionSpec:
    heads = _int(config, "num_attention_heads", name)
    kv = _int(config, "num_key_value_heads", name, default=heads)
    window, layers = sliding
    return AttentionSpec(
        kind="mha" if kv == heads else "gqa",
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=_head_dim(config, name),
        sliding_window=window,
        sliding_window_layers=layers,
    )


def _common(config: Config, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "hidden_size": _int(config, "hidden_size", name),
        "vocab_size": _int(config, "vocab_size", name),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "dtype": str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
    }


def _mixtral(config: Config, name: str) -> ModelArch:
    layers = _int(config, "num_hidden_layers", name)
    window = config.get("sliding_window")
    return ModelArch(
        architecture="mixtral",
        num_layers=layers,
        moe_layers=tuple(range(layers)),
        moe_intermediate_size=_int(config, "intermediate_size", name),
        num_experts=_int(config, "num_local_experts", name),
        top_k=_int(config, "num_experts_per_tok", name),
        attention=_gqa(config, name, sliding=(int(window), tuple(range(layers))) if window else (None, ())),
        **_common(config, name),
    )


def _qwen_moe(config: Config, name: str) -> ModelArch:
    """qwen2_moe and qwen3_moe: MoE every ``decoder_sparse_step`` layers, except ``mlp_only_layers``."""
    mt = str(config["model_type"])
    layers = _int(config, "num_hidden_layers", name)
    step = _int(config, "decoder_sparse_step", name, default=1)
    mlp_only = {int(i) for i in config.get("mlp_only_layers") or []}
    experts = _int(config, "num_experts", name)
    moe = tuple(i for i in range(layers) if i not in mlp_only and experts > 0 and (i + 1) % step == 0)
    shared_size = config.get("shared_expert_intermediate_size") if mt == "qwen2_moe" else None
    shared = 1 if shared_size else 0
    dense = config.get("intermediate_size") if len(moe) < layers else None
    window = config.get("sliding_window") if config.get("use_sliding_window") else None
    max_window_layers = _int(config, "max_window_layers", name, default=layers)
    win_layers = tuple(range(max_window_layers, layers)) if window else ()
    return ModelArch(
        architecture=mt,
        num_layers=layers,
        moe_layers=moe,
        intermediate_size=int(dense) if dense is not None else None,
        moe_intermediate_size=_int(config, "moe_intermediate_size", name),
        num_experts=experts,
        num_shared_experts=shared,
        shared_expert_intermediate_size=int(shared_size) if shared_size else None,
        top_k=_int(config, "num_experts_per_tok", name),
        norm_topk_prob=bool(config.get("norm_topk_prob", False)),
        attention=_gqa(config, name, sliding=(int(window), win_layers) if window else (None, ())),
        **_common(config, name),
    )


def _olmoe(config: Config, name: str) -> ModelArch:
    layers = _int(config, "num_hidden_layers", name)
    return ModelArch(
        architecture="olmoe",
        num_layers=layers,
        moe_layers=tuple(range(layers)),
        moe_intermediate_size=_int(config, "intermediate_size", name),
        num_experts=_int(config, "num_experts", name),
        top_k=_int(config, "num_experts_per_tok", name),
        norm_topk_prob=bool(config.get("norm_topk_prob", False)),
        attention=_gqa(config, name),
        **_common(config, name),
    )


def _deepseek(config: Config, name: str) -> ModelArch:
    """deepseek_v3 and kimi_k2 (same layout): dense first ``first_k_dense_replace`` layers, then MoE."""
    layers = _int(config, "num_hidden_layers", name)
    first_dense = _int(config, "first_k_dense_replace", name, default=0)
    freq = _int(config, "moe_layer_freq", name, default=1)
    moe = tuple(i for i in range(layers) if i >= first_dense and i % freq == 0)
    heads = _int(config, "num_attention_heads", name)
    nope = _int(config, "qk_nope_head_dim", name)
    rope = _int(config, "qk_rope_head_dim", name)
    q_lora = config.get("q_lora_rank")
    attention = AttentionSpec(
        kind="mla",
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=nope + rope,
        q_lora_rank=int(q_lora) if q_lora else None,
        kv_lora_rank=_int(config, "kv_lora_rank", name),
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope,
        v_head_dim=_int(config, "v_head_dim", name),
    )
    shared = _int(config, "n_shared_experts", name, default=0)
    return ModelArch(
        architecture=str(config["model_type"]),
        num_layers=layers,
        moe_layers=moe,
        intermediate_size=_int(config, "intermediate_size", name) if len(moe) < layers else None,
        moe_intermediate_size=_int(config, "moe_intermediate_size", name),
        num_experts=_int(config, "n_routed_experts", name),
        num_shared_experts=shared,
        top_k=_int(config, "num_experts_per_tok", name),
        num_expert_groups=_int(config, "n_group", name, default=1),
        topk_groups=_int(config, "topk_group", name, default=1),
        scoring=str(config.get("scoring_func", "softmax")),
        norm_topk_prob=bool(config.get("norm_topk_prob", False)),
        routed_scaling_factor=float(config.get("routed_scaling_factor", 1.0)),
        attention=attention,
        **_common(config, name),
    )


def _gpt_oss(config: Config, name: str) -> ModelArch:
    layers = _int(config, "num_hidden_layers", name)
    types = list(config.get("layer_types") or [])
    if not types:  # transformers' default: even layers slide, odd layers attend to everything
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if len(types) != layers:
        raise ModelError(
            f"model {name}: config.json layer_types has {len(types)} entries for {layers} layers; fix layer_types"
        )
    window = config.get("sliding_window")
    sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention") if window else ()
    top_k = config.get("num_experts_per_tok", config.get("experts_per_token"))
    return ModelArch(
        architecture="gpt_oss",
        num_layers=layers,
        moe_layers=tuple(range(layers)),
        moe_intermediate_size=_int(config, "intermediate_size", name),
        num_experts=_int(config, "num_local_experts", name),
        top_k=_int({"top_k": top_k}, "top_k", name),
        norm_topk_prob=True,  # gpt-oss takes the softmax over the top-k logits: weights sum to 1
        attention=_gqa(config, name, sliding=(int(window) if window else None, sliding)),
        **_common(config, name),
    )


#: model_type -> reader.
READERS: dict[str, Callable[[Config, str], ModelArch]] = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen_moe,
    "qwen3_moe": _qwen_moe,
    "olmoe": _olmoe,
    "deepseek_v3": _deepseek,
    "deepseek_v2": _deepseek,
    "kimi_k2": _deepseek,
    "gpt_oss": _gpt_oss,
}


def from_hf_config(config: Mapping[str, Any], name: str) -> ModelArch:
    """The architecture described by a transformers ``config.json`` (already parsed into a dict).

    Supported ``model_type`` values: see ``READERS``. A multimodal config whose language model is in
    ``text_config`` is read from there. Raises :class:`ModelError` naming the missing key or the
    unsupported type.
    """
    if not isinstance(config, Mapping):
        raise ModelError(f"model {name}: config must be a JSON object (dict), got {type(config).__name__}")
    mt = config.get("model_type")
    if mt not in READERS and isinstance(config.get("text_config"), Mapping):
        config = config["text_config"]
        mt = config.get("model_type")
    reader = READERS.get(str(mt))
    if reader is None:
        raise ModelError(
            f"model {name}: config.json model_type {mt!r} is not a supported MoE architecture; "
            f"supported: {', '.join(sorted(READERS))}"
        )
    try:
        return reader(config, name)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {name}: config.json cannot be read ({exc}); check its values") from None
