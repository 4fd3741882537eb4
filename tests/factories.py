"""Small real traces built in code, for the tests of every package."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracekit.models import get_model
from tracekit.replay.deployment import Deployment, Precision
from tracekit.schema import AttentionSpec, Manifest, ModelArch, ParallelLayout
from tracekit.synth import SynthConfig, parse_spec, synthesize
from tracekit.trace import TraceWriter


def tiny_arch(
    *, num_experts: int = 8, top_k: int = 2, num_layers: int = 3, dense_first: int = 1
) -> ModelArch:
    """A small MoE architecture: ``dense_first`` dense layers, then MoE layers."""
    return ModelArch(
        name="tiny-test",
        architecture="mixtral",
        num_layers=num_layers,
        moe_layers=tuple(range(dense_first, num_layers)),
        hidden_size=64,
        intermediate_size=128 if dense_first else None,
        moe_intermediate_size=32,
        num_experts=num_experts,
        top_k=top_k,
        attention=AttentionSpec(kind="gqa", num_heads=4, num_kv_heads=2, head_dim=16),
        vocab_size=100,
        dtype="float32",
    )


def tiny_manifest(
    arch: ModelArch | None = None, *, world_size: int = 1, source: str = "recorded"
) -> Manifest:
    return Manifest(
        model=arch or tiny_arch(),
        source=source,
        parallel=ParallelLayout(world_size=world_size, ep_size=world_size, dp_size=world_size),
    )


def write_routing_trace(
    path: Path,
    expert_ids: np.ndarray,
    *,
    gate_weights: np.ndarray | None = None,
    manifest: Manifest | None = None,
    rank: int = 0,
    phases: list[str] | None = None,
    rows_per_part: int | None = None,
) -> Manifest:
    """Write a trace whose routing is ``expert_ids[step, moe_layer, token, k]``, with steps, tokens and
    expert_load tables consistent with it. Each step is one request per token (decode)."""
    num_steps, num_moe, num_tokens, k = expert_ids.shape
    num_experts = max(int(expert_ids.max()) + 1 if expert_ids.size else 8, k)
    arch = tiny_arch(num_experts=num_experts, top_k=k, num_layers=num_moe + 1)
    manifest = manifest or tiny_manifest(arch)
    arch = manifest.model
    if gate_weights is None:
        gate_weights = np.full(expert_ids.shape, 1.0 / k, dtype=np.float32)
    with TraceWriter(path, manifest, rank=rank, rows_per_part=rows_per_part) as w:
        for s in range(num_steps):
            phase = phases[s] if phases else "decode"
            w.append(
                "steps",
                {"step": [s], "phase": [phase], "num_tokens": [num_tokens], "num_requests": [num_tokens]},
            )
            w.append(
                "tokens",
                {
                    "step": np.full(num_tokens, s, np.int32),
                    "token_index": np.arange(num_tokens, dtype=np.int32),
                    "request_id": np.arange(num_tokens, dtype=np.int64),
                    "position": np.full(num_tokens, s, np.int32),
                    "is_prefill": np.full(num_tokens, phase == "prefill"),
                },
            )
            for li, layer in enumerate(arch.moe_layers):
                ids = expert_ids[s, li]
                w.append(
                    "routing",
                    {
                        "step": np.full(num_tokens, s, np.int32),
                        "layer": np.full(num_tokens, layer, np.int16),
                        "token_index": np.arange(num_tokens, dtype=np.int32),
                        "expert_ids": ids.astype(np.int16),
                        "gate_weights": gate_weights[s, li].astype(np.float32),
                    },
                )
                counts = np.bincount(ids.reshape(-1), minlength=arch.num_experts)
                w.append(
                    "expert_load",
                    {
                        "step": np.full(arch.num_experts, s, np.int32),
                        "layer": np.full(arch.num_experts, layer, np.int16),
                        "expert": np.arange(arch.num_experts, dtype=np.int16),
                        "num_tokens": counts.astype(np.int64),
                    },
                )
    return manifest


def synth_r1(out: Path, *, spec: str, tokens_per_step: int, steps: int, seed: int, **kw: object) -> Path:
    """DeepSeek-R1 routing (58 MoE layers x 256 experts, top-8) synthesised at ``out`` (decode
    unless ``phase`` is given; no gate weights unless asked), for the replay's and planner's tests."""
    options: dict[str, object] = {"phase": "decode", "gate_weights": False, **kw}
    config = SynthConfig(
        arch=get_model("deepseek-r1"),
        spec=parse_spec(spec),
        tokens_per_step=tokens_per_step,
        steps=steps,
        seed=seed,
        **options,  # type: ignore[arg-type]
    )
    synthesize(config, out, overwrite=True)
    return out


def r1_h200_ep8(**kw: object) -> Deployment:
    """DeepSeek-R1 on h200-sxm at EP 8 with FP8 experts, with ``kw`` replaced."""
    base: dict[str, object] = {
        "hw": "h200-sxm",
        "model": "deepseek-r1",
        "ep": 8,
        "precision": Precision.parse("experts=fp8"),
        **kw,
    }
    return Deployment(**base)  # type: ignore[arg-type]
