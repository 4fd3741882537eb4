"""User mistakes to compare and sweep: one line on stderr, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.factories import write_routing_trace
from tests.importers.kineto_layout import KinetoBuilder
from tracekit.cli.main import cli
from tracekit.importers import import_kineto


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(3 * 2 * 4)]).reshape(3, 2, 4, 2)
    out = tmp_path_factory.mktemp("t") / "t"
    write_routing_trace(out, ids, phases=["prefill", "decode", "decode"])
    return out


@pytest.fixture(scope="module")
def kernels_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kineto import without --model: kernels, no routing, placeholder architecture."""
    root = tmp_path_factory.mktemp("k")
    b = KinetoBuilder(rank=0, world_size=1)
    b.annotation("ProfilerStep#1", 0, 100, gpu=False)
    b.kernel("gemm_kernel", 1, 10)
    import_kineto([b.write(root / "rank0.json")], root / "kern")
    return root / "kern"


def one_line_error(argv: list[str]) -> str:
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_compare_refuses_a_trace_imported_without_a_model(kernels_only: Path) -> None:
    line = one_line_error(["compare", str(kernels_only), "--hw", "h200-sxm", "--hw", "gb200-nvl72"])
    assert str(kernels_only) in line and "--model NAME" in line


@pytest.mark.parametrize("item", ["h200-sxm:ep=abc", "h200-sxm:batch=4.5", "h200-sxm:kv_len=lots"])
def test_compare_deploy_non_integer_is_one_line(trace: Path, item: str) -> None:
    key = item.split(":")[1].split("=")[0]
    line = one_line_error(
        ["compare", str(trace), "--hw", "h200-sxm", "--hw", "gb200-nvl72", "--deploy", item]
    )
    assert f"--deploy {key}=" in line and "must be an integer" in line


def test_sweep_refuses_an_unknown_system_before_running(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "sw"
    line = one_line_error(
        ["sweep", str(trace), "--hw", "nosuch", "--out", str(out), "--no-plot", "--jobs", "1"]
    )
    assert "unknown hardware preset 'nosuch'" in line and "h200-sxm" in line
    assert not out.exists()


def test_sweep_refuses_a_trace_imported_without_a_model(kernels_only: Path, tmp_path: Path) -> None:
    out = tmp_path / "sw"
    argv = ["sweep", str(kernels_only), "--hw", "h200-sxm", "--out", str(out), "--no-plot", "--jobs", "1"]
    line = one_line_error(argv)
    assert "--model NAME" in line and not out.exists()


def test_sweep_refuses_an_existing_out_before_sweeping(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "sw"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    argv = ["sweep", str(trace), "--hw", "h200-sxm", "--out", str(out), "--no-plot", "--jobs", "1"]
    line = one_line_error(argv)
    assert str(out) in line and "--force" in line
    assert (out / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("option", ["--ep", "--batch-per-gpu"])
def test_sweep_empty_list_is_refused(trace: Path, tmp_path: Path, option: str) -> None:
    out = tmp_path / "sw"
    argv = [
        "sweep",
        str(trace),
        "--hw",
        "h200-sxm",
        option,
        ",",
        "--out",
        str(out),
        "--no-plot",
        "--jobs",
        "1",
    ]
    line = one_line_error(argv)
    assert f"{option} ','" in line and "no number given" in line and not out.exists()
