"""The fast path (tracekit.replay.fast) against the full replay, deployment by deployment: the same
figures from counts shared across deployments as from each deployment's own per-peer matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.factories import synth_r1
from tracekit.models import get_model
from tracekit.placement import Placement, write_placements
from tracekit.replay import workload
from tracekit.replay.deployment import Deployment, Precision
from tracekit.replay.engine import replay
from tracekit.replay.fast import FastReplay


@pytest.fixture(scope="module")
def r1_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepSeek-R1 decode routing (58 MoE layers x 256 experts, top-8), 2 steps of 1024 tokens."""
    out = tmp_path_factory.mktemp("fast") / "trace"
    return synth_r1(out, spec="zipf:0.8", tokens_per_step=1024, steps=2, seed=3)


FP4 = Precision.parse("experts=fp4")

DEPLOYMENTS = [
    pytest.param(Deployment(hw="h200-sxm", ep=16, batch_per_gpu=32, kv_len=2048), id="h200-ep16"),
    pytest.param(
        Deployment(hw="h200-sxm", ep=16, batch_per_gpu=96, kv_len=1024, tbo=True, impl="deepep-ll"),
        id="h200-ep16-tbo-ll-b96",
    ),
    pytest.param(
        Deployment(hw="h200-sxm", ep=16, batch_per_gpu=64, kv_len=1024, impl="deepep-normal"),
        id="h200-ep16-normal-2nodes",
    ),
    pytest.param(
        Deployment(hw="gb200-nvl72", ep=32, batch_per_gpu=24, kv_len=2048, redundant=32),
        id="gb200-ep32-redundant32",
    ),
    pytest.param(
        Deployment(hw="gb200-nvl72", ep=16, batch_per_gpu=48, kv_len=2048, precision=FP4, tbo=True),
        id="gb200-ep16-fp4-tbo",
    ),
    pytest.param(Deployment(hw="h200-sxm", ep=16, tp=8, batch_per_gpu=16, kv_len=2048), id="h200-attn-tp8"),
    pytest.param(
        Deployment(hw="h200-sxm", ep=16, tp=8, moe_tp=8, batch_per_gpu=16, kv_len=2048), id="h200-moe-tp8"
    ),
    pytest.param(Deployment(hw="h200-sxm", ep=24, batch_per_gpu=40, kv_len=512), id="h200-ep24-3nodes"),
    # 256 experts on 72 GPUs: 32 of them replicated, over more groups than one 64-bit word holds
    pytest.param(Deployment(hw="gb200-nvl72", ep=72, batch_per_gpu=12, kv_len=1024), id="gb200-ep72-uneven"),
    # fewer steps than the stream holds: only the replayed prefix is counted
    pytest.param(Deployment(hw="h200-sxm", ep=16, batch_per_gpu=8, kv_len=2048, steps=3), id="h200-prefix"),
    pytest.param(
        Deployment(hw="h200-sxm", ep=24, batch_per_gpu=4, kv_len=2048, steps=5, impl="deepep-normal"),
        id="h200-prefix-normal-3nodes",
    ),
    # more steps than the stream fills: the schedule wraps and repeats every P steps (counted once)
    pytest.param(Deployment(hw="h200-sxm", ep=16, batch_per_gpu=64, kv_len=2048, steps=6), id="h200-wrap-p2"),
    pytest.param(
        Deployment(hw="h200-sxm", ep=24, batch_per_gpu=64, kv_len=2048, steps=7, impl="deepep-normal"),
        id="h200-wrap-p4-normal-3nodes",
    ),
    pytest.param(
        Deployment(hw="gb200-nvl72", ep=32, batch_per_gpu=16, kv_len=2048, steps=5, redundant=32, tbo=True),
        id="gb200-wrap-p4-redundant32",
    ),
]


@pytest.fixture(scope="module")
def fast(r1_trace: Path) -> FastReplay:
    return FastReplay(r1_trace)  # one for every deployment: the counts are shared between them


@pytest.mark.parametrize("dep", DEPLOYMENTS)
def test_fast_path_equals_full_replay(r1_trace: Path, fast: FastReplay, dep: Deployment) -> None:
    full = replay(r1_trace, dep, phases=["decode"], collect_ranks=False).phases[0]
    got = fast.phase(dep)
    assert got.num_steps == full.num_steps and got.batch_per_gpu == full.batch_per_gpu
    assert got.tokens_per_s_per_gpu == pytest.approx(full.tokens_per_s_per_gpu, rel=1e-9)
    assert got.tpot_s == pytest.approx(full.tpot_s, rel=1e-9)
    assert got.bound == full.bound
    for name, value in full.breakdown.items():
        assert got.breakdown[name] == pytest.approx(value, rel=1e-9, abs=1e-15), name


def test_counts_are_shared_across_hardware_and_precision(r1_trace: Path) -> None:
    fr = FastReplay(r1_trace)
    a = Deployment(hw="h200-sxm", ep=16, batch_per_gpu=32, kv_len=1024)
    fr.phase(a)
    fr.phase(a.replace(hw="h100-sxm", precision=FP4, tbo=True, impl="deepep-ll"))
    (work,) = fr._workloads.values()
    assert len(work._windows) == 1  # one counted window served both deployments
    fr.phase(a.replace(hw="gb200-nvl72"))  # 72 GPUs per domain: another split of the traffic
    assert len(work._windows) == 2


