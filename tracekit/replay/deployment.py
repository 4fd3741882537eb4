"""A deployment to replay a trace on: hardware, parallelism, precision, communication, placement."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracekit.cost.measured_source import TIMING_MODES
from tracekit.errors import UsageError, param
from tracekit.hardware import COMM_IMPLS, default_impl
from tracekit.placement import Placement
from tracekit.precision import DEPLOYMENT_FORMATS, WIRE_FORMATS, canonical

#: Parts of the model that carry their own precision.
PRECISION_PARTS = ("attention", "attention_core", "dense", "experts", "dispatch", "combine", "kv_cache")
#: Parts whose values are activations (a payload on the wire, the KV cache): no weight-only format.
ACTIVATION_PARTS = ("dispatch", "combine", "kv_cache")


@dataclass(frozen=True, kw_only=True)
class Precision:
    """Number format of each part of the model (names of :mod:`tracekit.precision`)."""

    #: Attention projections (and their weights).
    attention: str = "bf16"
    #: The attention core (QK and PV): the tensor cores the MLA / GQA kernel runs on. Serving
    #: kernels compute it in BF16 even when the projections and the KV cache are FP8.
    attention_core: str = "bf16"
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
            valid = WIRE_FORMATS if part in ACTIVATION_PARTS else DEPLOYMENT_FORMATS
            try:
                name = canonical(value)
            except UsageError:
                name = None
            if name not in valid:
                raise UsageError(
                    f"precision of {part} is {value!r}; valid: {', '.join(valid)} "
                    f"(for example {param('precision')} experts=fp4)"
                )
            object.__setattr__(self, part, name)

    @classmethod
    def parse(cls, specs: str | Sequence[str] | None, base: Precision | None = None) -> Precision:
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
                        f"{param('precision')} {part!r}: unknown part {name!r}; valid parts: "
                        f"{', '.join(PRECISION_PARTS)}"
                    )
                changes[name] = value
        return dataclasses.replace(out, **changes)

    def label(self) -> str:
        return ",".join(f"{p}={getattr(self, p)}" for p in PRECISION_PARTS)


#: Where a deployment's expert placement comes from: None (the contiguous layout), the path of a
#: placement file written by ``tracekit place``, or placement epochs in memory.
PlacementSource = str | tuple[Placement, ...] | None


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """How the trace is re-timed. Fields left ``None`` take the trace's own values."""

    #: Hardware preset name or preset file (``tracekit hw list``).
    hw: str
    #: Overrides of preset fields (``--set field=value``).
    hw_overrides: Mapping[str, Any] = field(default_factory=dict)
    #: GPUs of the deployment (None: the trace's world size); the expert-parallel degree when
    #: ``moe_tp`` is 1.
    ep: int | None = None
    #: Attention tensor-parallel degree; attention data-parallel degree is ``ep // tp``.
    tp: int = 1
    #: MoE tensor parallelism: 1 (each expert whole on one GPU, experts spread over all ``ep`` GPUs),
    #: or ``tp`` (the attention TP group shares its experts, each GPU holding every expert's 1/tp
    #: slice: experts spread over ``ep // tp`` groups; ``tp == ep`` is pure tensor parallelism with
    #: no all-to-all). The MoE output is then all-reduced over the group.
    moe_tp: int = 1
    #: Precision per part.
    precision: Precision = field(default_factory=Precision)
    #: A communication implementation of :data:`tracekit.hardware.COMM_IMPLS` (None: each phase's
    #: default, deepep-normal for prefill and deepep-ll for decode).
    impl: str | None = None
    #: Two-batch overlap of communication with compute.
    tbo: bool = False
    #: Single-batch overlap: the dispatch under the shared experts and the combine under the down
    #: GEMM of the same batch (no second micro-batch).
    sbo: bool = False
    #: Kernels replayed from CUDA graphs (small launch gaps) or launched one by one (None: graphs
    #: in decode, eager in prefill).
    cuda_graphs: bool | None = None
    #: Aggregated serving: decode steps also run the prefill of new requests, (prompt tokens, output
    #: tokens) per request. A rank busy with a prefill chunk stalls every other rank at the next
    #: all-to-all (None: prefill runs elsewhere, as in disaggregated serving).
    aggregated: tuple[int, int] | None = None
    #: Prompt tokens per prefill chunk in aggregated serving (None: a whole prompt at once).
    prefill_chunk: int | None = None
    #: Multi-token prediction (speculative decoding with the model's MTP layers) in decode: (draft
    #: tokens per step, acceptance rate of each draft token given the previous one was accepted).
    #: Each step verifies 1 + drafts tokens per sequence and runs the MTP layer once per draft.
    mtp: tuple[int, float] | None = None
    #: Expert placement: a file written by ``tracekit place``, placement epochs (ascending
    #: ``from_step``), or None for the contiguous layout.
    placement: PlacementSource = None
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
    #: Mean KV length of the decode tokens, keeping the trace's spread (each token's position + 1
    #: scaled by one factor); exclusive with ``kv_len``.
    kv_len_mean: int | None = None
    #: Share of every prompt found in the prefix cache (0 <= hit < 1): not computed in prefill.
    prefix_hit: float | None = None
    #: Replayed steps per phase (None: as many as the trace's tokens fill).
    steps: int | None = None
    #: How kernels are priced: ``analytic`` (the preset's curves), ``measured`` (a measured kernel
    #: table where it covers the shape, the curves elsewhere; a table is required) or ``auto``
    #: (measured when a table is available for the preset). See tracekit.cost.measured_source.
    timing: str = "analytic"
    #: The measured table: a file written by ``tracekit bench``, ``aiconfigurator[:SYSTEM/FRAMEWORK]``,
    #: or None (the preset's AIConfigurator database).
    measured: str | None = None

    def __post_init__(self) -> None:
        if self.ep is not None and self.ep < 1:
            raise UsageError(f"{param('ep')} must be >= 1, got {self.ep}")
        if self.tp < 1:
            raise UsageError(f"{param('tp')} must be >= 1, got {self.tp}")
        if self.ep is not None and self.ep % self.tp:
            raise UsageError(
                f"{param('tp')} {self.tp} does not divide {param('ep')} {self.ep}; the deployment has ep GPUs "
                "split into ep/tp attention data-parallel groups of tp GPUs"
            )
        if self.moe_tp not in (1, self.tp):
            raise UsageError(
                f"{param('moe_tp')} {self.moe_tp}: MoE tensor parallelism shares experts within the attention "
                f"TP group, so it is 1 or {param('tp')} ({self.tp})"
            )
        if self.impl is not None and self.impl not in COMM_IMPLS:
            raise UsageError(f"{param('impl')} {self.impl!r} is not one of {', '.join(COMM_IMPLS)}")
        if self.kv_len is not None and self.kv_len_mean is not None:
            raise UsageError(
                f"{param('kv_len')} fixes every decode token's KV length and {param('kv_len_mean')} scales "
                "the trace's to a mean; give one of them"
            )
        if self.prefix_hit is not None and not 0.0 <= self.prefix_hit < 1.0:
            raise UsageError(f"{param('prefix_hit')} must be in [0, 1), got {self.prefix_hit}")
        for name in ("batch_per_gpu", "prefill_tokens_per_gpu", "kv_len", "kv_len_mean", "steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UsageError(f"{param(name)} must be >= 1, got {v}")
        if self.timing not in TIMING_MODES:
            raise UsageError(f"{param('timing')} {self.timing!r}: valid: {', '.join(TIMING_MODES)}")
        if self.measured is not None and self.timing == "analytic":
            raise UsageError(
                f"{param('measured')} {self.measured} prices kernels only with {param('timing')} measured "
                "or auto; add one"
            )
        if self.tbo and self.sbo:
            raise UsageError(
                f"{param('tbo')} and {param('sbo')} are two ways of overlapping the same communication; "
                "choose one"
            )
        if self.aggregated is not None:
            isl, osl = self.aggregated
            if isl < 1 or osl < 1:
                raise UsageError(
                    f"{param('aggregated')} needs prompt and output tokens >= 1, got {isl}:{osl}"
                )
            object.__setattr__(self, "aggregated", (int(isl), int(osl)))
        if self.mtp is not None:
            drafts, accept = self.mtp
            if int(drafts) != drafts or not 1 <= drafts <= 8:
                raise UsageError(f"{param('mtp')} needs 1 to 8 draft tokens, got {drafts}")
            if not 0.0 <= accept <= 1.0:
                raise UsageError(f"{param('mtp')} acceptance rate must be in 0..1, got {accept}")
            object.__setattr__(self, "mtp", (int(drafts), float(accept)))
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise UsageError(f"{param('prefill_chunk')} must be >= 1, got {self.prefill_chunk}")
        if self.redundant < 0:
            raise UsageError(f"{param('redundant')} must be >= 0, got {self.redundant}")
        if isinstance(self.placement, list):
            object.__setattr__(self, "placement", tuple(self.placement))
        if isinstance(self.placement, tuple) and not self.placement:
            raise UsageError(f"{param('placement')} holds no placement epoch; give at least one")

    def verify_tokens(self, phase: str) -> int:
        """Tokens per sequence a step of ``phase`` runs through the model (1 + MTP drafts in decode)."""
        return 1 + self.mtp[0] if self.mtp is not None and phase == "decode" else 1

    def accepted_tokens(self, phase: str) -> float:
        """Output tokens per sequence a step of ``phase`` produces: ``1 + a + a^2 + ... + a^drafts``
        with MTP in decode (each draft accepted with rate ``a`` once the one before it was), else 1."""
        if self.mtp is None or phase != "decode":
            return 1.0
        drafts, a = self.mtp
        return float(sum(a**i for i in range(drafts + 1)))

    @property
    def dp(self) -> int | None:
        return None if self.ep is None else self.ep // self.tp

    @property
    def ep_groups(self) -> int | None:
        """Groups the experts are spread over: ``ep`` GPUs, or ``ep // moe_tp`` under MoE TP."""
        return None if self.ep is None else self.ep // self.moe_tp

    def impl_for(self, phase: str) -> str:
        return self.impl if self.impl is not None else default_impl(phase)

    @property
    def placement_label(self) -> str:
        """How the placement is named in results: the file, the in-memory epochs' policy, or contiguous."""
        if self.placement is None:
            return "contiguous"
        if isinstance(self.placement, str):
            return self.placement
        policies = dict.fromkeys(p.policy for p in self.placement)
        n = len(self.placement)
        return f"{'/'.join(policies)} (in memory, {n} epoch{'s' if n > 1 else ''})"

    def replace(self, **changes: Any) -> Deployment:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["hw_overrides"] = dict(self.hw_overrides)
        out["precision"] = dataclasses.asdict(self.precision)
        out["placement"] = self.placement if not isinstance(self.placement, tuple) else self.placement_label
        out["dp"] = self.dp
        return out
