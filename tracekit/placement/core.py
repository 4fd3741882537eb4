"""The expert placement: which logical expert each physical slot holds, per layer, and how tokens
choose among the replicas of a replicated expert.

Shape legend: ``L`` layers, ``S`` physical slots (``num_ranks x slots_per_rank``, numbered rank by
rank), ``E`` logical experts, ``R`` ranks, ``N`` tokens, ``K`` top-k.

The replica rule (``route_to_slots``), the one rule the replay and every policy estimate use:

1. a token whose source rank holds a replica of its expert uses that replica (several on the rank:
   round-robin among them);
2. otherwise, if its source rank's node (``rank // ranks_per_node``) holds replicas, it uses one of
   those, round-robin;
3. otherwise it uses one of all the expert's replicas, round-robin.

Round-robin is by token: among the tokens (in row order) that pick expert ``e`` and fall in the same
case from the same rank (case 1), node (case 2) or anywhere (case 3), the ``j``-th goes to the
``j mod c``-th of the ``c`` candidate replicas, candidates ordered by slot. An expert with one
replica always gets slot ``phy2log``'s only match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.errors import SchemaError, UsageError, param
from tracekit.schema.tables import table_spec
from tracekit.trace.layout import make_output_dir

#: Parquet key-value metadata key naming the policy that produced a placement file.
META_POLICY_KEY = b"tracekit.placement.policy"


@dataclass(frozen=True, kw_only=True, eq=False)
class Placement:
    """Physical expert slots per layer, valid from ``from_step`` on.

    ``phy2log[i, s]`` is the logical expert held by physical slot ``s`` in decoder layer
    ``layers[i]``; slot ``s`` sits on rank ``s // slots_per_rank``. Every logical expert
    ``0..num_experts-1`` has at least one slot in every layer; every rank has the same slot count.
    """

    #: Decoder layer ids (0-based, counting dense layers), one per row of ``phy2log``.
    layers: tuple[int, ...]
    #: int array [len(layers), num_ranks * slots_per_rank]: logical expert of each physical slot.
    phy2log: np.ndarray
    #: Expert-parallel ranks (GPUs) holding the slots.
    num_ranks: int
    #: Physical expert slots on each rank.
    slots_per_rank: int
    #: First step at which this placement is in force (placement epochs).
    from_step: int = 0
    #: Name of the policy that made it (informational; written into the file's metadata).
    policy: str = "contiguous"
    #: Logical experts per layer; -1 (default): one more than the largest id in ``phy2log``.
    num_experts: int = field(default=-1)
    #: Routing tables built by ``route_to_slots``, per (layer, ranks_per_node).
    _route_cache: dict[tuple[int, int], Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        arr = np.array(self.phy2log, dtype=np.int64, copy=True)
        if arr.ndim == 1:
            arr = arr[None, :]
        arr.setflags(write=False)
        object.__setattr__(self, "phy2log", arr)
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.num_experts < 0:
            object.__setattr__(self, "num_experts", int(arr.max()) + 1 if arr.size else 0)
        problem = _problem(self)
        if problem:
            raise UsageError(f"invalid placement: {problem}")

    # -- derived ---------------------------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        return self.num_ranks * self.slots_per_rank

    @property
    def num_redundant(self) -> int:
        """Slots beyond one per logical expert."""
        return self.num_slots - self.num_experts

    @property
    def slot_rank(self) -> np.ndarray:
        """int array [S]: rank holding each slot."""
        return np.arange(self.num_slots, dtype=np.int64) // self.slots_per_rank

    def row(self, layer: int) -> np.ndarray:
        """phy2log of one decoder layer (raises UsageError for a layer it does not place)."""
        try:
            return self.phy2log[self.layers.index(int(layer))]
        except ValueError:
            raise UsageError(
                f"placement has no layer {layer}; it places layers {list(self.layers)}"
            ) from None

    @property
    def logcnt(self) -> np.ndarray:
        """int array [L, E]: replica count of each logical expert."""
        out = np.zeros((len(self.layers), self.num_experts), dtype=np.int64)
        rows = np.repeat(np.arange(len(self.layers)), self.num_slots)
        np.add.at(out, (rows, self.phy2log.reshape(-1)), 1)
        return out

    def expert_ranks(self) -> np.ndarray:
        """int array [L, E, R]: replicas of each logical expert on each rank."""
        L, E, R = len(self.layers), self.num_experts, self.num_ranks
        out = np.zeros((L, E, R), dtype=np.int64)
        li = np.repeat(np.arange(L), self.num_slots)
        np.add.at(out, (li, self.phy2log.reshape(-1), np.tile(self.slot_rank, L)), 1)
        return out

    def rank_loads(self, loads: np.ndarray) -> np.ndarray:
        """float array [L, R]: tokens per rank if each expert's ``loads[L, E]`` split evenly over
        its replicas (the estimate policies optimise; ``route_to_slots`` gives exact counts)."""
        loads = np.asarray(loads, dtype=np.float64)
        if loads.shape != (len(self.layers), self.num_experts):
            raise UsageError(
                f"loads have shape {loads.shape}; this placement needs "
                f"({len(self.layers)} layers, {self.num_experts} experts)"
            )
        per_replica = loads / self.logcnt
        per_slot = np.take_along_axis(per_replica, self.phy2log, axis=1)
        return per_slot.reshape(len(self.layers), self.num_ranks, self.slots_per_rank).sum(-1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Placement):
            return NotImplemented
        return (
            self.layers == other.layers
            and self.num_ranks == other.num_ranks
            and self.slots_per_rank == other.slots_per_rank
            and self.from_step == other.from_step
            and self.num_experts == other.num_experts
            and np.array_equal(self.phy2log, other.phy2log)
        )

    __hash__ = None  # type: ignore[assignment]

    def with_(self, **changes: Any) -> Placement:
        """A copy with some fields changed (``from_step``, ``policy``, ...)."""
        import dataclasses

        return dataclasses.replace(self, **changes)

    # -- constructors ----------------------------------------------------------------------------
    @classmethod
    def contiguous(
        cls, layers: tuple[int, ...] | list[int], num_experts: int, num_ranks: int, *, num_redundant: int = 0
    ) -> Placement:
        """The default layout: slot ``s`` holds expert ``s mod num_experts`` (so without redundant
        slots rank ``r`` holds experts ``r*E/R .. (r+1)*E/R - 1``; redundant slots, at the end,
        repeat experts 0, 1, ... whatever their load)."""
        num_slots = _check_sizes(num_experts, num_ranks, num_redundant)
        row = np.arange(num_slots, dtype=np.int64) % num_experts
        return cls(
            layers=tuple(layers),
            phy2log=np.tile(row, (len(layers), 1)),
            num_ranks=num_ranks,
            slots_per_rank=num_slots // num_ranks,
            policy="contiguous",
            num_experts=num_experts,
        )

    @classmethod
    def round_robin(
        cls, layers: tuple[int, ...] | list[int], num_experts: int, num_ranks: int, *, num_redundant: int = 0
    ) -> Placement:
        """Experts dealt to ranks like cards: expert ``e`` on rank ``e mod R``. Redundant slots deal
        experts 0, 1, ... again (whatever their load), each pass over the experts shifted by one
        rank when ``R`` divides ``E``, so a replica does not land on its original's rank."""
        num_slots = _check_sizes(num_experts, num_ranks, num_redundant)
        spr = num_slots // num_ranks
        d = np.arange(num_slots, dtype=np.int64)
        shift = d // num_experts if num_experts % num_ranks == 0 else 0
        rank_of = (d + shift) % num_ranks
        # Position of each dealt item on its rank: arrival order (stable sort by rank).
        order = np.argsort(rank_of, kind="stable")
        row = np.empty(num_slots, dtype=np.int64)
        row[np.arange(num_slots)] = (d % num_experts)[order]
        return cls(
            layers=tuple(layers),
            phy2log=np.tile(row, (len(layers), 1)),
            num_ranks=num_ranks,
            slots_per_rank=spr,
            policy="round-robin",
            num_experts=num_experts,
        )

    # -- files -----------------------------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        """Rows of the trace's ``placement`` table (from_step, layer, slot, rank, expert)."""
        return _epochs_to_arrow([self])

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write as one Parquet file with the ``placement`` table's schema."""
        return write_placements(path, [self])


