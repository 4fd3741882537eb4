"""SGLang expert-distribution dumps, built here in the exact layout SGLang's recorder saves
(python/sglang/srt/eplb/expert_distribution.py: _StatAccumulator.dump, _DetailAccumulator.dump,
_DetailSinglePassGatherer.collect), imported and checked against counts computed here."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli
from tracekit.errors import MissingDependencyError
from tracekit.importers.sglang import import_sglang
from tracekit.trace import open_trace, validate

torch = pytest.importorskip("torch")

NUM_LAYERS = 3  # layer 0 dense, layers 1-2 MoE
NUM_LOGICAL = 6
TOP_K = 2
RANKS = 2
# 8 physical slots over 2 ranks: logical experts 0 and 3 have a second replica
PHY2LOG = np.array([[0, 1, 2, 3, 4, 5, 0, 3]] * NUM_LAYERS)


def _gpc(topk_ids: torch.Tensor, num_physical: int) -> torch.Tensor:
    """global_physical_count the way SGLang computes it (scatter_add of ids != -1)."""
    layer_major = topk_ids.reshape(topk_ids.shape[0], -1)
    mask = layer_major != -1
    out = torch.zeros((topk_ids.shape[0], num_physical), dtype=topk_ids.dtype)
    out.scatter_add_(1, layer_major.masked_fill(~mask, 0).long(), mask.int())
    return out


def _per_token_dumps(tmp_path: Path, *, passes: int = 3) -> tuple[list[Path], list[dict]]:
    rng = np.random.default_rng(7)
    files, truth = [], []
    for rank in range(RANKS):
        records = []
        for p in range(passes):
            mode = 1 if p == 0 else 2  # EXTEND then DECODE
            n_tok = 5 if mode == 1 else 3
            ids = torch.full((NUM_LAYERS, n_tok, 8), -1, dtype=torch.int32)  # SGLang's 8-wide buffer
            for layer in (1, 2):
                for t in range(n_tok):
                    ids[layer, t, :TOP_K] = torch.tensor(rng.choice(8, size=TOP_K, replace=False))
            ext = [3, 2] if mode == 1 else None
            positions = [0, 1, 2, 0, 1] if mode == 1 else [3 + p, 2 + p, 4 + p]
            records.append(
                {
                    "forward_pass_id": 100 + p,
                    "rank": rank,
                    "gatherer_key": "primary",
                    "input_ids": rng.integers(0, 50, n_tok).tolist(),
                    "positions": positions,
                    "extend_seq_lens": ext,
                    "forward_mode": mode,
                    "topk_ids_of_layer": ids.clone(),
                    "misc_objects": [],
                    "global_physical_count": _gpc(ids, 8),
                }
            )
            truth.append(
                {
                    "rank": rank,
                    "step": p,
                    "ids": ids.numpy(),
                    "mode": mode,
                    "positions": positions,
                    "requests": 2 if mode == 1 else n_tok,
                }
            )
        path = tmp_path / f"expert_distribution_recorder_1717000000.123_{rank}.pt"
        torch.save(
            {"records": records, "last_physical_to_logical_map": torch.tensor(PHY2LOG, dtype=torch.int32)},
            path,
        )
        files.append(path)
    return files, truth


def test_per_token(tmp_path: Path) -> None:
    files, truth = _per_token_dumps(tmp_path)
    out = tmp_path / "t"
    res = CliRunner().invoke(cli, ["import", "sglang", *map(str, files), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "per_token mode" in res.output
    assert validate(out).ok
    t = open_trace(out)
    assert t.manifest.model.top_k == TOP_K and t.manifest.model.moe_layers == (1, 2)
    assert t.manifest.model.num_experts == NUM_LOGICAL
    load = t.scan("expert_load").collect()
    routing = t.scan("routing").collect()
    steps = t.scan("steps").collect()
    tokens = t.scan("tokens").collect()
    for tr in truth:
        for layer in (1, 2):
            phys = tr["ids"][layer][:, :TOP_K]
            logical = PHY2LOG[layer][phys]
            expected = Counter(logical.reshape(-1).tolist())
            got = load.filter(
                (load["rank"] == tr["rank"]) & (load["step"] == tr["step"]) & (load["layer"] == layer)
            )
            assert dict(zip(got["expert"].to_list(), got["num_tokens"].to_list(), strict=True)) == {
                e: expected.get(e, 0) for e in range(NUM_LOGICAL)
            }
            rows = routing.filter(
                (routing["rank"] == tr["rank"])
                & (routing["step"] == tr["step"])
                & (routing["layer"] == layer)
            ).sort("token_index")
            assert rows["expert_ids"].to_list() == logical.tolist()
            assert rows["gate_weights"].null_count() == rows.height
        srow = steps.filter((steps["rank"] == tr["rank"]) & (steps["step"] == tr["step"]))
        assert srow["phase"].item() == ("prefill" if tr["mode"] == 1 else "decode")
        assert srow["num_tokens"].item() == len(tr["positions"])
        assert srow["num_requests"].item() == tr["requests"]
        trow = tokens.filter((tokens["rank"] == tr["rank"]) & (tokens["step"] == tr["step"])).sort(
            "token_index"
        )
        assert trow["position"].to_list() == tr["positions"]
    placement = t.scan("placement").collect().sort("layer", "slot")
    assert placement.height == 2 * 8
    assert placement.filter(placement["layer"] == 1)["expert"].to_list() == PHY2LOG[1].tolist()
    assert placement.filter(placement["layer"] == 1)["rank"].to_list() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_per_pass_matches_per_token_counts(tmp_path: Path) -> None:
    files, _ = _per_token_dumps(tmp_path)
    pp_files = []
    for f in files:
        obj = torch.load(f, weights_only=True)
        for r in obj["records"]:  # per_pass records carry only the counts
            for k in (
                "input_ids",
                "positions",
                "extend_seq_lens",
                "forward_mode",
                "topk_ids_of_layer",
                "misc_objects",
            ):
                del r[k]
        path = f.with_name("pp_" + f.name)
        torch.save(obj, path)
        pp_files.append(path)
    import_sglang(pp_files, tmp_path / "pp")
    import_sglang(files, tmp_path / "pt")
    a = open_trace(tmp_path / "pp").scan("expert_load").collect().sort("rank", "step", "layer", "expert")
    b = open_trace(tmp_path / "pt").scan("expert_load").collect().sort("rank", "step", "layer", "expert")
    assert a.equals(b)
    assert not open_trace(tmp_path / "pp").has("routing")


def test_stat_mode(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    counts = torch.tensor(rng.integers(0, 9, (4, NUM_LAYERS, NUM_LOGICAL)), dtype=torch.int32)
    counts[:, 0] = 0  # dense layer
    counts[2] = 0  # an unused slot of the circular buffer
    path = tmp_path / "expert_distribution_recorder_1717000000.5.pt"
    torch.save({"rank": 0, "logical_count": counts, "average_utilization_rate_over_window": None}, path)
    report = import_sglang([path], tmp_path / "t")
    assert report.mode == "stat"
    assert any("summed over all ranks" in n for n in report.notes)
    load = open_trace(tmp_path / "t").scan("expert_load").collect()
    kept = [0, 1, 3]
    for step, src in enumerate(kept):
        for layer in (1, 2):
            got = (
                load.filter((load["step"] == step) & (load["layer"] == layer))
                .sort("expert")["num_tokens"]
                .to_list()
            )
            assert got == counts[src, layer].tolist()
    assert set(load["rank"].to_list()) == {0}


def test_destination_counts_are_summed_not_misattributed(tmp_path: Path) -> None:
    """DeepEP low-latency recording: each rank counts the tokens its own slots received."""
    recs = {0: [], 1: []}
    rng = np.random.default_rng(1)
    totals = np.zeros((2, NUM_LAYERS, 8), dtype=np.int64)
    for p in range(2):
        for rank in (0, 1):
            g = np.zeros((NUM_LAYERS, 8), dtype=np.int64)
            g[1:, rank * 4 : (rank + 1) * 4] = rng.integers(0, 5, (NUM_LAYERS - 1, 4))
            totals[p] += g
            recs[rank].append(
                {
                    "forward_pass_id": p,
                    "rank": rank,
                    "gatherer_key": "primary",
                    "global_physical_count": torch.tensor(g, dtype=torch.int32),
                }
            )
    files = []
    for rank in (0, 1):
        path = tmp_path / f"expert_distribution_recorder_1.0_{rank}.pt"
        torch.save({"records": recs[rank], "last_physical_to_logical_map": torch.tensor(PHY2LOG)}, path)
        files.append(path)
    report = import_sglang(files, tmp_path / "t")
    assert any("tokens received" in n for n in report.notes)
    load = open_trace(tmp_path / "t").scan("expert_load").collect()
    assert set(load["rank"].to_list()) == {0}
    for p in range(2):
        for layer in (1, 2):
            exp = np.bincount(PHY2LOG[layer], weights=totals[p, layer], minlength=NUM_LOGICAL)
            got = (
                load.filter((load["step"] == p) & (load["layer"] == layer))
                .sort("expert")["num_tokens"]
                .to_numpy()
            )
            assert np.array_equal(got, exp)


def test_bad_inputs_are_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    other = tmp_path / "other.pt"
    torch.save({"hello": 1}, other)
    for path, message in (
        (junk, "not a torch.save file"),
        (other, "not an SGLang expert distribution dump"),
        (tmp_path / "missing.pt", "no such file"),
    ):
        res = CliRunner().invoke(cli, ["import", "sglang", str(path), "--out", str(tmp_path / "o")])
        assert res.exit_code == 2, res.output
        assert message in res.output and res.output.count("\n") == 1


def test_model_mismatch_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("tracekit.models")
    files, _ = _per_token_dumps(tmp_path, passes=1)
    res = CliRunner().invoke(
        cli, ["import", "sglang", *map(str, files), "--out", str(tmp_path / "o"), "--model", "mixtral-8x7b"]
    )
    assert res.exit_code == 2 and "give the model that ran" in res.output


def test_missing_torch_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"tracekit\[torch\]"):
        import_sglang([tmp_path / "x.pt"], tmp_path / "o")


def test_expert_ids_beyond_int16_are_refused_not_wrapped(tmp_path: Path) -> None:
    """The schema stores expert ids as int16: a dump naming expert 32768 or above is refused in one
    line naming the file (before, the id wrapped to a negative one silently)."""
    stat = tmp_path / "stat.pt"
    counts = torch.zeros((2, 2, 32769), dtype=torch.int64)
    counts[0, 1, 32768] = 5
    torch.save({"rank": 0, "logical_count": counts, "average_utilization_rate_over_window": None}, stat)
    wide_map = torch.tensor([[0, 1, 40000, 3]] * 2)
    per_pass = tmp_path / "per_pass.pt"
    record = {
        "forward_pass_id": 1,
        "rank": 0,
        "gatherer_key": "primary",
        "global_physical_count": torch.ones((2, 4), dtype=torch.int64),
    }
    torch.save({"records": [record], "last_physical_to_logical_map": wide_map}, per_pass)
    for path in (stat, per_pass):
        res = CliRunner().invoke(
            cli, ["import", "sglang", str(path), "--out", str(tmp_path / f"o_{path.stem}")]
        )
        assert res.exit_code == 2, res.output
        assert res.output.count("\n") == 1 and str(path) in res.output and "int16" in res.output
        assert not (tmp_path / f"o_{path.stem}").exists()
