"""The trace manifest: what ran (model, layout, hardware, software) and how the trace was made.

Stored as ``manifest.json`` at the top of a trace directory. Typed, frozen dataclasses here; plain
JSON on disk. ``schemas/v1/manifest.json`` is rendered from these classes (``python -m
tracekit.schema.render``), so the field documentation lives in one place: the ``doc`` metadata below.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tracekit.errors import SchemaError
from tracekit.schema.tables import SCHEMA_VERSION, check_version

SOURCES = ("recorded", "imported", "synthetic")


#: Most layers or experts a trace can describe (their ids are int16 columns).
MAX_INT16_COUNT = 2**15
#: Most ranks a trace can describe (rank columns are int32).
MAX_INT32_COUNT = 2**31 - 1


def _f(doc: str, *, default: Any = dataclasses.MISSING, unit: str | None = None, factory: Any = None) -> Any:
    meta = {"doc": doc, "unit": unit}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class AttentionSpec:
    """Attention of one decoder layer (all layers share it; sliding windows are listed per layer)."""

    kind: str = _f("mha, gqa or mla")
    num_heads: int = _f("Query heads.")
    num_kv_heads: int = _f("Key/value heads (gqa/mha); for mla, equal to num_heads.")
    head_dim: int = _f("Per-head dimension of q/k/v (gqa/mha); for mla, qk_nope + qk_rope.")
    q_lora_rank: int | None = _f("MLA query low-rank dimension (null: full-rank queries).", default=None)
    kv_lora_rank: int | None = _f("MLA compressed KV dimension (cached per token).", default=None)
    qk_nope_head_dim: int | None = _f("MLA per-head non-rotary q/k dimension.", default=None)
    qk_rope_head_dim: int | None = _f(
        "MLA rotary q/k dimension (its key is cached, shared by heads).", default=None
    )
    v_head_dim: int | None = _f("MLA per-head value dimension.", default=None)
    sliding_window: int | None = _f("Window of sliding-window layers.", default=None, unit="tokens")
    sliding_window_layers: tuple[int, ...] = _f(
        "Layers that use the sliding window (others attend to the full context).", factory=tuple
    )


@dataclass(frozen=True, kw_only=True)
class ModelArch:
    """A decoder-only MoE architecture: enough to re-time every layer of it."""

    name: str = _f("Model name (catalog name, Hugging Face id or a path's last part).")
    architecture: str = _f("transformers model_type (mixtral, qwen3_moe, deepseek_v3, gpt_oss, ...).")
    num_layers: int = _f("Decoder layers, dense and MoE.")
    moe_layers: tuple[int, ...] = _f("Indices of the MoE layers (0-based).")
    hidden_size: int = _f("Model (residual) dimension.")
    intermediate_size: int | None = _f(
        "FFN width of dense layers (null when every layer is MoE).", default=None
    )
    moe_intermediate_size: int = _f("FFN width of one routed expert.")
    num_experts: int = _f("Routed experts per MoE layer.")
    num_shared_experts: int = _f("Shared (always-active) experts per MoE layer.", default=0)
    shared_expert_intermediate_size: int | None = _f(
        "FFN width of the shared expert(s) in all (null: num_shared_experts x moe_intermediate_size).",
        default=None,
    )
    top_k: int = _f("Experts chosen per token.")
    num_expert_groups: int = _f("Expert groups for group-limited routing (1: none).", default=1)
    topk_groups: int = _f("Groups a token may pick experts from (group-limited routing).", default=1)
    scoring: str = _f("Router scoring: softmax or sigmoid.", default="softmax")
    norm_topk_prob: bool = _f("Whether the top-k gate weights are renormalised to sum to 1.", default=True)
    routed_scaling_factor: float = _f("Factor applied to routed gate weights.", default=1.0)
    attention: AttentionSpec = _f("Attention of every layer.")
    vocab_size: int = _f("Vocabulary size (embedding and LM head rows).")
    tie_word_embeddings: bool = _f("Whether the LM head shares the embedding matrix.", default=False)
    dtype: str = _f("Weight dtype of the run (bfloat16, float32, ...).", default="bfloat16")

    def __post_init__(self) -> None:
        # layer and expert ids are int16 columns of the trace: larger counts cannot be stored
        for name in ("num_layers", "num_experts"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_INT16_COUNT:
                raise SchemaError(
                    f"model {self.name}: {name} {value} not in 1..{MAX_INT16_COUNT} "
                    "(the trace stores these ids as int16)"
                )
        bad = [i for i in self.moe_layers if not 0 <= i < self.num_layers]
        if bad:
            raise SchemaError(f"model {self.name}: moe_layers {bad} outside 0..{self.num_layers - 1}")
        if not 1 <= self.top_k <= self.num_experts:
            raise SchemaError(f"model {self.name}: top_k {self.top_k} not in 1..{self.num_experts}")

    @property
    def dense_layers(self) -> tuple[int, ...]:
        moe = set(self.moe_layers)
        return tuple(i for i in range(self.num_layers) if i not in moe)


@dataclass(frozen=True, kw_only=True)
class ParallelLayout:
    """How the run that produced the trace was laid out across processes."""

    world_size: int = _f("Processes (ranks) in the run.", default=1)
    ep_size: int = _f("Expert-parallel degree.", default=1)
    dp_size: int = _f("Attention data-parallel degree.", default=1)
    tp_size: int = _f("Tensor-parallel degree.", default=1)
    placement: str = _f(
        "Expert placement used: contiguous, or the name of the policy; slots are in the placement table.",
        default="contiguous",
    )

    def __post_init__(self) -> None:
        # ranks are int32 columns of the trace
        for name in ("world_size", "ep_size", "dp_size", "tp_size"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_INT32_COUNT:
                raise SchemaError(
                    f"parallel layout: {name} {value} not in 1..{MAX_INT32_COUNT} (ranks are stored as int32)"
                )


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Top-level description of a trace."""

    model: ModelArch = _f("The model architecture that ran.")
    source: str = _f("recorded, imported or synthetic.")
    schema_version: str = _f("Trace schema version (major.minor).", default=SCHEMA_VERSION)
    trace_id: str = _f("Unique id of the trace.", factory=lambda: uuid.uuid4().hex)
    created_at: str = _f(
        "UTC creation time, ISO 8601.", factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )
    source_detail: dict[str, Any] = _f(
        "How the trace was made: collector and options, importer and input files, or synthesis spec and seed.",
        factory=dict,
    )
    parallel: ParallelLayout = _f("Parallel layout at record time.", factory=ParallelLayout)
    hardware: dict[str, Any] = _f("Hardware at record time (device name, count, host).", factory=dict)
    software: dict[str, Any] = _f(
        "Software versions at record time (tracekit, torch, transformers).", factory=dict
    )
    clock: str = _f(
        "Origin of the *_ns time columns (for example 'host monotonic at record start').",
        default="unspecified",
    )
    notes: str = _f("Free text.", default="")

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise SchemaError(f"manifest source {self.source!r} is not one of {', '.join(SOURCES)}")

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    @classmethod
    def from_dict(cls, raw: Any, where: str = "manifest.json") -> Manifest:
        if not isinstance(raw, dict):
            raise SchemaError(f"{where}: expected a JSON object")
        check_version(str(raw.get("schema_version", "")), where)
        return _from_jsonable(cls, raw, where)

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    return obj


