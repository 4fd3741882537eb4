"""compare, the interactivity search, sweeps, placement what-ifs and disaggregation as library calls,
each checked against plain replays of the same deployments."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cli.main import cli
from tracekit.errors import DeploymentError
from tracekit.models import get_model, kv_cache_bytes_per_token_all_layers
from tracekit.placement import write_placements
from tracekit.replay import (
    Deployment,
    Precision,
    at_interactivity,
    compare,
    compare_at_interactivity,
    default_deployment,
    grid,
    placement_whatif,
    replay,
    replay_disaggregated,
    run_sweep,
)
from tracekit.trace import open_trace


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 ranks, 4 decode steps, 2 MoE layers, 8 tokens per rank, 8 experts top-2, one prefill step."""
    path = tmp_path_factory.mktemp("lib") / "t"
    ids = random_ids(np.random.default_rng(21), (2, 4, 2, 8), 8, 2)
    ids[:, :, :, :3, 0] = 0  # expert 0 is hot: placement policies have something to balance
    write_ranked_trace(path, ids, num_experts=8, prefill_tokens=6)
    return path


def test_compare_ratio_is_the_ratio_of_plain_replays(trace: Path) -> None:
    systems = [Deployment(hw="h200-sxm"), Deployment(hw="gb200-nvl72", tbo=True)]
    got = compare(trace, systems)
    alone = [replay(trace, default_deployment(trace, d), collect_ranks=False).summary for d in systems]
    assert [s.summary.tokens_per_s_per_gpu for s in got.systems] == [a.tokens_per_s_per_gpu for a in alone]  # type: ignore[union-attr]
    assert got.ratio == alone[1].tokens_per_s_per_gpu / alone[0].tokens_per_s_per_gpu
    table = got.table()
    assert table["hw"].to_list() == ["h200-sxm", "gb200-nvl72"] and table["tbo"].to_list() == [False, True]
    assert got.to_dict()["systems"][1]["ratio"] == got.ratio


def test_interactivity_search_finds_the_best_point_of_a_brute_force_grid(trace: Path) -> None:
    base = Deployment(hw="h200-sxm")
    eps, batches = [1, 2], [1, 2, 4, 8, 16]
    # every grid point replayed directly: the best tokens/s per GPU among those fast enough per user
    points = []
    for ep in eps:
        for b in batches:
            s = replay(
                trace, base.replace(ep=ep, batch_per_gpu=b), phases=["decode"], collect_ranks=False
            ).summary
            points.append((s.tokens_per_s_per_gpu, s.tokens_per_s_per_user, ep, b))
    target = sorted(p[1] for p in points)[len(points) // 2]  # a target half the grid reaches
    reachable = [p for p in points if p[1] >= target]
    best = max(reachable)
    got = at_interactivity(trace, base, tokens_per_s_per_user=target, eps=eps, batches=batches)
    assert got.deployment is not None and got.summary is not None
    assert (got.deployment.ep, got.deployment.batch_per_gpu) == (best[2], best[3])
    assert got.summary.tokens_per_s_per_gpu == best[0]
    both = compare_at_interactivity(
        trace, [base, base.replace(hw="gb200-nvl72")], tokens_per_s_per_user=target
    )
    assert both.at_interactivity == target and len(both.systems) == 2


def test_sweep_rows_are_the_replays_of_its_points(trace: Path) -> None:
    points = grid(
        Deployment(hw="h200-sxm"),
        hws=["h200-sxm", "gb200-nvl72"],
        eps=[2],
        batches=[2, 8],
        precisions=[Precision(), Precision.parse("experts=fp4")],
    )
    rows = run_sweep(trace, points, jobs=1)
    assert rows.height == 8
    for row, dep in zip(rows.iter_rows(named=True), points, strict=True):
        s = replay(trace, dep, phases=["decode"], collect_ranks=False).summary
        assert row["tokens_per_s_per_gpu"] == s.tokens_per_s_per_gpu
        assert row["precision_experts"] == dep.precision.experts


def test_placement_whatif_replays_equal_placement_files(trace: Path, tmp_path: Path) -> None:
    whatif = placement_whatif(
        trace,
        num_ranks=2,
        num_redundant=2,
        policies=("greedy", "eplb-global"),
        hw="h200-sxm",
        keep_going=True,
    )
    labels = [o.label for o in whatif.outcomes]
    assert labels == ["contiguous, 0 redundant", "greedy", "eplb-global"]
    for o in whatif.outcomes:
        assert o.replayed is not None
        # the same placement written to a file and replayed gives the same figures
        path = write_placements(tmp_path / f"{o.label}.parquet", [o.plan.placement.with_(from_step=0)])
        s = replay(trace, Deployment(hw="h200-sxm", ep=2, placement=str(path))).summary
        in_memory = replay(trace, Deployment(hw="h200-sxm", ep=2, placement=(o.plan.placement,))).summary
        assert o.replayed.tokens_per_s_per_gpu == pytest.approx(s.tokens_per_s_per_gpu, rel=1e-12)
        assert in_memory.to_dict() == s.to_dict()
    # redundant slots cost memory: the replicated layouts hold more weights per GPU
    base, greedy = whatif.outcomes[0].replayed, whatif.outcomes[1].replayed
    assert greedy is not None and base is not None and greedy.weight_bytes_per_gpu > base.weight_bytes_per_gpu


def test_disaggregation_with_a_config_json_target_model(trace: Path, tmp_path: Path) -> None:
    config = {
        "model_type": "mixtral",
        "hidden_size": 512,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "vocab_size": 1000,
    }
    folder = tmp_path / "my-moe"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    dec = Deployment(hw="gb200-nvl72", ep=2, model=str(folder))
    res = replay_disaggregated(trace, prefill=dec.replace(hw="h200-sxm"), decode=dec)
    s = res.summary
    assert s.disagg is not None and res.target == get_model(str(folder))
    # each request's prompt (12 prompt tokens over the trace's requests, on average) crosses over
    # as the target model's KV cache
    requests = open_trace(trace).duckdb().execute("SELECT count(DISTINCT request_id) FROM tokens").fetchone()
    assert requests is not None
    prompt = 2 * 6 / requests[0]
    want = prompt * kv_cache_bytes_per_token_all_layers(res.target, "bf16")
    assert s.disagg.kv_transfer_bytes == pytest.approx(want, rel=1e-12)
    assert (
        kv_cache_bytes_per_token_all_layers(res.target, "bf16") == 4 * 2 * 2 * 64 * 2
    )  # layers, K+V, heads, dim, bytes
    assert s.ttft_s is not None and s.ttft_s > s.disagg.kv_transfer_s
    assert dataclasses.asdict(s.disagg)["decode_gpus"] == 2


def test_nvl_a2a_replays_inside_one_domain_and_is_refused_across_domains(trace: Path) -> None:
    res = CliRunner().invoke(
        cli, ["replay", str(trace), "--hw", "gb200-nvl72", "--impl", "nvl-a2a", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tokens_per_s_per_gpu"] > 0
    narrow = Deployment(
        hw="h200-sxm", ep=16, batch_per_gpu=1, impl="nvl-a2a", hw_overrides={"scaleup_size": 1}
    )
    with pytest.raises(DeploymentError, match="inside one scale-up domain only"):
        replay(trace, narrow)
