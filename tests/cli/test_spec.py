"""--spec FILE.toml on replay, compare and sweep: the file's values as if given as flags, flags given on
the command line win, unknown keys refused in one line naming the key and the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cli.main import cli


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "t"
    write_ranked_trace(path, random_ids(np.random.default_rng(4), (2, 2, 2, 8), 8, 2), num_experts=8)
    return path


def _run(args: list[object]) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path


def test_replay_spec_equals_the_flags(trace: Path, tmp_path: Path) -> None:
    spec = _spec(
        tmp_path, 'hw = "gb200-nvl72"\nep = 2\nbatch-per-gpu = 4\nprecision = ["experts=fp8"]\ntbo = true\n'
    )
    code, from_spec, err = _run(["replay", trace, "--spec", spec, "--format", "json"])
    assert code == 0, err
    flags = ["--hw", "gb200-nvl72", "--ep", 2, "--batch-per-gpu", 4, "--precision", "experts=fp8", "--tbo"]
    code, from_flags, err = _run(["replay", trace, *flags, "--format", "json"])
    assert code == 0, err
    code, plain, err = _run(["replay", trace, "--hw", "gb200-nvl72", "--ep", 2, "--format", "json"])
    assert code == 0, err
    a, b, c = json.loads(from_spec), json.loads(from_flags), json.loads(plain)
    assert a == b and a["batch_per_gpu"] == 4
    assert a["tokens_per_s_per_gpu"] != c["tokens_per_s_per_gpu"]  # the spec's batch and TBO took effect


def test_flags_override_the_spec(trace: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, 'hw = ["h200-sxm", "gb200-nvl72"]\nep = 2\nbatch_per_gpu = 4\n')
    code, out, err = _run(["compare", trace, "--spec", spec, "--batch-per-gpu", 8, "--format", "json"])
    assert code == 0, err
    systems = json.loads(out)["systems"]
    assert [s["hw"] for s in systems] == ["h200-sxm", "gb200-nvl72"]
    assert {s["deployment"]["batch_per_gpu"] for s in systems} == {8}
    assert {s["deployment"]["ep"] for s in systems} == {2}


def test_sweep_grid_from_a_spec(trace: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, 'hw = "h200-sxm"\nep = [2]\nbatch-per-gpu = ["1,4"]\njobs = 1\nno-plot = true\n')
    code, _, err = _run(["sweep", trace, "--spec", spec, "--out", tmp_path / "sw", "--format", "json"])
    assert code == 0, err
    meta = json.loads((tmp_path / "sw" / "result.json").read_text())
    assert meta["kind"] == "sweep"
    import polars as pl

    points = pl.read_parquet(tmp_path / "sw" / "sweep_points.parquet")
    assert sorted(points["batch_per_gpu"].to_list()) == [1, 4] and set(points["ep"].to_list()) == {2}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("epp = 2\n", "unknown key 'epp'"),
        ("ep = [2, 4]\n", "key 'ep' takes one value"),
        ("[ep]\nvalue = 2\n", "key 'ep' is a table"),
        ("ep = \n", "not valid TOML"),
    ],
)
def test_bad_spec_is_one_line_naming_the_file(trace: Path, tmp_path: Path, text: str, needle: str) -> None:
    spec = _spec(tmp_path, text)
    code, out, err = _run(["replay", trace, "--hw", "h200-sxm", "--spec", spec])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and str(spec) in lines[0]


def test_a_bad_value_is_checked_like_the_flag(trace: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, 'hw = "h200-sxm"\nimpl = "smoke-signals"\n')
    code, _, err = _run(["replay", trace, "--spec", spec])
    assert code == 2 and "smoke-signals" in err and len(err.strip().splitlines()) == 1
