"""Fuzz the vLLM EPLB reader with generated states: well-formed ones give exactly the logical loads an
independent loop computes; malformed ones give one InputFormatError or UsageError line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.errors import InputFormatError, UsageError
from tracekit.importers.vllm import combine, parse_dump

PATH = Path("state_rank0.pt")


@st.composite
def states(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int, int]:
    """Per-rank EPLB states of one run: (states, world, logical experts)."""
    world = draw(st.integers(1, 3))
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(1, 5))
    per_rank = draw(st.integers(1, 3))
    slots = world * per_rank
    # every expert at least once when the slots allow, then random replicas
    base = np.arange(slots) % experts
    phy2log = np.stack([draw(st.permutations(base.tolist())) for _ in range(layers)]).astype(np.int64)
    local = draw(st.booleans()) and world > 1
    width = per_rank if local else slots
    window = draw(st.integers(1, 3))
    out = []
    for _ in range(world):
        loads = np.array(
            draw(
                st.lists(
                    st.integers(0, 9), min_size=window * layers * width, max_size=window * layers * width
                )
            )
        ).reshape(window, layers, width)
        state: dict[str, Any] = {"physical_to_logical_map": phy2log}
        if draw(st.booleans()):
            state["expert_load_window"] = loads
            if draw(st.booleans()):
                state["expert_load_window_step"] = np.array(draw(st.integers(0, window - 1)))
        else:
            state["expert_load_pass"] = loads[0]
        out.append(state)
    return out, world, int(phy2log.max()) + 1


def _expected(states: list[dict[str, Any]], world: int, experts: int) -> np.ndarray | None:
    """Loads per rank, pass, layer, expert by explicit loops (None: all zero)."""
    phy2log = states[0]["physical_to_logical_map"]
    layers, slots = phy2log.shape
    per_rank_loads = []
    for st_ in states:
        if "expert_load_window" in st_:
            w = st_["expert_load_window"]
            k = int(st_.get("expert_load_window_step", 0))
            passes = [w[(k + i) % w.shape[0]] for i in range(w.shape[0])]
        else:
            passes = [st_["expert_load_pass"]]
        per_rank_loads.append(passes)
    width = per_rank_loads[0][0].shape[1]
    num_passes = len(per_rank_loads[0])
    if width != slots:  # each rank's own slots: one global count
        full = np.zeros((1, num_passes, layers, slots), dtype=np.int64)
        for r, passes in enumerate(per_rank_loads):
            for p, arr in enumerate(passes):
                full[0, p, :, r * width : (r + 1) * width] += arr
        phys = full
    else:
        phys = np.array(per_rank_loads, dtype=np.int64)
        if len(states) > 1 and all(np.array_equal(phys[0], x) for x in phys[1:]):
            phys = phys[:1]
    used = [p for p in range(num_passes) if phys[:, p].sum() > 0]
    if not used:
        return None
    out = np.zeros((phys.shape[0], len(used), layers, experts), dtype=np.int64)
    for r in range(phys.shape[0]):
        for i, p in enumerate(used):
            for layer in range(layers):
                for slot in range(slots):
                    out[r, i, layer, phy2log[layer, slot]] += phys[r, p, layer, slot]
    return out


@settings(max_examples=1500, deadline=None)
@given(case=states())
def test_logical_loads_match_an_independent_count(case: tuple[list[dict[str, Any]], int, int]) -> None:
    raw, world, experts = case
    same_kind = (
        len(
            {
                (
                    "expert_load_window" in s,
                    "expert_load_window_step" in s,
                    s.get("expert_load_window", s.get("expert_load_pass")).shape,
                )
                for s in raw
            }
        )
        == 1
    )
    try:
        dumps = [parse_dump(s, Path(f"state_rank{r}.pt")) for r, s in enumerate(raw)]
        got = combine(dumps, list(range(world)), world, experts)
    except InputFormatError as exc:
        assert "\n" not in str(exc)
        if "all zeros" in str(exc):
            assert _expected(raw, world, experts) is None
        else:
            assert not same_kind, str(exc)  # only states of different shapes may be refused
        return
    want = _expected(raw, world, experts)
    assert want is not None
    np.testing.assert_array_equal(got.logical, want)


values = st.one_of(
    st.integers(-3, 40_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.none(),
    st.lists(st.integers(-1, 3), max_size=4),
    st.lists(st.lists(st.integers(-1, 3), min_size=2, max_size=2), max_size=3),
    st.lists(st.lists(st.lists(st.integers(-1, 3), min_size=2, max_size=2), max_size=2), max_size=2),
)


@settings(max_examples=1500, deadline=None)
@given(
    state=st.one_of(
        st.dictionaries(
            st.sampled_from(
                [
                    "physical_to_logical_map",
                    "expert_load_window",
                    "expert_load_pass",
                    "expert_load_window_step",
                    "logical_replica_count",
                    "other",
                ]
            ),
            values,
            max_size=5,
        ),
        values,
    )
)
def test_malformed_states_give_loads_or_one_error(state: Any) -> None:
    try:
        dump = parse_dump(state, PATH)
        got = combine([dump], [0], 1, int(dump.phy2log.max()) + 1)
    except (InputFormatError, UsageError) as exc:
        assert "\n" not in str(exc) and str(PATH) in str(exc)
        return
    assert got.logical.min() >= 0 and got.logical.sum() > 0
    assert got.logical.sum() == dump.loads.sum()  # replicas summed, nothing lost
