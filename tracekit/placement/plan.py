"""Placement plans over a trace's steps: in-sample, a training window, or periodic recomputation.

- no window: the placement is computed from every step and scored on the same steps (in-sample,
  an upper bound on what a policy gains);
- ``window=W``: computed from the first ``W`` steps, in force (``from_step``) from the next step,
  and scored only on the steps after the window (out-of-sample);
- ``recompute_every=W``: epoch 0 is the contiguous layout for the first ``W`` steps (nothing has
  been observed yet); epoch ``k`` is computed from the steps of epoch ``k - 1`` and is in force for
  the next ``W`` steps. Every change of placement moves expert weights: for each layer and rank,
  every replica the rank gains (an expert it did not hold as often before) is one expert's weights
  copied in (``expert_bytes`` each, as the caller prices an expert: :func:`tracekit.models.expert_weight_bytes`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracekit.errors import UsageError
from tracekit.placement.core import Placement
from tracekit.placement.loads import StepLoads
from tracekit.placement.metrics import LoadScore, rank_token_loads, score_rank_loads
from tracekit.placement.policies import PlacementProblem, compute_placement


@dataclass(frozen=True, kw_only=True, eq=False)
class PlanResult:
    """Placement epochs of one policy and how they score."""

    policy: str
    #: Placement epochs, ascending ``from_step`` (one unless ``recompute_every``).
    epochs: tuple[Placement, ...]
    #: Steps whose loads the (first computed) placement was made from.
    train_steps: int
    #: Score on the evaluation steps (all steps without a window).
    score: LoadScore
    #: Score on the training steps (in-sample).
    train_score: LoadScore
    #: Replicas copied between ranks over all epoch changes (layer x rank gains).
    moved_experts: int
    #: int64 [layers]: ``moved_experts`` per layer (as in the placement's ``layers``).
    moved_per_layer: np.ndarray
    #: ``moved_experts`` x one expert's weight bytes (0 when that size is unknown).
    migration_bytes: int
    #: int64 [steps]: evaluation step ids.
    eval_steps: np.ndarray

    @property
    def placement(self) -> Placement:
        """The single placement (the last epoch under ``recompute_every``)."""
        return self.epochs[-1]


def moved_replicas(old: Placement, new: Placement) -> np.ndarray:
    """int64 [layers]: replicas ``new`` places on each (layer, rank) beyond what ``old`` had there,
    summed over ranks and experts."""
    if old.layers != new.layers or old.num_ranks != new.num_ranks:
        raise UsageError("placements to compare must have the same layers and ranks")
    gain = new.expert_ranks() - old.expert_ranks()
    return np.clip(gain, 0, None).sum(axis=(1, 2)).astype(np.int64)


def plan(
    loads: StepLoads,
    *,
    policy: str,
    num_ranks: int,
    num_redundant: int = 0,
    num_nodes: int = 1,
    num_groups: int = 1,
    window: int | None = None,
    recompute_every: int | None = None,
    expert_bytes: int = 0,
    file: Path | None = None,
) -> PlanResult:
    """Compute and score the placement(s) of ``policy`` over ``loads``."""
    if window is not None and recompute_every is not None:
        raise UsageError("give --window or --recompute-every, not both")
    T = loads.steps.size
    for name, w in (("--window", window), ("--recompute-every", recompute_every)):
        if w is not None and not 1 <= w < T:
            raise UsageError(
                f"{name} {w}: the trace has {T} steps with loads; give 1..{T - 1} so that steps remain to evaluate"
            )

    def make(step_loads: np.ndarray, from_step: int) -> Placement:
        problem = PlacementProblem(
            layers=loads.layers,
            loads=step_loads.sum(axis=0),
            num_ranks=num_ranks,
            num_redundant=num_redundant,
            num_nodes=num_nodes,
            num_groups=num_groups,
            file=file,
        )
        return compute_placement(policy, problem).with_(from_step=from_step)

    if recompute_every is None:
        n_train = window if window is not None else T
        p = make(loads.loads[:n_train], int(loads.steps[n_train]) if window is not None else 0)
        eval_sel = slice(n_train, T) if window is not None else slice(0, T)
        train = score_rank_loads(policy, rank_token_loads(p, loads.loads[:n_train]))
        score = score_rank_loads(policy, rank_token_loads(p, loads.loads[eval_sel]))
        return PlanResult(
            policy=policy,
            epochs=(p,),
            train_steps=n_train,
            score=score,
            train_score=train,
            moved_experts=0,
            moved_per_layer=np.zeros(len(loads.layers), dtype=np.int64),
            migration_bytes=0,
            eval_steps=loads.steps[eval_sel],
        )

    W = recompute_every
    first = Placement.contiguous(loads.layers, loads.num_experts, num_ranks, num_redundant=num_redundant)
    epochs = [first.with_(from_step=int(loads.steps[0]))]
    for start in range(W, T, W):
        epochs.append(make(loads.loads[start - W : start], int(loads.steps[start])))
    ranks = np.concatenate(
        [
            rank_token_loads(ep, loads.loads[i * W : min((i + 1) * W, T)])
            for i, ep in enumerate(epochs)
            if i >= 1
        ]
    )
    per_layer = np.zeros(len(loads.layers), dtype=np.int64)
    for a, b in itertools.pairwise(epochs):
        per_layer += moved_replicas(a, b)
    moved = int(per_layer.sum())
    train = score_rank_loads(policy, rank_token_loads(epochs[1], loads.loads[:W]))
    return PlanResult(
        policy=policy,
        epochs=tuple(epochs),
        train_steps=W,
        score=score_rank_loads(policy, ranks),
        train_score=train,
        moved_experts=moved,
        moved_per_layer=per_layer,
        migration_bytes=moved * expert_bytes,
        eval_steps=loads.steps[W:],
    )
