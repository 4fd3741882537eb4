"""Placement files over time: the steps before a placement's ``from_step`` are not replayed, every
trace step uses the epoch in force at it, and moving experts between epochs is counted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from tests.factories import tiny_arch
from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cli.main import cli
from tracekit.errors import UsageError
from tracekit.importers import unknown_arch
from tracekit.models import expert_weight_bytes, get_model
from tracekit.placement import Placement, placement_at, route_to_slots, write_placements
from tracekit.replay import Deployment, replay
from tracekit.schema import ModelArch

R, E, K, N = 4, 8, 2, 8
LAYERS = (1, 2)


def _trace(tmp_path: Path, steps: int, *, seed: int = 3, prefill_tokens: int = 0) -> tuple[Path, np.ndarray]:
    ids = random_ids(np.random.default_rng(seed), (R, steps, len(LAYERS), N), E, K)
    write_ranked_trace(tmp_path / "t", ids, num_experts=E, prefill_tokens=prefill_tokens)
    return tmp_path / "t", ids


def _reversed(from_step: int) -> Placement:
    return Placement(
        layers=LAYERS,
        phy2log=np.tile(np.arange(E)[::-1], (len(LAYERS), 1)),
        num_ranks=R,
        slots_per_rank=E // R,
        from_step=from_step,
        policy="file",
    )


def _expected_recv(
    ids: np.ndarray, epochs: list[Placement], trace_step: int, s: int, layer: int
) -> np.ndarray:
    """Tokens each rank receives at trace step ``trace_step`` (index ``s`` into ``ids``) under the
    epoch ``placement_at`` picks: one route_to_slots call over the step's tokens, rank by rank."""
    p = placement_at(epochs, trace_step)
    li = LAYERS.index(layer)
    slots = route_to_slots(p, layer, ids[:, s, li].reshape(-1, K), np.repeat(np.arange(R), N), 8)
    return np.bincount((slots // p.slots_per_rank).reshape(-1), minlength=R)


def _moved_by_hand(a: Placement, b: Placement) -> int:
    """Replicas each (layer, rank) holds under ``b`` beyond what it held under ``a`` (multisets)."""
    moved = 0
    for li in range(len(a.layers)):
        for r in range(a.num_ranks):
            sl = slice(r * a.slots_per_rank, (r + 1) * a.slots_per_rank)
            gained = Counter(b.phy2log[li, sl].tolist()) - Counter(a.phy2log[li, sl].tolist())
            moved += sum(gained.values())
    return moved


def test_steps_before_the_placements_from_step_are_not_replayed(tmp_path: Path) -> None:
    path, ids = _trace(tmp_path, steps=4)
    pfile = _reversed(from_step=2).write(tmp_path / "p.parquet")
    res = replay(path, Deployment(hw="h200-sxm", ep=R, placement=str(pfile), impl="nccl"))
    # trace steps 0 and 1 trained the placement: only 2 and 3 are replayed
    assert res.steps["trace_step_first"].to_list() == [2, 3]
    assert res.steps.height == 2
    for key, want in (("trace_step_first", 2), ("trace_step_last", 3), ("trace_steps_replayed", 2)):
        assert res.summary.to_dict()[key] == want
        assert res.run[key][0] == want
    assert res.summary.to_dict()["placement_from_step"] == 2
    for s in range(2):
        got = res.ranks.filter((pl.col("layer") == 1) & (pl.col("step") == s)).sort("rank")["tokens_recv"]
        want_recv = _expected_recv(ids, [_reversed(2)], 2 + s, 2 + s, 1)
        np.testing.assert_array_equal(got.to_numpy(), want_recv)
    # without a placement file every step is replayed
    plain = replay(path, Deployment(hw="h200-sxm", ep=R, impl="nccl"))
    assert (
        plain.summary.to_dict()["trace_steps_replayed"] == 4
        and plain.summary.to_dict()["placement_from_step"] is None
    )


def test_a_placement_from_after_the_trace_or_an_explicit_phase_before_it_is_refused(tmp_path: Path) -> None:
    path, _ = _trace(tmp_path, steps=2, prefill_tokens=4)  # prefill at step 0, decode at 1 and 2
    late = _reversed(from_step=5).write(tmp_path / "late.parquet")
    with pytest.raises(UsageError, match="before step 5"):
        replay(path, Deployment(hw="h200-sxm", ep=R, placement=str(late)))
    at1 = _reversed(from_step=1).write(tmp_path / "at1.parquet")
    with pytest.raises(UsageError, match="no prefill tokens at or after trace step 1"):
        replay(path, Deployment(hw="h200-sxm", ep=R, placement=str(at1)), phases=["prefill"])
    res = replay(path, Deployment(hw="h200-sxm", ep=R, placement=str(at1)))
    assert res.summary_table["phase"].to_list() == ["decode"]
    assert (res.summary.to_dict()["trace_step_first"], res.summary.to_dict()["trace_step_last"]) == (1, 2)


def test_cli_prints_the_replayed_trace_steps(tmp_path: Path) -> None:
    path, _ = _trace(tmp_path, steps=4)
    pfile = _reversed(from_step=2).write(tmp_path / "p.parquet")
    args = ["replay", str(path), "--hw", "h200-sxm", "--ep", str(R), "--placement", str(pfile)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "trace steps replayed" in x)
    assert "2..3 (2 steps)" in line and "from step 2" in line


def _epochs(redundant: int) -> list[Placement]:
    spr = (E + redundant) // R
    base = Placement.contiguous(LAYERS, E, R, num_redundant=redundant)
    second = Placement.round_robin(LAYERS, E, R, num_redundant=redundant).with_(from_step=2)
    row = np.roll(base.phy2log[0], 3)
    third = Placement(
        layers=LAYERS,
        phy2log=np.stack([row, row[::-1]]),
        num_ranks=R,
        slots_per_rank=spr,
        from_step=3,
        policy="file",
    )
    return [base, second, third]


@pytest.mark.parametrize("redundant", [0, 4])
def test_each_step_uses_the_epoch_in_force_and_migration_is_counted(tmp_path: Path, redundant: int) -> None:
    path, ids = _trace(tmp_path, steps=5, seed=7)
    epochs = _epochs(redundant)
    pfile = write_placements(tmp_path / "epochs.parquet", epochs)
    res = replay(path, Deployment(hw="h200-sxm", ep=R, placement=str(pfile), impl="nccl"))
    assert (
        res.summary.to_dict()["trace_steps_replayed"] == 5 and res.summary.to_dict()["placement_epochs"] == 3
    )
    for s in range(5):
        for layer in LAYERS:
            got = res.ranks.filter((pl.col("layer") == layer) & (pl.col("step") == s)).sort("rank")
            np.testing.assert_array_equal(
                got["tokens_recv"].to_numpy(), _expected_recv(ids, epochs, s, s, layer), err_msg=f"step {s}"
            )
    moved = _moved_by_hand(epochs[0], epochs[1]) + _moved_by_hand(epochs[1], epochs[2])
    assert moved > 0
    per_expert = expert_weight_bytes(_arch(), "fp8")
    assert res.summary.to_dict()["moved_experts"] == moved
    assert res.summary.to_dict()["migration_bytes"] == moved * int(per_expert)
    assert res.run["migration_bytes"][0] == res.summary.to_dict()["migration_bytes"]
    if redundant == 0:
        # re-batched, a replayed step mixes trace steps; each token still uses its own step's epoch
        # (without replicas its slot depends only on the expert, so totals per rank must agree)
        mixed = replay(
            path, Deployment(hw="h200-sxm", ep=R, placement=str(pfile), impl="nccl", batch_per_gpu=5)
        )
        assert mixed.steps["trace_step_first"].to_list() != mixed.steps["trace_step_last"].to_list()
        for layer in LAYERS:
            got = (
                mixed.ranks.filter(pl.col("layer") == layer).group_by("rank").agg(pl.col("tokens_recv").sum())
            )
            want = sum(_expected_recv(ids, epochs, s, s, layer) for s in range(5))
            np.testing.assert_array_equal(got.sort("rank")["tokens_recv"].to_numpy(), want)
    # two replayed steps: only the first epoch is in force, nothing moves
    short = replay(path, Deployment(hw="h200-sxm", ep=R, placement=str(pfile), impl="nccl", steps=2))
    assert (short.summary.to_dict()["placement_epochs"], short.summary.to_dict()["migration_bytes"]) == (1, 0)
    assert (short.summary.to_dict()["trace_step_first"], short.summary.to_dict()["trace_step_last"]) == (0, 1)


def _arch() -> ModelArch:
    """The trace's own model (what ``write_ranked_trace`` names)."""
    return tiny_arch(num_experts=E, top_k=K, num_layers=len(LAYERS) + 1)


def test_a_trace_imported_without_a_model_is_refused_until_a_model_is_given(tmp_path: Path) -> None:
    ids = random_ids(np.random.default_rng(5), (R, 2, len(LAYERS), N), E, K)
    placeholder = unknown_arch(num_layers=len(LAYERS) + 1, moe_layers=LAYERS, num_experts=E, top_k=K)
    write_ranked_trace(tmp_path / "t", ids, num_experts=E, arch=placeholder)
    with pytest.raises(UsageError, match="re-import it with --model NAME or pass model NAME"):
        replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=R))
    res = CliRunner().invoke(cli, ["replay", str(tmp_path / "t"), "--hw", "h200-sxm", "--ep", str(R)])
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1 and "--model" in res.output
    # with a model of the same expert count and top-k it is re-timed like a recorded trace
    target = get_model("mixtral-8x7b")
    assert (target.num_experts, target.top_k) == (E, K)
    ok = replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=R, model="mixtral-8x7b", impl="nccl"))
    assert ok.run["model"][0] == target.name
    got = ok.ranks.filter((pl.col("layer") == target.moe_layers[0]) & (pl.col("step") == 0)).sort("rank")
    np.testing.assert_array_equal(
        got["tokens_recv"].to_numpy(), _expected_recv(ids, [Placement.contiguous(LAYERS, E, R)], 0, 0, 1)
    )
    with pytest.raises(UsageError, match="top-8"):
        replay(tmp_path / "t", Deployment(hw="h200-sxm", ep=R, model="qwen3-30b-a3b"))
