"""The generative routing model behind ``tracekit synth``, vectorised in numpy.

Shape suffixes: ``_E`` experts, ``_M`` MoE layers, ``_N`` tokens, ``_K`` top-k, ``_R`` pool rows.

How a token is routed at one MoE layer:

1. Each layer follows a *prototype*: base router logits over the experts (their popularity). A
   prototype has ``num_clusters`` token clusters; cluster c adds ``cluster_strength * u_c`` to the
   logits (u_c standard normal per expert), so tokens of one cluster favour the same experts
   (co-activation).
2. For every (prototype, cluster) a pool of rows is drawn once by Gumbel-top-k: noisy scores
   ``logits + Gumbel``; with group-limited routing the ``topk_groups`` groups with the largest sum of
   their two best scores are kept and the rest masked (as DeepSeek-V3's router does); then the top-k
   scores. Gate weights follow the model's scoring (softmax or sigmoid), renormalisation and scale,
   truncated to bfloat16 precision.
3. The batch's cluster mix is one draw from a symmetric Dirichlet(``mix_concentration``), rotated by
   one cluster every step (0: every cluster equally likely in every step). A token draws its cluster at the first MoE layer
   from that mix, keeps it at the next layer with probability ``cluster_stay`` (cross-layer
   correlation) or draws again; it takes a random row of its cluster's pool. The rotating mix moves
   the hot set from step to step while the load over whole rotations stays the pools' load.
4. Each layer maps prototype expert labels to expert ids by a permutation that starts as a random
   group-preserving shuffle (or the identity). With ``swap_rate`` > 0 it also random-walks: every step
   ``swap_rate * E / 2`` pairs of experts inside one group swap (persistent drift, which flattens the
   long-run load; not used by the fit).

Drawing rows from pools keeps the cost per token at O(top_k), independent of the expert count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tracekit.errors import UsageError
from tracekit.schema.manifest import ModelArch

IntArray = npt.NDArray[np.int64]
#: Rows drawn per prototype and cluster; all clusters of a prototype share ``POOL_ROWS_PER_PROTOTYPE``.
POOL_ROWS_PER_PROTOTYPE = 65_536
_CHUNK_ROWS = 8192


@dataclass(frozen=True, kw_only=True)
class Router:
    """The router facts of a model that the sampler needs."""

    num_experts: int
    top_k: int
    num_groups: int = 1
    topk_groups: int = 1
    scoring: str = "softmax"
    norm_topk_prob: bool = True
    scaling: float = 1.0

    @classmethod
    def of(cls, arch: ModelArch) -> Router:
        groups = arch.num_expert_groups if arch.num_expert_groups > 1 else 1
        if arch.num_experts % groups:
            raise UsageError(
                f"model {arch.name}: {arch.num_experts} experts do not split into {groups} groups"
            )
        topk_groups = min(max(arch.topk_groups, 1), groups)
        if groups > 1 and topk_groups * (arch.num_experts // groups) < arch.top_k:
            raise UsageError(f"model {arch.name}: top-{arch.top_k} does not fit in {topk_groups} groups")
        return cls(
            num_experts=arch.num_experts,
            top_k=arch.top_k,
            num_groups=groups,
            topk_groups=topk_groups if groups > 1 else 1,
            scoring=arch.scoring,
            norm_topk_prob=arch.norm_topk_prob,
            scaling=arch.routed_scaling_factor,
        )

    @property
    def group_size(self) -> int:
        return self.num_experts // self.num_groups


@dataclass(frozen=True, kw_only=True)
class RoutingModel:
    """Parameters of the generative model (see the module docstring)."""

    #: [prototypes, E] base router logits.
    prototypes: npt.NDArray[np.float64]
    #: [M] prototype of each MoE layer.
    layer_prototype: IntArray
    num_clusters: int = 1
    #: [prototypes, clusters, E] standard-normal cluster preferences (None: drawn when pools are built).
    cluster_bias: npt.NDArray[np.float64] | None = None
    cluster_strength: float = 0.0
    cluster_stay: float = 0.0
    swap_rate: float = 0.0
    #: Dirichlet concentration of the per-step cluster mix (0: uniform mix every step).
    mix_concentration: float = 0.0
    #: Start each layer from a random group-preserving expert permutation (False: identity).
    shuffle_layers: bool = True
    #: Pool rows per prototype (split between its clusters).
    pool_rows: int = POOL_ROWS_PER_PROTOTYPE

    def scaled(self, factor: float) -> RoutingModel:
        """The same model with base logits multiplied by ``factor`` (a skew knob)."""
        return RoutingModel(
            prototypes=self.prototypes * factor,
            layer_prototype=self.layer_prototype,
            num_clusters=self.num_clusters,
            cluster_bias=self.cluster_bias,
            cluster_strength=self.cluster_strength,
            cluster_stay=self.cluster_stay,
            swap_rate=self.swap_rate,
            mix_concentration=self.mix_concentration,
            shuffle_layers=self.shuffle_layers,
            pool_rows=self.pool_rows,
        )

    def with_(self, **changes: object) -> RoutingModel:
        import dataclasses

        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def gumbel_topk(
    router: Router,
    logits_E: npt.NDArray[np.float64],
    num_rows: int,
    rng: np.random.Generator,
    *,
    weights: bool = True,
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float32]]:
    """``num_rows`` router decisions for one logit vector: expert ids [n, k] in router order, and
    gate weights (zeros when ``weights`` is False)."""
    E, k = router.num_experts, router.top_k
    ids_out = np.empty((num_rows, k), dtype=np.int16)
    w_out = np.empty((num_rows, k), dtype=np.float32)
    base = np.asarray(logits_E, dtype=np.float32)
    for start in range(0, num_rows, _CHUNK_ROWS):
        n = min(_CHUNK_ROWS, num_rows - start)
        # Gumbel noise is -log of a standard exponential draw
        expo = np.maximum(rng.standard_exponential((n, E), dtype=np.float32), np.float32(1e-30))
        s = base - np.log(expo)
        masked = s
        if router.num_groups > 1:
            g, gs = router.num_groups, router.group_size
            grouped = s.reshape(n, g, gs)
            if gs >= 2:
                score = np.partition(grouped, gs - 2, axis=2)[:, :, -2:].sum(axis=2)
            else:
                score = grouped[:, :, 0]
            keep = np.argpartition(-score, router.topk_groups - 1, axis=1)[:, : router.topk_groups]
            gmask = np.zeros((n, g), dtype=bool)
            np.put_along_axis(gmask, keep, True, axis=1)
            masked = np.where(gmask[:, :, None], grouped, -np.inf).reshape(n, E)
        idx = np.argpartition(-masked, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(s, idx, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
        ids_out[start : start + n] = idx
        if not weights:
            w_out[start : start + n] = 0.0
            continue
        if router.scoring == "sigmoid":
            w = 1.0 / (1.0 + np.exp(-vals))
        else:
            top = s.max(axis=1, keepdims=True)
            lse = top + np.log(np.exp(s - top).sum(axis=1, keepdims=True))
            w = np.exp(vals - lse)
        if router.norm_topk_prob:
            w = w / w.sum(axis=1, keepdims=True)
        w_out[start : start + n] = w * router.scaling
    return ids_out, w_out


def group_preserving_permutation(router: Router, rng: np.random.Generator) -> IntArray:
    """A random expert permutation that maps every group onto a whole group."""
    g, gs = router.num_groups, router.group_size
    groups = rng.permutation(g)
    within = np.argsort(rng.random((g, gs)), axis=1)
    return (groups[:, None] * gs + within).reshape(-1).astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class Pools:
    """Pre-drawn router decisions per (prototype, cluster): [prototypes * clusters * rows, k]."""

    ids: npt.NDArray[np.int16]
    weights: npt.NDArray[np.float32]
    rows: int
    clusters: int


def cluster_logits(model: RoutingModel, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """[prototypes, clusters, E] logits of every cluster."""
    p, e = model.prototypes.shape
    c = max(1, model.num_clusters)
    if model.cluster_strength <= 0 or c == 1:
        bias = np.zeros((p, c, e))
    elif model.cluster_bias is not None:
        bias = model.cluster_bias
    else:
        bias = rng.standard_normal((p, c, e))
    return model.prototypes[:, None, :] + model.cluster_strength * bias


def build_pools(
    router: Router, model: RoutingModel, rng: np.random.Generator, *, weights: bool = True
) -> Pools:
    logits = cluster_logits(model, rng)
    p, c, _ = logits.shape
    rows = max(64, model.pool_rows // c)
    ids = np.empty((p * c * rows, router.top_k), dtype=np.int16)
    w_all = np.empty((p * c * rows, router.top_k), dtype=np.float32)
    for i in range(p):
        for j in range(c):
            at = (i * c + j) * rows
            ids[at : at + rows], w_all[at : at + rows] = gumbel_topk(
                router, logits[i, j], rows, rng, weights=weights
            )
    # gate weights keep bfloat16 precision (what routers of bf16 models produce); halves their size on disk
    w_all = (w_all.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    return Pools(ids=ids, weights=w_all, rows=rows, clusters=c)


class RoutingSampler:
    """Draws routing step by step from a model: ``next_step(n)`` -> ids [M, n, k], weights [M, n, k]."""

    def __init__(self, router: Router, model: RoutingModel, rng: np.random.Generator) -> None:
        self.router = router
        self.model = model
        self.rng = rng
        self.pools = build_pools(router, model, rng)
        m, e = len(model.layer_prototype), router.num_experts
        if model.shuffle_layers:
            self.perm = np.stack([group_preserving_permutation(router, rng) for _ in range(m)])
        else:
            self.perm = np.tile(np.arange(e, dtype=np.int64), (m, 1))
        k = router.top_k
        self._id_rows = np.ascontiguousarray(self.pools.ids).view(np.dtype((np.void, 2 * k))).reshape(-1)
        self._w_rows = np.ascontiguousarray(self.pools.weights).view(np.dtype((np.void, 4 * k))).reshape(-1)
        self._steps = 0
        # one Dirichlet draw of cluster weights, rotated by one cluster per step: each cluster gets every
        # weight equally often, so the load over whole cycles of clusters is the pools' load exactly
        c = self.pools.clusters
        self._mix0 = (
            rng.dirichlet(np.full(c, model.mix_concentration))
            if c > 1 and model.mix_concentration > 0
            else None
        )

    @property
    def num_layers(self) -> int:
        return len(self.model.layer_prototype)

    def _drift(self) -> None:
        rate = self.model.swap_rate
        if rate <= 0:
            return
        m = self.num_layers
        gs = self.router.group_size
        if gs < 2:
            return
        expected = rate * self.router.num_experts / 2.0
        rounds = int(np.ceil(expected))
        prob = expected / rounds
        rows = np.arange(m)
        for _ in range(rounds):
            act = self.rng.random(m) < prob
            grp = self.rng.integers(0, self.router.num_groups, size=m)
            a = grp * gs + self.rng.integers(0, gs, size=m)
            b = grp * gs + (a - grp * gs + self.rng.integers(1, gs, size=m)) % gs
            sel = rows[act]
            pa, pb = self.perm[sel, a[act]], self.perm[sel, b[act]]
            self.perm[sel, a[act]], self.perm[sel, b[act]] = pb, pa

    def next_step(self, num_tokens: int) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float32]]:
        if self._steps:
            self._drift()
        self._steps += 1
        m, n, rng = self.num_layers, num_tokens, self.rng
        c = self.pools.clusters
        rows = rng.integers(0, self.pools.rows, size=(m, n))
        if c > 1:
            if self._mix0 is not None:
                mix = np.cumsum(np.roll(self._mix0, self._steps - 1))

                def draw(size: int) -> npt.NDArray[np.int64]:
                    return np.minimum(np.searchsorted(mix, rng.random(size) * mix[-1], side="right"), c - 1)
            else:

                def draw(size: int) -> npt.NDArray[np.int64]:
                    return rng.integers(0, c, size=size)

            clusters = np.empty((m, n), dtype=np.int64)
            clusters[0] = draw(n)
            for layer in range(1, m):
                stay = rng.random(n) < self.model.cluster_stay
                clusters[layer] = np.where(stay, clusters[layer - 1], draw(n))
            rows += clusters * self.pools.rows
        rows += (self.model.layer_prototype * (c * self.pools.rows))[:, None]
        at = rows.reshape(-1)
        # gather whole rows at once: each row of k ids (or weights) viewed as one opaque item
        ids = self._id_rows[at].view(np.int16).reshape(m, n, -1)
        weights = self._w_rows[at].view(np.float32).reshape(m, n, -1)
        mapped = np.empty_like(ids)
        perm16 = self.perm.astype(np.int16)
        for layer in range(m):
            np.take(perm16[layer], ids[layer], out=mapped[layer])
        return mapped, weights


def balanced_step(
    router: Router, num_layers: int, num_tokens: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float32]]:
    """Routing with equal load: every expert gets ``n * k / E`` tokens per layer (when that divides;
    otherwise loads differ by at most one).

    Token t takes the experts ``(t*k + i + offset) mod E`` under a group-preserving relabelling, so its
    k experts are consecutive: inside one group when the group size is a multiple of k, inside k / g
    whole groups when k is a multiple of the group size g; tokens are then shuffled.
    """
    e, k, gs = router.num_experts, router.top_k, router.group_size
    if router.num_groups == 1 or gs % k == 0:
        align = k if e % k == 0 else 1
    elif k % gs == 0:
        align = gs
    else:
        raise UsageError(
            f"balanced routing needs the group size ({gs} experts) to be a multiple of top-k ({k}) or "
            "the other way round, to keep every token inside its top groups; use uniform routing instead"
        )
    slots = np.arange(num_tokens * k, dtype=np.int64).reshape(num_tokens, k)
    ids = np.empty((num_layers, num_tokens, k), dtype=np.int16)
    for layer in range(num_layers):
        perm = group_preserving_permutation(router, rng)
        offset = align * int(rng.integers(0, e // align))
        raw = perm[(slots + offset) % e]
        ids[layer] = raw[rng.permutation(num_tokens)]
    weights = np.full((num_layers, num_tokens, k), router.scaling / k, dtype=np.float32)
    return ids, weights