def _from_jsonable(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        path = f"{where}: {cls.__name__}.{f.name}"
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{path} is missing")
            continue
        kwargs[f.name] = _coerce(hints[f.name], raw[f.name], path)
    del known  # unknown keys are accepted (written by a newer minor version)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SchemaError(f"{where}: {exc}") from None
    except SchemaError as exc:
        if str(exc).startswith(where):
            raise
        raise SchemaError(f"{where}: {exc}") from None


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"{path} must be an object")
        return _from_jsonable(typing.cast(type, tp), value, path.split(":")[0])
    if origin is tuple:
        if not isinstance(value, list):
            raise SchemaError(f"{path} must be a list")
        return tuple(_coerce(args[0], v, path) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{path} must be an object")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"{path} must be a string, got {value!r}")
        return value
    return value


def manifest_fields_doc() -> list[dict[str, Any]]:
    """Flat list of manifest fields (dotted names) with type, default, unit and meaning."""
    rows: list[dict[str, Any]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            name = prefix + f.name
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            rows.append(
                {
                    "name": name,
                    "type": _type_name(tp),
                    "required": required,
                    "unit": f.metadata.get("unit"),
                    "description": f.metadata.get("doc", ""),
                }
            )
            if dataclasses.is_dataclass(tp):
                walk(typing.cast(type, tp), name + ".")

    walk(Manifest, "")
    return rows


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _type_name(inner[0]) + " or null"
    if origin is tuple:
        return f"list<{_type_name(args[0])}>"
    if origin is dict:
        return "object"
    if dataclasses.is_dataclass(tp):
        return "object"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))
