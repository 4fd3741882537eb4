"""kernel-summary and the HTML report on a trace written by the Kineto importer."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from tests.reports.builders import EVIL_KERNEL
from tracekit.reports import Catalog, run_report
from tracekit.reports.html import write_html

importers = pytest.importorskip("tracekit.importers")
layout = pytest.importorskip("tests.importers.kineto_layout")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, float]]]:
    """A two-rank Kineto import; returns the trace and, per kernel name, (launches, total µs)."""
    root = tmp_path_factory.mktemp("kineto")
    names = [
        "void flash_fwd_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4>>(Flash_fwd_params)",
        "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevComm*, unsigned long, ncclWork*)",
        EVIL_KERNEL,
    ]
    expected: dict[str, tuple[int, float]] = defaultdict(lambda: (0, 0.0))
    files = []
    for rank in range(2):
        b = layout.KinetoBuilder(rank=rank, world_size=2)
        ts = layout.BASE_US + 100.0
        for i in range(12):
            name = names[i % len(names)]
            dur = 5.0 + 3 * i + rank
            b.kernel(name, ts, dur)
            n, total = expected[name]
            expected[name] = (n + 1, total + dur)
            ts += dur + 2.0
        files.append(b.write(root / f"rank{rank}.json"))
    out = root / "trace"
    importers.import_kineto(files, out)
    return out, dict(expected)


def test_kernel_summary_on_an_imported_trace(imported: tuple[Path, dict[str, tuple[int, float]]]) -> None:
    trace, expected = imported
    cat = Catalog.from_paths([trace])
    con = cat.connect()
    res = run_report(con, cat, "kernel-summary", {"by": "name"})
    con.close()
    got = {r[2]: dict(zip(res.columns, r, strict=True)) for r in res.rows}
    total_us = sum(t for _, t in expected.values())
    assert set(got) == set(expected)
    for name, (n, t_us) in expected.items():
        assert got[name]["kernels"] == n and got[name]["ranks"] == 2
        assert got[name]["time_s"] == pytest.approx(t_us * 1e-6)
        assert got[name]["share"] == pytest.approx(t_us / total_us)
    categories = {r["category"] for r in got.values()}
    assert "attention" in categories and "collective" in categories


def test_html_escapes_an_imported_kernel_name(
    imported: tuple[Path, dict[str, tuple[int, float]]], tmp_path: Path
) -> None:
    trace, _ = imported
    text = write_html([trace], tmp_path / "k.html").read_text()
    assert text.count("<script") == 1
    assert "&lt;script&gt;document.title=&quot;owned&quot;&lt;/script&gt;" in text
