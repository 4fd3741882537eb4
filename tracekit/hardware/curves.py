"""Kernel efficiency curves as a hardware preset holds them (``[kernel.<family>.<dtype>]`` tables);
:mod:`tracekit.cost.kernels` says what each field means for its family and prices kernels with them."""

from __future__ import annotations

from dataclasses import dataclass

from tracekit.errors import UsageError

#: Kernel families and the compute classes each is keyed by.
FAMILIES = ("gemm", "grouped_gemm", "mla_decode", "mla_prefill", "gqa_decode", "gqa_prefill", "elementwise")
#: The attention-core families.
ATTENTION_FAMILIES = ("mla_decode", "mla_prefill", "gqa_decode", "gqa_prefill")


@dataclass(frozen=True, kw_only=True)
class KernelCurve:
    """How close one family of kernels gets to the hardware's peaks (see the module docstring)."""

    family: str
    #: Compute class (bf16, fp8, fp4), or ``any``.
    dtype: str
    #: Fraction of the class's dense peak FLOP/s reached in the steady state.
    compute_eff: float
    #: Fraction of HBM bandwidth reached when many CTAs stream.
    memory_eff: float
    #: Time of one kernel beyond its work: launch, prologue, epilogue (s).
    fixed_s: float = 0.0
    #: GEMMs: concurrent CTAs at which streaming reaches half of ``memory_eff`` (0: no ramp).
    half_tiles: float = 0.0
    #: GEMMs: inner dimension at which compute reaches half of ``compute_eff`` (0: no ramp).
    half_k: float = 0.0
    #: Attention: time per sequence (split-KV scheduling and combine) (s).
    per_seq_s: float = 0.0
    #: Spread of the fit: rms of log(predicted / measured) over its rows (0: not fitted); the
    #: replay's p10-p90 band draws the family's time factor from it.
    rms_log_residual: float = 0.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise UsageError(f"kernel curve family {self.family!r}: valid: {', '.join(FAMILIES)}")
        for name in ("compute_eff", "memory_eff"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise UsageError(
                    f"kernel curve {self.family}.{self.dtype}: {name} must be in (0, 1], got {v}"
                )


#: Fields of a curve that a preset sets (``[kernel.<family>.<dtype>]``).
CURVE_FIELDS = (
    "compute_eff",
    "memory_eff",
    "fixed_s",
    "half_tiles",
    "half_k",
    "per_seq_s",
    "rms_log_residual",
)
