"""``tracekit cost OP --json``: the printed numbers equal the library's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.factories import write_routing_trace
from tracekit.cli.main import cli
from tracekit.cost import alltoall, dispatch, expected_uniform_traffic, gemm
from tracekit.hardware import get_hardware


def _run(args: list[str]) -> dict:
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_dispatch_example_from_the_issue() -> None:
    args = "cost dispatch --hw h200-sxm --ep 16 --tokens 128 --hidden 7168 --topk 8 --experts 256 --dtype fp8 --impl deepep-ll --json"
    got = _run(args.split())
    hw = get_hardware("h200-sxm")
    t = expected_uniform_traffic(num_ranks=16, tokens_per_rank=128, num_experts=256, top_k=8, domain_size=8)
    want = dispatch(hw, t, impl="deepep-ll", bytes_per_token=7168 + 7168 / 128 * 4)
    assert got["time_s"] == pytest.approx(float(want.time_s.max()))
    assert got["bound"] in ("network", "latency") and got["crosses_network"] is True
    gb = _run([*args.replace("h200-sxm", "gb200-nvl72").split()])
    assert gb["crosses_network"] is False and gb["time_s"] < got["time_s"]


@pytest.mark.parametrize(
    "args",
    [
        "cost combine --hw h200-sxm --ep 8 --tokens 64 --model deepseek-v3 --json",
        "cost allreduce --hw h200-sxm --bytes 1e8 --ranks 8 --json",
        "cost allgather --hw gb200-nvl72 --bytes 1e8 --ranks 72 --json",
        "cost reduce-scatter --hw b200-hgx --bytes 1e6 --ranks 16 --json",
        "cost grouped-gemm --hw gb200-nvl72 --model deepseek-v3 --tokens 1024 --ep 8 --dtype fp4 --json",
        "cost attention --hw h200-sxm --model gpt-oss-120b --phase decode --batch 64 --context 4096 --layer 0 --json",
        "cost attention --hw h200-sxm --model deepseek-v3 --phase prefill --new-tokens 2048 --json",
    ],
)
def test_every_op_prints_time_and_bound(args: str) -> None:
    got = _run(args.split())
    assert got["time_s"] > 0 and got["bound"] in ("compute", "memory", "network", "latency")


def test_alltoall_and_gemm_equal_library() -> None:
    got = _run(["cost", "alltoall", "--hw", "h200-sxm", "--bytes", "1e8", "--ranks", "16", "--json"])
    assert got["time_s"] == pytest.approx(
        float(alltoall(get_hardware("h200-sxm"), nbytes=1e8, ranks=16).time_s.max())
    )
    got = _run(
        [
            "cost",
            "gemm",
            "--hw",
            "h100-sxm",
            "--m",
            "4096",
            "--n",
            "7168",
            "--k",
            "2048",
            "--dtype",
            "fp8",
            "--json",
        ]
    )
    want = gemm(get_hardware("h100-sxm"), m=4096, n=7168, k=2048, precision="fp8")
    assert got["time_s"] == pytest.approx(float(want.time_s)) and got["bound"] == "compute"


def test_set_override_changes_the_time() -> None:
    base = _run(["cost", "alltoall", "--hw", "h200-sxm", "--bytes", "1e9", "--ranks", "16", "--json"])
    fast = _run(
        [
            "cost",
            "alltoall",
            "--hw",
            "h200-sxm",
            "--bytes",
            "1e9",
            "--ranks",
            "16",
            "--set",
            "scaleout_bw=1e11",
            "--json",
        ]
    )
    assert fast["time_s"] < base["time_s"]


def test_routing_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(64)]).reshape(1, 1, 64, 2)
    write_routing_trace(tmp_path / "t", ids)
    got = _run(
        f"cost dispatch --hw h200-sxm --ep 4 --tokens 16 --hidden 64 --topk 2 --experts 8 --routing {tmp_path / 't'} --json".split()
    )
    assert got["routing"].startswith("file") and got["time_s"] > 0


def test_user_errors_are_one_line() -> None:
    out = CliRunner().invoke(
        cli, ["cost", "dispatch", "--hw", "h200-sxm", "--ep", "16", "--tokens", "8", "--json"]
    )
    assert out.exit_code == 2 and "--model" in out.output
    out = CliRunner().invoke(
        cli, ["cost", "dispatch", "--hw", "h200-sxm", "--ep", "7", "--tokens", "8", "--model", "deepseek-v3"]
    )
    assert out.exit_code == 2 and "split evenly" in out.output
