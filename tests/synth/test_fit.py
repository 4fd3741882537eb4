"""Fitted synthesis reproduces the skew (max/mean, Gini) of a recorded trace, per layer, within 10%."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.factories import tiny_arch, tiny_manifest, write_routing_trace
from tracekit.stats import compute_stats
from tracekit.stats import metrics as m
from tracekit.synth import SynthConfig, parse_spec, synthesize
from tracekit.synth.fit import layer_mapping, lorenz_resample
from tracekit.trace import open_trace

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "tiny-deepseek-v3"
E, K = 32, 4


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three layers of different skew; tokens of two kinds that prefer different experts in every layer."""
    rng = np.random.default_rng(11)
    steps, n = 10, 48
    pops = [rng.dirichlet(np.full(E, a)) for a in (0.3, 1.0, 3.0)]
    kinds = [rng.dirichlet(np.full(E, 0.5)) for _ in range(2)]
    ids = np.empty((steps, 3, n, K), dtype=np.int64)
    for s in range(steps):
        kind = rng.integers(0, 2, size=n)
        for layer in range(3):
            for t in range(n):
                p = 0.5 * pops[layer] + 0.5 * kinds[kind[t]]
                ids[s, layer, t] = rng.choice(E, K, replace=False, p=p)
    path = tmp_path_factory.mktemp("fit") / "source"
    write_routing_trace(path, ids, manifest=tiny_manifest(tiny_arch(num_experts=E, top_k=K, num_layers=4)))
    return path


def compare_skew(source: Path, synth: Path, mapping: list[int] | None = None) -> None:
    src = compute_stats(source).layers.sort("layer")
    got = compute_stats(synth).layers.sort("layer")
    mapping = mapping or list(range(src.height))
    for col in ("max_over_mean", "gini"):
        want = [src[col][j] for j in mapping]
        assert got[col].to_list() == pytest.approx(want, rel=0.10), col


def test_fitted_code_built_trace(skewed: Path, tmp_path: Path) -> None:
    arch = open_trace(skewed).manifest.model
    cfg = SynthConfig(
        arch=arch, spec=parse_spec(f"fitted:{skewed}"), phase="decode", tokens_per_step=256, steps=20, seed=1
    )
    res = synthesize(cfg, tmp_path / "s")
    compare_skew(skewed, res.path)
    fit = res.detail["fit"]
    # the source's tokens of two kinds couple experts within and across layers: the fit finds clusters
    assert res.detail["model_params"]["cluster_strength"] > 0
    assert fit["coact_nmi"]["fitted"] == pytest.approx(fit["coact_nmi"]["source"], rel=0.25)


def test_fitted_from_stats_directory_equals_from_trace(skewed: Path, tmp_path: Path) -> None:
    compute_stats(skewed).write(tmp_path / "st")
    arch = open_trace(skewed).manifest.model
    out = {}
    for name, src in (("a", str(skewed)), ("b", str(tmp_path / "st"))):
        cfg = SynthConfig(
            arch=arch, spec=parse_spec(f"fitted:{src}"), phase="decode", tokens_per_step=32, steps=2, seed=4
        )
        out[name] = synthesize(cfg, tmp_path / name)
    ra = (out["a"].path / "routing" / "r00000-p000000.parquet").read_bytes()
    rb = (out["b"].path / "routing" / "r00000-p000000.parquet").read_bytes()
    assert ra == rb


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="sample trace not present")
def test_fitted_recorded_sample_trace(tmp_path: Path) -> None:
    arch = open_trace(SAMPLE).manifest.model
    cfg = SynthConfig(
        arch=arch, spec=parse_spec(f"fitted:{SAMPLE}"), phase="decode", tokens_per_step=512, steps=24, seed=2
    )
    res = synthesize(cfg, tmp_path / "s")
    compare_skew(SAMPLE, res.path)
    ids = np.asarray(
        open_trace(res.path).read("routing", ["expert_ids"]).column(0).combine_chunks().flatten()
    )
    groups = (ids.reshape(-1, arch.top_k) // (arch.num_experts // arch.num_expert_groups)).tolist()
    assert max(len(set(g)) for g in groups) <= arch.topk_groups


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="sample trace not present")
def test_fitted_sample_onto_more_layers(tmp_path: Path) -> None:
    src_arch = open_trace(SAMPLE).manifest.model
    arch = tiny_arch(num_experts=256, top_k=8, num_layers=7, dense_first=1)
    arch = type(arch)(**{**arch.__dict__, "num_expert_groups": 8, "topk_groups": 4, "name": "deeper"})
    cfg = SynthConfig(
        arch=arch, spec=parse_spec(f"fitted:{SAMPLE}"), phase="decode", tokens_per_step=512, steps=24, seed=3
    )
    res = synthesize(cfg, tmp_path / "d")
    mapping = layer_mapping(len(arch.moe_layers), len(src_arch.moe_layers)).tolist()
    assert mapping == [0, 0, 0, 1, 1, 1]
    compare_skew(SAMPLE, res.path, mapping)


def test_lorenz_resample_keeps_gini_and_total() -> None:
    rng = np.random.default_rng(0)
    shares = rng.dirichlet(np.full(64, 0.4))
    for n in (64, 128, 256):
        out = lorenz_resample(shares, n)
        assert out.sum() == pytest.approx(1.0)
        assert float(m.gini(out)) == pytest.approx(float(m.gini(shares)), rel=0.05)
    assert lorenz_resample(shares, 64) == pytest.approx(np.sort(shares)[::-1])
