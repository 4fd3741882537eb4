"""The single-device microbenchmarks: one :class:`Case` per (family, dtype, library, shape).

Shapes are MoE-model shapes on a GPU (DeepSeek-V3 / Qwen3 dimensions) and tiny ones on the CPU,
so the whole path runs in CI. A case's ``build()`` allocates its tensors and returns the call to
time; a library that is not installed, or a kernel the device does not support, makes no case.
Shape legend: T tokens, H hidden, F expert FFN width, E experts, B batch, S sequence, D head dim.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

#: A case's prepared call.
Call = Callable[[], object]


@dataclass(frozen=True, kw_only=True)
class Case:
    family: str
    dtype: str
    library: str
    #: Shape keys of the family (families.json) and their values.
    shape: Mapping[str, float]
    build: Callable[[], Call] = field(repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class Shapes:
    """The shape grid of one run (GPU or tiny)."""

    hbm_bytes: tuple[int, ...]
    gemm_nk: tuple[tuple[int, int], ...]
    gemm_m: tuple[int, ...]
    moe_hf: tuple[tuple[int, int], ...]
    moe_experts: tuple[int, ...]
    moe_tokens_per_expert: tuple[int, ...]
    attn_batch: tuple[int, ...]
    attn_kv_len: tuple[int, ...]
    attn_seq_len: tuple[int, ...]
    #: (num_heads, num_kv_heads, head_dim) of GQA cases.
    gqa_heads: tuple[tuple[int, int, int], ...]
    #: (num_heads, kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim) of MLA cases.
    mla_heads: tuple[tuple[int, int, int, int, int], ...]
    norm_hidden: tuple[int, ...]
    norm_tokens: tuple[int, ...]
    comm_bytes: tuple[int, ...]


GPU_SHAPES = Shapes(
    hbm_bytes=tuple(2**p for p in range(20, 31, 2)),
    gemm_nk=((7168, 2048), (4096, 7168), (2112, 7168), (24576, 1536)),
    gemm_m=(16, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
    moe_hf=((7168, 2048), (4096, 1536)),
    moe_experts=(8, 32),
    moe_tokens_per_expert=(1, 4, 16, 64, 256),
    attn_batch=(1, 8, 64),
    attn_kv_len=(1024, 4096, 16384),
    attn_seq_len=(512, 2048, 8192),
    gqa_heads=((64, 4, 128), (32, 8, 128)),
    mla_heads=((128, 512, 64, 128, 128), (16, 512, 64, 128, 128)),
    norm_hidden=(7168,),
    norm_tokens=(16, 256, 4096),
    comm_bytes=tuple(2**p for p in range(12, 29, 4)),
)

TINY_SHAPES = Shapes(
    hbm_bytes=(2**14, 2**18),
    gemm_nk=((64, 32),),
    gemm_m=(1, 16),
    moe_hf=((64, 32),),
    moe_experts=(2, 4),
    moe_tokens_per_expert=(1, 8),
    attn_batch=(1, 2),
    attn_kv_len=(16, 64),
    attn_seq_len=(16, 32),
    gqa_heads=((4, 2, 16),),
    mla_heads=((2, 32, 8, 16, 16),),
    norm_hidden=(64,),
    norm_tokens=(1, 16),
    comm_bytes=(2**10, 2**14),
)

#: torch dtype of each table dtype the bench runs.
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def fp8_supported(device: torch.device) -> bool:
    """torch exposes a scaled FP8 matmul on this device (compute capability 8.9 or newer)."""
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def _rand(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, device=device, dtype=torch.float32).to(dtype)


# -- memory, GEMM, grouped GEMM ----------------------------------------------------------------


def _hbm(shapes: Shapes, dtype: str, device: torch.device) -> Iterator[Case]:
    td = TORCH_DTYPES[dtype]
    elem = torch.empty((), dtype=td).element_size()
    for size in shapes.hbm_bytes:
        n = size // elem

        def read(n: int = n) -> Call:
            x = _rand((n,), td, device)
            return lambda: x.sum()

        def copy(n: int = n) -> Call:
            x = _rand((n,), td, device)
            y = torch.empty_like(x)
            return lambda: y.copy_(x)

        yield Case(
            family="hbm_read", dtype=dtype, library="torch", shape={"size_bytes": n * elem}, build=read
        )
        yield Case(
            family="hbm_copy", dtype=dtype, library="torch", shape={"size_bytes": n * elem}, build=copy
        )


def _gemm(shapes: Shapes, dtype: str, device: torch.device) -> Iterator[Case]:
    td = TORCH_DTYPES[dtype]
    for n, k in shapes.gemm_nk:
        for m in shapes.gemm_m:

            def build(m: int = m, n: int = n, k: int = k) -> Call:
                a = _rand((m, k), td, device)
                w = _rand((k, n), td, device)
                return lambda: a @ w

            yield Case(
                family="gemm", dtype=dtype, library="torch", shape={"m": m, "n": n, "k": k}, build=build
            )


def _gemm_fp8(shapes: Shapes, device: torch.device) -> Iterator[Case]:
    for n, k in shapes.gemm_nk:
        for m in shapes.gemm_m:
            if m % 16 or n % 16 or k % 16:
                continue

            def build(m: int = m, n: int = n, k: int = k) -> Call:
                a = _rand((m, k), torch.bfloat16, device).to(torch.float8_e4m3fn)
                w = _rand((n, k), torch.bfloat16, device).to(torch.float8_e4m3fn).t()  # column-major
                one = torch.ones((), device=device, dtype=torch.float32)
                return lambda: torch._scaled_mm(a, w, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

            yield Case(
                family="gemm",
                dtype="fp8",
                library="torch_scaled_mm",
                shape={"m": m, "n": n, "k": k},
                build=build,
            )


def _grouped(shapes: Shapes, dtype: str, device: torch.device) -> Iterator[Case]:
    td = TORCH_DTYPES[dtype]
    for h, f in shapes.moe_hf:
        for e in shapes.moe_experts:
            for t in shapes.moe_tokens_per_expert:

                def build(h: int = h, f: int = f, e: int = e, t: int = t) -> Call:
                    x_ETH = _rand((e, t, h), td, device)
                    w_up_EH2F = _rand((e, h, 2 * f), td, device)
                    w_down_EFH = _rand((e, f, h), td, device)

                    def call() -> object:
                        gate_up = torch.bmm(x_ETH, w_up_EH2F)
                        act = F.silu(gate_up[..., :f]) * gate_up[..., f:]
                        return torch.bmm(act, w_down_EFH)

                    return call

                shape = {"hidden_size": h, "ffn_size": f, "num_experts": e, "tokens_per_expert": t}
                yield Case(family="grouped_gemm", dtype=dtype, library="torch_bmm", shape=shape, build=build)


# -- attention -----------------------------------------------------------------------------------


_GQA_KWARG = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool) -> torch.Tensor:
    if k.shape[1] != q.shape[1]:
        if _GQA_KWARG:  # grouped heads without copying the KV heads
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _attention(shapes: Shapes, dtype: str, device: torch.device) -> Iterator[Case]:
    td = TORCH_DTYPES[dtype]
    flash = device.type == "cuda" and has_module("flash_attn") and dtype in ("bf16", "fp16")
    for h, hk, d in shapes.gqa_heads:
        for b in shapes.attn_batch:
            for kv in shapes.attn_kv_len:

                def decode(b: int = b, kv: int = kv, h: int = h, hk: int = hk, d: int = d) -> Call:
                    q = _rand((b, h, 1, d), td, device)
                    k = _rand((b, hk, kv, d), td, device)
                    v = _rand((b, hk, kv, d), td, device)
                    return lambda: _sdpa(q, k, v, causal=False)

                shape = {"head_dim": d, "num_kv_heads": hk, "num_heads": h, "batch_size": b, "kv_len": kv}
                yield Case(family="gqa_decode", dtype=dtype, library="torch_sdpa", shape=shape, build=decode)
                if flash:
                    yield Case(
                        family="gqa_decode",
                        dtype=dtype,
                        library="flash_attn",
                        shape=shape,
                        build=_flash_builder(b, 1, kv, h, hk, d, td, device, causal=False),
                    )
            for s in shapes.attn_seq_len:
                b = shapes.attn_batch[0]

                def prefill(b: int = b, s: int = s, h: int = h, hk: int = hk, d: int = d) -> Call:
                    q = _rand((b, h, s, d), td, device)
                    k = _rand((b, hk, s, d), td, device)
                    v = _rand((b, hk, s, d), td, device)
                    return lambda: _sdpa(q, k, v, causal=True)

                shape = {"head_dim": d, "num_kv_heads": hk, "num_heads": h, "batch_size": b, "seq_len": s}
                yield Case(
                    family="gqa_prefill", dtype=dtype, library="torch_sdpa", shape=shape, build=prefill
                )
                if flash:
                    yield Case(
                        family="gqa_prefill",
                        dtype=dtype,
                        library="flash_attn",
                        shape=shape,
                        build=_flash_builder(b, s, s, h, hk, d, td, device, causal=True),
                    )
    if has_module("flashinfer") and device.type == "cuda" and dtype in ("bf16", "fp16"):
        yield from _flashinfer(shapes, dtype, device)
    for h, r, p, nope, vd in shapes.mla_heads:
        for b in shapes.attn_batch:
            for kv in shapes.attn_kv_len:

                def mla_decode(b: int = b, kv: int = kv, h: int = h, r: int = r, p: int = p) -> Call:
                    # absorbed MLA: every head attends to the one compressed cache (latent + rope
                    # key), as two batched GEMMs around a softmax; the cache is never copied per head
                    q_BHD = _rand((b, h, r + p), td, device)
                    cache_BLD = _rand((b, kv, r + p), td, device)
                    scale = (r + p) ** -0.5

                    def call() -> object:
                        scores_BHL = torch.bmm(q_BHD, cache_BLD.transpose(1, 2)) * scale
                        return torch.bmm(scores_BHL.softmax(-1), cache_BLD[..., :r])

                    return call

                shape = {
                    "kv_lora_rank": r,
                    "qk_rope_head_dim": p,
                    "num_heads": h,
                    "batch_size": b,
                    "kv_len": kv,
                }
                yield Case(
                    family="mla_decode", dtype=dtype, library="torch_bmm", shape=shape, build=mla_decode
                )
            for s in shapes.attn_seq_len:
                b = shapes.attn_batch[0]

                def mla_prefill(
                    b: int = b, s: int = s, h: int = h, p: int = p, nope: int = nope, vd: int = vd
                ) -> Call:
                    # values padded to the q/k head dim so fused SDPA kernels apply (as engines do)
                    q = _rand((b, h, s, nope + p), td, device)
                    k = _rand((b, h, s, nope + p), td, device)
                    v = F.pad(_rand((b, h, s, vd), td, device), (0, max(0, nope + p - vd)))
                    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)[..., :vd]

                shape = {
                    "qk_nope_head_dim": nope, "qk_rope_head_dim": p, "v_head_dim": vd,
                    "num_heads": h, "batch_size": b, "seq_len": s,
                }  # fmt: skip
                yield Case(
                    family="mla_prefill", dtype=dtype, library="torch_sdpa", shape=shape, build=mla_prefill
                )


def _flash_builder(
    b: int, sq: int, skv: int, h: int, hk: int, d: int, td: torch.dtype, device: torch.device, *, causal: bool
) -> Callable[[], Call]:
    def build() -> Call:
        from flash_attn import flash_attn_func

        q = _rand((b, sq, h, d), td, device)
        k = _rand((b, skv, hk, d), td, device)
        v = _rand((b, skv, hk, d), td, device)
        return lambda: flash_attn_func(q, k, v, causal=causal)

    return build


def _flashinfer(shapes: Shapes, dtype: str, device: torch.device) -> Iterator[Case]:
    """FlashInfer's single-sequence kernels (batch 1; its batched kernels need a paged-cache plan)."""
    td = TORCH_DTYPES[dtype]
    for h, hk, d in shapes.gqa_heads:
        for kv in shapes.attn_kv_len:

            def decode(kv: int = kv, h: int = h, hk: int = hk, d: int = d) -> Call:
                import flashinfer

                q = _rand((h, d), td, device)
                k = _rand((kv, hk, d), td, device)
                v = _rand((kv, hk, d), td, device)
                return lambda: flashinfer.single_decode_with_kv_cache(q, k, v)

            shape = {"head_dim": d, "num_kv_heads": hk, "num_heads": h, "batch_size": 1, "kv_len": kv}
            yield Case(family="gqa_decode", dtype=dtype, library="flashinfer", shape=shape, build=decode)
        for s in shapes.attn_seq_len:

            def prefill(s: int = s, h: int = h, hk: int = hk, d: int = d) -> Call:
                import flashinfer

                q = _rand((s, h, d), td, device)
                k = _rand((s, hk, d), td, device)
                v = _rand((s, hk, d), td, device)
                return lambda: flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True)

            shape = {"head_dim": d, "num_kv_heads": hk, "num_heads": h, "batch_size": 1, "seq_len": s}
            yield Case(family="gqa_prefill", dtype=dtype, library="flashinfer", shape=shape, build=prefill)


