"""Load-balancing placement algorithms: the two EPLB policies and a greedy one.

Written from the published description of DeepSeek's EPLB (hierarchical and global policies):

- *balanced packing*: items sorted heaviest first (ties: lower index first) each go to the pack with
  the least load that still has room (ties: the lowest pack index); every pack ends with the same
  item count;
- *replication*: each redundant slot goes to the expert with the highest load per replica (ties: the
  lowest expert id);
- *hierarchical*: pack expert groups to nodes, replicate within each node, pack each node's replicas
  to its GPUs; *global*: the same with one group and one node.

Shapes: ``L`` layers, ``E`` logical experts, ``P`` physical slots, ``G`` GPUs. Every function works
on all layers at once (numpy); the only Python loops run over items or redundant slots, never
tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracekit.errors import UsageError


@dataclass(frozen=True, kw_only=True, eq=False)
class EplbPlan:
    """The result of ``rebalance_experts``, in EPLB's terms."""

    #: int64 [L, P]: logical expert of each physical slot, slots numbered GPU by GPU.
    phy2log: np.ndarray
    #: int64 [L, E, max replicas]: slots of each logical expert, -1 padded.
    log2phy: np.ndarray
    #: int64 [L, E]: replica count of each logical expert.
    logcnt: np.ndarray


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack ``n`` weighted items into ``num_packs`` packs of ``n / num_packs`` items each.

    ``weight`` float [L, n]. Returns (pack index [L, n], position in the pack [L, n]), positions in
    the order items entered the pack (heaviest first).
    """
    weight = np.asarray(weight, dtype=np.float64)
    L, n = weight.shape
    if num_packs < 1 or n % num_packs:
        raise UsageError(f"cannot pack {n} items into {num_packs} equal packs; choose counts that divide")
    per_pack = n // num_packs
    pack = np.empty((L, n), dtype=np.int64)
    pos = np.empty((L, n), dtype=np.int64)
    if per_pack == 1:
        # Heaviest first into the least-loaded empty pack: item order is the pack order.
        order = np.argsort(-weight, axis=1, kind="stable")
        pack[np.arange(L)[:, None], order] = np.arange(n)[None, :]
        pos[:] = 0
        return pack, pos
    order = np.argsort(-weight, axis=1, kind="stable")
    load = np.zeros((L, num_packs), dtype=np.float64)
    items = np.zeros((L, num_packs), dtype=np.int64)
    rows = np.arange(L)
    for i in range(n):
        item = order[:, i]
        masked = np.where(items < per_pack, load, np.inf)
        chosen = np.argmin(masked, axis=1)  # first minimum: the lowest pack index among ties
        pack[rows, item] = chosen
        pos[rows, item] = items[rows, chosen]
        load[rows, chosen] += weight[rows, item]
        items[rows, chosen] += 1
    return pack, pos


def replicate_experts(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add ``num_phy - E`` replicas, each to the expert with the highest load per replica.

    Returns (phy2log [L, num_phy], replica index of each physical expert [L, num_phy], logcnt
    [L, E]); the first ``E`` physical experts are the logical ones in order.
    """
    weight = np.asarray(weight, dtype=np.float64)
    L, E = weight.shape
    if num_phy < E:
        raise UsageError(f"{num_phy} physical slots cannot hold {E} experts")
    rows = np.arange(L)
    phy2log = np.empty((L, num_phy), dtype=np.int64)
    phy2log[:, :E] = np.arange(E)
    rank = np.zeros((L, num_phy), dtype=np.int64)
    logcnt = np.ones((L, E), dtype=np.int64)
    for i in range(E, num_phy):
        hot = np.argmax(weight / logcnt, axis=1)
        phy2log[:, i] = hot
        rank[:, i] = logcnt[rows, hot]
        logcnt[rows, hot] += 1
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def rebalance_hierarchical(
    weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray]:
    """EPLB's hierarchical policy. Returns (phy2log [L, P], logcnt [L, E])."""
    weight = np.asarray(weight, dtype=np.float64)
    L, E = weight.shape
    _check(E, num_physical, num_groups, num_nodes, num_gpus)
    group_size = E // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_physical // num_gpus
    log_per_node = E // num_nodes

    # 1. Groups to nodes, balancing node loads. "mlog": logical experts renumbered node by node.
    group_load = weight.reshape(L, num_groups, group_size).sum(-1)
    gpack, gpos = balanced_packing(group_load, num_nodes)
    log2mlog = (((gpack * groups_per_node + gpos) * group_size)[:, :, None] + np.arange(group_size)).reshape(
        L, E
    )
    mlog2log = _inverse(log2mlog)

    # 2. Replicate within each node (rows: (layer, node)).
    mlog_load = np.take_along_axis(weight, mlog2log, axis=1).reshape(L * num_nodes, log_per_node)
    phy2mlog, _, mlogcnt = replicate_experts(mlog_load, num_physical // num_nodes)

    # 3. Each node's replicas to its GPUs, balancing GPU loads (load split evenly over replicas).
    phy_load = np.take_along_axis(mlog_load / mlogcnt, phy2mlog, axis=1)
    ppack, ppos = balanced_packing(phy_load, num_gpus // num_nodes)
    pphy2phy = _inverse(ppack * per_gpu + ppos)

    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)
    node_base = (np.arange(num_nodes) * log_per_node)[None, :, None]
    pphy2mlog = (pphy2mlog.reshape(L, num_nodes, -1) + node_base).reshape(L, -1)
    phy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    logcnt = np.take_along_axis(mlogcnt.reshape(L, E), log2mlog, axis=1)
    return phy2log, logcnt


def rebalance_global(weight: np.ndarray, num_physical: int, num_gpus: int) -> tuple[np.ndarray, np.ndarray]:
    """EPLB's global policy: the hierarchical one with one group and one node."""
    return rebalance_hierarchical(weight, num_physical, 1, 1, num_gpus)


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> EplbPlan:
    """EPLB's entry point: hierarchical when the node count divides the group count, else global."""
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 2:
        raise UsageError(f"expert loads must be [layers, experts], got shape {weight.shape}")
    if num_groups >= 1 and num_nodes >= 1 and num_groups % num_nodes == 0:
        phy2log, logcnt = rebalance_hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    else:
        phy2log, logcnt = rebalance_global(weight, num_replicas, num_gpus)
    return EplbPlan(phy2log=phy2log, log2phy=log2phy_of(phy2log, weight.shape[1]), logcnt=logcnt)


def log2phy_of(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """int64 [L, E, max replicas]: slots of each logical expert in slot order, -1 padded."""
    L, P = phy2log.shape
    counts = np.zeros((L, num_experts), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(L), P), phy2log.reshape(-1)), 1)
    width = int(counts.max()) if counts.size else 0
    out = np.full((L, num_experts, width), -1, dtype=np.int64)
    order = np.argsort(phy2log, axis=1, kind="stable")  # slots grouped by expert, in slot order
    experts = np.take_along_axis(phy2log, order, axis=1)
    starts = np.concatenate([np.zeros((L, 1), dtype=np.int64), np.cumsum(counts, axis=1)[:, :-1]], axis=1)
    within = np.arange(P)[None, :] - np.take_along_axis(starts, experts, axis=1)
    out[np.repeat(np.arange(L), P), experts.reshape(-1), within.reshape(-1)] = order.reshape(-1)
    return out


