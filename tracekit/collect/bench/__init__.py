"""``tracekit bench``: microbenchmarks of the user's own devices, written as a measured table.

Needs the ``torch`` extra (imported lazily by the CLI). HBM read and copy, dense GEMM (bf16, and
fp8 where torch has a scaled matmul on the device), the routed-expert FFN as a grouped GEMM,
attention decode and prefill at GQA and MLA shapes (torch SDPA; FlashAttention and FlashInfer when
installed), RMSNorm and SwiGLU, and all-reduce / all-gather / reduce-scatter / all-to-all across
the local GPUs (NCCL) when there are several. CUDA events on a GPU, ``perf_counter`` on the CPU,
medians of repeats, a wall-clock budget. The rows are those of ``schemas/measured/v1``; read them
with :class:`tracekit.cost.measured.MeasuredTable`.
"""

from tracekit.collect.bench.runner import BenchOptions, BenchResult, parse_budget, run_bench

__all__ = ["BenchOptions", "BenchResult", "parse_budget", "run_bench"]
