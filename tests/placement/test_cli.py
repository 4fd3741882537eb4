"""``tracekit place`` through click's CliRunner, on traces built in code and loads files."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from tests.factories import write_routing_trace
from tests.placement.test_policies import EPLB_LOGCNT, EPLB_PHY2LOG, EPLB_WEIGHT
from tracekit.cli.main import cli
from tracekit.placement import Placement, PlacementProblem, compute_placement, read_placement, read_placements

E, K, STEPS, LAYERS, TOKENS = 16, 2, 6, 2, 64


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A trace whose routing favours a few experts per layer; returns (path, expert_ids)."""
    rng = np.random.default_rng(11)
    prob = 1.0 / np.arange(1, E + 1) ** 1.2
    prob /= prob.sum()
    ids = np.zeros((STEPS, LAYERS, TOKENS, K), dtype=np.int64)
    for layer in range(LAYERS):
        perm = np.random.default_rng(layer).permutation(E)
        for s in range(STEPS):
            g = rng.gumbel(size=(TOKENS, E)) + np.log(prob[perm])
            ids[s, layer] = np.argsort(-g, axis=1)[:, :K]
    path = tmp_path_factory.mktemp("place") / "trace"
    write_routing_trace(path, ids)
    return path, ids


def _loads(ids: np.ndarray, steps: slice) -> np.ndarray:
    """Independent count: [layers, experts] tokens from the routing array."""
    sel = ids[steps]
    return np.stack([np.bincount(sel[:, li].reshape(-1), minlength=E) for li in range(LAYERS)]).astype(float)


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    # stdout alone on success: a toy-sized model replayed as itself adds a warning line on stderr
    return res.exit_code, res.stdout if res.exit_code == 0 else res.output


def test_loads_file_reproduces_eplb_example(tmp_path: Path) -> None:
    csv = tmp_path / "w.csv"
    pl.DataFrame({f"e{i}": EPLB_WEIGHT[:, i] for i in range(12)}).write_csv(csv)
    code, out = _run(
        "place",
        "--loads",
        str(csv),
        "--groups",
        "4",
        "--nodes",
        "2",
        "--gpus",
        "8",
        "--slots",
        "16",
        "--json",
    )
    assert code == 0, out
    plan = json.loads(out)
    assert plan["phy2log"] == EPLB_PHY2LOG.tolist()
    assert plan["logcnt"] == EPLB_LOGCNT.tolist()
    # Parquet with a layer column works the same, and the layer ids are kept.
    pq_path = tmp_path / "w.parquet"
    pl.DataFrame({"layer": [3, 5], **{f"e{i}": EPLB_WEIGHT[:, i] for i in range(12)}}).write_parquet(pq_path)
    code, out = _run(
        "place",
        "--loads",
        str(pq_path),
        "--groups",
        "4",
        "--nodes",
        "2",
        "--gpus",
        "8",
        "--redundant",
        "4",
        "--policy",
        "eplb-hierarchical",
        "--json",
    )
    assert code == 0, out
    plan = json.loads(out)
    assert plan["layers"] == [3, 5] and plan["phy2log"] == EPLB_PHY2LOG.tolist()


def test_trace_placement_written_and_matches_library(skewed, tmp_path: Path) -> None:
    path, ids = skewed
    out = tmp_path / "p.parquet"
    code, text = _run(
        "place", str(path), "--ep", "4", "--redundant", "4", "--policy", "greedy", "--out", str(out)
    )
    assert code == 0, text
    assert "greedy" in text and "contiguous" in text
    got = read_placement(out)
    want = compute_placement(
        "greedy",
        PlacementProblem(layers=(1, 2), loads=_loads(ids, slice(None)), num_ranks=4, num_redundant=4),
    )
    assert got == want and got.policy == "greedy"


