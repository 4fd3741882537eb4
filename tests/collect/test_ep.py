"""A real EP=4 run on CPU (gloo): bytes against routing and placement, logits against one process,
and a rank killed mid-run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from tracekit.cli.main import cli
from tracekit.collect.ep import EPJob, launch_ep, plan_batches, prepare_ep, record_ep, run_rank
from tracekit.collect.ep_launch import RankFailureError, run
from tracekit.collect.ep_moe import PURPOSES, ExpertParallel
from tracekit.collect.presets import build_preset
from tracekit.collect.tokenizer import ByteTokenizer
from tracekit.errors import TracekitError, UsageError
from tracekit.trace import open_trace, validate

EP = 4
PROMPTS = [
    "Mixture of experts",
    "a",
    "The quick brown fox jumps over the lazy dog",
    "routing",
    "Expert parallelism moves tokens twice per layer.",
    "hi",
    "all to all",
    "combine back and sum",
]


#: Every preset architecture (their experts code differs: biases, sentinel-free one-hot, shared experts).
LOGIT_PRESETS = (
    "tiny-gpt-oss",
    "tiny-deepseek-v3",
    "tiny-qwen3-moe",
    "tiny-mixtral",
    "tiny-olmoe",
    "tiny-qwen2-moe",
)


def _rank_prompts(rank: int) -> list[str]:
    per = len(PROMPTS) // EP
    return PROMPTS[rank * per : (rank + 1) * per]


def _record_then_logits(rank: int, world: int, job: EPJob, logits_dir: str) -> None:
    """One rank: the recording ``record_ep`` runs, then, in the same process group, a forward of
    other presets made expert-parallel, whose logits the test compares with one process."""
    run_rank(rank, world, job)
    for preset in LOGIT_PRESETS:
        model = build_preset(preset, seed=3)
        config = model.config
        experts = next(
            getattr(config, k)
            for k in ("num_local_experts", "num_experts", "n_routed_experts")
            if hasattr(config, k)
        )
        ExpertParallel(model, num_experts=experts)
        batch = ByteTokenizer().batch(_rank_prompts(rank))
        with torch.inference_mode():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        np.save(Path(logits_dir) / f"{preset}-{rank}.npy", logits.numpy())


@pytest.fixture(scope="module")
def ep_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ep")
    job = prepare_ep(
        model="tiny-qwen3-moe",
        prompts=PROMPTS,
        max_new_tokens=3,
        batch_size=2,
        out=root / "trace",
        ep=EP,
        device="cpu",
        dtype="float32",
        seed=0,
    )
    run(_record_then_logits, EP, (job, str(root)), threads_per_rank=1)
    return root / "trace", root


@pytest.fixture(scope="module")
def ep_trace(ep_run: tuple[Path, Path]) -> Path:
    return ep_run[0]


def _implied_rows(trace_path: Path) -> tuple[np.ndarray, list[int], int]:
    """Rows each rank must send each other rank, from the recorded routing and placement alone:
    ``rows[step, layer_index, src, dst]`` = tokens of ``src`` with at least one expert on ``dst``."""
    t = open_trace(trace_path)
    placement = t.scan("placement").select("layer", "expert", pl.col("rank").alias("dst"))
    pairs = (
        t.scan("routing")
        .select("rank", "step", "layer", "token_index", "expert_ids")
        .with_columns(pl.col("expert_ids").arr.to_list())
        .explode("expert_ids")
        .rename({"expert_ids": "expert"})
        .join(placement, on=["layer", "expert"], how="left")
        .unique(["rank", "step", "layer", "token_index", "dst"])
        .group_by("step", "layer", "rank", "dst")
        .agg(pl.len().alias("rows"))
        .collect()
    )
    assert pairs["dst"].null_count() == 0
    layers = sorted(pairs["layer"].unique().to_list())
    steps = int(pairs["step"].max()) + 1
    rows = np.zeros((steps, len(layers), EP, EP), dtype=np.int64)
    li = np.searchsorted(layers, pairs["layer"].to_numpy())
    rows[pairs["step"].to_numpy(), li, pairs["rank"].to_numpy(), pairs["dst"].to_numpy()] = pairs[
        "rows"
    ].to_numpy()
    return rows, layers, steps


def _recorded(trace_path: Path, purpose: str, column: str, layers: list[int], steps: int) -> np.ndarray:
    """``got[step, layer_index, rank, peer]`` from the comm table's per-peer byte vectors."""
    c = (
        open_trace(trace_path)
        .scan("comm")
        .filter(pl.col("purpose") == purpose)
        .select("step", "layer", "rank", column)
        .collect()
    )
    got = np.full((steps, len(layers), EP, EP), -1, dtype=np.int64)
    li = np.searchsorted(layers, c["layer"].to_numpy())
    got[c["step"].to_numpy(), li, c["rank"].to_numpy()] = np.array(c[column].to_list())
    return got


