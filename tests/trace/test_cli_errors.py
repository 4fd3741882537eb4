"""A damaged Parquet part reaches the user as one line naming the file, through every reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.factories import write_routing_trace
from tracekit.cli.main import cli


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(3 * 2 * 4)]).reshape(3, 2, 4, 2)
    write_routing_trace(tmp_path / "t", ids, phases=["prefill", "decode", "decode"])
    return tmp_path / "t"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize(
    "args",
    [("info",), ("stats",), ("sql", "SELECT count(*) FROM routing"), ("replay", "--hw", "h200-sxm")],
)
def test_damaged_part_is_one_line_naming_the_file(trace: Path, damage: str, args: tuple[str, ...]) -> None:
    part = sorted((trace / "routing").glob("*.parquet"))[0]
    data = part.read_bytes()
    part.write_bytes(b"not parquet at all" if damage == "garbage" else data[: len(data) // 2])
    argv = [args[0], *args[1:], str(trace)] if args[0] != "sql" else ["sql", args[1], str(trace)]
    if args[0] == "replay":
        argv = ["replay", str(trace), *args[1:]]
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 2, r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(part) in lines[0] and "tracekit validate" in lines[0]


def test_validate_still_lists_the_damaged_part(trace: Path) -> None:
    part = sorted((trace / "routing").glob("*.parquet"))[0]
    part.write_bytes(b"x" * 40)
    r = CliRunner().invoke(cli, ["validate", str(trace)])
    assert r.exit_code == 2
    assert str(part) in r.output and "not a readable Parquet file" in r.output


@pytest.mark.parametrize(
    "args",
    [
        ("stats", "{trace}", "--out", "{out}"),
        ("replay", "{trace}", "--hw", "h200-sxm", "--out", "{out}"),
        ("place", "{trace}", "--ep", "2", "--out", "{out}/p.parquet"),
        (
            "synth",
            "--model",
            "mixtral-8x7b",
            "--phase",
            "decode",
            "--steps",
            "2",
            "--tokens-per-step",
            "4",
            "--out",
            "{out}",
        ),
    ],
)
def test_output_that_cannot_be_created_is_one_line(
    trace: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me\n")
    out = blocker / "sub"
    argv = [a.format(trace=trace, out=out) for a in args]
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and "writable" in lines[0], lines
    assert blocker.read_text() == "keep me\n"


@pytest.mark.parametrize("manifest", ['{"a": 1}', '{"schema_version": "x.y"}', '{"schema_version": "0.9"}'])
def test_manifest_without_a_usable_version_says_what_to_do(trace: Path, manifest: str) -> None:
    (trace / "manifest.json").write_text(manifest)
    r = CliRunner().invoke(cli, ["info", str(trace)])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(trace / "manifest.json") in lines[0] and "re-record the trace" in lines[0]
