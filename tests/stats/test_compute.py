"""compute_stats on small traces built in code, every column against a numpy hand computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from tests.factories import tiny_arch, tiny_manifest, write_routing_trace
from tracekit.cli.main import cli
from tracekit.stats import compute_stats, read_stats
from tracekit.trace import TraceWriter

E, K, STEPS, N = 8, 2, 6, 20


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(7)
    pop = np.array([8, 4, 2, 2, 1, 1, 1, 1], dtype=float)
    ids = np.empty((STEPS, 2, N, K), dtype=np.int64)
    for s in range(STEPS):
        for layer in range(2):
            for t in range(N):
                ids[s, layer, t] = rng.choice(E, K, replace=False, p=pop / pop.sum())
    # layer 2 copies layer 1's first choice on half the tokens, to give cross-layer structure
    ids[:, 1, : N // 2, 0] = ids[:, 0, : N // 2, 0]
    clash = ids[:, 1, :, 0] == ids[:, 1, :, 1]
    ids[:, 1, :, 1][clash] = (ids[:, 1, :, 1][clash] + 1) % E
    path = tmp_path_factory.mktemp("stats") / "trace"
    write_routing_trace(path, ids)
    return path, ids


def loads_of(ids: np.ndarray) -> np.ndarray:
    """[steps, layers, E] loads by counting."""
    out = np.zeros((*ids.shape[:2], E))
    for s in range(ids.shape[0]):
        for layer in range(ids.shape[1]):
            for e in ids[s, layer].reshape(-1):
                out[s, layer, e] += 1
    return out


def test_load_columns(routed: tuple[Path, np.ndarray]) -> None:
    path, ids = routed
    st = compute_stats(path, ep=2, window_steps=2)
    load = loads_of(ids)
    for li, row in enumerate(st.layers.sort("layer").iter_rows(named=True)):
        x = load[:, li].sum(axis=0)
        mean = x.mean()
        p = x / x.sum()
        assert row["layer"] == li + 1
        assert row["num_assignments"] == STEPS * N * K
        assert row["num_tokens"] == STEPS * N
        assert row["max_over_mean"] == pytest.approx(x.max() / mean)
        assert row["imbalance"] == pytest.approx(x.max() / mean - 1)
        assert row["cv"] == pytest.approx(x.std() / mean)
        assert row["entropy_bits"] == pytest.approx(-(p[p > 0] * np.log2(p[p > 0])).sum())
        pair_gini = np.abs(x[:, None] - x[None, :]).sum() / (2 * E * E * mean)
        assert row["gini"] == pytest.approx(pair_gini)
        ranks = load[:, li].reshape(STEPS, 2, E // 2).sum(axis=2)  # contiguous EP2
        per_step = (ranks.max(axis=1) - ranks.mean(axis=1)) / ranks.mean(axis=1)
        assert row["step_rank_imbalance"] == pytest.approx(per_step.mean())
        assert row["step_rank_imbalance_max"] == pytest.approx(per_step.max())
        agg = ranks.sum(axis=0)
        assert row["rank_imbalance"] == pytest.approx(agg.max() / agg.mean() - 1)
        step_mm = load[:, li].max(axis=1) / load[:, li].mean(axis=1)
        assert row["step_max_over_mean"] == pytest.approx(step_mm.mean())
    experts = st.experts.filter(st.experts["layer"] == 1).sort("expert")
    assert experts["num_tokens"].to_list() == load[:, 0].sum(axis=0).astype(int).tolist()
    ranks = st.ranks.filter(st.ranks["layer"] == 2).sort("rank")
    assert ranks["num_tokens"].to_list() == load[:, 1].reshape(STEPS, 2, 4).sum(axis=(0, 2)).tolist()


def test_drift_windows(routed: tuple[Path, np.ndarray]) -> None:
    path, ids = routed
    st = compute_stats(path, window_steps=2)
    load = loads_of(ids)
    hot_n = st.meta["hot_set_size"]
    assert hot_n == max(K, E // 8)
    win = st.windows.filter(st.windows["layer"] == 1).sort("window")
    sets = []
    for w in range(3):
        x = load[2 * w : 2 * w + 2, 0].sum(axis=0)
        order = sorted(range(E), key=lambda e: (-x[e], e))
        sets.append(set(order[:hot_n]))
    expect = [len(sets[i] & sets[i - 1]) / len(sets[i] | sets[i - 1]) for i in (1, 2)]
    assert win["hot_jaccard_prev"].to_list()[1:] == pytest.approx(expect)
    assert win["hot_jaccard_first"].to_list()[1:] == pytest.approx(
        [len(sets[i] & sets[0]) / len(sets[i] | sets[0]) for i in (1, 2)]
    )
    for w in range(3):
        x = load[2 * w : 2 * w + 2, 0].sum(axis=0)
        row = win.row(w, named=True)
        assert (row["step_start"], row["step_end"]) == (2 * w, 2 * w + 1)
        assert row["num_assignments"] == 2 * N * K
        assert row["max_over_mean"] == pytest.approx(x.max() / x.mean())
        assert row["cv"] == pytest.approx(x.std() / x.mean())
        assert row["gini"] == pytest.approx(np.abs(x[:, None] - x[None, :]).sum() / (2 * E * E * x.mean()))
        if w:
            prev = load[2 * w - 2 : 2 * w, 0].sum(axis=0)
            assert row["load_corr_prev"] == pytest.approx(np.corrcoef(x, prev)[0, 1])
    assert win["hot_jaccard_prev"][0] is None
    layer_row = st.layers.filter(st.layers["layer"] == 1).row(0, named=True)
    assert layer_row["hot_jaccard"] == pytest.approx(np.mean(expect))


def naive_nmi(pairs: list[tuple[int, int]]) -> float:
    n = len(pairs)
    joint: dict[tuple[int, int], int] = {}
    la: dict[int, int] = {}
    lb: dict[int, int] = {}
    for a, b in pairs:
        joint[(a, b)] = joint.get((a, b), 0) + 1
        la[a] = la.get(a, 0) + 1
        lb[b] = lb.get(b, 0) + 1
    mi = sum(c / n * math.log(c * n / (la[a] * lb[b])) for (a, b), c in joint.items())
    ha = -sum(c / n * math.log(c / n) for c in la.values())
    hb = -sum(c / n * math.log(c / n) for c in lb.values())
    return mi / math.sqrt(ha * hb)


def test_coactivation_and_cross_layer(routed: tuple[Path, np.ndarray]) -> None:
    path, ids = routed
    st = compute_stats(path)
    rows = {r["layer"]: r for r in st.layers.iter_rows(named=True)}
    first = ids[:, 0].reshape(-1, K)
    second = ids[:, 1].reshape(-1, K)
    co_pairs = [(int(t[i]), int(t[j])) for t in first for i in range(K) for j in range(K) if i != j]
    assert rows[1]["coact_nmi"] == pytest.approx(naive_nmi(co_pairs))
    x_pairs = [
        (int(a[i]), int(b[j])) for a, b in zip(first, second, strict=True) for i in range(K) for j in range(K)
    ]
    assert rows[1]["next_layer"] == 2
    assert rows[1]["cross_layer_nmi"] == pytest.approx(naive_nmi(x_pairs))
    assert rows[2]["cross_layer_nmi"] is None
    # top pair of layer 1 by a plain count
    counts: dict[tuple[int, int], int] = {}
    for t in first:
        a, b = sorted(int(v) for v in t)
        counts[(a, b)] = counts.get((a, b), 0) + 1
    best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    top = st.pairs.filter(st.pairs["layer"] == 1).row(0, named=True)
    assert (top["expert_a"], top["expert_b"], top["num_tokens"]) == (best[0][0], best[0][1], best[1])
    freq = np.bincount(first.reshape(-1), minlength=E) / len(first)
    assert top["lift"] == pytest.approx(best[1] / (len(first) * freq[best[0][0]] * freq[best[0][1]]))


def test_routing_only_trace_gives_same_loads(routed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    _, ids = routed
    arch = tiny_arch(num_experts=E, top_k=K, num_layers=3)
    with TraceWriter(tmp_path / "r", tiny_manifest(arch)) as w:
        for s in range(STEPS):
            for li, layer in enumerate(arch.moe_layers):
                w.append(
                    "routing",
                    {
                        "step": np.full(N, s, np.int32),
                        "layer": np.full(N, layer, np.int16),
                        "token_index": np.arange(N, dtype=np.int32),
                        "expert_ids": ids[s, li].astype(np.int16),
                    },
                )
    a = compute_stats(tmp_path / "r")
    b = compute_stats(routed[0])
    assert a.meta["load_source"] == "routing"
    assert a.layers["gini"].to_list() == pytest.approx(b.layers["gini"].to_list())
    assert a.experts["num_tokens"].to_list() == b.experts["num_tokens"].to_list()


def test_write_read_and_sql(routed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    st = compute_stats(routed[0], ep=4)
    out = st.write(tmp_path / "s")
    back = read_stats(out)
    assert back.layers.equals(st.layers)
    assert back.meta["ep"] == 4
    con = duckdb.connect()
    got = con.execute(
        f"SELECT layer, gini FROM read_parquet('{out / 'stats_layers.parquet'}') ORDER BY layer"
    ).fetchall()
    assert [g for _, g in got] == pytest.approx(st.layers.sort("layer")["gini"].to_list())


def test_cli_stats(routed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["stats", str(routed[0]), "--ep", "2", "--json", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    expect = compute_stats(routed[0], ep=2).layers.sort("layer")
    assert [r["max_over_mean"] for r in rows] == pytest.approx(expect["max_over_mean"].to_list())
    assert (tmp_path / "o" / "stats_pairs.parquet").is_file()
    res = runner.invoke(cli, ["stats", str(routed[0]), "--ep", "3"])
    assert res.exit_code == 2
    assert "does not divide" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["stats", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_ep_defaults_to_the_recorded_degree(routed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    _, ids = routed
    arch = tiny_arch(num_experts=E, top_k=K, num_layers=3)
    write_routing_trace(tmp_path / "ep2", ids, manifest=tiny_manifest(arch, world_size=2))
    st = compute_stats(tmp_path / "ep2")
    assert st.meta["ep"] == 2 and set(st.ranks["rank"].to_list()) == {0, 1}
    assert (
        st.layers["step_rank_imbalance"].to_list()
        == compute_stats(routed[0], ep=2).layers["step_rank_imbalance"].to_list()
    )


def test_cli_stats_with_a_placement_file(routed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    from tracekit.placement import Placement

    path, ids = routed
    # round-robin over 2 ranks with 2 redundant slots: expert e on rank e % 2, experts 0 and 1 replicated
    placement = Placement.round_robin([1, 2], E, 2, num_redundant=2)
    placement.write(tmp_path / "p.parquet")
    res = CliRunner().invoke(cli, ["stats", str(path), "--placement", str(tmp_path / "p.parquet"), "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["layer"]: r for r in json.loads(res.stdout)}
    load = loads_of(ids)
    for li, layer in enumerate((1, 2)):
        slots = placement.row(layer)
        replicas = np.bincount(slots, minlength=E)
        ranks = np.zeros((STEPS, 2))
        for slot, expert in enumerate(slots):
            ranks[:, slot // (len(slots) // 2)] += load[:, li, expert] / replicas[expert]
        per_step = (ranks.max(axis=1) - ranks.mean(axis=1)) / ranks.mean(axis=1)
        assert rows[layer]["ep"] == 2
        assert rows[layer]["step_rank_imbalance"] == pytest.approx(per_step.mean())
    res = CliRunner().invoke(
        cli, ["stats", str(path), "--placement", str(tmp_path / "p.parquet"), "--ep", "4"]
    )
    assert res.exit_code == 2 and "differs" in res.output


def test_expert_load_only_trace(routed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """Aggregate sources (no routing): load columns as usual, per-token columns null; fit still works."""
    _, ids = routed
    arch = tiny_arch(num_experts=E, top_k=K, num_layers=3)
    load = loads_of(ids)
    with TraceWriter(tmp_path / "agg", tiny_manifest(arch)) as w:
        for s in range(STEPS):
            for li, layer in enumerate(arch.moe_layers):
                w.append(
                    "expert_load",
                    {
                        "step": np.full(E, s, np.int32),
                        "layer": np.full(E, layer, np.int16),
                        "expert": np.arange(E, dtype=np.int16),
                        "num_tokens": load[s, li].astype(np.int64),
                    },
                )
    st = compute_stats(tmp_path / "agg")
    full = compute_stats(routed[0])
    assert st.layers["gini"].to_list() == pytest.approx(full.layers["gini"].to_list())
    assert st.layers["coact_nmi"].to_list() == [None, None]
    assert st.pairs.height == 0

    from tracekit.synth import SynthConfig, parse_spec, synthesize

    res = synthesize(
        SynthConfig(
            arch=arch,
            spec=parse_spec(f"fitted:{tmp_path / 'agg'}"),
            phase="decode",
            tokens_per_step=200,
            steps=10,
            seed=0,
        ),
        tmp_path / "syn",
    )
    assert res.detail["model_params"]["cluster_strength"] == 0.0
    got = compute_stats(res.path).layers["gini"].to_list()
    assert got == pytest.approx(full.layers["gini"].to_list(), rel=0.1)