def test_dispatch_and_combine_bytes_match_routing_and_placement(ep_trace: Path) -> None:
    m = open_trace(ep_trace).manifest.model
    row_bytes = m.hidden_size * 4  # float32 hidden states
    meta_bytes = 2 * m.top_k * 4  # float32 ids and weights
    rows, layers, steps = _implied_rows(ep_trace)
    assert rows.sum() > 0 and (rows[..., ~np.eye(EP, dtype=bool)] > 0).any()
    swap = rows.transpose(0, 1, 3, 2)  # [step, layer, dst, src]
    for purpose, per_row in (("dispatch", row_bytes), ("dispatch_meta", meta_bytes)):
        np.testing.assert_array_equal(
            _recorded(ep_trace, purpose, "send_bytes_per_peer", layers, steps), rows * per_row
        )
        np.testing.assert_array_equal(
            _recorded(ep_trace, purpose, "recv_bytes_per_peer", layers, steps), swap * per_row
        )
    np.testing.assert_array_equal(
        _recorded(ep_trace, "combine", "send_bytes_per_peer", layers, steps), swap * row_bytes
    )
    np.testing.assert_array_equal(
        _recorded(ep_trace, "combine", "recv_bytes_per_peer", layers, steps), rows * row_bytes
    )
    np.testing.assert_array_equal(
        _recorded(ep_trace, "dispatch_layout", "send_bytes_per_peer", layers, steps), np.full(rows.shape, 8)
    )


def test_totals_per_step_and_layer(ep_trace: Path) -> None:
    rows, layers, _ = _implied_rows(ep_trace)
    m = open_trace(ep_trace).manifest.model
    off_diagonal = rows * ~np.eye(EP, dtype=bool)
    want = off_diagonal.sum(axis=(2, 3)) * m.hidden_size * 4  # [step, layer]
    totals = (
        open_trace(ep_trace)
        .scan("comm")
        .filter(pl.col("purpose").is_in(["dispatch", "combine"]))
        .group_by("purpose", "step", "layer")
        .agg(pl.col("bytes_sent").sum(), pl.col("bytes_recv").sum())
        .collect()
    )
    for (purpose,), part in totals.group_by(["purpose"]):
        got = np.zeros_like(want)
        got[part["step"].to_numpy(), np.searchsorted(layers, part["layer"].to_numpy())] = part[
            "bytes_sent"
        ].to_numpy()
        np.testing.assert_array_equal(got, want, err_msg=str(purpose))
        assert part["bytes_sent"].to_list() == part["bytes_recv"].to_list()


def test_every_rank_issues_the_same_collectives(ep_trace: Path) -> None:
    t = open_trace(ep_trace)
    comm = t.scan("comm").sort("rank", "seq").collect()
    per_rank = [comm.filter(pl.col("rank") == r).select("step", "layer", "purpose", "op") for r in range(EP)]
    for other in per_rank[1:]:
        assert other.equals(per_rank[0])
    steps = t.scan("steps").select(pl.col("step").max()).collect().item() + 1
    layers = t.manifest.model.moe_layers
    want = [(s, layer, p) for s in range(steps) for layer in layers for p in PURPOSES]
    assert list(per_rank[0].select("step", "layer", "purpose").iter_rows()) == want
    assert set(comm["op"].to_list()) == {"all_to_all_single"}
    assert set(comm["backend"].to_list()) == {"gloo"}
    assert (comm["end_ns"] >= comm["start_ns"]).all()


