"""Nsight Systems SQLite exports (built in code in nsys's documented schema): the same run recorded as
Kineto JSON and as an nsys export imports to the same kernels table; ranks per device; NCCL sizes
from NCCL's NVTX ranges; inferred layers; streaming in chunks; broken files refused in one line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from tests.importers import workload
from tests.importers.nsys_layout import MARK, NsysBuilder
from tracekit.cli.main import cli
from tracekit.errors import InputFormatError, UsageError
from tracekit.importers.nsys import NsysOptions, import_nsys
from tracekit.trace import open_trace, validate

COMPARED = (
    "rank",
    "device",
    "stream",
    "name",
    "category",
    "start_ns",
    "duration_ns",
    "step",
    "layer",
    "correlation",
    "collective",
    "message_bytes",
)


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    return res.exit_code, res.output


def _kernels(path: Path) -> pl.DataFrame:
    return open_trace(path).scan("kernels").collect().sort("rank", "start_ns", "name")


def test_the_same_run_as_kineto_and_as_nsys_imports_to_the_same_kernels(tmp_path: Path) -> None:
    kin = workload.write_kineto(tmp_path / "run_rank0.json")
    nsys = workload.write_nsys(tmp_path / "run.sqlite", base_ns=1_234_567_000)
    code, out_k = _invoke("import", "kineto", str(kin), "--out", str(tmp_path / "k"))
    assert code == 0, out_k
    code, out_n = _invoke("import", "nsys", str(nsys), "--out", str(tmp_path / "n"))
    assert code == 0, out_n
    k, n = _kernels(tmp_path / "k"), _kernels(tmp_path / "n")
    assert k.height == n.height == len(workload.build()[0])
    assert k.select(COMPARED).to_dicts() == n.select(COMPARED).to_dicts()
    # and both equal the workload itself (times from the earliest event: the first step range)
    events, ranges = workload.build()
    origin = min(r.start_ns for r in ranges)
    want = sorted(events, key=lambda e: e.start_ns)
    assert n["name"].to_list() == [e.name for e in want]
    assert n["start_ns"].to_list() == [e.start_ns - origin for e in want]
    assert n["duration_ns"].to_list() == [e.dur_ns for e in want]
    cats = dict(zip(n["name"], n["category"], strict=True))
    assert cats[workload.DISPATCH] == "moe_dispatch" and cats[workload.COMBINE] == "moe_combine"
    assert cats[workload.NOTIFY] == "moe_layout" and cats[workload.GEMM] == "expert_gemm"
    assert cats[workload.MEMCPY] == cats[workload.MEMSET] == "memcpy"
    assert cats[workload.UNKNOWN] == "other"
    nccl = n.filter(pl.col("name") == workload.NCCL)
    assert nccl["message_bytes"].to_list() == [workload.ALLREDUCE_BYTES] * 2
    assert nccl["collective"].to_list() == ["allreduce"] * 2
    # layers and steps from the host ranges, by launch time
    norm = n.filter(pl.col("name") == workload.NORM)
    assert norm["layer"].to_list() == [0, 1, 2, 0, 1, 2] and norm["step"].to_list() == [4, 4, 4, 5, 5, 5]
    assert n.filter(pl.col("name") == workload.UNKNOWN)["layer"].null_count() == 2
    # both imports print the unclassified-kernels report naming the one unknown kernel
    for out in (out_k, out_n):
        assert "unclassified kernels: 1 name(s), 2 launches" in out
        assert "acme::internal::mystery_op" in out
    validate(tmp_path / "n")


def test_chunked_reads_give_the_same_rows(tmp_path: Path) -> None:
    nsys = workload.write_nsys(tmp_path / "run.sqlite")
    import_nsys([nsys], tmp_path / "big")
    import_nsys([nsys], tmp_path / "small", options=NsysOptions(chunk_rows=3))
    assert _kernels(tmp_path / "big").equals(_kernels(tmp_path / "small"))


def test_ranks_per_device_and_per_process(tmp_path: Path) -> None:
    b = NsysBuilder()
    # process 10 drives devices 0 and 3; process 11 drives device 5
    for corr, (pid, device, name) in enumerate(
        ((10, 3, "k_a"), (10, 0, "k_b"), (11, 5, "k_c"), (10, 3, "k_a")), 1
    ):
        b.launch(1_000 * corr, corr, pid=pid)
        b.kernel(
            f"void {name}(int)", 1_000 * corr + 500, 1_000 * corr + 900, device=device, corr=corr, pid=pid
        )
    path = b.write(tmp_path / "multi.sqlite")
    rep = import_nsys([path], tmp_path / "d")
    assert rep.files[0].ranks == {0: 0, 1: 3, 2: 5}
    df = _kernels(tmp_path / "d")
    assert sorted(zip(df["device"], df["rank"], strict=True)) == [(0, 0), (3, 1), (3, 1), (5, 2)]
    rep = import_nsys([path], tmp_path / "p", options=NsysOptions(rank_by="process"))
    assert rep.files[0].ranks == {0: 10, 1: 11}
    df = _kernels(tmp_path / "p")
    assert sorted(zip(df["device"], df["rank"], strict=True)) == [(0, 0), (3, 0), (3, 0), (5, 1)]
    assert open_trace(tmp_path / "p").manifest.parallel.world_size == 2
    # two files: the second file's ranks follow the first's
    rep = import_nsys([path, path], tmp_path / "two")
    assert [r.ranks for r in rep.files] == [{0: 0, 1: 3, 2: 5}, {3: 0, 4: 3, 5: 5}]


def test_layers_are_inferred_when_the_export_has_no_layer_ranges(tmp_path: Path) -> None:
    """Two dense layers, then four MoE layers whose kernel count varies (an expert loop): the MoE
    layers are the repeating block; a copy on another stream takes the layer it runs in."""
    b = NsysBuilder()
    t, corr = 1_000, 0
    truth: list[tuple[str, int | None]] = []

    def k(name: str, layer: int | None, *, stream: int = 7) -> None:
        nonlocal t, corr
        corr += 1
        b.launch(t, corr)
        b.kernel(name, t + 200, t + 900, corr=corr, stream=stream)
        truth.append((name, layer))
        t += 1_000

    k("embedding_kernel", None)
    for layer in range(4):
        for name in (
            "rms_norm_kernel",
            "qkv_gemm",
            "attention_decode",
            "o_gemm",
            "rms_norm_kernel",
            "router_topk",
        ):
            k(name, layer)
        for _ in range(1 + layer % 2):  # the experts actually hit differ per layer
            k("expert_ffn_kernel", layer)
        k("residual_add", layer)
    k("final_norm", None)
    k("lm_head_gemm", None)
    k("sampling_kernel", None)
    path = b.write(tmp_path / "plain.sqlite")
    code, out = _invoke("import", "nsys", str(path), "--out", str(tmp_path / "o"))
    assert code == 0, out
    assert "layers inferred from the repeating kernel sequence (4 blocks)" in out
    df = _kernels(tmp_path / "o")
    assert list(zip(df["name"], df["layer"], strict=True)) == truth


def test_nvtx_marks_and_ranges_from_other_processes_are_not_markers(tmp_path: Path) -> None:
    b = NsysBuilder()
    b.range("ProfilerStep#1", 0, 10_000, pid=999)  # another process's step
    b.range("ProfilerStep#2", 0, 10_000)
    b.range("model.layers.7", 100, 500, event_type=MARK)  # a mark, not a range
    b.launch(200, 1)
    b.kernel("void k(int)", 300, 400, corr=1)
    path = b.write(tmp_path / "m.sqlite")
    import_nsys([path], tmp_path / "o")
    df = _kernels(tmp_path / "o")
    assert df["step"].to_list() == [2] and df["layer"].to_list() == [None]


def test_rows_with_broken_fields_are_skipped_and_counted(tmp_path: Path) -> None:
    b = NsysBuilder()
    for i in range(4):
        b.launch(i * 1_000, i + 1)
        b.kernel(f"void k{i}(int)", i * 1_000 + 10, i * 1_000 + 20, corr=i + 1)
    path = b.write(tmp_path / "b.sqlite")
    con = sqlite3.connect(path)
    con.execute("UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET end = start - 5 WHERE correlationId = 2")
    con.execute("UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET demangledName = 9999 WHERE correlationId = 3")
    con.execute("UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET start = 'soon' WHERE correlationId = 4")
    con.commit()
    con.close()
    rep = import_nsys([path], tmp_path / "o")
    assert _kernels(tmp_path / "o")["name"].to_list() == ["void k0(int)"]
    assert rep.files[0].skipped == {
        "kernel row with a missing or invalid start/end/device/stream/name": 2,
        "kernel whose name id is not in StringIds": 1,
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an SQLite database"),
        (b"PK\x03\x04 an nsys-rep is a zip", "not an SQLite database"),
        (b"SQLite format 3\x00" + b"\x00" * 200, "SQLite cannot read it"),
    ],
)
def test_files_that_are_not_exports_are_refused_in_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "x.sqlite"
    path.write_bytes(content)
    code, out = _invoke("import", "nsys", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and out.count("\n") == 1 and message in out and str(path) in out, out
    assert not (tmp_path / "o").exists()


def test_an_export_without_cuda_activity_or_rows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nocuda.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT)")
    con.close()
    with pytest.raises(InputFormatError, match="no CUPTI_ACTIVITY_KIND_KERNEL table"):
        import_nsys([path], tmp_path / "o")
    empty = NsysBuilder().write(tmp_path / "empty.sqlite")
    code, out = _invoke("import", "nsys", str(empty), "--out", str(tmp_path / "o2"))
    assert code == 2 and out.count("\n") == 1 and "no kernel, memcpy or memset rows kept" in out
    with pytest.raises(UsageError, match="no such file"):
        import_nsys([tmp_path / "missing.sqlite"], tmp_path / "o3")
    b = NsysBuilder()
    b.kernel("void k(int)", 10, 20, corr=1)
    nameless = b.write(tmp_path / "nameless.sqlite")
    con = sqlite3.connect(nameless)
    con.execute("DELETE FROM StringIds")
    con.commit()
    con.close()
    code, out = _invoke("import", "nsys", str(nameless), "--out", str(tmp_path / "o4"))
    assert (
        code == 2 and out.count("\n") == 1 and "no kernel, memcpy or memset rows kept (1 rows skipped)" in out
    )


def test_user_rules_apply_to_nsys_too(tmp_path: Path) -> None:
    nsys = workload.write_nsys(tmp_path / "run.sqlite")
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nlibrary = "acme internal"\ncategory = "elementwise"\nfunction = "^mystery_op$"\n'
    )
    code, out = _invoke("import", "nsys", str(nsys), "--out", str(tmp_path / "o"), "--rules", str(rules))
    assert code == 0, out
    assert "unclassified kernels: none" in out
    df = _kernels(tmp_path / "o")
    assert set(df.filter(pl.col("name") == workload.UNKNOWN)["category"]) == {"elementwise"}
    assert np.all(df["category"].to_numpy() != "other")
