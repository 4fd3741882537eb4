"""The low-level collector, the registration API and the router-API-drift checks, on hand-written
toy MoE models whose routing the test knows independently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import tracekit  # noqa: E402
from tests.collect._trace_arrays import read_trace  # noqa: E402
from tracekit.collect import RoutingCollector, find_moe_sites, register_moe, unregister_moe  # noqa: E402
from tracekit.errors import CollectorError, ModelError  # noqa: E402

D, E, K = 16, 6, 2


class ToyConfig:
    model_type = "toy_moe"
    hidden_size = D
    num_hidden_layers = 3
    num_local_experts = E
    num_experts_per_tok = K
    intermediate_size = 8
    num_attention_heads = 2
    vocab_size = 50


class ToyRouter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(E, D))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = x @ self.weight.T
        w, ids = torch.softmax(logits, -1).topk(K, dim=-1)
        return logits, w, ids


class ToyExperts(nn.Module):
    """Transformers-5 convention: experts(hidden, top_k_index, top_k_weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(E, D, D) * 0.1)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("td,tkde->tke", x, self.w[ids.clamp(max=E - 1)])  # E: a masked slot
        return (out * weights[..., None]).sum(1)


class ToyBlock(nn.Module):
    def __init__(self, swap: bool = False) -> None:
        super().__init__()
        self.gate = ToyRouter()
        self.experts = ToyExperts()
        self.swap = swap
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, D)
        _, w, ids = self.gate(flat)
        self.seen.append((ids.clone(), w.clone()))
        if self.swap:  # a drifted API: weights before ids
            return x + self.experts(flat, w, ids).reshape(x.shape)
        return x + self.experts(flat, ids, w).reshape(x.shape)


class ToyModel(nn.Module):
    def __init__(self, swap: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.config = ToyConfig()
        self.embed = nn.Embedding(50, D)
        self.layers = nn.ModuleList([nn.Linear(D, D), ToyBlock(swap), ToyBlock(swap)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return x


def _run_steps(
    model: ToyModel, out: Path, batches: list[np.ndarray], keeps: list[np.ndarray], **kw: Any
) -> None:
    with RoutingCollector(model, out, **kw) as col:
        for b, (tokens, keep) in enumerate(zip(batches, keeps, strict=True)):
            n = tokens.size
            col.begin_step(
                phase="decode" if b else "prefill",
                request_ids=np.arange(n) + 100,
                positions=np.arange(n) + 7 * b,
                keep=keep,
            )
            with torch.no_grad():
                model(torch.as_tensor(tokens))
            col.end_step()


def test_builtin_rule_finds_experts_modules_by_layer() -> None:
    sites = find_moe_sites(ToyModel())
    assert [(s.layer, s.module_name) for s in sites] == [(1, "layers.1.experts"), (2, "layers.2.experts")]


def test_low_level_collector_records_the_models_routing(tmp_path: Path) -> None:
    model = ToyModel()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 50, size=(2, 5)), rng.integers(0, 50, size=(3, 1))]
    keeps = [np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool), np.ones(3, bool)]
    _run_steps(model, tmp_path / "t", batches, keeps)
    assert tracekit.validate(tmp_path / "t").ok
    tr = read_trace(tmp_path / "t")
    assert tr.steps["num_tokens"].to_list() == [8, 3]
    assert tr.steps["phase"].to_list() == ["prefill", "decode"]
    t0 = tr.tokens.filter(tr.tokens["step"] == 0)
    np.testing.assert_array_equal(t0["request_id"].to_numpy(), np.flatnonzero(keeps[0]) + 100)
    np.testing.assert_array_equal(t0["position"].to_numpy(), np.flatnonzero(keeps[0]))
    for li, block in ((1, model.layers[1]), (2, model.layers[2])):
        for s in range(2):
            ids_ref, w_ref = (t.numpy() for t in block.seen[s])
            ids, w = tr.routing_of(s, li)
            np.testing.assert_array_equal(ids, ids_ref[keeps[s]])
            np.testing.assert_allclose(w, w_ref[keeps[s]], rtol=1e-6)
            load = tr.expert_load.filter((tr.expert_load["step"] == s) & (tr.expert_load["layer"] == li))
            np.testing.assert_array_equal(
                load.sort("expert")["num_tokens"].to_numpy(),
                np.bincount(ids_ref[keeps[s]].ravel(), minlength=E),
            )


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 6)), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_token_conservation(tmp_path_factory: Any, shapes: list[tuple[int, int]], seed: int) -> None:
    """Whatever the batches and padding: recorded tokens = kept tokens; each layer's expert_load sums
    to kept tokens x top_k; routing rows = kept tokens per layer."""
    rng = np.random.default_rng(seed)
    batches = [rng.integers(0, 50, size=s) for s in shapes]
    keeps = [rng.random(b.size) < 0.7 for b in batches]
    out = tmp_path_factory.mktemp("cons") / "t"
    _run_steps(ToyModel(seed=seed % 7), out, batches, keeps)
    tr = read_trace(out)
    kept = [int(k.sum()) for k in keeps]
    assert tr.steps["num_tokens"].to_list() == kept
    per = tr.expert_load.group_by("step", "layer").agg(n=pl.col("num_tokens").sum()).sort("step", "layer")
    assert per["n"].to_list() == [n * K for n in kept for _ in (1, 2)]
    rows = tr.routing.group_by("step").len().sort("step")
    assert dict(zip(rows["step"].to_list(), rows["len"].to_list(), strict=True)) == {
        s: 2 * n for s, n in enumerate(kept) if n
    }


