"""Expert-parallel traffic: who sends how many tokens to whom, from routing arrays.

Dedup rules (what one token costs on the wire):

- **per destination rank** (``rank_tokens``): a token goes to a rank once, however many of its top-k
  experts live there (DeepEP normal inside a domain, NCCL all-to-all, one-sided NVLink all-to-all).
- **per (token, expert)** (``expert_tokens``): one copy per routed expert, no dedup (DeepEP
  low-latency's expert-major buffers).
- **per destination domain** (``domain_tokens``): a token crosses the network once per remote
  scale-up domain (node), and is forwarded over NVLink to its ranks there (DeepEP normal across nodes).

Ranks are numbered domain by domain: rank ``r`` is in domain ``r // domain_size``. A token routed to
its own rank still counts in the matrices (the diagonal); the cost model does not charge it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tracekit.cost.result import F64
from tracekit.errors import UsageError


@dataclass(frozen=True, kw_only=True)
class EPTraffic:
    """Token counts of one all-to-all (or a stack of them: leading axes ``[...]``).

    ``rank_tokens[..., s, d]``: tokens rank ``s`` sends to rank ``d``, once per destination rank.
    ``expert_tokens[..., s, d]``: (token, expert) pairs from ``s`` to experts on ``d``.
    ``domain_tokens[..., s, D]``: tokens ``s`` sends to scale-up domain ``D``, once per domain.
    Counts may be fractional (expected values).
    """

    rank_tokens: F64
    expert_tokens: F64
    domain_tokens: F64
    domain_size: int

    def __post_init__(self) -> None:
        r = self.rank_tokens.shape[-1]
        if self.rank_tokens.shape[-2] != r or self.expert_tokens.shape != self.rank_tokens.shape:
            raise UsageError(
                f"EPTraffic: rank/expert matrices must be [..., R, R], got {self.rank_tokens.shape}"
            )
        if self.domain_tokens.shape[:-1] != self.rank_tokens.shape[:-1] or self.domain_tokens.shape[
            -1
        ] != num_domains(r, self.domain_size):
            raise UsageError(
                f"EPTraffic: domain matrix must be [..., R, {num_domains(r, self.domain_size)}], got {self.domain_tokens.shape}"
            )

    @property
    def num_ranks(self) -> int:
        return int(self.rank_tokens.shape[-1])

    def scaled(self, factor: float) -> EPTraffic:
        """Every count times ``factor`` (for example sampled tokens -> the real token count)."""
        return EPTraffic(
            rank_tokens=self.rank_tokens * factor,
            expert_tokens=self.expert_tokens * factor,
            domain_tokens=self.domain_tokens * factor,
            domain_size=self.domain_size,
        )

    @classmethod
    def from_rank_matrix(cls, rank_tokens: ArrayLike, domain_size: int) -> EPTraffic:
        """Traffic known only per rank pair (a recorded per-peer byte or token matrix).

        Without token identities the other dedup rules cannot be applied: ``expert_tokens`` is taken
        equal to ``rank_tokens`` and ``domain_tokens`` as the sum over the domain's ranks (no node
        dedup, an upper bound for DeepEP normal's network bytes).
        """
        m = np.asarray(rank_tokens, dtype=np.float64)
        if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
            raise UsageError(f"per-peer matrix must be [..., R, R], got shape {m.shape}")
        if np.any(m < 0) or not np.all(np.isfinite(m)):
            raise UsageError("per-peer matrix must be finite and >= 0")
        return cls(
            rank_tokens=m,
            expert_tokens=m,
            domain_tokens=_sum_domains(m, domain_size),
            domain_size=domain_size,
        )


def num_domains(num_ranks: int, domain_size: int) -> int:
    return -(-num_ranks // domain_size)


def _sum_domains(m: F64, domain_size: int) -> F64:
    r = m.shape[-1]
    n = num_domains(r, domain_size)
    pad = n * domain_size - r
    if pad:
        m = np.concatenate([m, np.zeros((*m.shape[:-1], pad))], axis=-1)
    return m.reshape(*m.shape[:-1], n, domain_size).sum(axis=-1)


def contiguous_expert_to_rank(num_experts: int, num_ranks: int) -> NDArray[np.int64]:
    """Expert ``e`` lives on rank ``e // (num_experts / num_ranks)`` (experts split in equal blocks)."""
    if num_ranks < 1 or num_experts % num_ranks:
        raise UsageError(
            f"{num_experts} experts cannot be split evenly over {num_ranks} ranks; pick a divisor"
        )
    return np.arange(num_experts, dtype=np.int64) // (num_experts // num_ranks)