def test_trace_layout_placement_and_requests(ep_trace: Path) -> None:
    assert validate(ep_trace).ok
    t = open_trace(ep_trace)
    m = t.manifest
    assert (m.parallel.world_size, m.parallel.ep_size, m.parallel.dp_size) == (EP, EP, EP)
    assert m.parallel.placement == "contiguous"
    assert t.ranks == list(range(EP)) and t.complete
    placement = t.scan("placement").collect()
    per_rank = m.model.num_experts // EP
    assert placement.height == len(m.model.moe_layers) * m.model.num_experts
    assert (placement["rank"] == placement["expert"].cast(pl.Int32) // per_rank).all()
    assert (placement["slot"] == placement["expert"].cast(pl.Int32)).all()
    assert set(placement["rank"].to_list()) == set(range(EP))
    # attention is data-parallel: each prompt on exactly one rank, as planned
    req = t.scan("requests").select("rank", "request_id").collect()
    plan = plan_batches(len(PROMPTS), EP, 2)
    for r in range(EP):
        want = sorted(i for batch in plan[r] for i in batch)
        assert sorted(req.filter(pl.col("rank") == r)["request_id"].to_list()) == want


# -- the EP model computes what the single-process model computes --------------------------------


def test_ep_logits_equal_single_process_logits(ep_run: tuple[Path, Path]) -> None:
    logits_dir = ep_run[1]
    for preset in LOGIT_PRESETS:
        model = build_preset(preset, seed=3)
        for rank in range(EP):
            batch = ByteTokenizer().batch(_rank_prompts(rank))
            with torch.inference_mode():
                want = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.numpy()
            got = np.load(logits_dir / f"{preset}-{rank}.npy")
            real = batch.attention_mask.numpy().astype(bool)  # padding rows are not dispatched
            np.testing.assert_allclose(
                got[real], want[real], rtol=1e-5, atol=1e-5, err_msg=f"{preset} rank {rank}"
            )


# -- a rank killed mid-run ------------------------------------------------------------------------


def test_killed_rank_leaves_other_shards_readable_and_is_named(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    victim, ranks = 1, 2
    job = prepare_ep(
        model="tiny-mixtral",
        prompts=PROMPTS[:2],
        max_new_tokens=200,
        batch_size=1,
        out=out,
        ep=ranks,
        rows_per_part=1,
    )
    run_ = launch_ep(job, grace_s=30.0)
    deadline = time.monotonic() + 120
    while len(list((out / "steps").glob(f"r{victim:05d}-p*.parquet"))) < 3:
        assert time.monotonic() < deadline, "the victim rank never wrote a part file"
        time.sleep(0.05)
    pid = run_.pids[victim]
    os.kill(pid, signal.SIGSTOP)  # freeze it mid-run, then check it had not finished
    assert open_trace(out).shards[victim].complete is False
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RankFailureError, match=rf"rank {victim} was killed by SIGKILL") as info:
        run_.wait(timeout_s=120)
    assert victim in info.value.ranks
    t = open_trace(out)
    assert not t.complete
    assert t.ranks == list(range(ranks))
    assert [r for r, s in t.shards.items() if not s.complete] == list(range(ranks))
    routing = t.scan("routing").group_by("rank").agg(pl.len()).collect()
    assert set(routing["rank"].to_list()) == set(range(ranks))  # every rank's rows up to the kill
    assert t.scan("comm").filter(pl.col("rank") != victim).select(pl.len()).collect().item() > 0
    problems = [str(p) for p in validate(out).problems]
    assert any(f"rank {victim} did not close its shard (killed" in p for p in problems)
    res = CliRunner().invoke(cli, ["validate", str(out)])
    assert res.exit_code == 2
    assert f"rank {victim} did not close its shard" in res.output


# -- arguments --------------------------------------------------------------------------------


def test_existing_output_is_refused_unless_forced(ep_trace: Path) -> None:
    with pytest.raises(UsageError, match="pass --force"):
        record_ep(model="tiny-mixtral", prompts=PROMPTS, max_new_tokens=1, batch_size=2, out=ep_trace, ep=EP)
    assert validate(ep_trace).ok


@given(ranks=st.integers(1, 16), extra=st.integers(0, 300), batch=st.integers(1, 12))
def test_plan_batches_covers_every_prompt_once_and_leaves_no_rank_idle(
    ranks: int, extra: int, batch: int
) -> None:
    prompts = ranks + extra
    plan = plan_batches(prompts, ranks, batch)
    assert len(plan) == ranks
    assert len({len(p) for p in plan}) == 1  # every rank runs the same number of batches
    flat = [i for r in range(len(plan[0])) for p in plan for i in p[r]]
    assert flat == list(range(prompts))  # in prompt order, round by round, rank by rank
    sizes = [len(b) for p in plan for b in p]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    if prompts >= ranks * -(-prompts // (ranks * batch)):  # enough prompts to keep batches within size
        assert max(sizes) <= batch


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompts": PROMPTS[:3]}, "every rank needs at least one prompt"),
        ({"ep": 3}, "multiple of it"),
        ({"model": "tiny-nothing"}, "unknown model 'tiny-nothing'"),
        ({"device": "tpu"}, "give cpu or cuda"),
    ],
)
def test_bad_arguments_fail_before_starting(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "model": "tiny-mixtral",
        "prompts": PROMPTS,
        "max_new_tokens": 2,
        "batch_size": 2,
        "out": tmp_path / "t",
        "ep": EP,
    } | kwargs
    with pytest.raises(TracekitError, match=match):
        record_ep(**args)  # type: ignore[arg-type]
    assert not (tmp_path / "t").exists()


def test_cli_ep_bad_degree_is_one_line_exit_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        cli,
        [
            "record",
            "--model",
            "tiny-mixtral",
            "--ep",
            "3",
            "--num-prompts",
            "4",
            "--out",
            str(tmp_path / "t"),
        ],
    )
    assert res.exit_code == 2
    assert "multiple of it" in res.output and "Traceback" not in res.output
