"""Placement core: constructors, validation, Parquet round trips and the replica rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.errors import SchemaError, UsageError
from tracekit.placement import (
    Placement,
    placement_at,
    read_placement,
    read_placements,
    route_to_slots,
    write_placements,
)
from tracekit.schema import table_spec


def _reference_route(row: np.ndarray, spr: int, ids: np.ndarray, src: np.ndarray, rpn: int) -> np.ndarray:
    """A per-token re-statement of the documented rule, with explicit counters."""
    slot_rank = np.arange(row.size) // spr
    counters: dict[tuple[int, int, int], int] = {}
    out = np.empty(ids.shape, dtype=np.int64)
    for n in range(ids.shape[0]):
        r = int(src[n])
        for k in range(ids.shape[1]):
            e = int(ids[n, k])
            replicas = [s for s in range(row.size) if row[s] == e]
            local = [s for s in replicas if slot_rank[s] == r]
            node = [s for s in replicas if slot_rank[s] // rpn == r // rpn]
            if local:
                cands, key = local, (e, 0, r)
            elif node:
                cands, key = node, (e, 1, r // rpn)
            else:
                cands, key = replicas, (e, 2, 0)
            j = counters.get(key, 0)
            counters[key] = j + 1
            out[n, k] = cands[j % len(cands)]
    return out


def test_contiguous_default_layout() -> None:
    p = Placement.contiguous([1, 2, 3], 8, 4)
    assert p.num_slots == 8 and p.slots_per_rank == 2 and p.num_redundant == 0
    # Rank r holds experts 2r and 2r + 1.
    ranks_of_expert = np.argmax(p.expert_ranks()[0], axis=1)
    assert ranks_of_expert.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (p.logcnt == 1).all()


@pytest.mark.parametrize("ctor", [Placement.contiguous, Placement.round_robin])
@pytest.mark.parametrize(("experts", "ranks", "redundant"), [(8, 4, 0), (8, 4, 4), (256, 32, 32), (6, 4, 2)])
def test_layouts_cover_every_expert_with_equal_slots(ctor, experts: int, ranks: int, redundant: int) -> None:
    p = ctor([0, 5], experts, ranks, num_redundant=redundant)
    assert p.phy2log.shape == (2, experts + redundant)
    assert (p.logcnt >= 1).all()
    assert p.logcnt.sum(axis=1).tolist() == [experts + redundant] * 2
    per_rank = p.expert_ranks().sum(axis=1)
    assert (per_rank == (experts + redundant) // ranks).all()


def test_round_robin_deals_experts_to_ranks() -> None:
    p = Placement.round_robin([0], 8, 4)
    ranks_of_expert = np.argmax(p.expert_ranks()[0], axis=1)
    assert ranks_of_expert.tolist() == [e % 4 for e in range(8)]
    # With a redundant pass, no rank holds two copies of one expert.
    q = Placement.round_robin([0], 8, 4, num_redundant=4)
    assert q.expert_ranks().max() == 1


def test_uneven_slots_refused() -> None:
    with pytest.raises(UsageError, match="multiple of the EP size"):
        Placement.contiguous([0], 10, 4)


def test_missing_expert_refused() -> None:
    with pytest.raises(UsageError, match="no slot for logical expert 2"):
        Placement(layers=(0,), phy2log=np.array([[0, 1, 1, 3]]), num_ranks=2, slots_per_rank=2, num_experts=4)


def test_parquet_round_trip_uses_trace_schema(tmp_path: Path) -> None:
    p = Placement.round_robin([1, 3], 8, 4, num_redundant=4).with_(policy="round-robin")
    out = p.write(tmp_path / "p.parquet")
    table = pq.read_table(out)
    expected = table_spec("placement").arrow_schema()
    assert table.schema.remove_metadata().equals(expected.remove_metadata())
    assert table.num_rows == 2 * 12
    # rank column agrees with slot numbering.
    assert (table.column("rank").to_numpy() == table.column("slot").to_numpy() // 3).all()
    back = read_placement(out)
    assert back == p and back.policy == "round-robin"


def test_epochs_round_trip_and_lookup(tmp_path: Path) -> None:
    a = Placement.contiguous([1], 8, 4, num_redundant=4)
    b = Placement.round_robin([1], 8, 4, num_redundant=4).with_(from_step=10)
    write_placements(tmp_path / "e.parquet", [a, b])
    epochs = read_placements(tmp_path / "e.parquet")
    assert epochs == [a, b]
    assert placement_at(epochs, 0) == a and placement_at(epochs, 9) == a
    assert placement_at(epochs, 10) == b and placement_at(epochs, 99) == b
    with pytest.raises(UsageError, match="2 placement epochs"):
        read_placement(tmp_path / "e.parquet")


def _write_rows(path: Path, rows: dict[str, list[int]]) -> Path:
    schema = table_spec("placement").arrow_schema()
    pq.write_table(pa.table({k: pa.array(v, type=schema.field(k).type) for k, v in rows.items()}), path)
    return path


def test_invalid_files_name_the_file(tmp_path: Path) -> None:
    # Slot 1 claims rank 1 while slots are numbered rank by rank (2 per rank).
    bad = _write_rows(
        tmp_path / "bad.parquet",
        {
            "from_step": [0] * 4,
            "layer": [0] * 4,
            "slot": [0, 1, 2, 3],
            "rank": [0, 1, 1, 1],
            "expert": [0, 1, 2, 3],
        },
    )
    with pytest.raises(SchemaError, match=r"bad\.parquet.*slot 1 is on rank 1"):
        read_placement(bad)
    # Expert 2 has no slot (expert 3 exists, so 4 experts are implied).
    hole = _write_rows(
        tmp_path / "hole.parquet",
        {
            "from_step": [0] * 4,
            "layer": [0] * 4,
            "slot": [0, 1, 2, 3],
            "rank": [0, 0, 1, 1],
            "expert": [0, 1, 1, 3],
        },
    )
    with pytest.raises(SchemaError, match=r"hole\.parquet.*no slot for logical expert 2"):
        read_placement(hole)
    # A missing slot row.
    gap = _write_rows(
        tmp_path / "gap.parquet",
        {"from_step": [0] * 3, "layer": [0] * 3, "slot": [0, 1, 3], "rank": [0, 0, 1], "expert": [0, 1, 2]},
    )
    with pytest.raises(SchemaError, match=r"gap\.parquet.*every slot"):
        read_placement(gap)
    nocol = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"slot": [0]}), nocol)
    with pytest.raises(SchemaError, match=r"nocol\.parquet.*missing column"):
        read_placement(nocol)
    with pytest.raises(UsageError, match="no such placement file"):
        read_placement(tmp_path / "absent.parquet")


def test_route_prefers_own_rank_then_node() -> None:
    # 4 experts, 3 ranks x 2 slots, 2 ranks per node. Expert 0 on ranks 0 and 2; expert 1 on rank 0.
    row = np.array([0, 1, 2, 3, 0, 1])  # rank0: 0,1  rank1: 2,3  rank2: 0,1
    p = Placement(layers=(7,), phy2log=row[None], num_ranks=3, slots_per_rank=2)
    ids = np.array([[0], [0], [0], [1], [1]])
    src = np.array([2, 1, 1, 1, 1])
    got = route_to_slots(p, 7, ids, src, ranks_per_node=2)
    # rank 2 has its own copy of 0 (slot 4); rank 1's node (ranks 0, 1) has slot 0; expert 1 from
    # rank 1 -> node copy slot 1 (rank 0), every time.
    assert got[:, 0].tolist() == [4, 0, 0, 1, 1]


def test_route_round_robin_splits_evenly() -> None:
    # Expert 0 replicated on ranks 1 and 2 (each its own node); tokens from rank 0 (node 0) spread.
    row = np.array([1, 2, 0, 3, 0, 4])
    p = Placement(layers=(0,), phy2log=row[None], num_ranks=3, slots_per_rank=2)
    ids = np.zeros((101, 1), dtype=np.int16)
    got = route_to_slots(p, 0, ids, np.zeros(101, dtype=np.int64), ranks_per_node=1)
    assert np.bincount(got[:, 0], minlength=6).tolist() == [0, 0, 51, 0, 50, 0]


@given(
    data=st.data(),
    num_experts=st.integers(2, 9),
    num_ranks=st.integers(1, 6),
    rpn=st.integers(1, 4),
    top_k=st.integers(1, 3),
    num_tokens=st.integers(0, 40),
)
def test_route_matches_reference(data, num_experts, num_ranks, rpn, top_k, num_tokens) -> None:
    top_k = min(top_k, num_experts)
    spr = -(-num_experts // num_ranks) + data.draw(st.integers(0, 2))
    num_slots = spr * num_ranks
    extra = data.draw(
        st.lists(
            st.integers(0, num_experts - 1),
            min_size=num_slots - num_experts,
            max_size=num_slots - num_experts,
        )
    )
    perm = data.draw(st.permutations(list(range(num_experts)) + extra))
    row = np.array(perm, dtype=np.int64)
    p = Placement(layers=(3,), phy2log=row[None], num_ranks=num_ranks, slots_per_rank=spr)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    ids = (
        np.stack([rng.permutation(num_experts)[:top_k] for _ in range(num_tokens)])
        if num_tokens
        else np.zeros((0, top_k), dtype=np.int64)
    )
    src = rng.integers(0, num_ranks, size=num_tokens)
    got = route_to_slots(p, 3, ids, src, rpn)
    assert got.shape == ids.shape
    assert (row[got] == ids).all()
    assert np.array_equal(got, _reference_route(row, spr, ids, src, rpn))


def test_route_errors() -> None:
    p = Placement.contiguous([1], 4, 2)
    with pytest.raises(UsageError, match="no layer 2"):
        route_to_slots(p, 2, np.zeros((1, 1)), np.zeros(1), 1)
    with pytest.raises(UsageError, match="outside"):
        route_to_slots(p, 1, np.array([[4]]), np.zeros(1), 1)
    with pytest.raises(UsageError, match="source ranks"):
        route_to_slots(p, 1, np.array([[0]]), np.array([5]), 1)


def test_read_from_trace_directory(tmp_path: Path) -> None:
    from tests.factories import tiny_manifest
    from tracekit.trace import TraceWriter

    p = Placement.round_robin((1, 2), 8, 4, num_redundant=4)
    manifest = tiny_manifest(world_size=2)
    for rank in (0, 1):  # both ranks record the same placement
        with TraceWriter(tmp_path / "t", manifest, rank=rank) as w:
            w.append("placement", p.to_arrow())
    assert read_placement(tmp_path / "t") == p
    with TraceWriter(tmp_path / "none", manifest) as w:
        w.append("steps", {"step": [0], "phase": ["decode"], "num_tokens": [1], "num_requests": [1]})
    with pytest.raises(SchemaError, match="no placement table"):
        read_placement(tmp_path / "none")
