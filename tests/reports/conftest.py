"""Inputs shared by the report tests (built once per session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.reports.builders import (
    EpTrace,
    write_ep_trace,
    write_replay_result,
    write_skewed_trace,
    write_sweep_result,
)


@dataclass(frozen=True)
class Inputs:
    trace: Path
    expert_ids: np.ndarray
    gate_weights: np.ndarray
    trace_b: Path
    ep: EpTrace
    replay_h200: Path
    replay_nvl72: Path
    sweep: Path


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("report-inputs")
    ids, weights = write_skewed_trace(root / "trace-a", seed=0)
    write_skewed_trace(root / "trace-b", seed=3, experts=16, top_k=4, steps=4, layers=2)
    ep = write_ep_trace(root / "ep4")
    write_replay_result(root / "replay-h200", seed=10, hw="h200-sxm", ep=8, profile=True)
    write_replay_result(root / "replay-nvl72", seed=11, hw="gb200-nvl72", ep=8)
    write_sweep_result(root / "sweep")
    return Inputs(
        trace=root / "trace-a",
        expert_ids=ids,
        gate_weights=weights,
        trace_b=root / "trace-b",
        ep=ep,
        replay_h200=root / "replay-h200",
        replay_nvl72=root / "replay-nvl72",
        sweep=root / "sweep",
    )
