"""Import a generated Kineto trace and report peak memory and throughput.

    python benchmarks/kineto_import.py            # ~150 MB trace (a minute or two)
    python benchmarks/kineto_import.py --full     # ~1 GB trace (target: peak RSS under 1 GB)
    python benchmarks/kineto_import.py --mb 400 --gzip

The trace has the layout torch.profiler writes for a CUDA run of an MoE model: per kernel a CPU
operator, its cudaLaunchKernel runtime event, the ac2g flow pair and the kernel itself (DeepEP,
DeepGEMM, FlashMLA, NCCL, elementwise names), inside ProfilerStep and layer annotations. The import
runs in a child process so its peak resident memory (ru_maxrss) is measured alone; the ratio of that
peak to the file size says whether memory is bounded by the kept columns rather than the JSON text.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KERNELS = [
    "void deep_ep::internode_ll::dispatch<false, false, 3, 10, 7168>(void*, float*, int*, long*, int*, int*, long*)",
    "void deep_gemm::sm90_fp8_gemm_1d2d_impl<(cute::UMMA::Major)0, 0u, 4096u, 7168u, 128u, 112u, (deep_gemm::GemmType)2>(float*)",
    "void deep_ep::internode_ll::combine<false, 3, 10, 7168, 9>(void*, int*, int*, void*, void const*)",
    "void flash::flash_fwd_splitkv_mla_kernel<Flash_fwd_kernel_traits_mla<576, 64, 64, 8, cutlass::bfloat16_t, 512> >(Flash_fwd_mla_params)",
    "nvjet_tst_192x192_64x4_1x2_h_bz_coopB_NNT",
    "void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, unsigned int, float)",
    "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
    "void sglang_per_token_group_quant_8bit_kernel<__nv_bfloat16, c10::Float8_e4m3fn>(__nv_bfloat16 const*, void*)",
]
OPS = [
    "deep_ep::dispatch",
    "deep_gemm::m_grouped_gemm",
    "deep_ep::combine",
    "flash_mla::fwd",
    "aten::mm",
    "sgl_kernel::rmsnorm",
    "c10d::allreduce_",
    "sgl_kernel::per_token_group_quant_8bit",
]
LAYERS = 61
HOST = 4242


def generate(path: Path, target_bytes: int, *, compress: bool) -> tuple[int, int]:
    """Write a Kineto JSON of about ``target_bytes``; returns (kernels, events)."""
    raw: Any = gzip.open(path, "wb", compresslevel=1) if compress else path.open("wb")  # noqa: SIM115
    written = 0
    kernels = events = 0

    def w(text: str) -> None:
        nonlocal written
        data = text.encode()
        raw.write(data)
        written += len(data)

    with raw:
        w(
            '{"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H200", "numSms": 132}], '
            '"distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 8}, "traceEvents": [\n'
        )
        w(json.dumps({"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "python"}}))
        t_cpu, t_gpu, corr, ext, step = 1_000.0, 2_000.0, 0, 0, 0
        while written < target_bytes:
            step_start = t_cpu
            for layer in range(LAYERS):
                layer_start = t_cpu
                for i, (kname, op) in enumerate(zip(KERNELS, OPS, strict=True)):
                    corr += 1
                    ext += 1
                    dur = 3.5 + (i * 7 + layer) % 40
                    w(
                        f',\n{{"ph": "X", "cat": "cpu_op", "name": "{op}", "pid": {HOST}, "tid": {HOST}, '
                        f'"ts": {t_cpu:.3f}, "dur": 9.125, "args": {{"External id": {ext}, "Record function id": 0, '
                        f'"Ev Idx": {ext}, "Input Dims": [[64, 7168], [7168, 2048]], "Input type": ["c10::BFloat16", '
                        f'"c10::BFloat16"]}}}}'
                    )
                    w(
                        f',\n{{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": {HOST}, '
                        f'"tid": {HOST}, "ts": {t_cpu + 2:.3f}, "dur": 4.250, "args": {{"External id": {ext}, '
                        f'"cbid": 211, "correlation": {corr}}}}}'
                    )
                    w(
                        f',\n{{"ph": "s", "id": {corr}, "pid": {HOST}, "tid": {HOST}, "ts": {t_cpu + 2:.3f}, '
                        f'"cat": "ac2g", "name": "ac2g"}}'
                    )
                    w(
                        f',\n{{"ph": "X", "cat": "kernel", "name": "{kname}", "pid": 0, "tid": 7, "ts": {t_gpu:.3f}, '
                        f'"dur": {dur:.3f}, "args": {{"External id": {ext}, "device": 0, "stream": 7, '
                        f'"correlation": {corr}, "registers per thread": 128, "shared memory": 49152, '
                        f'"blocks per SM": 0.5, "warps per SM": 4, "grid": [132, 1, 1], "block": [256, 1, 1], '
                        f'"est. achieved occupancy %": 6}}}}'
                    )
                    w(
                        f',\n{{"ph": "f", "id": {corr}, "pid": 0, "tid": 7, "ts": {t_gpu:.3f}, "cat": "ac2g", '
                        f'"name": "ac2g", "bp": "e"}}'
                    )
                    kernels += 1
                    events += 5
                    t_cpu += 11.0
                    t_gpu += dur + 1.0
                w(
                    f',\n{{"ph": "X", "cat": "user_annotation", "name": "model.layers.{layer}", "pid": {HOST}, '
                    f'"tid": {HOST}, "ts": {layer_start:.3f}, "dur": {t_cpu - layer_start - 0.5:.3f}, '
                    f'"args": {{"External id": {ext}}}}}'
                )
                events += 1
            w(
                f',\n{{"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#{step}", "pid": {HOST}, '
                f'"tid": {HOST}, "ts": {step_start - 0.25:.3f}, "dur": {t_cpu - step_start:.3f}, "args": {{}}}}'
            )
            events += 1
            step += 1
            t_gpu = max(t_gpu, t_cpu)
        w('\n], "traceName": "bench", "displayTimeUnit": "ms", "baseTimeNanoseconds": 1717000000000000000}\n')
    return kernels, events


CHILD = """
import resource, sys, time, json
from tracekit.importers import import_kineto
t = time.perf_counter()
r = import_kineto([sys.argv[1]], sys.argv[2], overwrite=True)
dt = time.perf_counter() - t
print(json.dumps({"rows": r.rows, "seconds": dt, "steps": r.files[0].step_markers,
                  "layers": r.files[0].layer_markers,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="generate about 1 GB (default about 150 MB)")
    ap.add_argument("--mb", type=float, default=None, help="size of the generated JSON in MB")
    ap.add_argument("--gzip", action="store_true", help="write the trace gzip-compressed")
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the trace and the import in")
    args = ap.parse_args()
    size_mb = args.mb or (1024.0 if args.full else 150.0)
    work = args.keep or Path(tempfile.mkdtemp(prefix="kineto-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / ("trace_rank0.json.gz" if args.gzip else "trace_rank0.json")
    t = time.perf_counter()
    kernels, events = generate(src, int(size_mb * 1e6), compress=args.gzip)
    gen_s = time.perf_counter() - t
    file_bytes = src.stat().st_size
    print(
        f"generated {src.name}: {file_bytes / 1e6:.0f} MB on disk, {events:,} events, {kernels:,} kernels "
        f"in {gen_s:.1f} s"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    # baseline: the interpreter with tracekit imported, nothing read
    base = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, tracekit.importers;print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    base_mib = int(base.stdout.strip()) / 1024
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(work / "imported")],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return 1
    r = json.loads(out.stdout.strip().splitlines()[-1])
    peak_mib = r["maxrss_kib"] / 1024
    json_mb = file_bytes / 1e6 if not args.gzip else None
    print(
        f"imported {r['rows']:,} kernel rows ({r['steps']} step and {r['layers']} layer markers) "
        f"in {r['seconds']:.1f} s"
    )
    if json_mb is not None:
        print(
            f"throughput           {json_mb / r['seconds']:.1f} MB/s of JSON, {events / r['seconds']:,.0f} events/s"
        )
    else:
        print(f"throughput           {events / r['seconds']:,.0f} events/s")
    print(f"peak RSS             {peak_mib:.0f} MiB (interpreter + imports alone: {base_mib:.0f} MiB)")
    print(f"peak RSS / file size {peak_mib * 1.048576 / (file_bytes / 1e6):.2f}")
    print(f"target               peak RSS under 1024 MiB: {'met' if peak_mib < 1024 else 'NOT met'}")
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
