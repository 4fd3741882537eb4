"""A deployment to replay a trace on: hardware, parallelism, precision, communication, placement."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tracekit.errors import UsageError

#: Parts of the model that carry their own precision.
PRECISION_PARTS = ("attention", "dense", "experts", "dispatch", "combine", "kv_cache")
#: Precisions a part may use (A's cost model knows their FLOP/s and bytes).
PRECISIONS = ("bf16", "fp8", "fp4")
#: Expert-parallel communication implementations.
IMPLS = ("deepep-normal", "deepep-ll", "nccl")


@dataclass(frozen=True, kw_only=True)
class Precision:
    """Number format of each part of the model."""

    #: Attention projections and core (and its weights).
    attention: str = "bf16"
    #: Dense FFN layers, shared experts, embedding and LM head.
    dense: str = "bf16"
    #: Routed expert weights and GEMMs.
    experts: str = "fp8"
    #: Payload of the expert-parallel dispatch (tokens sent to experts).
    dispatch: str = "fp8"
    #: Payload of the combine (expert outputs sent back).
    combine: str = "bf16"
    #: KV-cache elements.
    kv_cache: str = "bf16"

    def __post_init__(self) -> None:
        for part in PRECISION_PARTS:
            value = getattr(self, part)
            if value not in PRECISIONS:
                raise UsageError(
                    f"precision of {part} is {value!r}; valid: {', '.join(PRECISIONS)} "
                    "(for example --precision experts=fp4)"
                )

    @classmethod
    def parse(
        cls, specs: str | list[str] | tuple[str, ...] | None, base: Precision | None = None
    ) -> Precision:
        """Parse ``fp8`` (every part but combine and kv_cache), ``experts=fp4,dispatch=fp8`` or a list of those."""
        out = base or cls()
        if specs is None:
            return out
        items = [specs] if isinstance(specs, str) else list(specs)
        changes: dict[str, str] = {}
        for item in items:
            for part in (p.strip() for p in item.split(",")):
                if not part:
                    continue
                if "=" not in part:
                    value = part.lower()
                    for name in ("attention", "dense", "experts", "dispatch"):
                        changes[name] = value
                    continue
                name, value = (x.strip().lower() for x in part.split("=", 1))
                if name == "all":
                    for p in PRECISION_PARTS:
                        changes[p] = value
                    continue
                if name not in PRECISION_PARTS:
                    raise UsageError(
                        f"--precision {part!r}: unknown part {name!r}; valid parts: {', '.join(PRECISION_PARTS)}"
                    )
                changes[name] = value
        return dataclasses.replace(out, **changes)

    def label(self) -> str:
        return ",".join(f"{p}={getattr(self, p)}" for p in PRECISION_PARTS)


def payload_bytes_per_token(precision: str, hidden: int) -> float:
    """Bytes one token's hidden vector takes on the wire: bf16 ``2h``; fp8 ``h`` plus one fp32
    scale per 128 values; fp4 ``h / 2`` plus one fp8 scale per 16 values."""
    if precision == "bf16":
        return 2.0 * hidden
    if precision == "fp8":
        return hidden + hidden / 128 * 4
    if precision == "fp4":
        return hidden / 2 + hidden / 16
    raise UsageError(f"unknown payload precision {precision!r}; valid: {', '.join(PRECISIONS)}")


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """How the trace is re-timed. Fields left ``None`` take the trace's own values."""

    #: Hardware preset name or preset file (``tracekit hw list``).
    hw: str
    #: Overrides of preset fields (``--hw-set field=value``).
    hw_overrides: Mapping[str, Any] = field(default_factory=dict)
    #: Expert-parallel degree = GPUs of the deployment (None: the trace's world size).
    ep: int | None = None
    #: Attention tensor-parallel degree; attention data-parallel degree is ``ep // tp``.
    tp: int = 1
    #: Precision per part.
    precision: Precision = field(default_factory=Precision)
    #: deepep-normal, deepep-ll or nccl (None: deepep-normal for prefill, deepep-ll for decode).
    impl: str | None = None
    #: Two-batch overlap of communication with compute.
    tbo: bool = False
    #: Placement file written by ``tracekit place`` (None: contiguous).
    placement: str | None = None
    #: Redundant slots added to the contiguous placement (also added when the EP degree does not
    #: divide the expert count, to the next multiple).
    redundant: int = 0
    #: Target model: catalog name or config.json path (None: the trace's model).
    model: str | None = None
    #: Decode tokens (sequences) per GPU per step (None: as recorded, or the trace's mean).
    batch_per_gpu: int | None = None
    #: Prefill tokens per GPU per step (None: as recorded, or the trace's mean).
    prefill_tokens_per_gpu: int | None = None
    #: KV length of every decode token (None: each token's position + 1 from the trace).
    kv_len: int | None = None
    #: Replayed steps per phase (None: as many as the trace's tokens fill).
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.ep is not None and self.ep < 1:
            raise UsageError(f"--ep must be >= 1, got {self.ep}")
        if self.tp < 1:
            raise UsageError(f"--tp must be >= 1, got {self.tp}")
        if self.ep is not None and self.ep % self.tp:
            raise UsageError(
                f"--tp {self.tp} does not divide --ep {self.ep}; the deployment has ep GPUs split into "
                "ep/tp attention data-parallel groups of tp GPUs"
            )
        if self.impl is not None and self.impl not in IMPLS:
            raise UsageError(f"--impl {self.impl!r} is not one of {', '.join(IMPLS)}")
        for name in ("batch_per_gpu", "prefill_tokens_per_gpu", "kv_len", "steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.redundant < 0:
            raise UsageError(f"--redundant must be >= 0, got {self.redundant}")

    @property
    def dp(self) -> int | None:
        return None if self.ep is None else self.ep // self.tp

    def impl_for(self, phase: str) -> str:
        if self.impl is not None:
            return self.impl
        return "deepep-normal" if phase == "prefill" else "deepep-ll"

    def replace(self, **changes: Any) -> Deployment:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["hw_overrides"] = dict(self.hw_overrides)
        out["precision"] = dataclasses.asdict(self.precision)
        out["dp"] = self.dp
        return out
