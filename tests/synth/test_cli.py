"""``tracekit synth`` through click: a catalog model, JSON output, errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from tracekit.cli.main import cli
from tracekit.trace import open_trace, validate


def test_synth_catalog_model(tmp_path: Path) -> None:
    out = tmp_path / "mx"
    res = CliRunner().invoke(
        cli,
        [
            "synth",
            "--model",
            "mixtral-8x7b",
            "--phase",
            "decode",
            "--tokens-per-step",
            "32",
            "--steps",
            "3",
            "--routing",
            "zipf:0.5",
            "--seed",
            "9",
            "--out",
            str(out),
            "--ep",
            "4",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    tr = open_trace(out)
    assert validate(out).ok
    assert tr.manifest.model.name == "mixtral-8x7b" and len(tr.manifest.model.moe_layers) == 32
    assert summary["rows"]["routing"] == 32 * 3 * 32
    # the recorded per-rank imbalance is the mean over steps and layers of the written loads
    load = tr.scan("expert_load").sort("step", "layer", "expert").collect()["num_tokens"].to_numpy()
    ranks = load.reshape(3, 32, 4, 2).sum(axis=3)
    want = ((ranks.max(axis=2) - ranks.mean(axis=2)) / ranks.mean(axis=2)).mean()
    assert np.isclose(summary["rank_imbalance"], want)
    assert tr.manifest.source_detail["spec"] == "zipf:0.5"


def test_synth_text_output_and_target(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        cli,
        [
            "synth",
            "--model",
            "olmoe-1b-7b",
            "--phase",
            "prefill",
            "--tokens-per-step",
            "256",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "o"),
            "--ep",
            "8",
            "--target-imbalance",
            "0.6",
            "--prompt-len",
            "128",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "solved zipf alpha" in res.stdout
    assert "per-rank (max-mean)/mean at EP 8" in res.stdout


def test_synth_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["synth", "--model", "mixtral-8x7b", "--phase", "decode", "--tokens-per-step", "4", "--steps", "1"]
    res = runner.invoke(cli, [*base, "--routing", "pareto", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "unknown routing spec 'pareto'" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(cli, [*base, "--model", "no-such-model", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "no-such-model" in res.output
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("x")
    res = runner.invoke(cli, [*base, "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "--force" in res.output