def _check_sizes(num_experts: int, num_ranks: int, num_redundant: int) -> int:
    if num_experts < 1 or num_ranks < 1 or num_redundant < 0:
        raise UsageError(
            f"need num_experts >= 1, num_ranks >= 1, num_redundant >= 0 "
            f"(got {num_experts}, {num_ranks}, {num_redundant})"
        )
    num_slots = num_experts + num_redundant
    if num_slots % num_ranks:
        raise UsageError(
            f"{num_experts} experts + {num_redundant} redundant slots = {num_slots} slots do not split "
            f"evenly over {num_ranks} ranks; choose --redundant so that experts + redundant is a "
            f"multiple of the EP size"
        )
    return num_slots


def _problem(p: Placement) -> str | None:
    arr = p.phy2log
    if p.num_ranks < 1 or p.slots_per_rank < 1:
        return f"num_ranks ({p.num_ranks}) and slots_per_rank ({p.slots_per_rank}) must be >= 1"
    if arr.shape != (len(p.layers), p.num_slots):
        return (
            f"phy2log has shape {arr.shape}; expected ({len(p.layers)} layers, "
            f"{p.num_ranks} ranks x {p.slots_per_rank} slots = {p.num_slots})"
        )
    if len(set(p.layers)) != len(p.layers):
        return f"layers {list(p.layers)} repeat a layer"
    if arr.size and (arr.min() < 0 or arr.max() >= p.num_experts):
        return f"expert ids must be in 0..{p.num_experts - 1}, got {arr.min()}..{arr.max()}"
    if p.num_slots < p.num_experts:
        return f"{p.num_slots} slots cannot hold {p.num_experts} experts"
    counts = np.zeros((len(p.layers), p.num_experts), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(p.layers)), p.num_slots), arr.reshape(-1)), 1)
    li, missing = np.nonzero(counts == 0)
    if li.size:
        return (
            f"layer {p.layers[int(li[0])]} has no slot for logical expert {int(missing[0])} "
            f"({li.size} (layer, expert) pairs without a slot); every expert needs at least one slot"
        )
    return None


