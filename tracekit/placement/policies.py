"""Placement policies, in a registry keyed by name.

A policy turns a ``PlacementProblem`` (per-layer expert loads and the deployment's shape) into a
``Placement``. ``compute_placement(name, problem)`` runs one; ``policy_names()`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracekit.errors import UnknownNameError, UsageError, param
from tracekit.placement import eplb
from tracekit.placement.core import Placement, read_placements


@dataclass(frozen=True, kw_only=True, eq=False)
class PlacementProblem:
    """What a policy sees."""

    #: Decoder layer ids, one per row of ``loads``.
    layers: tuple[int, ...]
    #: float [len(layers), num_experts]: tokens per logical expert (summed over the window).
    loads: np.ndarray
    #: Expert-parallel ranks (GPUs).
    num_ranks: int
    #: Slots beyond one per expert (experts + redundant must be a multiple of num_ranks).
    num_redundant: int = 0
    #: Nodes (scale-up domains); num_ranks must be a multiple.
    num_nodes: int = 1
    #: Expert groups (group-limited routing); the hierarchical policy packs groups to nodes.
    num_groups: int = 1
    #: Placement file for the ``file`` policy.
    file: Path | None = None

    def __post_init__(self) -> None:
        loads = np.asarray(self.loads, dtype=np.float64)
        if loads.ndim != 2 or loads.shape[0] != len(self.layers):
            raise UsageError(
                f"loads must be [layers, experts] with {len(self.layers)} layers, got shape {loads.shape}"
            )
        if loads.size and (not np.isfinite(loads).all() or loads.min() < 0):
            raise UsageError("expert loads must be finite and non-negative")
        object.__setattr__(self, "loads", loads)
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.num_ranks < 1:
            raise UsageError(f"{param('num_ranks', '--ep')} must be at least 1 rank, got {self.num_ranks}")
        if self.num_nodes < 1:
            raise UsageError(f"{param('num_nodes', '--nodes')} must be at least 1, got {self.num_nodes}")
        if self.num_ranks % self.num_nodes:
            raise UsageError(
                f"{param('num_ranks', '--ep')} {self.num_ranks} ranks do not split over "
                f"{param('num_nodes', '--nodes')} {self.num_nodes}; "
                "give a node count that divides the EP size"
            )

    @property
    def num_experts(self) -> int:
        return int(self.loads.shape[1])

    @property
    def num_slots(self) -> int:
        return self.num_experts + self.num_redundant

    @property
    def ranks_per_node(self) -> int:
        return self.num_ranks // self.num_nodes


@dataclass(frozen=True, kw_only=True)
class PolicySpec:
    """One registered policy."""

    name: str
    description: str
    #: Whether the policy reads the loads (layout-only policies do not).
    uses_loads: bool
    run: Callable[[PlacementProblem], Placement]


def _finish(problem: PlacementProblem, phy2log: np.ndarray, name: str) -> Placement:
    return Placement(
        layers=problem.layers,
        phy2log=phy2log,
        num_ranks=problem.num_ranks,
        slots_per_rank=problem.num_slots // problem.num_ranks,
        policy=name,
        num_experts=problem.num_experts,
    )


def _slots_ok(problem: PlacementProblem) -> None:
    if problem.num_redundant < 0 or problem.num_slots % problem.num_ranks:
        raise UsageError(
            f"{problem.num_experts} experts + {problem.num_redundant} redundant slots = {problem.num_slots} "
            f"slots do not split evenly over {problem.num_ranks} ranks; choose --redundant so that "
            "experts + redundant is a multiple of the EP size"
        )


def _contiguous(p: PlacementProblem) -> Placement:
    return Placement.contiguous(p.layers, p.num_experts, p.num_ranks, num_redundant=p.num_redundant)


def _round_robin(p: PlacementProblem) -> Placement:
    return Placement.round_robin(p.layers, p.num_experts, p.num_ranks, num_redundant=p.num_redundant)


def _greedy(p: PlacementProblem) -> Placement:
    _slots_ok(p)
    return _finish(p, eplb.greedy(p.loads, p.num_slots, p.num_ranks), "greedy")


def _eplb_hierarchical(p: PlacementProblem) -> Placement:
    _slots_ok(p)
    if p.num_groups % p.num_nodes or p.num_experts % p.num_groups:
        raise UsageError(
            f"eplb-hierarchical packs expert groups to nodes: {p.num_experts} experts in {p.num_groups} "
            f"groups over {p.num_nodes} nodes needs the node count to divide the group count and the "
            "group count to divide the experts; use --policy eplb-global (or eplb, which picks) or change "
            "--groups/--nodes"
        )
    if p.num_slots % p.num_nodes:
        raise UsageError(f"{p.num_slots} slots do not split over {p.num_nodes} nodes; change --redundant")
    phy2log, _ = eplb.rebalance_hierarchical(p.loads, p.num_slots, p.num_groups, p.num_nodes, p.num_ranks)
    return _finish(p, phy2log, "eplb-hierarchical")


def _eplb_global(p: PlacementProblem) -> Placement:
    _slots_ok(p)
    phy2log, _ = eplb.rebalance_global(p.loads, p.num_slots, p.num_ranks)
    return _finish(p, phy2log, "eplb-global")


def _eplb_auto(p: PlacementProblem) -> Placement:
    if p.num_groups % p.num_nodes == 0 and p.num_experts % p.num_groups == 0:
        return _eplb_hierarchical(p).with_(policy="eplb")
    return _eplb_global(p).with_(policy="eplb")


def _file(p: PlacementProblem) -> Placement:
    if p.file is None:
        raise UsageError(
            f"the file policy needs a placement file: give {param('file', '--placement-file')} FILE"
        )
    epochs = read_placements(p.file)
    first = epochs[0]
    if first.num_ranks != p.num_ranks or first.num_experts != p.num_experts:
        raise UsageError(
            f"{p.file}: places {first.num_experts} experts on {first.num_ranks} ranks, but the problem has "
            f"{p.num_experts} experts on {p.num_ranks} ranks ({param('num_ranks', '--ep')}); give a matching file"
        )
    if len(epochs) > 1:
        raise UsageError(f"{p.file}: holds {len(epochs)} placement epochs; the file policy takes one")
    missing = sorted(set(p.layers) - set(first.layers))
    if missing:
        raise UsageError(f"{p.file}: has no placement for layer(s) {missing}; it places {list(first.layers)}")
    rows = np.stack([first.row(layer) for layer in p.layers])
    return Placement(
        layers=p.layers,
        phy2log=rows,
        num_ranks=first.num_ranks,
        slots_per_rank=first.slots_per_rank,
        policy="file",
        num_experts=first.num_experts,
    )


POLICIES: dict[str, PolicySpec] = {
    s.name: s
    for s in (
        PolicySpec(
            name="contiguous",
            description="default layout: expert e on rank e // (E/R); redundant slots repeat experts 0, 1, ...",
            uses_loads=False,
            run=_contiguous,
        ),
        PolicySpec(
            name="round-robin",
            description="expert e on rank e % R; redundant slots repeat experts 0, 1, ...",
            uses_loads=False,
            run=_round_robin,
        ),
        PolicySpec(
            name="greedy",
            description="replicate the hottest, pack heaviest replica first onto the least-loaded rank "
            "(avoiding a second copy of an expert on one rank)",
            uses_loads=True,
            run=_greedy,
        ),
        PolicySpec(
            name="eplb-hierarchical",
            description="EPLB hierarchical: groups to nodes, replicate within nodes, pack to GPUs",
            uses_loads=True,
            run=_eplb_hierarchical,
        ),
        PolicySpec(
            name="eplb-global",
            description="EPLB global: replicate over all GPUs, then pack to GPUs",
            uses_loads=True,
            run=_eplb_global,
        ),
        PolicySpec(
            name="eplb",
            description="EPLB's choice: hierarchical when nodes divide groups, else global",
            uses_loads=True,
            run=_eplb_auto,
        ),
        PolicySpec(
            name="file",
            description="a placement file given by the user",
            uses_loads=False,
            run=_file,
        ),
    )
}


def policy_names() -> list[str]:
    return list(POLICIES)


def get_policy(name: str) -> PolicySpec:
    if name not in POLICIES:
        raise UnknownNameError("placement policy", name, POLICIES)
    return POLICIES[name]


def compute_placement(policy: str, problem: PlacementProblem) -> Placement:
    """Run the named policy on ``problem``."""
    return get_policy(policy).run(problem)