def test_part_files_flush_by_rows_and_memory_stays_bounded(tmp_path: Path) -> None:
    model = ToyModel()
    out = tmp_path / "t"
    n_steps = 30
    with RoutingCollector(model, out, rows_per_part=20, host_batch_steps=1) as col:
        for _ in range(n_steps):
            col.begin_step(phase="decode")
            with torch.no_grad():
                model(torch.zeros((4, 1), dtype=torch.long))
            col.end_step()
            assert not col._pending  # on the CPU every step is processed at once
    import pyarrow.parquet as pq

    files = sorted((out / "routing").glob("*.parquet"))
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
    # 8 routing rows per step: a part is written once >= 20 rows are buffered, so no part holds
    # more than 20 + 8 - 1 rows: the buffer never grows with the length of the run
    assert max(sizes) <= 27 and len(files) >= (n_steps * 8) // 27
    assert read_trace(out).routing.height == n_steps * 8


def test_registration_api_reads_a_custom_router(tmp_path: Path) -> None:
    class DictRouter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(E, D))

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            p, i = torch.softmax(x @ self.weight.T, -1).topk(K, -1)
            return {"choice": i, "prob": p}

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.route = DictRouter()
            self.seen: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            r = self.route(x.reshape(-1, D))
            self.seen.append(r["choice"].clone())
            return x

    class CustomModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = ToyConfig()
            self.layers = nn.ModuleList([Custom(), Custom()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return x

    model = CustomModel()
    with pytest.raises(ModelError, match="register_moe"):
        find_moe_sites(model)
    register_moe(DictRouter, extractor=lambda mod, args, kwargs, out: (out["choice"], out["prob"]))
    try:
        with tracekit.record(model, tmp_path / "t") as rec:
            del rec
            with torch.no_grad():
                model(torch.randn(3, D))  # no input_ids: the forward recorder must say so
    except CollectorError as exc:
        assert "input_ids" in str(exc)
    else:
        raise AssertionError("a forward without input_ids was accepted")
    try:
        with RoutingCollector(model, tmp_path / "u") as col:
            col.begin_step(phase="prefill")
            with torch.no_grad():
                model(torch.randn(3, D))
            col.end_step()
    finally:
        unregister_moe(DictRouter)
    tr = read_trace(tmp_path / "u")
    for layer in (0, 1):
        ids, _ = tr.routing_of(0, layer)
        np.testing.assert_array_equal(ids, model.layers[layer].seen[-1].numpy())


def test_swapped_arguments_are_refused_as_router_api_drift(tmp_path: Path) -> None:
    model = ToyModel(swap=True)
    with pytest.raises(CollectorError, match="router API"), RoutingCollector(model, tmp_path / "t") as col:
        col.begin_step(phase="prefill")
        with torch.no_grad():
            model(torch.zeros((1, 2), dtype=torch.long))
    v = tracekit.validate(tmp_path / "t")
    assert v.incomplete  # the failed run is marked, not silently complete


def test_wrong_top_k_is_refused(tmp_path: Path) -> None:
    model = ToyModel()
    with (
        pytest.raises(CollectorError, match="top_k"),
        RoutingCollector(model, tmp_path / "t", top_k=3) as col,
    ):
        col.begin_step(phase="prefill")
        with torch.no_grad():
            model(torch.zeros((1, 2), dtype=torch.long))


def test_ids_outside_the_expert_range_are_refused(tmp_path: Path) -> None:
    model = ToyModel()
    # ids already remapped for expert parallelism (a sentinel E) are not logical expert ids
    hook = model.layers[1].experts.register_forward_pre_hook(
        lambda mod, args: (args[0], torch.full_like(args[1], E), args[2])
    )
    with (
        pytest.raises(CollectorError, match=r"outside 0\.\.5"),
        RoutingCollector(model, tmp_path / "t") as col,
    ):
        col.begin_step(phase="prefill")
        with torch.no_grad():
            model(torch.zeros((1, 2), dtype=torch.long))
        col.end_step()
    hook.remove()


def test_an_experts_module_that_never_runs_is_an_error(tmp_path: Path) -> None:
    model = ToyModel()
    block = model.layers[2]
    block.forward = lambda x: x  # type: ignore[method-assign]  # a fused kernel bypassing the experts
    with pytest.raises(CollectorError, match="did not run"), RoutingCollector(model, tmp_path / "t") as col:
        col.begin_step(phase="prefill")
        with torch.no_grad():
            model(torch.zeros((1, 2), dtype=torch.long))
        col.end_step()


def test_a_dense_model_has_no_moe_layer() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    with pytest.raises(ModelError, match="no MoE layer"):
        find_moe_sites(LlamaForCausalLM(cfg))


def test_hooks_are_removed_after_recording(tmp_path: Path) -> None:
    model = ToyModel()
    with RoutingCollector(model, tmp_path / "t") as col:
        col.begin_step(phase="prefill")
        with torch.no_grad():
            model(torch.zeros((1, 2), dtype=torch.long))
        col.end_step()
    # outside a collector the model runs untouched (a hook left behind would raise: no open step)
    with torch.no_grad():
        model(torch.zeros((1, 2), dtype=torch.long))
    assert not model.layers[1].experts._forward_pre_hooks


def test_begin_step_needs_a_phase(tmp_path: Path) -> None:
    from tracekit.errors import UsageError

    with RoutingCollector(ToyModel(), tmp_path / "t") as col, pytest.raises(UsageError, match="phase"):
        col.begin_step()
