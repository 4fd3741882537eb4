"""vLLM EPLB expert-load state (the tensors of vllm/distributed/eplb/eplb_state.py, dumped under their
vLLM names), imported and checked against counts computed here from the tokens' expert choices;
then used end to end by ``tracekit place --loads`` and ``tracekit replay --placement``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cli.main import cli
from tracekit.errors import InputFormatError, UsageError
from tracekit.importers.vllm import import_vllm
from tracekit.models import get_model
from tracekit.models.catalog import catalog_entry
from tracekit.placement import read_placements, route_to_slots
from tracekit.replay import Deployment, replay
from tracekit.trace import open_trace, validate

torch = pytest.importorskip("torch")

R, E, K, N, STEPS, WINDOW = 4, 8, 2, 8, 3, 4
MOE_LAYERS = 2
# 12 physical slots (3 per rank): experts 0-7 then redundant copies of 5, 0, 2, 7
PHY2LOG = np.array(
    [
        [0, 1, 2, 3, 4, 5, 6, 7, 5, 0, 2, 7],
        [3, 1, 0, 2, 4, 6, 5, 7, 1, 1, 4, 3],
    ]
)


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    return res.exit_code, res.output


def _model(tmp_path: Path) -> Path:
    """A small OLMoE (every layer MoE) as a config.json."""
    cfg = dict(catalog_entry("olmoe-1b-7b").config)
    cfg.update(
        num_hidden_layers=MOE_LAYERS, num_experts=E, num_experts_per_tok=K, hidden_size=64,
        intermediate_size=32, num_attention_heads=4, num_key_value_heads=4, head_dim=16, vocab_size=100,
    )  # fmt: skip
    path = tmp_path / "tiny-olmoe" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))
    return path


def _physical_counts(ids: np.ndarray) -> np.ndarray:
    """What each rank's EPLB window counts: ids[rank, step, layer, token, k] -> tokens per physical
    slot, a replica chosen per token round-robin (the importer must sum replicas back)."""
    out = np.zeros((R, STEPS, MOE_LAYERS, PHY2LOG.shape[1]), dtype=np.int64)
    for layer in range(MOE_LAYERS):
        replicas = [np.flatnonzero(PHY2LOG[layer] == e) for e in range(E)]
        for r in range(R):
            for s in range(STEPS):
                for t, choice in enumerate(ids[r, s, layer]):
                    for e in choice:
                        out[r, s, layer, replicas[e][t % replicas[e].size]] += 1
    return out


def _dumps(
    tmp_path: Path, ids: np.ndarray, *, suffix: str = ".pt", window_step: int | None = 1
) -> list[Path]:
    """One EPLB state per rank; passes written into the ring buffer from slot ``window_step`` on."""
    phys = _physical_counts(ids)
    files = []
    for r in range(R):
        window = np.zeros((WINDOW, MOE_LAYERS, PHY2LOG.shape[1]), dtype=np.int32)
        start = window_step or 0
        for s in range(STEPS):
            window[(start + s) % WINDOW] = phys[r, s]
        state = {
            "physical_to_logical_map": PHY2LOG.astype(np.int64),
            "logical_replica_count": np.stack([np.bincount(row, minlength=E) for row in PHY2LOG]),
            "expert_load_pass": np.zeros((MOE_LAYERS, PHY2LOG.shape[1]), dtype=np.int32),
            "expert_load_window": window,
        }
        if window_step is not None:
            state["expert_load_window_step"] = np.array(window_step)
        path = tmp_path / f"eplb_rank{r}{suffix}"
        if suffix == ".pt":
            torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
        elif suffix == ".npz":
            np.savez(path, **state)
        else:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(np.asarray(v)) for k, v in state.items()}, str(path))
        files.append(path)
    return files


def _truth(ids: np.ndarray) -> np.ndarray:
    """Tokens per rank, step, layer and logical expert, counted from the choices."""
    out = np.zeros((R, STEPS, MOE_LAYERS, E), dtype=np.int64)
    for r in range(R):
        for s in range(STEPS):
            for layer in range(MOE_LAYERS):
                out[r, s, layer] = np.bincount(ids[r, s, layer].reshape(-1), minlength=E)
    return out


@pytest.fixture
def run(tmp_path: Path) -> tuple[np.ndarray, Path, Path]:
    ids = random_ids(np.random.default_rng(5), (R, STEPS, MOE_LAYERS, N), E, K)
    model = _model(tmp_path)
    write_ranked_trace(tmp_path / "routing", ids, num_experts=E, arch=get_model(model))
    return ids, model, tmp_path / "routing"


def test_expert_loads_and_placement_match_the_choices(
    tmp_path: Path, run: tuple[np.ndarray, Path, Path]
) -> None:
    ids, model, _ = run
    files = _dumps(tmp_path, ids)
    code, out = _invoke(
        "import", "vllm", *map(str, files), "--out", str(tmp_path / "v"), "--model", str(model),
        "--loads-csv", str(tmp_path / "loads.csv"),
    )  # fmt: skip
    assert code == 0, out
    assert "1 all-zero (unused) window slots skipped" in out
    trace = open_trace(tmp_path / "v")
    load = trace.scan("expert_load").collect().sort("rank", "step", "layer", "expert")
    got = load["num_tokens"].to_numpy().reshape(R, STEPS, MOE_LAYERS, E)
    np.testing.assert_array_equal(got, _truth(ids))
    assert sorted(set(load["layer"])) == [0, 1]  # the model's MoE layers
    placement = trace.scan("placement").collect().sort("layer", "slot")
    np.testing.assert_array_equal(placement["expert"].to_numpy().reshape(MOE_LAYERS, -1), PHY2LOG)
    np.testing.assert_array_equal(placement["rank"].to_numpy()[:12], np.arange(12) // 3)
    assert trace.manifest.parallel.ep_size == R and trace.manifest.model.num_experts == E
    validate(tmp_path / "v")
    # the loads file: one row per layer, summed over ranks and steps
    csv = pl.read_csv(tmp_path / "loads.csv")
    assert csv["layer"].to_list() == [0, 1]
    np.testing.assert_array_equal(csv.drop("layer").to_numpy(), _truth(ids).sum(axis=(0, 1)))


def test_place_loads_and_replay_placement_use_the_import(
    tmp_path: Path, run: tuple[np.ndarray, Path, Path]
) -> None:
    ids, model, routing = run
    files = _dumps(tmp_path, ids)
    loads = tmp_path / "loads.csv"
    code, out = _invoke(
        "import",
        "vllm",
        *map(str, files),
        "--out",
        str(tmp_path / "v"),
        "--model",
        str(model),
        "--loads-csv",
        str(loads),
    )
    assert code == 0, out
    # place --loads: an EPLB placement computed from vLLM's loads
    code, out = _invoke(
        "place",
        "--loads",
        str(loads),
        "--ep",
        str(R),
        "--redundant",
        "4",
        "--out",
        str(tmp_path / "p.parquet"),
    )
    assert code == 0, out
    (planned,) = read_placements(tmp_path / "p.parquet")
    assert planned.layers == (0, 1) and planned.num_ranks == R and planned.slots_per_rank == 3
    # the hottest expert of each layer gets a replica
    totals = _truth(ids).sum(axis=(0, 1))
    for li in range(MOE_LAYERS):
        assert np.count_nonzero(planned.phy2log[li] == totals[li].argmax()) >= 2
    # replay --placement with the planned placement, and with vLLM's own (the imported trace)
    for placement in (tmp_path / "p.parquet", tmp_path / "v"):
        code, out = _invoke(
            "replay", str(routing), "--hw", "h200-sxm", "--ep", str(R), "--placement", str(placement)
        )
        assert code == 0, out
    (vllm_placement,) = read_placements(tmp_path / "v")
    np.testing.assert_array_equal(vllm_placement.phy2log, PHY2LOG)
    res = replay(routing, Deployment(hw="h200-sxm", ep=R, placement=str(tmp_path / "v"), impl="nccl"))
    for s in range(STEPS):
        for li, layer in enumerate((0, 1)):
            slots = route_to_slots(
                vllm_placement, layer, ids[:, s, li].reshape(-1, K), np.repeat(np.arange(R), N), 8
            )
            want = np.bincount((slots // vllm_placement.slots_per_rank).reshape(-1), minlength=R)
            got = res.ranks.filter((pl.col("layer") == layer) & (pl.col("step") == s)).sort("rank")[
                "tokens_recv"
            ]
            np.testing.assert_array_equal(got.to_numpy(), want)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_every_dump_format_gives_the_same_rows(
    tmp_path: Path, run: tuple[np.ndarray, Path, Path], suffix: str
) -> None:
    ids, model, _ = run
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    import_vllm(_dumps(tmp_path / "a", ids), tmp_path / "pt", model=get_model(model))
    import_vllm(_dumps(tmp_path / "b", ids, suffix=suffix), tmp_path / "other", model=get_model(model))
    for table in ("expert_load", "placement"):
        a = open_trace(tmp_path / "pt").scan(table).collect().sort(pl.all())
        b = open_trace(tmp_path / "other").scan(table).collect().sort(pl.all())
        assert a.equals(b)


def test_a_window_without_its_step_keeps_the_stored_order_and_says_so(
    tmp_path: Path, run: tuple[np.ndarray, Path, Path]
) -> None:
    ids, _, _ = run
    rep = import_vllm(_dumps(tmp_path, ids, window_step=None), tmp_path / "v")
    assert any("stored order" in n for n in rep.notes)
    assert any("MoE-layer indices" in n for n in rep.notes)  # no --model: layers stay MoE indices
    load = open_trace(tmp_path / "v").scan("expert_load").collect().sort("rank", "step", "layer", "expert")
    np.testing.assert_array_equal(load["num_tokens"].to_numpy().reshape(R, STEPS, MOE_LAYERS, E), _truth(ids))


def test_identical_ranks_are_written_once(tmp_path: Path) -> None:
    """Naive all-to-all: every rank saw the same tokens, so vLLM's per-rank windows are equal."""
    window = np.zeros((2, 1, 4), dtype=np.int64)
    window[0, 0] = [3, 0, 1, 2]
    files = []
    for r in range(2):
        path = tmp_path / f"s_rank{r}.npz"
        np.savez(
            path,
            physical_to_logical_map=np.array([[0, 1, 2, 0]]),
            expert_load_window=window,
            expert_load_window_step=np.array(0),
        )
        files.append(path)
    rep = import_vllm(files, tmp_path / "v")
    assert any("written once" in n for n in rep.notes)
    load = open_trace(tmp_path / "v").scan("expert_load").collect().sort("expert")
    assert load["rank"].to_list() == [0, 0, 0] and load["num_tokens"].to_list() == [
        5,
        0,
        1,
    ]  # slot 3 is expert 0


