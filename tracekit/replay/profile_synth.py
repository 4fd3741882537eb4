"""GPU profiles built from a known timing model: Kineto JSON files, one per rank, whose kernels (with
real serving-kernel names, classified by the importer like a real profile's) take the times a
replay on a "true" preset predicts. The stand-in for a profiled run where none is published (the
profile-fit tests, ``benchmarks/r1_decode_sources.py``).

Per replayed step and rank: a ``ProfilerStep#N`` range; the embedding kernel; per decoder layer a
``model.layers.L`` range holding the layer's compute kernels on stream 7, each after one launch gap,
then the dispatch, combine and all-reduce kernels on stream 20, then idle until the layer's end (the
slowest rank's time); the LM head. Components are split into several kernels as engines launch them:
the profile's sums per category and layer are the replay's components, its launch gaps the preset's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

NAMES: dict[str, Any] = {
    "attention:decode": "void flash::flash_fwd_splitkv_mla_kernel<Flash_fwd_kernel_traits_mla<576, 64, 64, 8, "
    "cutlass::bfloat16_t, 512>, true>(Flash_fwd_mla_params)",
    "attention:prefill": "void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<192, 128, 64, 4, false, false, "
    "cutlass::bfloat16_t>, true>(Flash_fwd_params)",
    "gemm": "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_"
    "kernel__5x_cublas",
    "expert_gemm": "void deep_gemm::fp8_gemm_kernel<7168u, 2048u, 128u, 128u, 128u, 32u, 1u, 1u, 2u, "
    "(deep_gemm::GemmType)2>(float*, int*, unsigned int)",
    "elementwise": [
        "void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, "
        "__nv_bfloat16*, unsigned int, unsigned int, float)",
        "void per_token_group_quant_8bit_kernel<__nv_bfloat16, __nv_fp8_e4m3>(__nv_bfloat16 const*, void*, "
        "float*, int, int, float, float, float)",
        "void rotary_embedding_kernel<__nv_bfloat16, true>(long const*, __nv_bfloat16*, __nv_bfloat16*, "
        "__nv_bfloat16 const*, int, long, long, int, int, int)",
        "void silu_and_mul_kernel<__nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16 const*, int)",
    ],
    "dispatch": "void deep_ep::internode_ll::dispatch<false, 3, 7168>(void*, float*, int*, long*, void*, int*, "
    "void*, int*, void const*, long const*, int*, int*, int, int, int, int, int, int, int, int, bool)",
    "combine": "void deep_ep::internode_ll::combine<false, 3, 7168, 9>(void*, void*, int*, void const*, long const*, "
    "float const*, int const*, long const*, int*, int*, int, int, int, int, int, int, int, int, bool)",
    "tp_comm": "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
    "embedding": "void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, "
    "2, 2, -2, true>(at::cuda::detail::TensorInfo<c10::BFloat16, unsigned int>)",
}
#: Kernels each component is split into (the rest of a layer's launches are elementwise kernels).
SPLITS = {"attention": 1, "attn_proj": 4, "dense": 3, "expert_gemm": 2}
COMPUTE_STREAM, COMM_STREAM = 7, 20


class _Events:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.corr = 0

    def kernel(self, name: str, t_s: float, dur_s: float, stream: int) -> None:
        self.corr += 1
        self.events.append(
            {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, **_us(t_s, dur_s),
             "args": {"device": 0, "stream": stream, "correlation": self.corr}}
        )  # fmt: skip

    def range(self, name: str, t_s: float, dur_s: float) -> None:
        self.events.append(
            {"ph": "X", "cat": "gpu_user_annotation", "name": name, "pid": 0, "tid": COMPUTE_STREAM,
             **_us(t_s, dur_s)}
        )  # fmt: skip


def _us(t_s: float, dur_s: float) -> dict[str, float]:
    """Kineto's microseconds, on whole nanoseconds (so ranges and kernels that touch do not overlap)."""
    start, end = round(t_s * 1e9), round((t_s + dur_s) * 1e9)
    return {"ts": start / 1e3, "dur": (end - start) / 1e3}