def greedy(weight: np.ndarray, num_physical: int, num_gpus: int) -> np.ndarray:
    """Replicate the hottest (highest load per replica), then pack replicas heaviest first onto the
    least-loaded GPU with room, preferring GPUs that do not already hold the expert. Returns
    phy2log [L, P]."""
    weight = np.asarray(weight, dtype=np.float64)
    L, E = weight.shape
    _check(E, num_physical, 1, 1, num_gpus)
    per_gpu = num_physical // num_gpus
    phy2log, _, logcnt = replicate_experts(weight, num_physical)
    phy_load = np.take_along_axis(weight / logcnt, phy2log, axis=1)
    order = np.argsort(-phy_load, axis=1, kind="stable")
    rows = np.arange(L)
    load = np.zeros((L, num_gpus))
    items = np.zeros((L, num_gpus), dtype=np.int64)
    holds = np.zeros((L, num_gpus, E), dtype=bool)
    out = np.empty((L, num_physical), dtype=np.int64)
    for i in range(num_physical):
        item = order[:, i]
        expert = phy2log[rows, item]
        room = items < per_gpu
        fresh: np.ndarray = room & ~holds[rows, :, expert]
        any_fresh = np.any(fresh, axis=1, keepdims=True)
        allowed = np.where(any_fresh, fresh, room)
        gpu = np.argmin(np.where(allowed, load, np.inf), axis=1)
        out[rows, gpu * per_gpu + items[rows, gpu]] = expert
        load[rows, gpu] += phy_load[rows, item]
        items[rows, gpu] += 1
        holds[rows, gpu, expert] = True
    return out


def _check(num_experts: int, num_physical: int, num_groups: int, num_nodes: int, num_gpus: int) -> None:
    problems = []
    if num_physical < num_experts:
        problems.append(f"{num_physical} slots cannot hold {num_experts} experts")
    if num_gpus < 1 or num_physical % num_gpus:
        problems.append(f"{num_physical} slots do not split evenly over {num_gpus} GPUs")
    if num_groups < 1 or num_experts % num_groups:
        problems.append(f"{num_experts} experts do not split into {num_groups} groups")
    if num_nodes < 1 or num_groups % num_nodes:
        problems.append(f"{num_groups} groups do not split over {num_nodes} nodes")
    if num_nodes >= 1 and num_gpus % num_nodes:
        problems.append(f"{num_gpus} GPUs do not split over {num_nodes} nodes")
    if num_nodes >= 1 and num_physical % num_nodes:
        problems.append(f"{num_physical} slots do not split over {num_nodes} nodes")
    if problems:
        raise UsageError("; ".join(problems))
