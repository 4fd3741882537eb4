"""Layer and step markers: the collector helper puts ranges around a real transformers model's decoder
layers; a profile without them gets its layers (and steps) inferred from the repeating operator
sequence, checked row by row against the ranges the helper recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli
from tracekit.errors import ModelError
from tracekit.importers._markers import infer_layers
from tracekit.trace import open_trace

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

NUM_LAYERS, STEPS = 4, 3


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch.profiler traces of a tiny Mixtral: with the helper's markers (steps and layers)."""
    from torch.profiler import ProfilerActivity, profile

    from tracekit.collect.markers import add_markers

    cfg = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=NUM_LAYERS, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(cfg).eval()
    x = torch.randint(0, 64, (2, 6))
    markers = add_markers(model, nvtx=False)
    assert [name for name, _ in markers.layers] == [f"model.layers.{i}" for i in range(NUM_LAYERS)]
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        for s in range(STEPS):
            with markers.step(s):
                model(x)
    markers.remove()
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in model.model.layers)
    out = tmp_path_factory.mktemp("markers") / "mixtral_rank0.json"
    prof.export_chrome_trace(str(out))
    return out


def _import(path: Path, out: Path, *extra: str) -> tuple[pl.DataFrame, str]:
    res = CliRunner().invoke(
        cli, ["import", "kineto", str(path), "--out", str(out), "--events", "cpu", *extra]
    )
    assert res.exit_code == 0, res.output
    return open_trace(out).scan("kernels").collect().sort("start_ns", "name"), res.output


def test_the_helper_marks_every_layer_and_step(profiles: Path, tmp_path: Path) -> None:
    df, out = _import(profiles, tmp_path / "m")
    assert f"{STEPS} step and {STEPS * NUM_LAYERS} layer markers" in out
    assert sorted(set(df["step"].drop_nulls())) == list(range(STEPS))
    assert sorted(set(df["layer"].drop_nulls())) == list(range(NUM_LAYERS))
    # every layer of every step holds the same operators (the model's layers are alike)
    per = df.drop_nulls("layer").group_by("step", "layer").len()["len"]
    assert per.n_unique() == 1


def test_layers_inferred_without_markers_equal_the_markers(profiles: Path, tmp_path: Path) -> None:
    marked, _ = _import(profiles, tmp_path / "m")
    inferred, out = _import(profiles, tmp_path / "i", "--layer-pattern", r"^no_such_range_(\d+)$")
    assert (
        f"layers inferred from the repeating kernel sequence ({NUM_LAYERS} blocks) in {STEPS} of {STEPS}"
        in out
    )
    assert marked["name"].to_list() == inferred["name"].to_list()
    assert marked["layer"].to_list() == inferred["layer"].to_list()
    assert marked["step"].to_list() == inferred["step"].to_list()


def test_steps_are_inferred_too_when_there_are_no_step_markers(profiles: Path, tmp_path: Path) -> None:
    marked, _ = _import(profiles, tmp_path / "m")
    none = ("--layer-pattern", r"^no_layer_(\d+)$", "--step-pattern", r"^no_step_(\d+)$")
    inferred, out = _import(profiles, tmp_path / "i", *none)
    assert f"no step markers either: {STEPS} steps inferred" in out
    assert marked["layer"].to_list() == inferred["layer"].to_list()
    # rows inside a layer get the step they ran in (prologue / epilogue rows may fall either side)
    in_layer = marked["layer"].is_not_null()
    assert marked.filter(in_layer)["step"].to_list() == inferred.filter(in_layer)["step"].to_list()


def test_the_helper_needs_decoder_layers() -> None:
    from tracekit.collect.markers import add_markers

    with pytest.raises(ModelError, match="no ModuleList of decoder layers"):
        add_markers(torch.nn.Linear(2, 2), nvtx=False)
    explicit = add_markers(
        torch.nn.Sequential(torch.nn.Linear(2, 2)), layers=[torch.nn.Linear(2, 2)], nvtx=False
    )
    assert [n for n, _ in explicit.layers] == ["model.layers.0"]
    explicit.remove()


def test_inference_on_gpu_streams_assigns_every_stream_by_time() -> None:
    """Main stream: prologue, 3 layers of (norm, attn, gemm, gemm), epilogue; a communication
    stream runs one kernel per layer, overlapping its layer: it takes that layer."""
    names = {"emb": 0, "norm": 1, "attn": 2, "gemm": 3, "a2a": 4, "head": 5}
    rows: list[tuple[float, int, int, int]] = []  # start, code, stream, want layer
    t = 0.0
    rows.append((t, names["emb"], 7, -1))
    t += 10
    for layer in range(3):
        for n in ("norm", "attn", "gemm", "gemm"):
            rows.append((t, names[n], 7, layer))
            if n == "attn":
                rows.append((t + 1, names["a2a"], 20, layer))
            t += 10
    rows.append((t, names["head"], 7, -1))
    start = np.array([r[0] for r in rows])
    got = infer_layers(
        start,
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        np.ones(len(rows), bool),
        np.full(len(rows), -1),
    )
    assert got.layer.tolist() == [r[3] for r in rows]
    assert got.layer_counts == (3,) and got.steps_inferred == 0


def test_no_repetition_infers_nothing() -> None:
    codes = np.arange(12)
    got = infer_layers(codes.astype(float), codes, np.zeros(12, np.int64), np.ones(12, bool), np.full(12, -1))
    assert (got.layer == -1).all() and got.steps_with_layers == 0
    assert "no repeating kernel sequence" in got.describe()
