"""Kernel classification from the structure of names: an all-to-all built under an unfamiliar
namespace is still dispatch / combine / notify, utility kernels of a GEMM library are not GEMMs, a
user's rules come first, and what no rule knows is reported (after the import and as SQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.importers.kineto_layout import KinetoBuilder
from tracekit.cli.main import cli
from tracekit.errors import InputFormatError
from tracekit.importers.categories import CATEGORIES, classify, load_rules
from tracekit.importers.kernel_names import parse_kernel_name
from tracekit.reports import Catalog, run_report

ACME = [
    ("void acme::ep::internode::dispatch<false, 8, 4096, 7168>(int4*, float*, long*, int4 const*, void**, int)", "moe_dispatch"),
    ("void acme::ep::internode::combine<__nv_bfloat16, 8, 4096>(int4*, float*, int4 const*, void**, int)", "moe_combine"),
    ("notify_dispatch", "moe_layout"),
]  # fmt: skip
LEFT_OVER = [
    ("void acme::sched::prefetch_pages<4>(int*)", 30.0, 3),
    ("acme_custom_op_v2", 12.5, 2),
    ("void acme::sched::drain(int)", 7.0, 1),
]


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    return res.exit_code, res.output


def _acme_trace(tmp_path: Path) -> Path:
    b = KinetoBuilder()
    t = 0.0
    for name, _ in ACME:
        b.kernel(name, t, 10.0, launch_us=t)
        t += 20.0
    for name, dur, count in LEFT_OVER:
        for _ in range(count):
            b.kernel(name, t, dur, launch_us=t)
            t += dur + 5.0
    return b.write(tmp_path / "acme_rank0.json")


def test_a_forked_all_to_all_classifies_by_what_it_is(tmp_path: Path) -> None:
    for name, category in ACME:
        assert classify(name).category == category, name
    assert classify(ACME[0][0]).variant == classify(ACME[1][0]).variant == "internode"
    path = _acme_trace(tmp_path)
    code, out = _invoke("import", "kineto", str(path), "--out", str(tmp_path / "t"))
    assert code == 0, out
    # the report printed after the import lists what is left, longest summed time first
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("unclassified kernels:"))
    total_us = 30.0 + 3 * 30.0 + 2 * 12.5 + 7.0  # the three a2a kernels run 10 us each
    other_us = 3 * 30.0 + 2 * 12.5 + 7.0
    assert f"3 name(s), 6 launches, {other_us / total_us:.1%} of kernel time" in lines[head]
    listed = lines[head + 1 : head + 4]
    for line, (name, dur, count) in zip(listed, LEFT_OVER, strict=True):
        assert name in line and f"{count}x" in line and f"{dur * count / 1000:.3f} ms" in line
    # the canned report gives the same list
    cat = Catalog.from_paths([tmp_path / "t"])
    con = cat.connect()
    try:
        res = run_report(con, cat, "unclassified-kernels", {"top": 2})
    finally:
        con.close()
    rows = [dict(zip(res.columns, r, strict=True)) for r in res.rows]
    assert [r["name"] for r in rows] == [n for n, _, _ in LEFT_OVER[:2]]
    assert [r["kernels"] for r in rows] == [3, 2]
    assert rows[0]["time_s"] == pytest.approx(90e-6)
    assert rows[0]["share"] == pytest.approx(90.0 / total_us)
    assert rows[0]["unclassified_share"] == pytest.approx(90.0 / other_us)


@pytest.mark.parametrize(
    ("name", "category", "variant"),
    [
        ("void deep_ep::internode_ll::dispatch<false, false, 3, 10, 7168>(void*, int)", "moe_dispatch", "low_latency"),
        ("void deep_ep::internode_ll::clean_low_latency_buffer(int*, int, int*, int)", "moe_layout", "low_latency"),
        ("void deep_ep::intranode::cached_notify_combine<8>(void**, int*, int, int)", "moe_layout", "intranode"),
        ("void deep_ep::internode::cached_notify<8, 2>(int, int, int, int, int*)", "moe_layout", "internode"),
        ("void deep_ep::layout::get_dispatch_layout<256, 32, 8>(long const*, int*, int*)", "moe_layout", None),
        ("void pplx::dispatchKernel<__nv_bfloat16>(int)", "moe_dispatch", None),
        ("void my_ep::ll::combine<1>(int)", "moe_combine", "low_latency"),
        # a grouped-GEMM library's utility kernels are not GEMMs
        ("void deep_gemm::transpose_fp32<128u, 4096u>(float*, float*, unsigned int)", "utility", None),
        ("void deep_gemm::tma_aligned_transpose<int>(float*)", "utility", None),
        ("void cutlass::gemm::kernel::update_tensormap_kernel<int>(CUtensorMap*, int)", "utility", None),
        ("void tensorrt_llm::kernels::fill_tensor_map<4>(int)", "utility", None),
        ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda(float)#1}, at::detail::Array<char*, 2> >(int)", "utility", None),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, at::detail::Array<char*, 1> >(int)", "utility", None),
        ("void deep_gemm::sm90_fp8_gemm_1d2d_impl<(cute::UMMA::Major)0, 0u, 4096u, (deep_gemm::GemmType)1>(float*, int*)", "expert_gemm", None),
        ("void internal::flash::flash_fwd_mla_combine_kernel<cutlass::bfloat16_t, 512, 64>(Flash_fwd_mla_params)", "attention", None),
        ("aten::_to_copy", "utility", None),
        ("aten::addmm", "dense_gemm", None),
    ],
)  # fmt: skip
def test_structure_rules(name: str, category: str, variant: str | None) -> None:
    got = classify(name)
    assert (got.category, got.variant) == (category, variant), got


namespaces = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=3)


@settings(max_examples=500, deadline=None)
@given(
    ns=namespaces,
    which=st.sampled_from(
        ["dispatch", "combine", "notify_dispatch", "cached_notify_combine", "get_dispatch_layout"]
    ),
)
def test_categories_do_not_depend_on_the_namespace(ns: list[str], which: str) -> None:
    """A DeepEP kernel rebuilt under any namespace keeps DeepEP's category."""
    own = classify(f"void deep_ep::intranode::{which}<8, 768>(int4*, int)").category
    fork = "::".join(ns)
    assert classify(f"void {fork}::{which}<8, 768>(int4*, int)").category == own
    assert classify(f"{fork}::{which}").category == own


