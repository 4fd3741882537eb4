"""One small MoE decode workload described once and written both as a Kineto trace and as an nsys
SQLite export, the two ways a user records the same run.

Two steps of three decoder layers on one GPU: per layer an attention kernel, an all-to-all of a DeepEP
fork built under another namespace (``acme::ep::internode``: notify_dispatch, dispatch, combine), a
grouped GEMM and an RMSNorm; per step an NCCL all-reduce of a known size, a host-to-device copy, a
memset, and a kernel no rule knows. Host-side ranges (record_function / NVTX) mark steps and layers;
every kernel is launched from the host inside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.importers.kineto_layout import BASE_US, KinetoBuilder
from tests.importers.nsys_layout import NsysBuilder

ATTENTION = (
    "void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4>, true>(Flash_fwd_params)"
)
NOTIFY = "void acme::ep::internode::notify_dispatch<8, 4>(int const*, int*, int, int*, void**, int)"
DISPATCH = (
    "void acme::ep::internode::dispatch<false, 8, 4096>(int4*, float*, long*, int4 const*, void**, int)"
)
COMBINE = "void acme::ep::internode::combine<__nv_bfloat16, 8, 4096>(int4*, float*, int4 const*, void**, int)"
GEMM = "void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<cutlass::gemm::GroupProblemShape<cute::tuple<int, int, int> > > >(int)"
NORM = "void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, unsigned int, float)"
NCCL = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
UNKNOWN = "void acme::internal::mystery_op<7>(float*)"
MEMCPY = "Memcpy HtoD (Pageable -> Device)"
MEMSET = "Memset (Device)"
ALLREDUCE_NELEMS = 7168 * 16  # bf16 -> 229376 bytes
ALLREDUCE_BYTES = ALLREDUCE_NELEMS * 2
LAYERS = 3
STEPS = (4, 5)


@dataclass(frozen=True)
class Event:
    """A GPU activity: name, start and duration in ns from the session start, its host launch
    (ns), stream, correlation id and kind (kernel, memcpy, memset)."""

    name: str
    start_ns: int
    dur_ns: int
    launch_ns: int
    stream: int
    corr: int
    kind: str = "kernel"


@dataclass(frozen=True)
class Range:
    name: str
    start_ns: int
    end_ns: int


def build() -> tuple[list[Event], list[Range]]:
    events: list[Event] = []
    ranges: list[Range] = []
    corr = 500
    t = 10_000  # ns; host and GPU timelines of one session
    for step in STEPS:
        step_start = t
        t += 1_000
        for layer in range(LAYERS):
            layer_start = t
            for name, dur, stream in (
                (NORM, 1_250, 7),
                (ATTENTION, 8_125, 7),
                (NOTIFY, 2_000, 24),
                (DISPATCH, 6_500, 24),
                (GEMM, 12_375, 7),
                (COMBINE, 7_000, 24),
            ):
                corr += 1
                events.append(Event(name, t + 3_000, dur, t, stream, corr))
                t += dur + 4_000
            ranges.append(Range(f"model.layers.{layer}", layer_start, t))
            t += 500
        for name, dur, kind in (
            (NCCL, 9_000, "kernel"),
            (UNKNOWN, 3_333, "kernel"),
            (MEMCPY, 2_111, "memcpy"),
            (MEMSET, 777, "memset"),
        ):
            corr += 1
            events.append(Event(name, t + 3_000, dur, t, 7, corr, kind))
            if name == NCCL:
                ranges.append(Range("ncclAllReduce", t - 100, t + 6_000))
            t += dur + 4_000
        ranges.append(Range(f"ProfilerStep#{step}", step_start, t))
        t += 2_000
    return events, ranges


def write_kineto(path: Path) -> Path:
    events, ranges = build()
    b = KinetoBuilder(rank=0)
    for r in ranges:
        if r.name.startswith("nccl"):
            continue
        b.annotation(r.name, r.start_ns / 1000, (r.end_ns - r.start_ns) / 1000, gpu=False)
    for e in events:
        cat = {"kernel": "kernel", "memcpy": "gpu_memcpy", "memset": "gpu_memset"}[e.kind]
        ext = None
        if e.name == NCCL:
            ext = b.record_param_comms(
                (e.launch_ns - 50) / 1000,
                collective="allreduce",
                dtype="BFloat16",
                in_nelems=ALLREDUCE_NELEMS,
                out_nelems=ALLREDUCE_NELEMS,
                group_size=8,
            )
        b._corr = e.corr - 1  # the builder numbers correlation ids: keep the workload's
        b.kernel(
            e.name,
            e.start_ns / 1000,
            e.dur_ns / 1000,
            stream=e.stream,
            cat=cat,
            launch_us=e.launch_ns / 1000,
            external_id=ext,
        )
    return b.write(path)


def write_nsys(path: Path, *, base_ns: int = 0) -> Path:
    """The same run as nsys exports it (``base_ns``: the session's time origin in the export)."""
    events, ranges = build()
    b = NsysBuilder()
    b.gpu(0, "NVIDIA H200")
    for r in ranges:
        json_text = f'{{"Message size [bytes]": {ALLREDUCE_BYTES}}}' if r.name.startswith("nccl") else None
        b.range(
            r.name,
            base_ns + r.start_ns,
            base_ns + r.end_ns,
            json_text=json_text,
            via_string_id=r.name.startswith("model"),
        )
    for e in events:
        s, end = base_ns + e.start_ns, base_ns + e.start_ns + e.dur_ns
        b.launch(base_ns + e.launch_ns, e.corr)
        if e.kind == "kernel":
            b.kernel(e.name, s, end, stream=e.stream, corr=e.corr)
        elif e.kind == "memcpy":
            b.memcpy(s, end, kind=1, src=0, dst=2, corr=e.corr, stream=e.stream)  # HtoD, Pageable -> Device
        else:
            b.memset(s, end, mem_kind=2, corr=e.corr, stream=e.stream)
    return b.write(path)


__all__ = ["BASE_US", "build", "write_kineto", "write_nsys"]