def test_window_sets_from_step(skewed, tmp_path: Path) -> None:
    path, ids = skewed
    out = tmp_path / "w.parquet"
    code, text = _run(
        "place",
        str(path),
        "--ep",
        "4",
        "--redundant",
        "4",
        "--policy",
        "eplb-global",
        "--window",
        "2",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0, text
    plan = json.loads(text)
    assert plan["from_step"] == 2
    assert plan["score"]["train_steps"] == 2 and plan["score"]["eval_steps"] == STEPS - 2
    got = read_placement(out)
    want = compute_placement(
        "eplb-global",
        PlacementProblem(layers=(1, 2), loads=_loads(ids, slice(0, 2)), num_ranks=4, num_redundant=4),
    )
    assert got.from_step == 2 and np.array_equal(got.phy2log, want.phy2log)
    # Score on the held-out steps, recomputed by hand from the slots.
    test = _loads(ids, slice(2, None))
    per_rank = np.zeros((LAYERS, 4))
    for li in range(LAYERS):
        cnt = Counter(want.phy2log[li].tolist())
        for s, e in enumerate(want.phy2log[li]):
            per_rank[li, s // 5] += test[li, e] / cnt[e]
    # imbalance_total is the imbalance of the summed held-out loads, mean over layers.
    expected = np.mean((per_rank.max(1) - per_rank.mean(1)) / per_rank.mean(1))
    assert plan["score"]["imbalance_total"] == pytest.approx(expected)


def test_recompute_every_counts_migration(skewed, tmp_path: Path) -> None:
    path, ids = skewed
    out = tmp_path / "r.parquet"
    code, text = _run(
        "place",
        str(path),
        "--ep",
        "4",
        "--redundant",
        "4",
        "--policy",
        "greedy",
        "--recompute-every",
        "2",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0, text
    plan = json.loads(text)
    epochs = read_placements(out)
    assert [e.from_step for e in epochs] == [0, 2, 4]
    assert epochs[0] == Placement.contiguous((1, 2), E, 4, num_redundant=4)
    for i, start in ((1, 0), (2, 2)):
        want = compute_placement(
            "greedy",
            PlacementProblem(
                layers=(1, 2), loads=_loads(ids, slice(start, start + 2)), num_ranks=4, num_redundant=4
            ),
        )
        assert np.array_equal(epochs[i].phy2log, want.phy2log)
    # Moves by hand: for each layer and rank, copies of experts the rank did not hold as often before.
    moved = 0
    for a, b in itertools.pairwise(epochs):
        for li in range(LAYERS):
            for r in range(4):
                old = Counter(a.phy2log[li, r * 5 : (r + 1) * 5].tolist())
                new = Counter(b.phy2log[li, r * 5 : (r + 1) * 5].tolist())
                moved += sum((new - old).values())
    assert plan["score"]["moved_experts"] == moved > 0
    # Tiny arch: hidden 64, expert FFN 32; experts priced at the deployment's precision (fp8 by default).
    assert plan["score"]["migration_bytes"] == moved * 3 * 64 * 32 * 1
    code, text = _run("place", str(path), "--ep", "4", "--redundant", "4", "--policy", "greedy",
                      "--recompute-every", "2", "--precision", "experts=bf16", "--json")  # fmt: skip
    assert code == 0, text
    assert json.loads(text)["score"]["migration_bytes"] == moved * 3 * 64 * 32 * 2


def test_evaluate_compares_policies(skewed) -> None:
    path, _ = skewed
    code, text = _run(
        "place", str(path), "--ep", "4", "--redundant", "4", "--window", "3", "--evaluate", "--json"
    )
    assert code == 0, text
    rows = {r["policy"]: r for r in json.loads(text)["policies"]}
    assert {"contiguous", "round-robin", "greedy", "eplb-global"} <= set(rows)
    assert rows["greedy"]["imbalance"] < rows["contiguous"]["imbalance"]
    code, table = _run("place", str(path), "--ep", "4", "--redundant", "4", "--window", "3", "--evaluate")
    flat = " ".join(table.split())
    assert code == 0 and "out-of-sample after 3 steps" in flat and "eplb-global" in flat


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ep", "4"], "give a TRACE directory or --loads FILE"),
        (["TRACE", "--policy", "lpt", "--ep", "4"], "unknown placement policy 'lpt'; valid names:"),
        (["TRACE", "--ep", "4", "--redundant", "3"], "multiple of the EP size"),
        (["TRACE", "--ep", "4", "--policy", "greedy", "--policy", "contiguous"], "need --evaluate"),
        (["TRACE", "--ep", "4", "--window", "6"], "--window 6"),
        (["TRACE", "--ep", "4", "--window", "2", "--recompute-every", "2"], "not both"),
        (["TRACE", "--ep", "3"], "multiple of the EP size"),
    ],
)
def test_user_errors_are_one_line(skewed, args: list[str], message: str) -> None:
    path, _ = skewed
    args = [str(path) if a == "TRACE" else a for a in args]
    res = CliRunner().invoke(cli, ["place", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def four_rank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-rank trace (so a replay at EP 4 keeps each trace step as one replayed step)."""
    from tests.factories import tiny_arch, tiny_manifest

    rng = np.random.default_rng(5)
    prob = 1.0 / np.arange(1, E + 1) ** 1.2
    prob /= prob.sum()
    manifest = tiny_manifest(tiny_arch(num_experts=E, top_k=K, num_layers=LAYERS + 1), world_size=4)
    path = tmp_path_factory.mktemp("place4") / "trace"
    for rank in range(4):
        ids = np.zeros((STEPS, LAYERS, 16, K), dtype=np.int64)
        for layer in range(LAYERS):
            perm = np.random.default_rng(layer).permutation(E)
            for s in range(STEPS):
                g = rng.gumbel(size=(16, E)) + np.log(prob[perm])
                ids[s, layer] = np.argsort(-g, axis=1)[:, :K]
        write_routing_trace(path, ids, manifest=manifest, rank=rank)
    return path


def test_evaluate_with_replay(four_rank: Path, tmp_path: Path) -> None:
    import polars as pl

    from tracekit.replay import Deployment, replay

    code, text = _run(
        "place",
        str(four_rank),
        "--ep",
        "4",
        "--redundant",
        "4",
        "--window",
        "2",
        "--evaluate",
        "--policy",
        "contiguous",
        "--policy",
        "greedy",
        "--hw",
        "h200-sxm",
        "--json",
    )
    assert code == 0, text
    rows = {r["policy"]: r for r in json.loads(text)["policies"]}
    assert set(rows) == {"contiguous, 0 redundant", "contiguous", "greedy"}
    # The same numbers straight from the replay of the written placement, on steps after the window.
    out = tmp_path / "g.parquet"
    assert (
        _run(
            "place",
            str(four_rank),
            "--ep",
            "4",
            "--redundant",
            "4",
            "--window",
            "2",
            "--policy",
            "greedy",
            "--out",
            str(out),
        )[0]
        == 0
    )
    single = tmp_path / "g0.parquet"
    read_placement(out).with_(from_step=0).write(single)
    res = replay(four_rank, Deployment(hw="h200-sxm", ep=4, placement=str(single)))
    steps = res.steps.filter(
        (pl.col("pool") == "all") & (pl.col("phase") == "decode") & (pl.col("trace_step_first") >= 2)
    )
    assert steps.height == STEPS - 2
    g = rows["greedy"]
    assert g["replayed_steps"] == STEPS - 2
    assert g["straggler_s"] == pytest.approx(steps.get_column("straggler_s").mean())
    assert g["step_time_s"] == pytest.approx(steps.get_column("step_time_s").mean())
    layers = res.layers.filter((pl.col("pool") == "all") & (pl.col("kind") == "moe") & (pl.col("step") >= 2))
    assert g["replay_imbalance"] == pytest.approx(layers.get_column("imbalance").mean())
    # Redundant slots cost HBM: one more expert per rank and MoE layer (fp8 experts: 1 byte/param).
    extra = g["weight_bytes_per_gpu"] - rows["contiguous, 0 redundant"]["weight_bytes_per_gpu"]
    assert extra == pytest.approx(LAYERS * 1 * 3 * 64 * 32 * 1, rel=1e-6)
    assert g["max_batch_per_gpu"] <= rows["contiguous, 0 redundant"]["max_batch_per_gpu"]


def test_migration_bytes_for_a_target_model(tmp_path: Path) -> None:
    # An 8-expert top-2 trace with 2 MoE layers, re-targeted to Mixtral 8x7B (32 MoE layers, each
    # reusing a trace layer's placement: 16 copies of each).
    rng = np.random.default_rng(3)
    ids = np.stack(
        [
            [
                [rng.choice(8, 2, replace=False, p=np.r_[0.5, np.full(7, 0.5 / 7)]) for _ in range(32)]
                for _ in range(2)
            ]
            for _ in range(8)
        ]
    )
    write_routing_trace(tmp_path / "t", ids)
    args = [
        "place",
        str(tmp_path / "t"),
        "--ep",
        "4",
        "--redundant",
        "4",
        "--policy",
        "greedy",
        "--recompute-every",
        "2",
        "--json",
    ]
    code, own = _run(*args)
    assert code == 0, own
    code, target = _run(*args, "--model", "mixtral-8x7b")
    assert code == 0, target
    moved = json.loads(own)["score"]["moved_experts"]
    assert moved > 0
    score = json.loads(target)["score"]
    assert score["moved_experts"] == 16 * moved
    assert score["migration_bytes"] == 16 * moved * 3 * 4096 * 14336 * 1  # fp8 experts
    code, text = _run(*args, "--model", "olmoe-1b-7b")
    assert code == 2 and "64 routed experts" in text
