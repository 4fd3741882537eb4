"""Number formats, named once: storage bits per parameter, bytes per value on the wire, and the
tensor-core class that computes in them.

Every part of tracekit that needs a precision asks this module: the cost model (weight and KV bytes,
the peak FLOP/s a GEMM runs at), the replay (dispatch and combine payloads), placement (expert
migration bytes) and the command line (the choices it offers).

Formats and what they store (scales included):

- ``fp32`` 32 bits; ``bf16`` / ``fp16`` 16 bits.
- ``fp8`` (E4M3): weights and KV cache 8 bits (per-tensor or 128 x 128 block scales, negligible);
  activations on the wire carry one fp32 scale per 128 values (DeepEP's FP8 dispatch): 8.25 bits.
- ``fp4`` / ``nvfp4``: an fp8 scale per 16 values: 4.5 bits, weights and wire alike.
- ``mxfp4`` (OCP microscaling): an 8-bit scale per 32 values: 4.25 bits.
- ``int4``: weight-only (W4A16), a bf16 scale per 32 values: 4.5 bits; it computes in bf16 and is
  never an activation or wire format.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracekit.errors import UnknownNameError, UsageError


@dataclass(frozen=True, kw_only=True)
class Format:
    """One number format."""

    name: str
    #: Storage bits per value (weights, KV cache), scales included.
    storage_bits: float
    #: Bits per activation value on the wire (dispatch and combine payloads), scales included (None:
    #: a weight-only format).
    wire_bits: float | None
    #: The tensor-core class a GEMM with these inputs runs on (bf16, fp8, fp4, fp32); a hardware
    #: preset gives each class's peak FLOP/s.
    compute: str
    description: str


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(name="fp32", storage_bits=32.0, wire_bits=32.0, compute="fp32", description="IEEE float32"),
        Format(name="bf16", storage_bits=16.0, wire_bits=16.0, compute="bf16", description="bfloat16"),
        Format(name="fp16", storage_bits=16.0, wire_bits=16.0, compute="bf16", description="IEEE float16"),
        Format(
            name="fp8",
            storage_bits=8.0,
            wire_bits=8.0 + 32.0 / 128,
            compute="fp8",
            description="FP8 E4M3; on the wire one fp32 scale per 128 values",
        ),
        Format(
            name="fp4",
            storage_bits=4.5,
            wire_bits=4.5,
            compute="fp4",
            description="NVFP4: FP4 E2M1 with an fp8 scale per 16 values (same as nvfp4)",
        ),
        Format(
            name="nvfp4",
            storage_bits=4.5,
            wire_bits=4.5,
            compute="fp4",
            description="NVFP4: FP4 E2M1 with an fp8 scale per 16 values",
        ),
        Format(
            name="mxfp4",
            storage_bits=4.25,
            wire_bits=4.25,
            compute="fp4",
            description="MXFP4: FP4 E2M1 with an 8-bit scale per 32 values",
        ),
        Format(
            name="int4",
            storage_bits=4.5,
            wire_bits=None,
            compute="bf16",
            description="INT4 weights (W4A16), a bf16 scale per 32 values; computes in bf16",
        ),
    )
}

#: Other spellings (torch dtype names and common aliases) of the formats.
ALIASES: dict[str, str] = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "fp8_e4m3": "fp8",
    "fp8-e4m3": "fp8",
    "float8_e4m3fn": "fp8",
    "float8": "fp8",
    "e4m3": "fp8",
}

#: Formats a replayed deployment can run its model parts in, in the order the help lists them.
DEPLOYMENT_FORMATS = ("bf16", "fp8", "fp4", "nvfp4", "mxfp4", "int4")
#: Formats an activation (a dispatch or combine payload, the KV cache) can use.
WIRE_FORMATS = tuple(n for n in DEPLOYMENT_FORMATS if FORMATS[n].wire_bits is not None)


def canonical(name: str) -> str:
    """The format's name in this module's vocabulary (accepts torch dtype names and aliases)."""
    key = str(name).strip().lower().removeprefix("torch.")
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise UnknownNameError("precision", str(name), FORMATS, hint="or a torch dtype name such as bfloat16")
    return key


def get_format(name: str) -> Format:
    return FORMATS[canonical(name)]


def bytes_per_param(name: str) -> float:
    """Storage bytes per weight parameter or cached value (scales included)."""
    return get_format(name).storage_bits / 8.0


def wire_bytes_per_value(name: str) -> float:
    """Bytes per activation value on the wire (scales included)."""
    f = get_format(name)
    if f.wire_bits is None:
        raise UsageError(
            f"precision {f.name} stores weights only ({f.description}); activations, payloads and the KV "
            f"cache use one of {', '.join(WIRE_FORMATS)}"
        )
    return f.wire_bits / 8.0


def wire_bytes_per_token(name: str, hidden_size: int) -> float:
    """Bytes one token's hidden vector takes on the wire (a dispatch or combine payload)."""
    return wire_bytes_per_value(name) * hidden_size


def compute_class(name: str) -> str:
    """The tensor-core class (bf16, fp8, fp4, fp32) that computes in ``name``."""
    return get_format(name).compute
