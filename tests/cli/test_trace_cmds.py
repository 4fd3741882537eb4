"""`tracekit validate`, `info` and `schema` through the real click entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.factories import write_routing_trace
from tracekit.cli.main import cli


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(4 * 2 * 5)]).reshape(4, 2, 5, 2)
    write_routing_trace(tmp_path / "t", ids, phases=["prefill", "decode", "decode", "decode"])
    return tmp_path / "t"


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_help_lists_the_commands() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for name in ("info", "validate", "schema"):
        assert f"  {name} " in out


def test_validate_ok(trace: Path) -> None:
    code, out, _ = run("validate", str(trace))
    assert code == 0 and out.strip() == f"{trace}: valid (schema 1.0)"


def test_validate_reports_each_problem_on_one_line_and_exits_2(trace: Path) -> None:
    for table in ("routing", "steps"):
        sorted((trace / table).glob("*.parquet"))[0].write_bytes(b"garbage")
    code, _, err = run("validate", str(trace))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2
    assert all("not a readable Parquet file" in line for line in lines)


def test_not_a_trace_is_one_line_exit_2(tmp_path: Path) -> None:
    code, _, err = run("info", str(tmp_path))
    assert code == 2
    assert (
        err
        == f"tracekit: error: {tmp_path}: not a tracekit trace (no manifest.json); give a directory written by tracekit record, import or synth\n"
    )
    code, _, err = run("validate", str(tmp_path / "nope"))
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1


def test_info_json(trace: Path) -> None:
    code, out, _ = run("info", "--json", str(trace))
    assert code == 0
    s = json.loads(out)
    assert s["model"]["experts"] == 8 and s["model"]["top_k"] == 2 and s["model"]["moe_layers"] == 2
    assert s["steps"] == {"count": 4, "prefill": 1, "decode": 3, "mixed": 0}
    assert s["tokens"] == 20
    assert s["tables"]["routing"]["rows"] == 4 * 2 * 5
    assert s["ranks"] == [0] and s["complete"] is True
    assert s["size_bytes"] == sum(p.stat().st_size for p in trace.rglob("*") if p.is_file())


def test_info_text(trace: Path) -> None:
    code, out, _ = run("info", str(trace))
    assert code == 0
    assert "4 (1 prefill, 3 decode, 0 mixed), 20 tokens" in out
    assert "8 experts (+0 shared), top-2" in out


def test_schema_lists_tables_and_columns() -> None:
    code, out, _ = run("schema")
    assert code == 0 and "routing" in out and "expert_load" in out
    code, out, _ = run("schema", "comm")
    assert code == 0 and "send_bytes_per_peer" in out and "list<int64>" in out
    code, _, err = run("schema", "nope")
    assert code == 2 and "unknown trace table 'nope'; valid names:" in err


def test_info_shows_the_placement(tmp_path: Path) -> None:
    from tests.factories import tiny_manifest
    from tracekit.trace import TraceWriter

    with TraceWriter(tmp_path / "p", tiny_manifest(world_size=1)) as w:
        # 8 experts on 2 ranks, contiguous, for MoE layers 1 and 2
        for layer in (1, 2):
            w.append(
                "placement",
                {
                    "from_step": np.zeros(8, np.int32),
                    "layer": np.full(8, layer),
                    "slot": np.arange(8),
                    "rank": np.arange(8) // 4,
                    "expert": np.array([0, 1, 2, 3, 4, 5, 6, 7]),
                },
            )
    code, out, _ = run("info", "--json", str(tmp_path / "p"))
    assert code == 0
    pt = json.loads(out)["placement_table"]
    assert pt == {
        "epochs": 1,
        "layers": 2,
        "slots_per_rank": 4,
        "experts_by_rank": {"0": [0, 1, 2, 3], "1": [4, 5, 6, 7]},
    }
    code, out, _ = run("info", str(tmp_path / "p"))
    assert "rank 0: 0-3; rank 1: 4-7" in out
