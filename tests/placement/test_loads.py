"""Expert loads for placement: from a trace (expert_load, or routing when absent) and from files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.factories import tiny_arch, tiny_manifest, write_routing_trace
from tracekit.errors import InputFormatError, TraceError, UsageError
from tracekit.placement import read_loads_file, trace_loads
from tracekit.trace import TraceWriter


def _ids(
    seed: int, steps: int = 3, layers: int = 2, tokens: int = 20, k: int = 2, experts: int = 8
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [[[rng.permutation(experts)[:k] for _ in range(tokens)] for _ in range(layers)] for _ in range(steps)]
    )


def test_two_rank_trace_loads_sum_over_ranks(tmp_path: Path) -> None:
    ids0, ids1 = _ids(1), _ids(2)
    manifest = tiny_manifest(tiny_arch(num_experts=8, top_k=2, num_layers=3), world_size=2)
    write_routing_trace(tmp_path / "t", ids0, manifest=manifest, rank=0)
    write_routing_trace(tmp_path / "t", ids1, manifest=manifest, rank=1)
    got = trace_loads(tmp_path / "t")
    assert got.layers == (1, 2) and got.steps.tolist() == [0, 1, 2]
    for s in range(3):
        for li in range(2):
            want = np.bincount(ids0[s, li].ravel(), minlength=8) + np.bincount(
                ids1[s, li].ravel(), minlength=8
            )
            assert got.loads[s, li].tolist() == want.tolist()
    assert got.window(1).steps.tolist() == [1, 2]
    assert got.window(0, 2).total().tolist() == got.loads[:2].sum(0).tolist()


def test_loads_counted_from_routing_when_no_expert_load(tmp_path: Path) -> None:
    ids = _ids(3)
    manifest = tiny_manifest(tiny_arch(num_experts=8, top_k=2, num_layers=3))
    with TraceWriter(tmp_path / "r", manifest) as w:
        for s in range(3):
            for li, layer in enumerate((1, 2)):
                w.append(
                    "routing",
                    {
                        "step": np.full(20, s, np.int32),
                        "layer": np.full(20, layer, np.int16),
                        "token_index": np.arange(20, dtype=np.int32),
                        "expert_ids": ids[s, li].astype(np.int16),
                        "gate_weights": np.full((20, 2), 0.5, np.float32),
                    },
                )
    got = trace_loads(tmp_path / "r")
    want = np.stack([[np.bincount(ids[s, li].ravel(), minlength=8) for li in range(2)] for s in range(3)])
    assert got.loads.tolist() == want.tolist()


def test_trace_without_loads_is_refused(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "e", tiny_manifest()) as w:
        w.append("steps", {"step": [0], "phase": ["decode"], "num_tokens": [1], "num_requests": [1]})
    with pytest.raises(TraceError, match="neither expert_load nor routing"):
        trace_loads(tmp_path / "e")


def test_loads_file_csv_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "l.csv"
    good.write_text("layer,a,b,c\n3,1,2,3\n7,4,5,6\n")
    layers, arr = read_loads_file(good)
    assert layers == (3, 7) and arr.tolist() == [[1, 2, 3], [4, 5, 6]]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,x\n")
    with pytest.raises(InputFormatError, match=r"bad\.csv.*not numeric"):
        read_loads_file(bad)
    neg = tmp_path / "neg.parquet"
    pl.DataFrame({"a": [1.0], "b": [-2.0]}).write_parquet(neg)
    with pytest.raises(InputFormatError, match=r"neg\.parquet.*non-negative"):
        read_loads_file(neg)
    with pytest.raises(UsageError, match="no such loads file"):
        read_loads_file(tmp_path / "absent.csv")