@settings(max_examples=1000, deadline=None)
@given(name=st.text(max_size=60))
def test_any_text_classifies(name: str) -> None:
    got = classify(name)
    assert got.category in CATEGORIES
    parsed = parse_kernel_name(name)
    assert isinstance(parsed.function, str) and isinstance(parsed.namespace, str)


def test_user_rules_come_first(tmp_path: Path) -> None:
    path = _acme_trace(tmp_path)
    toml = tmp_path / "rules.toml"
    toml.write_text(
        '[[rules]]\nlibrary = "acme scheduler"\ncategory = "utility"\nnamespace = "(^|::)sched$"\n\n'
        '[[rules]]\ncategory = "moe_combine"\nfunction = "^dispatch$"\nvariant = "mine"\n'
    )
    rules = load_rules(toml)
    assert rules.classify("void acme::sched::drain(int)").category == "utility"
    got = rules.classify(ACME[0][0])
    assert (got.category, got.variant, got.rule) == ("moe_combine", "mine", "rules.toml rule 1")
    code, out = _invoke("import", "kineto", str(path), "--out", str(tmp_path / "t"), "--rules", str(toml))
    assert code == 0, out
    assert "unclassified kernels: 1 name(s), 2 launches" in out and "acme_custom_op_v2" in out
    as_json = tmp_path / "rules.json"
    as_json.write_text(json.dumps({"rules": [{"category": "elementwise", "name": "custom_op"}]}))
    assert load_rules(as_json).classify("acme_custom_op_v2").category == "elementwise"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[rules]]\ncategory = "gemm"\nfunction = "x"\n', "category 'gemm' is not one of"),
        ('[[rules]]\ncategory = "utility"\n', "give at least one of"),
        ('[[rules]]\ncategory = "utility"\nfunction = "("\n', "not a valid regular expression"),
        ('[[rules]]\ncategory = "utility"\nfunction = "x"\ncolour = "red"\n', "unknown key 'colour'"),
        ("rules = 3\n", "must be lists"),
        ("[[rules\n", "not valid TOML"),
        ("", "no rules"),
    ],
)
def test_bad_rules_files_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = _acme_trace(tmp_path)
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    with pytest.raises(InputFormatError, match=r"rules\.toml"):
        load_rules(rules)
    code, out = _invoke("import", "kineto", str(path), "--out", str(tmp_path / "t"), "--rules", str(rules))
    assert code == 2 and out.count("\n") == 1 and message in out, out
    code, out = _invoke(
        "import", "kineto", str(path), "--out", str(tmp_path / "t"), "--rules", str(tmp_path / "none.toml")
    )
    assert code == 2 and "no such file" in out


def test_an_import_that_keeps_nothing_is_an_error(tmp_path: Path) -> None:
    b = KinetoBuilder()
    b.annotation("ProfilerStep#1", 0.0, 10.0, gpu=False)  # a profile of annotations only
    path = b.write(tmp_path / "empty.json")
    code, out = _invoke("import", "kineto", str(path), "--out", str(tmp_path / "t"))
    assert code == 2 and out.count("\n") == 1, out
    assert str(path) in out and "no kernel rows kept" in out
    assert not (tmp_path / "t").exists()
