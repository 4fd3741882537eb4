"""Bad numbers to tracekit stats: one line naming the option, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.factories import write_routing_trace
from tracekit.cli.main import cli
from tracekit.stats.compute import DEFAULT_MAX_ROUTING_TOKENS


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_routing_tokens_below_one(tmp_path: Path, value: str) -> None:
    rng = np.random.default_rng(2)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(2 * 2 * 4)]).reshape(2, 2, 4, 2)
    write_routing_trace(tmp_path / "t", ids, phases=["prefill", "decode"])
    r = CliRunner().invoke(cli, ["stats", str(tmp_path / "t"), "--max-routing-tokens", value])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"tracekit: error: --max-routing-tokens must be at least 1, got {value}; "
        f"leave it out for the default ({DEFAULT_MAX_ROUTING_TOKENS})"
    ]


@pytest.mark.parametrize("value", ["0", "-2"])
def test_synth_ep_below_one_names_the_option(tmp_path: Path, value: str) -> None:
    argv = ["synth", "--model", "mixtral-8x7b", "--phase", "decode", "--steps", "2", "--tokens-per-step", "4"]
    r = CliRunner().invoke(cli, [*argv, "--ep", value, "--out", str(tmp_path / "s")])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [f"tracekit: error: --ep must be at least 1, got {value}"]
    assert not (tmp_path / "s").exists()