# -- elementwise and norm --------------------------------------------------------------------------


def _elementwise(shapes: Shapes, dtype: str, device: torch.device) -> Iterator[Case]:
    td = TORCH_DTYPES[dtype]
    for hid in shapes.norm_hidden:
        for t in shapes.norm_tokens:

            def norm(t: int = t, hid: int = hid) -> Call:
                x = _rand((t, hid), td, device)
                w = torch.ones(hid, dtype=td, device=device)
                return lambda: F.rms_norm(x, (hid,), w, 1e-6)

            def silu_mul(t: int = t, hid: int = hid) -> Call:
                g = _rand((t, hid), td, device)
                u = _rand((t, hid), td, device)
                return lambda: F.silu(g) * u

            yield Case(
                family="rmsnorm",
                dtype=dtype,
                library="torch",
                shape={"hidden_size": hid, "num_tokens": t},
                build=norm,
            )
            yield Case(
                family="silu_mul",
                dtype=dtype,
                library="torch",
                shape={"ffn_size": hid, "num_tokens": t},
                build=silu_mul,
            )


def single_device_cases(device: torch.device, *, tiny: bool) -> list[Case]:
    """Every single-device case for ``device``, interleaved across families (smallest shapes first)
    so that a run cut short by its time budget still covers every family."""
    shapes = TINY_SHAPES if tiny else GPU_SHAPES
    dtype = "bf16" if device.type == "cuda" else "fp32"
    groups: list[list[Case]] = [
        list(_hbm(shapes, dtype, device)),
        list(_gemm(shapes, dtype, device)),
        list(_gemm_fp8(shapes, device)) if fp8_supported(device) else [],
        list(_grouped(shapes, dtype, device)),
        list(_attention(shapes, dtype, device)),
        list(_elementwise(shapes, dtype, device)),
    ]
    by_family: dict[tuple[str, str, str], list[Case]] = {}
    for g in groups:
        for c in g:
            by_family.setdefault((c.family, c.dtype, c.library), []).append(c)
    for cases in by_family.values():
        cases.sort(key=_work_size)
    out: list[Case] = []
    queues = list(by_family.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def _work_size(case: Case) -> float:
    size = 1.0
    for v in case.shape.values():
        size *= float(v)
    return size


def describe(case: Case) -> str:
    dims = " ".join(f"{k}={_fmt(v)}" for k, v in case.shape.items())
    return f"{case.family} {case.dtype} {case.library} {dims}"


def _fmt(v: Any) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"