def test_wrapping_schedule_counts_one_period(r1_trace: Path) -> None:
    """A schedule of 1,024 tokens per step over the 2,048-token stream repeats every 2 steps: the
    counts of 6 steps are those of 2 steps three times over, and equal counting all 6 directly."""
    fr = FastReplay(r1_trace)
    dep = Deployment(hw="h200-sxm", ep=16, batch_per_gpu=64, kv_len=2048, steps=6)
    fr.phase(dep)
    (work,) = fr._workloads.values()
    assert work.period(16 * 64) == 2 and work.period(24 * 64) == 4 and work.period(3) == 2048
    six = next(w for w in work._windows.values() if w.num_steps == 6)
    direct = work._count(six.layout, 64, 6)  # every replayed position counted, no period used
    for name in ("recv", "sent_pairs", "sent_tokens", "own_pairs", "own_tokens", "recv_tokens"):
        assert (getattr(six, name) == getattr(direct, name)).all(), name
        assert (getattr(six, name)[:2] == getattr(six, name)[2:4]).all(), name


def test_wrapping_blocks_equal_direct_counts(r1_trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks that wrap around the 2,048-token stream (1,536 tokens: three blocks of gcd 512) are sums
    of the stream's own blocks; counted position by position they are the same, and so are they
    counted in parts of at most 1,000 choices (a large block's path)."""
    fr = FastReplay(r1_trace)
    dep = Deployment(hw="h200-sxm", ep=24, batch_per_gpu=64, kv_len=2048, steps=7)
    fr.phase(dep)
    (work,) = fr._workloads.values()
    layout = next(iter(fr._layouts.values()))
    for name, chain in work._window_chains(layout, 64, 4).items():
        for c, blocks in ((1536, 4), (64, 96), (3 * 64, 40)):
            got = work._blocks(chain, c, blocks)
            direct = work._count_blocks(chain, c, 0, blocks)  # positions taken modulo the stream
            assert got.shape == direct.shape and (got == direct).all(), (name, c)
            with monkeypatch.context() as m:
                m.setattr(workload, "KEYS_PER_CALL", 1000)
                assert (work._count_blocks(chain, c, 0, blocks) == direct).all(), (name, c)


@pytest.mark.parametrize("steps", [None, 7], ids=["stream", "wrap-p4"])
def test_domain_loads_added_to_a_window_counted_without_them(r1_trace: Path, steps: int | None) -> None:
    """A window counted for one implementation, then asked for DeepEP normal across 3 nodes: the
    domain loads are counted then (tiled over the period when the schedule wraps), as a full replay."""
    fr = FastReplay(r1_trace)
    plain = Deployment(hw="h200-sxm", ep=24, batch_per_gpu=64, kv_len=2048, steps=steps)
    fr.phase(plain)
    normal = plain.replace(impl="deepep-normal")
    got = fr.phase(normal)
    full = replay(r1_trace, normal, phases=["decode"], collect_ranks=False).phases[0]
    assert got.tokens_per_s_per_gpu == pytest.approx(full.tokens_per_s_per_gpu, rel=1e-9)
    (work,) = fr._workloads.values()
    assert all(w.domain_loads is not None for w in work._windows.values())


@pytest.mark.parametrize("impl", ["nccl", "deepep-normal"])
def test_replicated_placement_epochs_equal_full_replay(r1_trace: Path, tmp_path: Path, impl: str) -> None:
    """A placement file of two epochs with 16 redundant slots, its replicated experts different per
    layer and per epoch, on 2 nodes: the fast path (single-slot choices from the stream, replicated
    ones routed per schedule) gives the full replay's figures, for every counting rule."""
    layers = tuple(get_model("deepseek-r1").moe_layers)
    rng = np.random.default_rng(5)
    first = Placement.contiguous(layers, 256, 16, num_redundant=16)
    # epoch 1: each layer's slots shuffled, and replicas of other experts than 0..15
    rows = np.stack(
        [
            rng.permutation(np.concatenate([np.arange(256), rng.choice(256, 16, replace=False)]))
            for _ in layers
        ]
    )
    second = Placement(
        layers=layers,
        phy2log=rows,
        num_ranks=16,
        slots_per_rank=17,
        from_step=1,
        policy="file",
        num_experts=256,
    )
    pfile = write_placements(tmp_path / "epochs.parquet", [first, second])
    dep = Deployment(hw="h200-sxm", ep=16, batch_per_gpu=48, kv_len=2048, placement=str(pfile), impl=impl)
    full = replay(r1_trace, dep, phases=["decode"], collect_ranks=False).phases[0]
    got = FastReplay(r1_trace).phase(dep)
    assert got.num_steps == full.num_steps
    assert got.tokens_per_s_per_gpu == pytest.approx(full.tokens_per_s_per_gpu, rel=1e-9)
    for name, value in full.breakdown.items():
        assert got.breakdown[name] == pytest.approx(value, rel=1e-9, abs=1e-15), name
