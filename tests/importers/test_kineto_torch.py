"""Import Kineto traces made here by torch.profiler on a real tiny Mixtral, checked against the
profiler's own event list."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli
from tracekit.trace import open_trace, validate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

NUM_LAYERS = 2


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A Kineto JSON of two forward steps, each layer wrapped in a record_function annotation, and
    the profiler's own events (name, start, end, is annotation)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cfg = transformers.MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(cfg).eval()
    scopes: dict[int, record_function] = {}

    def pre(i: int):
        def hook(module, args):
            scopes[i] = record_function(f"model.layers.{i}")
            scopes[i].__enter__()

        return hook

    def post(i: int):
        def hook(module, args, output):
            scopes.pop(i).__exit__(None, None, None)

        return hook

    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(pre(i))
        layer.register_forward_hook(post(i))
    x = torch.randint(0, 64, (2, 6))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof, torch.no_grad():
        for s in range(2):
            with record_function(f"ProfilerStep#{s}"):
                model(x)
    out = tmp_path_factory.mktemp("kineto") / "trace_rank0.json"
    prof.export_chrome_trace(str(out))
    events = [
        {
            "name": e.name(),
            "start_ns": e.start_ns(),
            "end_ns": e.end_ns(),
            "annotation": e.is_user_annotation(),
        }
        for e in prof.profiler.kineto_results.events()
    ]
    return out, events


def _import(args: list[str]) -> str:
    res = CliRunner().invoke(cli, ["import", "kineto", *args])
    assert res.exit_code == 0, res.output
    return res.output


def _containing(ev: dict, marks: list[dict], prefix: str) -> int | None:
    """Innermost annotation with ``prefix`` holding the op (brute force, independent of the importer)."""
    best = None
    for m in marks:
        inside = m["name"].startswith(prefix) and m["start_ns"] <= ev["start_ns"] < m["end_ns"]
        if inside and (best is None or m["start_ns"] >= best["start_ns"]):
            best = m
    return int(best["name"].rsplit(".", 1)[-1].replace("ProfilerStep#", "")) if best else None


def test_cpu_ops_match_the_profiler_event_list(profiled: tuple[Path, list[dict]], tmp_path: Path) -> None:
    path, events = profiled
    out = tmp_path / "t"
    text = _import([str(path), "--out", str(out), "--events", "cpu"])
    assert "2 step and 4 layer markers" in text
    assert validate(out).ok
    df = open_trace(out).scan("kernels").collect().sort("start_ns")
    ops = [e for e in events if not e["annotation"]]
    assert df.height == len(ops)
    assert Counter(df["name"].to_list()) == Counter(e["name"] for e in ops)
    # durations: the profiler's nanoseconds, through Kineto's microseconds with 3 decimals
    assert sorted(df["duration_ns"].to_list()) == pytest.approx(
        sorted(e["end_ns"] - e["start_ns"] for e in ops), abs=2
    )
    # the earliest op starts at 0 ns when it is the earliest event of the file
    assert df["start_ns"].min() >= 0
    # step and layer of every op, from brute-force containment over the profiler's own events
    marks = [e for e in events if e["annotation"]]
    base = min(e["start_ns"] for e in events)
    imported = {}
    for row in df.iter_rows(named=True):
        imported.setdefault((row["name"], row["duration_ns"]), []).append((row["step"], row["layer"]))
    for ev in ops:
        key = (ev["name"], ev["end_ns"] - ev["start_ns"])
        expected = (_containing(ev, marks, "ProfilerStep#"), _containing(ev, marks, "model.layers."))
        candidates = [
            v for k, vs in imported.items() if k[0] == key[0] and abs(k[1] - key[1]) <= 2 for v in vs
        ]
        assert expected in candidates, (ev, expected)
    per_layer = df.filter(df["layer"].is_not_null())["layer"].unique().sort().to_list()
    assert per_layer == list(range(NUM_LAYERS))
    assert set(df["step"].drop_nulls().to_list()) == {0, 1}
    assert base >= 0
    # categories: the model's matmuls are GEMMs
    cats = dict(zip(df["name"].to_list(), df["category"].to_list(), strict=True))
    assert cats["aten::addmm" if "aten::addmm" in cats else "aten::mm"] == "dense_gemm"


def test_gzip_gives_the_same_rows(profiled: tuple[Path, list[dict]], tmp_path: Path) -> None:
    path, _ = profiled
    gz = tmp_path / "trace_rank0.json.gz"
    with path.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    _import([str(path), "--out", str(tmp_path / "a"), "--events", "cpu"])
    _import([str(gz), "--out", str(tmp_path / "b"), "--events", "cpu"])
    a = open_trace(tmp_path / "a").scan("kernels").collect()
    b = open_trace(tmp_path / "b").scan("kernels").collect()
    assert a.equals(b)


def test_cpu_only_profile_without_events_cpu_is_refused(
    profiled: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    path, _ = profiled
    res = CliRunner().invoke(cli, ["import", "kineto", str(path), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2
    assert "no GPU kernel events" in res.output and "--events cpu" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_two_ranks_by_file_name(profiled: tuple[Path, list[dict]], tmp_path: Path) -> None:
    path, events = profiled
    r1 = tmp_path / "run_rank1.json"
    shutil.copy(path, r1)
    out = tmp_path / "t"
    _import([str(r1), str(path), "--out", str(out), "--events", "cpu"])
    t = open_trace(out)
    assert t.ranks == [0, 1]
    counts = t.scan("kernels").collect()["rank"].value_counts().sort("rank")["count"].to_list()
    n = sum(1 for e in events if not e["annotation"])
    assert counts == [n, n]
    assert np.array_equal(
        t.scan("kernels")
        .collect()
        .filter(t.scan("kernels").collect()["rank"] == 1)["duration_ns"]
        .sort()
        .to_numpy(),
        t.scan("kernels")
        .collect()
        .filter(t.scan("kernels").collect()["rank"] == 0)["duration_ns"]
        .sort()
        .to_numpy(),
    )
