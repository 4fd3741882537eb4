"""The placeholder architecture of a trace imported without ``--model``."""

from __future__ import annotations

from tracekit.schema import AttentionSpec, ModelArch

#: Name and architecture of the placeholder (``tracekit info`` shows it).
UNKNOWN_MODEL = "unknown"


def unknown_arch(
    *, num_layers: int = 1, moe_layers: tuple[int, ...] = (), num_experts: int = 1, top_k: int = 1
) -> ModelArch:
    """A ModelArch that says only what the imported file says; every size is 0 (unknown).

    Kernel timelines do not need the model; expert loads know their layer and expert counts (and the
    top-k of per-token routing). A trace with this architecture can be queried but not re-timed
    (every size is 0): import again with ``--model NAME`` for that.
    """
    return ModelArch(
        name=UNKNOWN_MODEL,
        architecture=UNKNOWN_MODEL,
        num_layers=max(1, num_layers),
        moe_layers=moe_layers,
        hidden_size=0,
        moe_intermediate_size=0,
        num_experts=max(1, num_experts),
        top_k=max(1, top_k),
        attention=AttentionSpec(kind=UNKNOWN_MODEL, num_heads=0, num_kv_heads=0, head_dim=0),
        vocab_size=0,
        dtype=UNKNOWN_MODEL,
    )


def is_unknown(arch: ModelArch) -> bool:
    return arch.name == UNKNOWN_MODEL and arch.architecture == UNKNOWN_MODEL
