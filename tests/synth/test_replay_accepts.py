"""The replay engine re-times synthetic traces (decode and prefill, DeepSeek-R1 group-limited routing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.models import get_model
from tracekit.replay import Deployment, replay
from tracekit.synth import SynthConfig, parse_spec, synthesize


def synth_r1(tmp_path: Path, phase: str, spec: str = "zipf:0.6") -> Path:
    cfg = SynthConfig(
        arch=get_model("deepseek-r1"),
        spec=parse_spec(spec),
        phase=phase,
        tokens_per_step=64,
        steps=2,
        seed=0,
        prompt_len=256,
    )
    return synthesize(cfg, tmp_path / phase).path


def test_replay_of_synthetic_decode(tmp_path: Path) -> None:
    path = synth_r1(tmp_path, "decode")
    out = replay(path, Deployment(hw="gb200-nvl72", ep=8, batch_per_gpu=8))
    steps = out.steps.filter(out.steps["pool"] == "all").sort("step")
    assert steps["phase"].to_list() == ["decode", "decode"]
    assert steps["num_tokens"].to_list() == [64, 64]
    # KV length of a decode token at step s: prompt_len + s + 1 (position + 1)
    assert steps["kv_len_mean"].to_list() == pytest.approx([257.0, 258.0])
    assert (steps["straggler_s"] > 0).all()  # zipf routing leaves ranks unevenly loaded


def test_replay_of_synthetic_prefill_and_balanced(tmp_path: Path) -> None:
    path = synth_r1(tmp_path, "prefill", spec="balanced")
    out = replay(path, Deployment(hw="h200-sxm", ep=8, prefill_tokens_per_gpu=16))
    steps = out.steps.filter(out.steps["pool"] == "all")
    assert set(steps["phase"].to_list()) == {"prefill"}
    assert int(steps["num_tokens"].sum()) == 128