def write_profile(
    true: Any,
    true_free: Any,
    out: Path,
    *,
    gap_s: dict[str, float],
    step_numbers: list[int] | None = None,
    ranks: list[int] | None = None,
    jitter: float = 0.0,
    seed: int = 0,
) -> list[Path]:
    """Kineto files ``out/prof_rank{r}.json`` of the replay ``true`` (``true_free``: the same replay
    without launch gaps, whose ``fixed`` is the small kernels' time); ``gap_s``: the launch gap per
    phase; ``ranks``: the profiled ranks (all); ``jitter``: each compute kernel's duration times a
    lognormal factor of that sigma (run-to-run noise; the layer still ends when the replay says).
    Returns the files."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    steps = true.steps
    layers = true.layers
    rank_rows = true.ranks.join(
        true_free.ranks.select("phase", "step", "layer", "rank", pl.col("fixed_s").alias("free_s")),
        on=["phase", "step", "layer", "rank"],
    )
    R = int(true.run["num_gpus"][0])
    numbers = step_numbers or list(range(steps.height))
    files = []
    for r in ranks if ranks is not None else range(R):
        ev = _Events()
        t = 1.0
        mine = rank_rows.filter(pl.col("rank") == r)
        for i, srow in enumerate(steps.iter_rows(named=True)):
            phase, step = srow["phase"], srow["step"]
            step_start = t
            ev.kernel(NAMES["embedding"], t, srow["embedding_s"], COMPUTE_STREAM)
            t += srow["embedding_s"]
            lt = layers.filter((pl.col("phase") == phase) & (pl.col("step") == step)).sort("layer")
            rows = {
                x["layer"]: x
                for x in mine.filter((pl.col("phase") == phase) & (pl.col("step") == step)).iter_rows(
                    named=True
                )
            }
            for lrow in lt.iter_rows(named=True):
                layer_start = t
                t = _layer(ev, rows[lrow["layer"]], t, gap_s[phase], phase, rng, jitter)
                t = max(t, layer_start + lrow["time_s"])  # idle until the slowest rank is done
                ev.range(f"model.layers.{lrow['layer']}", layer_start, t - layer_start)
            ev.kernel(NAMES["gemm"], t, srow["lm_head_s"], COMPUTE_STREAM)  # the LM head
            t += srow["lm_head_s"]
            ev.range(f"ProfilerStep#{numbers[i]}", step_start, t - step_start)
            t += 50e-6
        path = out / f"prof_rank{r}.json"
        path.write_text(json.dumps({"traceEvents": ev.events}))
        files.append(path)
    return files


def _layer(
    ev: _Events,
    row: dict[str, Any],
    t: float,
    gap: float,
    phase: str,
    rng: np.random.Generator,
    jitter: float,
) -> float:
    gaps_total = row["fixed_s"] - row["free_s"]
    n = round(gaps_total / gap) if gap > 0 else 0
    kernels: list[tuple[str, float]] = []
    for comp, parts in SPLITS.items():
        total = row[f"{comp}_s"]
        if total <= 0:
            continue
        name = (
            NAMES[f"attention:{phase}"]
            if comp == "attention"
            else NAMES["expert_gemm" if comp == "expert_gemm" else "gemm"]
        )
        kernels += [(name, total / parts)] * parts
    small = max(1, n - len(kernels))
    kernels += [(NAMES["elementwise"][i % 4], row["free_s"] / small) for i in range(small)]
    order = rng.permutation(len(kernels))  # interleaved, as a layer runs
    noise = np.exp(rng.normal(0.0, jitter, len(kernels))) if jitter > 0 else np.ones(len(kernels))
    for i in order:
        name, dur = kernels[i]
        t += gap
        ev.kernel(name, t, dur * noise[i], COMPUTE_STREAM)
        t += dur * noise[i]
    for comp in ("dispatch", "combine", "tp_comm"):
        dur = row[f"{comp}_s"]
        if dur > 0:
            ev.kernel(NAMES[comp], t, dur, COMM_STREAM)
            t += dur
    return t
