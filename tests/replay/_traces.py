"""Hand-checkable multi-rank traces for the replay tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.factories import tiny_arch
from tracekit.schema import Manifest, ModelArch, ParallelLayout
from tracekit.trace import TraceWriter


def write_ranked_trace(
    path: Path,
    expert_ids: np.ndarray,
    *,
    num_experts: int,
    position: int | np.ndarray = 100,
    duration_ns: int | None = None,
    device: str | None = None,
    prefill_tokens: int = 0,
    arch: ModelArch | None = None,
    rows_per_part: int | None = None,
) -> Manifest:
    """A decode trace on ``R`` ranks: ``expert_ids[rank, step, moe_layer, token, k]``.

    Every token is its own request at KV length ``position + 1``. With ``prefill_tokens > 0`` each
    rank also runs one prefill step (step 0) of that many prompt tokens of one request, routed like
    its first decode tokens. ``arch`` replaces the tiny model the manifest names (its MoE layers must
    be ``1..L``). ``rows_per_part``: the writer's part size (small: many routing row groups).
    """
    R, S, L, N, K = expert_ids.shape
    arch = arch or tiny_arch(num_experts=num_experts, top_k=K, num_layers=L + 1)
    manifest = Manifest(
        model=arch,
        source="recorded",
        parallel=ParallelLayout(world_size=R, ep_size=R, dp_size=R),
        hardware={"device": device} if device else {},
    )
    pos = np.broadcast_to(np.asarray(position, dtype=np.int32), (N,))
    first = 1 if prefill_tokens else 0
    for r in range(R):
        with TraceWriter(path, manifest, rank=r, rows_per_part=rows_per_part) as w:
            if prefill_tokens:
                P = prefill_tokens
                w.append("steps", {"step": [0], "phase": ["prefill"], "num_tokens": [P], "num_requests": [1]})
                w.append(
                    "tokens",
                    {
                        "step": np.zeros(P, np.int32),
                        "token_index": np.arange(P, dtype=np.int32),
                        "request_id": np.full(P, 10_000 + r, np.int64),
                        "position": np.arange(P, dtype=np.int32),
                        "is_prefill": np.ones(P, bool),
                    },
                )
                for li, layer in enumerate(arch.moe_layers):
                    ids = np.resize(expert_ids[r, 0, li], (P, K))
                    w.append(
                        "routing",
                        {
                            "step": np.zeros(P, np.int32),
                            "layer": np.full(P, layer, np.int16),
                            "token_index": np.arange(P, dtype=np.int32),
                            "expert_ids": ids.astype(np.int16),
                        },
                    )
            for s in range(S):
                step = s + first
                w.append(
                    "steps",
                    {
                        "step": [step],
                        "phase": ["decode"],
                        "num_tokens": [N],
                        "num_requests": [N],
                        "duration_ns": [duration_ns],
                        "timing_source": ["cuda_event" if duration_ns else None],
                    },
                )
                w.append(
                    "tokens",
                    {
                        "step": np.full(N, step, np.int32),
                        "token_index": np.arange(N, dtype=np.int32),
                        "request_id": (r * N + np.arange(N)).astype(np.int64),
                        "position": pos + s,
                        "is_prefill": np.zeros(N, bool),
                    },
                )
                for li, layer in enumerate(arch.moe_layers):
                    w.append(
                        "routing",
                        {
                            "step": np.full(N, step, np.int32),
                            "layer": np.full(N, layer, np.int16),
                            "token_index": np.arange(N, dtype=np.int32),
                            "expert_ids": expert_ids[r, s, li].astype(np.int16),
                        },
                    )
    return manifest


def random_ids(rng: np.random.Generator, shape: tuple[int, ...], num_experts: int, k: int) -> np.ndarray:
    """Distinct top-k expert ids per token: ``shape + (k,)``."""
    n = int(np.prod(shape))
    scores = rng.random((n, num_experts))
    return np.argsort(scores, axis=1)[:, :k].reshape(*shape, k)