def ep_traffic(
    *,
    dst_rank: ArrayLike,
    src_rank: ArrayLike,
    num_ranks: int,
    domain_size: int,
    group: ArrayLike | None = None,
    num_groups: int = 1,
) -> EPTraffic:
    """Count traffic from routed tokens.

    ``dst_rank[N, K]``: the rank of each of a token's K routed experts (or expert slots; -1 = not
    routed). ``src_rank[N]``: the rank that holds the token. ``group[N]`` (optional, in
    ``0..num_groups-1``): which all-to-all each token belongs to (for example its step-layer index);
    the result then has a leading axis of ``num_groups``. Vectorised: no Python loop over tokens.
    """
    dst = np.asarray(dst_rank, dtype=np.int64)
    src = np.asarray(src_rank, dtype=np.int64)
    if dst.ndim != 2 or src.shape != dst.shape[:1]:
        raise UsageError(f"dst_rank must be [N, K] and src_rank [N]; got {dst.shape} and {src.shape}")
    if dst.size and (dst.max() >= num_ranks or dst.min() < -1 or src.min() < 0 or src.max() >= num_ranks):
        raise UsageError(f"rank ids must be in 0..{num_ranks - 1} (dst_rank may be -1 for 'not routed')")
    g = np.zeros(len(src), dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
    if g.shape != src.shape or (g.size and (g.min() < 0 or g.max() >= num_groups)):
        raise UsageError(f"group must be [N] with values in 0..{num_groups - 1}")
    r = num_ranks
    n_dom = num_domains(r, domain_size)
    valid = dst >= 0
    base = (g * r + src)[:, None]
    expert = np.bincount((base * r + dst)[valid], minlength=num_groups * r * r)
    rank_first = _first_occurrence(dst) & valid
    rank = np.bincount((base * r + dst)[rank_first], minlength=num_groups * r * r)
    dom = np.where(valid, dst // domain_size, -1)
    dom_first = _first_occurrence(dom) & valid
    domain = np.bincount((base * n_dom + dom)[dom_first], minlength=num_groups * r * n_dom)
    lead = (num_groups,) if group is not None else ()
    return EPTraffic(
        rank_tokens=rank.reshape(*lead, r, r).astype(np.float64),
        expert_tokens=expert.reshape(*lead, r, r).astype(np.float64),
        domain_tokens=domain.reshape(*lead, r, n_dom).astype(np.float64),
        domain_size=domain_size,
    )


def _first_occurrence(x: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Per row, True at the first occurrence of each value (vectorised over rows; K^2/2 compares)."""
    first = np.ones(x.shape, dtype=bool)
    for j in range(1, x.shape[1]):
        first[:, j] = np.all(x[:, j : j + 1] != x[:, :j], axis=1)
    return first


def random_routing(
    num_tokens: int,
    num_experts: int,
    top_k: int,
    *,
    num_groups: int = 1,
    topk_groups: int = 1,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """Expert ids ``[num_tokens, top_k]`` drawn like a router with random scores: uniform over
    distinct experts, and with ``num_groups > 1`` limited to the ``topk_groups`` groups whose best
    score is highest (DeepSeek-style group-limited routing; DeepEP's tests route this way with one
    group per node)."""
    if not 1 <= top_k <= num_experts or num_experts % num_groups or not 1 <= topk_groups <= num_groups:
        raise UsageError(
            f"routing: need 1 <= top_k <= experts, experts divisible by groups and 1 <= topk_groups <= groups "
            f"(got top_k={top_k}, experts={num_experts}, groups={num_groups}, topk_groups={topk_groups})"
        )
    scores = np.abs(rng.standard_normal((num_tokens, num_experts), dtype=np.float32)) + 1.0
    if num_groups > 1 and topk_groups < num_groups:
        group_best = scores.reshape(num_tokens, num_groups, -1).max(axis=-1)
        keep = np.argpartition(-group_best, topk_groups - 1, axis=1)[:, :topk_groups]
        mask = np.zeros((num_tokens, num_groups), dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        scores = np.where(np.repeat(mask, num_experts // num_groups, axis=1), scores, 0.0)
    return np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k].astype(np.int64)


def expected_uniform_traffic(
    *,
    num_ranks: int,
    tokens_per_rank: float,
    num_experts: int,
    top_k: int,
    domain_size: int,
) -> EPTraffic:
    """Expected traffic when every token picks ``top_k`` distinct experts uniformly at random and
    experts are split contiguously over ranks (exact expectations, no sampling).

    P(a token reaches a rank holding ``e`` of the ``E`` experts) = 1 - C(E - e, k) / C(E, k).
    """
    per_rank_e = num_experts // num_ranks
    if per_rank_e * num_ranks != num_experts:
        raise UsageError(
            f"{num_experts} experts cannot be split evenly over {num_ranks} ranks; pick a divisor"
        )
    total = comb(num_experts, top_k)

    def p_hit(e: int) -> float:
        return 1.0 - comb(num_experts - e, top_k) / total

    r = num_ranks
    n_dom = num_domains(r, domain_size)
    rank = np.full((r, r), tokens_per_rank * p_hit(per_rank_e))
    expert = np.full((r, r), tokens_per_rank * top_k * per_rank_e / num_experts)
    dom_sizes = [min(domain_size, r - d * domain_size) for d in range(n_dom)]
    domain = np.tile([tokens_per_rank * p_hit(per_rank_e * s) for s in dom_sizes], (r, 1))
    return EPTraffic(rank_tokens=rank, expert_tokens=expert, domain_tokens=domain, domain_size=domain_size)


def balanced_traffic(*, num_ranks: int, tokens_per_rank: float, top_k: int, domain_size: int) -> EPTraffic:
    """A perfectly balanced router: every token reaches ``min(top_k, R)`` distinct ranks, spread
    evenly over all ranks (each rank pair carries ``tokens * min(k, R) / R`` tokens).

    Domain counts assume the ranks of a token are spread evenly: a domain of ``s`` ranks is reached
    by a token with probability ``1 - C(R - s, m) / C(R, m)`` where ``m = min(k, R)``.
    """
    r = num_ranks
    m = min(top_k, r)
    rank = np.full((r, r), tokens_per_rank * m / r)
    expert = np.full((r, r), tokens_per_rank * top_k / r)
    n_dom = num_domains(r, domain_size)
    sizes = [min(domain_size, r - d * domain_size) for d in range(n_dom)]
    domain = np.tile([tokens_per_rank * (1.0 - comb(r - s, m) / comb(r, m)) for s in sizes], (r, 1))
    return EPTraffic(rank_tokens=rank, expert_tokens=expert, domain_tokens=domain, domain_size=domain_size)