def test_local_slot_counts_are_summed_over_ranks(tmp_path: Path) -> None:
    """Versions whose window covers the rank's own slots count the tokens those slots received."""
    phy2log = np.array([[0, 1, 2, 3, 0, 1]])  # 2 ranks x 3 slots
    files = []
    for r, counts in enumerate(([4, 1, 0], [2, 5, 7])):
        path = tmp_path / f"l_rank{r}.npz"
        np.savez(path, physical_to_logical_map=phy2log, expert_load_pass=np.array([counts]))
        files.append(path)
    rep = import_vllm(files, tmp_path / "v")
    assert any("received" in n for n in rep.notes)
    load = open_trace(tmp_path / "v").scan("expert_load").collect().sort("expert")
    # slots 0..5 hold experts 0,1,2,3,0,1 with counts 4,1,0,2,5,7
    assert load["num_tokens"].to_list() == [4 + 5, 1 + 7, 0, 2]
    with pytest.raises(UsageError, match="give all 2 files"):
        import_vllm(files[:1], tmp_path / "w")


def test_a_nested_model_state_is_accepted(tmp_path: Path) -> None:
    state = {"physical_to_logical_map": torch.tensor([[1, 0]]), "expert_load_pass": torch.tensor([[2, 3]])}
    torch.save({"model_states": {"a1b2c3": state}}, tmp_path / "s.pt")
    import_vllm([tmp_path / "s.pt"], tmp_path / "v")
    load = open_trace(tmp_path / "v").scan("expert_load").collect().sort("expert")
    assert load["num_tokens"].to_list() == [3, 2]


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"expert_load_pass": np.zeros((1, 2), np.int64)}, "no physical_to_logical_map"),
        ({"physical_to_logical_map": np.array([[0, 1]])}, "neither expert_load_window nor expert_load_pass"),
        (
            {
                "physical_to_logical_map": np.array([[0, 40000]]),
                "expert_load_pass": np.ones((1, 2), np.int64),
            },
            "int16",
        ),
        (
            {"physical_to_logical_map": np.array([[0, 1]]), "expert_load_pass": -np.ones((1, 2), np.int64)},
            "negative token counts",
        ),
        (
            {"physical_to_logical_map": np.array([[0, 1]]), "expert_load_pass": np.zeros((1, 2), np.int64)},
            "all zeros",
        ),
        (
            {"physical_to_logical_map": np.array([[0, 1]]), "expert_load_pass": np.ones((1, 3), np.int64)},
            "equal share",
        ),
        (
            {
                "physical_to_logical_map": np.array([[0, 1]]),
                "expert_load_pass": np.ones((1, 2), np.int64),
                "logical_replica_count": np.array([[2, 0]]),
            },
            "disagrees",
        ),
        (
            {
                "physical_to_logical_map": np.array([[0, 1]]),
                "expert_load_window": np.ones((2, 1, 2), np.int64),
                "expert_load_window_step": np.array(5),
            },
            "0..1",
        ),
    ],
)
def test_bad_dumps_are_refused_in_one_line(tmp_path: Path, state: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **state)
    code, out = _invoke("import", "vllm", str(path), "--out", str(tmp_path / "v"))
    assert code == 2 and out.count("\n") == 1, out
    assert message in out and str(path) in out


def test_unreadable_files_are_refused_in_one_line(tmp_path: Path) -> None:
    for name, data in (("x.pt", b"not a pickle"), ("x.npz", b"PK junk"), ("x.safetensors", b"\x00\x01")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputFormatError) as exc:
            import_vllm([path], tmp_path / "v")
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(UsageError, match="no such file"):
        import_vllm([tmp_path / "missing.pt"], tmp_path / "v")
