"""A CUDA-run Kineto trace (built in Kineto's exact layout) with DeepEP, DeepGEMM, FlashMLA,
FlashAttention, CUTLASS, Triton, cuBLAS and NCCL kernels: categories, collectives, steps and layers
row by row."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.importers.kineto_layout import KinetoBuilder
from tracekit.cli.main import cli
from tracekit.importers import category_of
from tracekit.trace import open_trace

# (kernel name as Kineto writes it, expected category)
KERNELS: list[tuple[str, str]] = [
    (
        "void deep_ep::layout::get_dispatch_layout<256, 32, 8>(long const*, int*, int*, int*, bool*, int, int, int, int)",
        "moe_layout",
    ),
    (
        "void deep_ep::intranode::notify_dispatch<8>(int const*, int*, int, int const*, int*, int, int, int, bool const*, int*, int*, int, int, void**, int**, int)",
        "moe_layout",
    ),
    (
        "void deep_ep::intranode::dispatch<8, 768, 8192>(int4*, float*, int*, long*, float*, int*, int*, int4 const*, float const*, long const*, float const*, bool const*, int const*, int, int, int, int, int, int, int, void**, int, int, int)",
        "moe_dispatch",
    ),
    (
        "void deep_ep::internode_ll::dispatch<false, false, 3, 10, 7168>(void*, float*, int*, long*, int*, int*, long*, int*, int*, void*, int*, void*, long const*, int*, int*, int, int, int, int, int, int, int, int, int, int, bool, int)",
        "moe_dispatch",
    ),
    (
        "void deep_gemm::sm90_fp8_gemm_1d2d_impl<(cute::UMMA::Major)0, 0u, 4096u, 7168u, 128u, 112u, 128u, 1u, 128u, 128u, 1u, 2u, 5u, 128u, 128u, 1u, false, (deep_gemm::GemmType)1>(float*, int*, unsigned int, unsigned int, unsigned int, CUtensorMap, CUtensorMap, CUtensorMap, CUtensorMap)",
        "expert_gemm",
    ),
    (
        "void deep_gemm::fp8_gemm_kernel<4096u, 7168u, 128u, 160u, 128u, 32u, 8u, 128u, 128u, 1u, 4u, 1u, (deep_gemm::GemmType)2>(__nv_bfloat16*, float*, int*, unsigned int, CUtensorMap, CUtensorMap, CUtensorMap, CUtensorMap)",
        "expert_gemm",
    ),
    (
        "void deep_gemm::sm90_fp8_gemm_1d2d_impl<(cute::UMMA::Major)0, 0u, 2112u, 7168u, 128u, 128u, 128u, 1u, 128u, 128u, 1u, 1u, 6u, 128u, 128u, 1u, false, (deep_gemm::GemmType)0>(float*, int*, unsigned int, unsigned int, unsigned int, CUtensorMap, CUtensorMap, CUtensorMap, CUtensorMap)",
        "dense_gemm",
    ),
    (
        "void deep_ep::intranode::combine<__nv_bfloat16, 8, 768, 4096>(__nv_bfloat16*, float*, int4 const*, float const*, __nv_bfloat16 const*, int const*, int const*, int const*, int*, int, int, int, int, int, void**, int, int, int)",
        "moe_combine",
    ),
    (
        "void deep_ep::internode_ll::combine<false, 3, 10, 7168, 9>(void*, int*, int*, void*, void const*, long const*, float const*, int const*, long const*, int*, int*, void*, int, int, int, int, int, int, int, int, bool, bool)",
        "moe_combine",
    ),
    (
        "void flash::flash_fwd_splitkv_mla_kernel<Flash_fwd_kernel_traits_mla<576, 64, 64, 8, cutlass::bfloat16_t, 512>, flash::SharedStorageMLA<Flash_fwd_kernel_traits_mla<576, 64, 64, 8, cutlass::bfloat16_t, 512> > >(Flash_fwd_mla_params)",
        "attention",
    ),
    (
        "void flash::flash_fwd_mla_combine_kernel<cutlass::bfloat16_t, 512, 64>(Flash_fwd_mla_params)",
        "attention",
    ),
    ("get_mla_metadata_kernel(Mla_metadata_params)", "attention"),
    (
        "void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t, Flash_kernel_traits<128, 128, 64, 4, cutlass::bfloat16_t> >, false, true, false, false, false, true, false, false>(Flash_fwd_params)",
        "attention",
    ),
    (
        "void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<flash::CollectiveMainloopFwdSm90<2, cute::tuple<cute::C<1>, cute::C<1>, cute::C<1> >, cute::tuple<cute::C<128>, cute::C<128>, cute::C<128> >, 128, cutlass::bfloat16_t, float, cutlass::arch::Sm90, true, false> > > >(flash::FlashAttnFwdSm90::Params)",
        "attention",
    ),
    (
        "void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<cutlass::gemm::GroupProblemShape<cute::tuple<int, int, int> >, cutlass::gemm::collective::CollectiveMma<cutlass::gemm::MainloopSm90ArrayTmaGmmaWarpSpecialized<4, cute::tuple<cute::C<1>, cute::C<1>, cute::C<1> > > > > >(cutlass::gemm::kernel::GemmUniversal::Params)",
        "expert_gemm",
    ),
    (
        "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8>(cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8::Params)",
        "dense_gemm",
    ),
    ("fused_moe_kernel", "expert_gemm"),
    ("_w8a8_block_fp8_matmul", "dense_gemm"),
    ("triton_tem_fused_mm_2", "dense_gemm"),
    ("triton_poi_fused_add_mul_silu_0", "elementwise"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1", "elementwise"),
    ("_per_token_group_quant_fp8", "quantization"),
    (
        "void sglang_per_token_group_quant_8bit_kernel<__nv_bfloat16, c10::Float8_e4m3fn>(__nv_bfloat16 const*, void*, float*, int, int, float, float, float)",
        "quantization",
    ),
    (
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas",
        "dense_gemm",
    ),
    ("nvjet_tst_192x192_64x4_1x2_h_bz_coopB_NNT", "dense_gemm"),
    ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_32x5_tn", "dense_gemm"),
    (
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, at::detail::Array<char*, 3>)",
        "elementwise",
    ),
    (
        "void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*, unsigned int, unsigned int, float)",
        "elementwise",
    ),
    (
        "void moe_align_block_size_kernel<int>(int const*, int*, int*, int*, int, int, int, int, unsigned long, int*)",
        "moe_dispatch",
    ),
    (
        "void vllm::moe::moe_sum_kernel<c10::BFloat16, 8>(c10::BFloat16*, c10::BFloat16 const*, int)",
        "moe_combine",
    ),
    (
        "void vllm::cross_device_reduce_1stage<__nv_bfloat16, 8>(vllm::RankData*, vllm::RankSignals, vllm::Signal*, __nv_bfloat16*, int, int)",
        "collective",
    ),
    ("void my_custom_kernel(int)", "other"),
]


def _trace(tmp_path: Path) -> tuple[Path, list[dict]]:
    """The trace and, per kernel in file order, what the import must give."""
    b = KinetoBuilder(rank=0)
    expected: list[dict] = []
    t = 100.0
    # step 5 on the GPU timeline holds the first half, step 6 the rest; layer annotations on the host
    b.annotation("ProfilerStep#5", 90.0, 10_000.0, gpu=True)
    b.annotation("ProfilerStep#6", 10_100.0, 40_000.0, gpu=True)
    b.annotation("model.layers.3.mlp", 0.0, 2_000.0, gpu=False)  # host time: launches at 0..2000 us
    for i, (name, cat) in enumerate(KERNELS):
        launch = 50.0 + 100.0 * i
        b.kernel(name, t, 5.5 + i, launch_us=launch)
        expected.append(
            {
                "name": name,
                "category": cat,
                "start_us": t,
                "dur_us": 5.5 + i,
                "step": 5 if t < 10_090.0 else 6,
                "layer": 3 if launch < 2_000.0 else None,
                "collective": None,
                "message_bytes": None,
                "dtype": None,
                "group_size": None,
            }
        )
        t += 400.0
    # NCCL with metadata on the kernel itself (recent PyTorch)
    b.kernel(
        "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
        t,
        30.0,
        launch_us=t - 20,
        extra_args={
            "Collective name": "allreduce",
            "dtype": "BFloat16",
            "In msg nelems": 7168 * 64,
            "Out msg nelems": 7168 * 64,
            "Group size": 8,
            "In split size": "[]",
            "Out split size": "[]",
            "Process Group Name": "0",
            "Process Group Ranks": "[0, 1, 2, 3, 4, 5, 6, 7]",
        },
    )
    expected.append(
        {
            "name": "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
            "category": "collective",
            "start_us": t,
            "dur_us": 30.0,
            "step": 6,
            "layer": None,
            "collective": "allreduce",
            "message_bytes": 7168 * 64 * 2,
            "dtype": "bfloat16",
            "group_size": 8,
        }
    )
    t += 400.0
    # NCCL whose metadata is on its record_param_comms operator (same External id)
    ext = b.record_param_comms(
        t - 40, collective="allgather", dtype="Float", in_nelems=1024, out_nelems=8192, group_size=8
    )
    b.kernel(
        "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
        t,
        20.0,
        launch_us=t - 30,
        external_id=ext,
    )
    expected.append(
        {
            "name": "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
            "category": "collective",
            "start_us": t,
            "dur_us": 20.0,
            "step": 6,
            "layer": None,
            "collective": "allgather",
            "message_bytes": 8192 * 4,
            "dtype": "float32",
            "group_size": 8,
        }
    )
    t += 400.0
    # NCCL with nothing but its name
    b.kernel("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", t, 10.0, launch_us=t - 10)
    expected.append(
        {
            "name": "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)",
            "category": "collective",
            "start_us": t,
            "dur_us": 10.0,
            "step": 6,
            "layer": None,
            "collective": "send_recv",
            "message_bytes": None,
            "dtype": None,
            "group_size": None,
        }
    )
    t += 400.0
    b.kernel("Memcpy HtoD (Pageable -> Device)", t, 3.0, cat="gpu_memcpy")
    expected.append(
        {
            "name": "Memcpy HtoD (Pageable -> Device)",
            "category": "memcpy",
            "start_us": t,
            "dur_us": 3.0,
            "step": 6,
            "layer": None,
            "collective": None,
            "message_bytes": None,
            "dtype": None,
            "group_size": None,
        }
    )
    t += 400.0
    b.kernel("Memset (Device)", t, 1.0, cat="gpu_memset")
    expected.append(
        {
            "name": "Memset (Device)",
            "category": "memcpy",
            "start_us": t,
            "dur_us": 1.0,
            "step": 6,
            "layer": None,
            "collective": None,
            "message_bytes": None,
            "dtype": None,
            "group_size": None,
        }
    )
    return b.write(tmp_path / "trace_rank0.json"), expected


def test_categories_row_by_row(tmp_path: Path) -> None:
    path, expected = _trace(tmp_path)
    out = tmp_path / "t"
    res = CliRunner().invoke(cli, ["import", "kineto", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "model unknown" in res.output
    df = open_trace(out).scan("kernels").collect().sort("start_ns")
    assert df.height == len(expected)
    # the earliest event of the file is the host annotation at BASE_US + 0
    for row, exp in zip(df.iter_rows(named=True), expected, strict=True):
        assert row["name"] == exp["name"]
        assert row["category"] == exp["category"], exp["name"]
        assert row["start_ns"] == round(exp["start_us"] * 1000)
        assert row["duration_ns"] == round(exp["dur_us"] * 1000)
        assert row["step"] == exp["step"], exp["name"]
        assert row["layer"] == exp["layer"], exp["name"]
        for col in ("collective", "message_bytes", "dtype", "group_size"):
            assert row[col] == exp[col], (col, exp["name"])
        assert row["stream"] == 7 and row["device"] == 0 and row["rank"] == 0
    manifest = open_trace(out).manifest
    assert manifest.source == "imported" and manifest.model.name == "unknown"
    assert "earliest" in manifest.clock


@pytest.mark.parametrize(("name", "category"), KERNELS)
def test_category_of(name: str, category: str) -> None:
    assert category_of(name) == category


def test_layer_markers_on_the_gpu_timeline_win(tmp_path: Path) -> None:
    b = KinetoBuilder()
    b.annotation("layer_0", 0.0, 100.0, gpu=True)
    b.annotation("layer_1", 100.0, 100.0, gpu=True)
    b.annotation("layer_7", 0.0, 1000.0, gpu=False)  # host-side: ignored for kernels when GPU-side ones exist
    b.kernel("fused_moe_kernel", 10.0, 5.0, launch_us=1.0)
    b.kernel("fused_moe_kernel", 150.0, 5.0, launch_us=2.0)
    b.kernel("fused_moe_kernel", 250.0, 5.0, launch_us=3.0)
    path = b.write(tmp_path / "t.json")
    res = CliRunner().invoke(
        cli,
        ["import", "kineto", str(path), "--out", str(tmp_path / "o"), "--layer-pattern", r"^layer_(\d+)$"],
    )
    assert res.exit_code == 0, res.output
    df = open_trace(tmp_path / "o").scan("kernels").collect().sort("start_ns")
    assert df["layer"].to_list() == [0, 1, None]
    assert df["step"].to_list() == [None, None, None]


def test_model_option_records_the_architecture(tmp_path: Path) -> None:
    pytest.importorskip("tracekit.models")
    path, _ = _trace(tmp_path)
    res = CliRunner().invoke(
        cli, ["import", "kineto", str(path), "--out", str(tmp_path / "o"), "--model", "deepseek-v3"]
    )
    assert res.exit_code == 0, res.output
    arch = open_trace(tmp_path / "o").manifest.model
    assert arch.num_experts == 256 and arch.top_k == 8


def test_bad_pattern_is_one_line(tmp_path: Path) -> None:
    path, _ = _trace(tmp_path)
    for pattern in ["layer_(", "layer_\\d+"]:
        res = CliRunner().invoke(
            cli, ["import", "kineto", str(path), "--out", str(tmp_path / "o"), "--layer-pattern", pattern]
        )
        assert res.exit_code == 2
        assert res.output.count("\n") == 1 and "--layer-pattern" in res.output
