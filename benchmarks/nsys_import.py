"""Import generated Nsight Systems SQLite exports of two sizes and compare peak memory side by side.

    python benchmarks/nsys_import.py               # 250k and 1M kernels (a few minutes)
    python benchmarks/nsys_import.py --kernels 2000000

Each export has the tables ``nsys export --type sqlite`` writes for a CUDA + NVTX run of an MoE
model on 8 GPUs: per kernel a CUPTI_ACTIVITY_KIND_KERNEL row (DeepEP, DeepGEMM, FlashMLA, NCCL,
norm names through StringIds) and its CUPTI_ACTIVITY_KIND_RUNTIME launch, NVTX step and layer
ranges, a memcpy per step. Each import runs in a child process so its peak resident memory
(ru_maxrss) is measured alone. The reader streams the tables in chunks and writes rows as they come:
the peak should grow by far less than the file (only the launch table is held, ~24 bytes a launch),
which the printed ratio (peak growth / file growth between the two sizes) shows.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KERNELS = [
    "void deep_ep::internode_ll::dispatch<false, false, 3, 10, 7168>(void*, float*, int*, long*, int*)",
    "void deep_gemm::sm90_fp8_gemm_1d2d_impl<(cute::UMMA::Major)0, 0u, 4096u, 7168u, (deep_gemm::GemmType)2>(float*)",
    "void deep_ep::internode_ll::combine<false, 3, 10, 7168, 9>(void*, int*, int*, void*, void const*)",
    "void flash::flash_fwd_splitkv_mla_kernel<Flash_fwd_kernel_traits_mla<576, 64, 64, 8, cutlass::bfloat16_t, 512> >(Flash_fwd_mla_params)",
    "nvjet_tst_192x192_64x4_1x2_h_bz_coopB_NNT",
    "void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, unsigned int, float)",
]
NCCL = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
LAYERS = 61
DEVICES = 8


def generate(path: Path, kernels: int) -> int:
    """Write an export with about ``kernels`` kernel rows; returns its size in bytes."""
    if path.exists():
        path.unlink()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = OFF")
    con.execute("PRAGMA synchronous = OFF")
    con.execute("CREATE TABLE StringIds (id INTEGER NOT NULL PRIMARY KEY, value TEXT NOT NULL)")
    con.execute(
        "CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INTEGER NOT NULL, end INTEGER NOT NULL, "
        "deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, streamId INTEGER NOT NULL, correlationId INTEGER, "
        "globalPid INTEGER, demangledName INTEGER NOT NULL, shortName INTEGER NOT NULL, gridX INTEGER NOT NULL, "
        "blockX INTEGER NOT NULL, registersPerThread INTEGER NOT NULL)"
    )
    con.execute(
        "CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INTEGER NOT NULL, end INTEGER NOT NULL, "
        "eventClass INTEGER NOT NULL, globalTid INTEGER, correlationId INTEGER, nameId INTEGER NOT NULL, "
        "returnValue INTEGER NOT NULL, callchainId INTEGER)"
    )
    con.execute(
        "CREATE TABLE CUPTI_ACTIVITY_KIND_MEMCPY (start INTEGER NOT NULL, end INTEGER NOT NULL, "
        "deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, streamId INTEGER NOT NULL, correlationId INTEGER, "
        "globalPid INTEGER, bytes INTEGER NOT NULL, copyKind INTEGER NOT NULL, srcKind INTEGER, dstKind INTEGER)"
    )
    con.execute(
        "CREATE TABLE NVTX_EVENTS (start INTEGER NOT NULL, end INTEGER, eventType INTEGER NOT NULL, "
        "text TEXT, globalTid INTEGER, textId INTEGER, jsonText TEXT)"
    )
    names = [*KERNELS, NCCL, "cudaLaunchKernel"]
    con.executemany("INSERT INTO StringIds VALUES (?, ?)", [(i + 1, n) for i, n in enumerate(names)])
    per_layer = len(KERNELS)
    steps = max(1, kernels // (DEVICES * (LAYERS * per_layer + 1)))
    corr = 0
    for dev in range(DEVICES):
        pid = 1000 + dev
        tid = (pid << 24) | pid
        t = 1_000_000
        krows, rrows, nrows, mrows = [], [], [], []
        for step in range(steps):
            step_start = t
            for layer in range(LAYERS):
                layer_start = t
                for k in range(per_layer):
                    corr += 1
                    rrows.append((t, t + 3_000, 1, tid, corr, len(names), 0, None))
                    krows.append(
                        (
                            t + 4_000,
                            t + 9_000 + 100 * k,
                            dev,
                            1,
                            7 + (k % 2) * 13,
                            corr,
                            pid << 24,
                            k + 1,
                            k + 1,
                            132,
                            256,
                            128,
                        )
                    )
                    t += 10_000
                nrows.append((layer_start, t, 59, f"model.layers.{layer}", tid, None, None))
            corr += 1
            rrows.append((t, t + 3_000, 1, tid, corr, len(names), 0, None))
            krows.append(
                (
                    t + 4_000,
                    t + 40_000,
                    dev,
                    1,
                    7,
                    corr,
                    pid << 24,
                    len(KERNELS) + 1,
                    len(KERNELS) + 1,
                    32,
                    512,
                    64,
                )
            )
            nrows.append(
                (t - 10, t + 5_000, 59, "ncclAllReduce", tid, None, '{"Message size [bytes]": 1048576}')
            )
            t += 50_000
            mrows.append((t, t + 2_000, dev, 1, 7, None, pid << 24, 4096, 1, 0, 2))
            t += 3_000
            nrows.append((step_start, t, 59, f"ProfilerStep#{step}", tid, None, None))
            if len(krows) > 200_000:
                _flush(con, krows, rrows, nrows, mrows)
        _flush(con, krows, rrows, nrows, mrows)
    con.commit()
    con.close()
    return path.stat().st_size


def _flush(con: sqlite3.Connection, *tables: list[tuple[object, ...]]) -> None:
    sqls = (
        "INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        "INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        "INSERT INTO NVTX_EVENTS VALUES (?, ?, ?, ?, ?, ?, ?)",
        "INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    for sql, rows in zip(sqls, tables, strict=True):
        con.executemany(sql, rows)
        rows.clear()


CHILD = """
import json, resource, sys, time
from tracekit.importers.nsys import import_nsys
t = time.perf_counter()
r = import_nsys([sys.argv[1]], sys.argv[2], overwrite=True)
dt = time.perf_counter() - t
print(json.dumps({"rows": r.rows, "seconds": dt, "ranks": len(r.files[0].ranks),
                  "nccl_sizes": r.files[0].nccl_sizes,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _run(path: Path, out: Path) -> dict[str, float]:
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), str(out)], capture_output=True, text=True)
    if res.returncode:
        print(res.stderr, file=sys.stderr)
        raise SystemExit(res.returncode)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=int, default=1_000_000, help="kernel rows of the larger export")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nsys-bench-") as tmp:
        d = Path(tmp)
        base = subprocess.run(
            [sys.executable, "-c", "import resource, tracekit.importers.nsys;print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        base_mib = int(base.stdout.strip()) / 1024
        results = []
        for n in (args.kernels // 4, args.kernels):
            t = time.perf_counter()
            size = generate(d / f"e{n}.sqlite", n)
            gen_s = time.perf_counter() - t
            r = _run(d / f"e{n}.sqlite", d / f"t{n}")
            results.append((size, r))
            print(
                f"{int(r['rows']):>10,} rows  {size / 1e6:8.1f} MB export (generated in {gen_s:.0f} s)  "
                f"import {r['seconds']:6.1f} s = {r['rows'] / r['seconds']:,.0f} rows/s  "
                f"peak RSS {r['maxrss_kib'] / 1024:7.1f} MiB  ({r['ranks']} ranks, {r['nccl_sizes']} NCCL sizes)"
            )
            os.remove(d / f"e{n}.sqlite")
        (s1, r1), (s2, r2) = results
        grow_mib = (r2["maxrss_kib"] - r1["maxrss_kib"]) / 1024
        file_mib = (s2 - s1) / 2**20
        print(f"interpreter + imports alone: {base_mib:.0f} MiB")
        print(
            f"peak RSS growth / export growth (4x larger export): {grow_mib:.1f} / {file_mib:.1f} MiB = {grow_mib / file_mib:.2f}"
        )
        print(f"peak RSS / export size, larger export: {r2['maxrss_kib'] / 1024 / (s2 / 2**20):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
