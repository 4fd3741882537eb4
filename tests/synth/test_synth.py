"""Synthetic traces: validity, balanced / group-limited / zipf routing, reproducibility, imbalance solver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.errors import UnknownNameError, UsageError
from tracekit.schema import AttentionSpec, ModelArch
from tracekit.stats import metrics as m
from tracekit.synth import SynthConfig, parse_spec, synthesize
from tracekit.synth.routing import Router, balanced_step, gumbel_topk
from tracekit.trace import open_trace, validate


def grouped_arch(*, experts: int = 64, groups: int = 8, topk_groups: int = 2, top_k: int = 4) -> ModelArch:
    return ModelArch(
        name="tiny-grouped",
        architecture="deepseek_v3",
        num_layers=4,
        moe_layers=(1, 2, 3),
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_experts=experts,
        num_shared_experts=1,
        top_k=top_k,
        num_expert_groups=groups,
        topk_groups=topk_groups,
        scoring="sigmoid",
        routed_scaling_factor=2.5,
        attention=AttentionSpec(kind="mla", num_heads=4, num_kv_heads=4, head_dim=24),
        vocab_size=100,
    )


def config(spec: str, **kw: object) -> SynthConfig:
    base: dict[str, object] = {
        "arch": grouped_arch(),
        "spec": parse_spec(spec),
        "phase": "decode",
        "tokens_per_step": 64,
        "steps": 6,
        "seed": 5,
        "prompt_len": 100,
    }
    base.update(kw)
    return SynthConfig(**base)  # type: ignore[arg-type]


def routing_ids(path: Path, top_k: int) -> np.ndarray:
    tab = open_trace(path).read("routing", ["step", "layer", "token_index", "expert_ids"])
    return np.asarray(tab.column("expert_ids").combine_chunks().flatten()).reshape(-1, top_k).astype(np.int64)


def loads(path: Path) -> np.ndarray:
    """[steps, layers, E] from the written expert_load table."""
    tr = open_trace(path)
    t = tr.scan("expert_load").sort("step", "layer", "expert").collect()
    steps = t["step"].n_unique()
    layers = t["layer"].n_unique()
    return t["num_tokens"].to_numpy().reshape(steps, layers, tr.manifest.model.num_experts)


def test_decode_trace_is_valid_and_complete(tmp_path: Path) -> None:
    res = synthesize(config("zipf:0.8"), tmp_path / "t")
    assert validate(res.path).ok
    tr = open_trace(res.path)
    man = tr.manifest
    assert man.source == "synthetic"
    assert man.source_detail["spec"] == "zipf:0.8" and man.source_detail["seed"] == 5
    assert set(tr.tables) >= {"steps", "tokens", "routing", "expert_load", "requests"}
    tokens = tr.read("tokens").to_pydict()
    # decode: request r's token at step s sits at position prompt_len + s (KV length prompt_len + s + 1)
    assert tokens["position"] == [100 + s for s in tokens["step"]]
    assert tokens["request_id"] == [t for t in tokens["token_index"]]
    assert not any(tokens["is_prefill"])
    req = tr.read("requests").to_pydict()
    assert req["prompt_tokens"] == [100] * 64 and req["output_tokens"] == [6] * 64
    # routing and expert_load agree; every token has k distinct experts
    ids = routing_ids(res.path, 4)
    assert len(ids) == 6 * 3 * 64
    assert (np.sort(ids, axis=1)[:, 1:] != np.sort(ids, axis=1)[:, :-1]).all()
    assert loads(res.path).sum() == ids.size
    w = np.asarray(tr.read("routing", ["gate_weights"]).column(0).combine_chunks().flatten()).reshape(-1, 4)
    assert w.sum(axis=1) == pytest.approx(2.5, rel=1e-2)  # renormalised, times routed_scaling_factor


def test_prefill_requests_and_positions(tmp_path: Path) -> None:
    res = synthesize(
        config("uniform", phase="prefill", tokens_per_step=48, steps=5, prompt_len=40), tmp_path / "p"
    )
    tr = open_trace(res.path)
    tok = tr.read("tokens").to_pydict()
    g = [s * 48 + t for s, t in zip(tok["step"], tok["token_index"], strict=True)]
    assert tok["request_id"] == [x // 40 for x in g]
    assert tok["position"] == [x % 40 for x in g]
    assert all(tok["is_prefill"])
    steps = tr.read("steps").to_pydict()
    assert steps["num_requests"] == [len({x // 40 for x in range(s * 48, s * 48 + 48)}) for s in range(5)]
    assert tr.read("requests").num_rows == 6  # ceil(5 * 48 / 40)


def test_balanced_gives_exactly_equal_load(tmp_path: Path) -> None:
    res = synthesize(config("balanced", tokens_per_step=48), tmp_path / "b")
    load = loads(res.path)
    assert (load == 48 * 4 // 64).all()
    ids = routing_ids(res.path, 4)
    assert ((ids // 8)[:, :, None] == (ids // 8)[:, None, :]).any(axis=2).all()
    assert max(len(set(row)) for row in (ids // 8).tolist()) <= 2


@pytest.mark.parametrize("spec", ["uniform", "zipf:1.5", "balanced"])
def test_group_limited_routing_stays_in_top_groups(tmp_path: Path, spec: str) -> None:
    res = synthesize(config(spec), tmp_path / "g")
    ids = routing_ids(res.path, 4)
    groups_per_token = np.array([len(set(row)) for row in (ids // 8).tolist()])
    assert groups_per_token.max() <= 2


def test_gumbel_topk_picks_best_experts_of_best_groups() -> None:
    """With logits far apart the noise cannot reorder them: the choice is fully determined."""
    router = Router.of(grouped_arch(experts=16, groups=4, topk_groups=2, top_k=3))
    logits = np.array([0, 0, 0, 0, 90, 10, 10, 80, 0, 0, 0, 0, 50, 50, 60, 0], dtype=float) * 1.0
    ids, w = gumbel_topk(router, logits, 200, np.random.default_rng(0))
    # group scores (top-2 sums): g1 = 170, g3 = 110, g0 = 0, g2 = 0 -> groups 1 and 3; then top-3 of those
    assert (ids == np.array([4, 7, 14])).all()
    assert w.sum(axis=1) == pytest.approx(1.0, rel=1e-2) or w.sum(axis=1) == pytest.approx(2.5, rel=1e-2)


def test_zipf_skew_grows_with_alpha(tmp_path: Path) -> None:
    arch = grouped_arch(groups=1, topk_groups=1)
    ginis, maxes = [], []
    for i, alpha in enumerate([0.0, 0.5, 1.0, 1.5]):
        res = synthesize(config(f"zipf:{alpha}", arch=arch, tokens_per_step=256), tmp_path / f"z{i}")
        agg = loads(res.path).sum(axis=0)  # [layers, E]
        ginis.append(float(np.mean(m.gini(agg))))
        maxes.append(float(np.mean(m.max_over_mean(agg))))
    assert ginis == sorted(ginis) and len(set(ginis)) == 4
    assert maxes == sorted(maxes)
    assert ginis[0] < 0.15 < 0.5 < ginis[3]


def parquet_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*.parquet"))}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = synthesize(config("zipf:1.0", ep=4), tmp_path / "a")
    b = synthesize(config("zipf:1.0", ep=4), tmp_path / "b")
    c = synthesize(config("zipf:1.0", ep=4, seed=6), tmp_path / "c")
    pa_, pb = parquet_bytes(a.path), parquet_bytes(b.path)
    assert len(pa_) >= 5 and pa_ == pb
    assert (a.path / "manifest.json").read_bytes() == (b.path / "manifest.json").read_bytes()
    assert parquet_bytes(c.path)["routing/r00000-p000000.parquet"] != pa_["routing/r00000-p000000.parquet"]
    assert open_trace(a.path).manifest.trace_id != open_trace(c.path).manifest.trace_id


def test_target_imbalance_is_reached(tmp_path: Path) -> None:
    arch = grouped_arch(groups=1, topk_groups=1)
    cfg = config("zipf:1.0", arch=arch, tokens_per_step=512, steps=4, ep=8, target_imbalance=0.5)
    res = synthesize(cfg, tmp_path / "ti")
    solved = res.detail["target_imbalance"]
    assert solved["zipf_alpha"] > 0
    ranks = loads(res.path).reshape(4, 3, 8, 8).sum(axis=3)  # contiguous EP8: 8 experts per rank
    measured = ((ranks.max(axis=2) - ranks.mean(axis=2)) / ranks.mean(axis=2)).mean()
    assert measured == pytest.approx(0.5, rel=0.1)
    assert res.detail["rank_imbalance"] == pytest.approx(measured)


def test_bad_inputs() -> None:
    with pytest.raises(UnknownNameError, match="valid names"):
        parse_spec("pareto:2")
    with pytest.raises(UsageError, match="zipf needs a number"):
        parse_spec("zipf:x")
    with pytest.raises(UsageError, match="needs --ep"):
        config("zipf:1", target_imbalance=0.5).check()
    with pytest.raises(UsageError, match="balanced"):
        config("balanced", ep=4, target_imbalance=0.5).check()
    with pytest.raises(UsageError, match="does not divide"):
        config("uniform", ep=3).check()


@given(
    tokens=st.integers(min_value=1, max_value=80),
    groups=st.sampled_from([1, 2, 4, 8]),
    top_k=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=1000),
)
@settings(max_examples=60)
def test_balanced_step_invariants(tokens: int, groups: int, top_k: int, seed: int) -> None:
    """Any batch: distinct experts per token, loads differ by at most one, tokens inside their top groups."""
    gs = 32 // groups
    router = Router(num_experts=32, top_k=top_k, num_groups=groups, topk_groups=min(2, groups))
    if groups > 1 and gs % top_k and top_k % gs:
        with pytest.raises(UsageError, match="multiple of top-k"):
            balanced_step(router, 2, tokens, np.random.default_rng(seed))
        return
    ids, _ = balanced_step(router, 2, tokens, np.random.default_rng(seed))
    for layer in range(2):
        x = ids[layer].astype(np.int64)
        assert (np.sort(x, axis=1)[:, 1:] != np.sort(x, axis=1)[:, :-1]).all()
        load = np.bincount(x.reshape(-1), minlength=32)
        assert load.max() - load.min() <= 1
        if groups > 1:
            assert max(len(set(r)) for r in (x // gs).tolist()) <= max(1, top_k // gs)


@given(seed=st.integers(min_value=0, max_value=10_000), scale=st.floats(min_value=0.0, max_value=8.0))
@settings(max_examples=30)
def test_gumbel_topk_group_limit_holds_for_any_logits(seed: int, scale: float) -> None:
    router = Router(num_experts=64, top_k=6, num_groups=8, topk_groups=3)
    rng = np.random.default_rng(seed)
    ids, w = gumbel_topk(router, rng.standard_normal(64) * scale, 256, rng)
    groups = ids.astype(np.int64) // 8
    assert max(len(set(r)) for r in groups.tolist()) <= 3
    assert (np.sort(ids, axis=1)[:, 1:] != np.sort(ids, axis=1)[:, :-1]).all()
    assert (w > 0).all()