# -- Parquet ---------------------------------------------------------------------------------------
def _epochs_to_arrow(epochs: list[Placement]) -> pa.Table:
    schema = table_spec("placement").arrow_schema()
    parts: dict[str, list[np.ndarray]] = {c: [] for c in schema.names}
    for p in epochs:
        L, S = p.phy2log.shape
        parts["from_step"].append(np.full(L * S, p.from_step, np.int32))
        parts["layer"].append(np.repeat(np.asarray(p.layers, np.int16), S))
        parts["slot"].append(np.tile(np.arange(S, dtype=np.int32), L))
        parts["rank"].append(np.tile((np.arange(S) // p.slots_per_rank).astype(np.int32), L))
        parts["expert"].append(p.phy2log.reshape(-1).astype(np.int16))
    cols = [pa.array(np.concatenate(parts[f.name]) if parts[f.name] else [], type=f.type) for f in schema]
    policies = sorted({p.policy for p in epochs})
    meta = dict(schema.metadata or {})
    meta[META_POLICY_KEY] = ",".join(policies).encode()
    return pa.Table.from_arrays(cols, schema=schema.with_metadata(meta))


def write_placements(
    path: str | os.PathLike[str],
    epochs: list[Placement],
    *,
    force: bool = False,
    inputs: tuple[str | os.PathLike[str] | None, ...] = (),
) -> Path:
    """Write placement epochs (ascending ``from_step``) as one Parquet file, ``placement`` schema.

    The file is written whole or not at all (a staged sibling renamed into place under the output's
    lock); an existing file is replaced only with ``force`` and only when it is a placement file;
    ``inputs`` (the trace) are never overwritten."""
    if not epochs:
        raise UsageError("no placement to write")
    steps = [p.from_step for p in epochs]
    if steps != sorted(set(steps)):
        raise UsageError(f"placement epochs must have strictly increasing from_step, got {steps}")
    first = epochs[0]
    for p in epochs[1:]:
        if (p.num_ranks, p.slots_per_rank, p.num_experts) != (
            first.num_ranks,
            first.slots_per_rank,
            first.num_experts,
        ):
            raise UsageError("placement epochs must share ranks, slots per rank and expert count")
    from tracekit.trace.outputs import Output

    out = Path(path)
    if out.is_dir():
        raise UsageError(
            f"{param('path', '--out')} {out}: is a directory; give a file name such as {out / 'placement.parquet'}"
        )
    if out.parent and not out.parent.exists():
        make_output_dir(out.parent)
    table = _epochs_to_arrow(epochs)
    with Output(
        out, kind="file", force=force, what="placement file", is_ours=is_placement_file, inputs=inputs
    ) as o:
        pq.write_table(table, o.target)
    return out


def is_placement_file(path: Path) -> bool:
    try:
        read_placements(path)
    except (SchemaError, UsageError, OSError):
        return False
    return True


def read_placements(path: str | os.PathLike[str]) -> list[Placement]:
    """Every placement epoch in a Parquet file (or a trace directory's ``placement`` table),
    ascending ``from_step``. Raises SchemaError naming the file when it is not a valid placement."""
    src = Path(path)
    table = _read_table(src)
    return placements_from_arrow(table, where=str(src))


def read_placement(path: str | os.PathLike[str]) -> Placement:
    """The one placement in a file; raises UsageError if the file holds several epochs (use
    ``read_placements`` and ``placement_at`` for those)."""
    epochs = read_placements(path)
    if len(epochs) > 1:
        raise UsageError(
            f"{path}: holds {len(epochs)} placement epochs (from_step {[p.from_step for p in epochs]}); "
            "read it with read_placements and pick one with placement_at(epochs, step)"
        )
    return epochs[0]


def placement_at(epochs: list[Placement], step: int) -> Placement:
    """The epoch in force at ``step``: the last with ``from_step <= step`` (the first before any)."""
    chosen = epochs[0]
    for p in epochs:
        if p.from_step <= step:
            chosen = p
    return chosen


def _read_table(src: Path) -> pa.Table:
    if not src.exists():
        raise UsageError(f"{src}: no such placement file; give a Parquet file written by tracekit place")
    if src.is_dir():
        from tracekit.trace import open_trace

        trace = open_trace(src)
        if not trace.has("placement"):
            raise SchemaError(f"{src}: the trace has no placement table; compute one with tracekit place")
        # Every rank of a multi-rank trace may record the same placement: keep each row once.

        rows = (
            trace.scan("placement").select("from_step", "layer", "slot", "rank", "expert").unique().collect()
        )
        return rows.to_arrow()
    try:
        return pq.read_table(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(
            f"{src}: not a readable Parquet file ({exc}); give a file written by tracekit place"
        ) from None


def placements_from_arrow(table: pa.Table, *, where: str = "placement table") -> list[Placement]:
    """Placement epochs from rows of the ``placement`` table schema."""
    needed = ["from_step", "layer", "slot", "rank", "expert"]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise SchemaError(
            f"{where}: missing column(s) {', '.join(missing)}; a placement file has columns {', '.join(needed)}"
        )
    if table.num_rows == 0:
        raise SchemaError(f"{where}: no rows; a placement needs one row per (layer, slot)")
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in needed}
    for c, v in cols.items():
        if v.dtype.kind not in "iu":
            raise SchemaError(f"{where}: column {c} must hold integers, found {table.schema.field(c).type}")
    meta = table.schema.metadata or {}
    policies = meta.get(META_POLICY_KEY, b"file").decode() or "file"
    policy = policies if "," not in policies else "file"
    num_experts = int(cols["expert"].max()) + 1
    epochs = []
    for step in np.unique(cols["from_step"]):
        sel = cols["from_step"] == step
        epochs.append(_one_epoch({c: v[sel] for c, v in cols.items()}, int(step), num_experts, policy, where))
    return epochs


def _one_epoch(
    cols: dict[str, np.ndarray], step: int, num_experts: int, policy: str, where: str
) -> Placement:
    layers = np.unique(cols["layer"])
    slot, rank = cols["slot"].astype(np.int64), cols["rank"].astype(np.int64)
    if slot.min() < 0 or rank.min() < 0 or cols["expert"].min() < 0:
        raise SchemaError(f"{where}: from_step {step}: negative slot, rank or expert id")
    num_slots = int(slot.max()) + 1
    num_ranks = int(rank.max()) + 1
    if num_slots % num_ranks:
        raise SchemaError(
            f"{where}: from_step {step}: {num_slots} slots do not split evenly over {num_ranks} ranks; "
            "every rank must hold the same number of slots"
        )
    spr = num_slots // num_ranks
    bad = np.nonzero(slot // spr != rank)[0]
    if bad.size:
        i = int(bad[0])
        raise SchemaError(
            f"{where}: from_step {step}: slot {int(slot[i])} is on rank {int(rank[i])} but slots are "
            f"numbered rank by rank ({spr} per rank), so it belongs to rank {int(slot[i]) // spr}"
        )
    li = np.searchsorted(layers, cols["layer"])
    key = li * num_slots + slot
    if np.unique(key).size != key.size or key.size != layers.size * num_slots:
        raise SchemaError(
            f"{where}: from_step {step}: each of {layers.size} layers must list every slot "
            f"0..{num_slots - 1} exactly once ({key.size} rows found)"
        )
    phy2log = np.empty(layers.size * num_slots, dtype=np.int64)
    phy2log[key] = cols["expert"]
    try:
        return Placement(
            layers=tuple(int(x) for x in layers),
            phy2log=phy2log.reshape(layers.size, num_slots),
            num_ranks=num_ranks,
            slots_per_rank=spr,
            from_step=step,
            policy=policy,
            num_experts=num_experts,
        )
    except UsageError as exc:
        raise SchemaError(f"{where}: from_step {step}: {exc}") from None


# -- the replica rule ------------------------------------------------------------------------------
def route_to_slots(
    placement: Placement,
    layer: int,
    expert_ids: np.ndarray,
    src_rank: np.ndarray,
    ranks_per_node: int,
    *,
    dispatch: np.ndarray | None = None,
) -> np.ndarray:
    """Physical slot of each (token, choice): ``expert_ids[N, K]`` logical ids of tokens computed on
    ``src_rank[N]``; returns int64 slot ids [N, K] (rank = slot // slots_per_rank).

    Rule (module docstring): own rank's replica, else own node's, else any, round-robin by token
    among equal candidates. Vectorised: no Python loop over tokens. ``dispatch[N]`` (int, optional)
    routes several dispatches in one call: the round-robin counts each dispatch's tokens on their
    own, in the order given (the same as one call per dispatch).
    """
    placement.row(layer)  # raises for a layer it does not place
    ids = np.asarray(expert_ids)
    if ids.ndim == 1:
        ids = ids[:, None]
    if ids.ndim != 2:
        raise UsageError(f"expert_ids must be [tokens, top_k], got shape {ids.shape}")
    N, K = ids.shape
    src = np.asarray(src_rank, dtype=np.int64).reshape(-1)
    if src.shape[0] != N:
        raise UsageError(f"src_rank has {src.shape[0]} entries for {N} tokens")
    R, E = placement.num_ranks, placement.num_experts
    if N == 0:
        return np.zeros((0, K), dtype=np.int64)
    if ids.min() < 0 or ids.max() >= E:
        raise UsageError(f"expert ids {int(ids.min())}..{int(ids.max())} outside the placement's 0..{E - 1}")
    if src.min() < 0 or src.max() >= R:
        raise UsageError(f"source ranks {int(src.min())}..{int(src.max())} outside 0..{R - 1}")
    if ranks_per_node < 1:
        raise UsageError(f"ranks_per_node must be >= 1, got {ranks_per_node}")
    if dispatch is not None and np.asarray(dispatch).size != N:
        raise UsageError(f"dispatch has {np.asarray(dispatch).size} entries for {N} tokens")

    table = _route_table(placement, layer, ranks_per_node)
    # One gather per (token, choice) from the small (expert, source rank) tables.
    cell = (ids.reshape(-1).astype(np.int64) * R + np.repeat(src, K)).astype(np.intp)
    start = table.start[cell]
    count = table.count[cell]
    pick = np.zeros(cell.size, dtype=np.int64)
    multi = np.flatnonzero(count > 1)
    if multi.size:
        # j-th occurrence (in token order) within the candidate group (expert, case, scope).
        gid = table.group[cell[multi]]
        order = np.argsort(gid, kind="stable")  # radix sort when groups fit in 16 bits
        disp = None
        if dispatch is not None:  # candidate groups of different dispatches count apart
            disp = np.repeat(np.asarray(dispatch, dtype=np.int64).reshape(-1), K)[multi]
            low = int(disp.min())
            top = int(disp.max()) - low
            if top:  # then by dispatch, stably (a second radix pass when dispatches fit in 16 bits)
                narrow = (disp - low).astype(
                    np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int64
                )
                order = order[np.argsort(narrow[order], kind="stable")]
            else:
                disp = None
        sk = gid[order]
        first = np.empty(sk.size, dtype=bool)
        first[0] = True
        np.not_equal(sk[1:], sk[:-1], out=first[1:])
        if disp is not None:
            dk = disp[order]
            first[1:] |= dk[1:] != dk[:-1]
        idx = np.arange(sk.size, dtype=np.int64)
        group_start = np.maximum.accumulate(np.where(first, idx, 0))
        occ = np.empty(sk.size, dtype=np.int64)
        occ[order] = idx - group_start
        pick[multi] = occ % count[multi]
    return table.rep_slots[start + pick].reshape(N, K)


@dataclass(frozen=True, kw_only=True, eq=False)
class _RouteTable:
    """Per (expert, source rank) cell ``e * R + r``: where its candidate replicas start in
    ``rep_slots``, how many there are, and a dense id of the candidate group."""

    rep_slots: np.ndarray
    start: np.ndarray
    count: np.ndarray
    group: np.ndarray


def _route_table(placement: Placement, layer: int, ranks_per_node: int) -> _RouteTable:
    cached = placement._route_cache.get((int(layer), ranks_per_node))
    if cached is None:
        cached = _build_route_table(placement, layer, ranks_per_node)
        placement._route_cache[(int(layer), ranks_per_node)] = cached
    return cached


def _build_route_table(placement: Placement, layer: int, ranks_per_node: int) -> _RouteTable:
    row = placement.row(layer)
    E, R = placement.num_experts, placement.num_ranks
    # Replicas of each expert in slot order (CSR): rep_slots[off[e] : off[e + 1]].
    rep_slots = np.argsort(row, kind="stable").astype(np.int64)
    logcnt = np.bincount(row, minlength=E)
    off = np.concatenate([[0], np.cumsum(logcnt)])
    # cum[e, r]: replicas of e on ranks < r (slots are numbered rank by rank, so each rank's and
    # each node's replicas are a contiguous run of rep_slots).
    per_rank = np.zeros((E, R), dtype=np.int64)
    np.add.at(per_rank, (row, np.arange(row.size) // placement.slots_per_rank), 1)
    cum = np.zeros((E, R + 1), dtype=np.int64)
    np.cumsum(per_rank, axis=1, out=cum[:, 1:])

    r = np.arange(R)
    lo_n = np.minimum((r // ranks_per_node) * ranks_per_node, R)
    hi_n = np.minimum(lo_n + ranks_per_node, R)
    c_rank = cum[:, r + 1] - cum[:, r]
    c_node = cum[:, hi_n] - cum[:, lo_n]
    local, on_node = c_rank > 0, c_node > 0
    count = np.where(local, c_rank, np.where(on_node, c_node, logcnt[:, None]))
    start = off[:-1, None] + np.where(local, cum[:, :-1], np.where(on_node, cum[:, lo_n], 0))
    # Round-robin counters are kept per (expert, case, scope): the candidate run and the case's scope.
    case = np.where(local, 0, np.where(on_node, 1, 2))
    scope = np.where(local, r[None, :], np.where(on_node, (r // ranks_per_node)[None, :], 0))
    key = ((start * (row.size + 1) + count) * 3 + case) * (R + 1) + scope
    _, group = np.unique(key, return_inverse=True)
    gdtype = np.uint16 if group.max(initial=0) < 2**16 else np.int64
    return _RouteTable(
        rep_slots=rep_slots,
        start=start.reshape(-1),
        count=count.reshape(-1),
        group=group.reshape(-1).astype(gdtype),
    )
