"""Replaying a tiny preset's trace as itself warns and names the --model that stands for it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.factories import tiny_arch
from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cli.main import cli
from tracekit.replay.setup import stand_in_note
from tracekit.trace import open_trace

SAMPLES = Path(__file__).resolve().parents[2] / "sample_traces"


def _replay(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["replay", *args, "--hw", "h200-sxm", "--steps", "2"])
    return res.exit_code, res.stdout, res.stderr


def test_tiny_preset_replayed_as_itself_warns_with_the_full_model() -> None:
    code, out, err = _replay(str(SAMPLES / "tiny-deepseek-v3"))
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("tracekit: warning:")]
    assert len(lines) == 1, err
    assert "tiny stand-in for deepseek-v3 (hidden size 64)" in lines[0]
    assert "pass --model deepseek-v3" in lines[0]
    assert "tiny-deepseek-v3 on h200-sxm" in out  # the replay still runs


def test_no_warning_with_the_model_given() -> None:
    code, out, err = _replay(str(SAMPLES / "tiny-deepseek-v3"), "--model", "deepseek-v3", "--ep", "8")
    assert code == 0, err
    assert "warning" not in err
    assert "deepseek-v3 on h200-sxm" in out


def test_full_model_outside_the_catalog_is_described_by_its_routing_shape() -> None:
    note = stand_in_note(open_trace(SAMPLES / "tiny-qwen2-moe"))
    assert note is not None
    assert "tiny stand-in for qwen1.5-moe-a2.7b" in note
    assert "a catalog model of 60 experts top-4" in note and "config.json of qwen1.5-moe-a2.7b" in note


@pytest.mark.parametrize(("hidden", "warns"), [(64, True), (4096, False)])
def test_model_size_decides_without_a_preset(tmp_path: Path, hidden: int, warns: bool) -> None:
    arch = dataclasses.replace(tiny_arch(num_experts=8, top_k=2), hidden_size=hidden)
    ids = random_ids(np.random.default_rng(0), (1, 2, 2, 4), 8, 2)
    write_ranked_trace(tmp_path / "t", ids, num_experts=8, arch=arch)
    note = stand_in_note(open_trace(tmp_path / "t"))
    assert (note is not None) == warns
    if note:
        assert "a toy model (hidden size 64)" in note
