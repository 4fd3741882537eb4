"""The schedule of a replay: which replayed step and rank each trace token lands on, and the
attention work that follows.

From a trace's ``tokens`` table (or its routing's first layer) and a deployment, per phase
(prefill, decode):

- :func:`load_tokens`: the trace's tokens split by phase, and the :class:`TokenIndex` that places a
  routing row in the flat token order;
- :func:`make_schedule`: each token's replayed step and rank, as recorded or re-packed into steps
  of ``batch_per_gpu x ranks`` tokens (reusing the trace's tokens from the start when it runs out);
- :func:`sequence_ids`: which sequence each replayed token belongs to (copies of a request in
  different replayed positions are distinct sequences);
- :func:`attention_load` and :func:`window_sequences`: per (step, rank), tokens, KV lengths, keys
  read and the tokens that produce an output.

Shape legend: ``T`` replayed steps, ``W`` steps of a window, ``R`` ranks, ``N`` tokens, ``C``
copies of the trace's token stream, ``P`` sequences per (step, rank). Everything is columnar: no
Python loop runs per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl

from tracekit.errors import DeploymentError, TraceError, UsageError, param
from tracekit.trace.reader import Trace
from tracekit.trace.rowgroups import Bounds, min_max

PHASES = ("prefill", "decode")


# ---- tokens --------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class PhaseTokens:
    """The trace's tokens of one phase, in stream order (trace step, rank, token index)."""

    phase: str
    #: [N] trace step of each token.
    trace_step: np.ndarray
    #: [N] trace rank of each token.
    trace_rank: np.ndarray
    #: [N] request id (-1 where unknown).
    request: np.ndarray
    #: [N] KV length the token attends over (position + 1, or the deployment's kv_len).
    kv_len: np.ndarray
    #: [N] True when the token yields an output token (every decode token; the last prompt token).
    output: np.ndarray
    #: Prompt tokens of the phase's requests read from the prefix cache instead (not in the stream).
    cached: int = 0

    @property
    def num_tokens(self) -> int:
        return int(self.trace_step.size)

    @property
    def served_per_token(self) -> float:
        """Prompt tokens served per token replayed: ``(tokens + cached) / tokens``."""
        return (self.num_tokens + self.cached) / self.num_tokens if self.num_tokens else 1.0


@dataclass(frozen=True, kw_only=True, eq=False)
class TokenIndex:
    """Places a routing row's (rank, step, token_index) in the flat token order: one block per
    (trace step, trace rank), blocks in (step, rank) order, tokens by token index within a block."""

    step_min: int
    num_steps: int
    #: Trace rank ids (sorted); a row's rank position is searchsorted into it.
    ranks: np.ndarray
    #: [num_steps * len(ranks) + 1] start of each (step, rank) block in the flat token order.
    offset: np.ndarray
    #: Per phase: [N] flat position of each token of the phase's stream.
    stream_flat: dict[str, np.ndarray]
    #: trace steps with at least one token, per phase.
    steps_by_phase: dict[str, np.ndarray]

    @cached_property
    def block_size(self) -> np.ndarray:
        """[num_steps * len(ranks)] slots of each (step, rank) block (its largest token index + 1)."""
        return np.diff(self.offset)

    def flat(
        self, rank: np.ndarray, step: np.ndarray, token_index: np.ndarray, bounds: Bounds
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Flat position of routing rows, and a mask of the rows that have a token (None: all do).

        ``bounds``: known (min, max) of the columns (from the row group's statistics); a column
        without one is scanned."""
        rk = self.ranks.size
        r_lo, r_hi = bounds.get("rank") or min_max(rank)
        s_lo, s_hi = min_max(step)  # per batch: most batches hold one step (a scalar block below)
        t_lo, t_hi = bounds.get("token_index") or min_max(token_index)
        ri: np.ndarray | int
        if r_lo == r_hi:  # one rank in the row group: a scalar rank position
            ri = int(np.searchsorted(self.ranks, r_lo))
            rank_ok: np.ndarray | bool = ri < rk and int(self.ranks[ri]) == r_lo
            first, stride = ri, rk
        else:
            ri = np.minimum(np.searchsorted(self.ranks, rank), rk - 1)
            known = self.ranks[ri] == rank
            rank_ok = True if bool(known.all()) else known
            first, stride = 0, 1
        if rank_ok is True and s_lo >= self.step_min and s_hi < self.step_min + self.num_steps and t_lo >= 0:
            lo = (s_lo - self.step_min) * rk + first
            hi = (s_hi - self.step_min) * rk + (first if stride == rk else rk - 1)
            if t_hi < int(self.block_size[lo : hi + 1 : stride].min()):  # every row has its token
                if lo == hi:  # one (step, rank) block
                    return token_index + self.offset[lo], None
                return self.offset[(step.astype(np.int64) - self.step_min) * rk + ri] + token_index, None
        si = step.astype(np.int64) - self.step_min
        block = si * rk + ri
        ok = (si >= 0) & (si < self.num_steps) & (token_index >= 0) & rank_ok
        block = np.where(ok, block, 0)
        ok &= token_index < self.block_size[block]
        return np.where(ok, self.offset[block] + token_index, 0), ok


def load_tokens(
    trace: Trace,
    *,
    kv_len: int | None = None,
    kv_len_mean: int | None = None,
    prefix_hit: float | None = None,
    min_step: int | None = None,
) -> tuple[dict[str, PhaseTokens], TokenIndex]:
    """The trace's tokens split by phase, and the index that maps routing rows onto them.

    ``min_step``: drop the tokens of trace steps before it (a placement's ``from_step``: the steps
    it was computed from are not replayed); their routing rows then map to no token.
    ``kv_len``: every decode token attends over this many keys; ``kv_len_mean``: the trace's decode
    KV lengths scaled to this mean (each token's position + 1 times one factor, so the spread over
    sequences and ranks is the trace's). ``prefix_hit``: the share of every request's prompt found in
    the prefix cache: its first ``floor(hit x prompt length)`` prompt tokens are not computed (their
    routing rows map to no token), the rest still attend over them."""
    tok = _phased_tokens(trace, kv_len=kv_len, min_step=min_step)
    # tok is in (step, rank, token_index) order, each token once (_token_frame)
    t_step = tok["step"].to_numpy().astype(np.int64)
    t_rank = tok["rank"].to_numpy().astype(np.int64)
    t_ti = tok["token_index"].to_numpy().astype(np.int64)
    ranks = np.sort(tok["rank"].unique().to_numpy()).astype(np.int64)
    step_min = int(t_step[0])
    num_steps = int(t_step[-1]) - step_min + 1
    # Flat order: one block per (step, rank) of size max(token_index) + 1 (its last token's + 1).
    ends = np.flatnonzero(np.concatenate([(np.diff(t_step) != 0) | (np.diff(t_rank) != 0), [True]]))
    sizes = np.zeros(num_steps * ranks.size, dtype=np.int64)
    sizes[(t_step[ends] - step_min) * ranks.size + np.searchsorted(ranks, t_rank[ends])] = t_ti[ends] + 1
    offset = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=offset[1:])
    flat = offset[(t_step - step_min) * ranks.size + np.searchsorted(ranks, t_rank)] + t_ti
    is_prefill = tok["is_prefill"].to_numpy()
    position = tok["position"].to_numpy()
    request = tok["request_id"].fill_null(-1).to_numpy().astype(np.int64)
    last = tok["_last"].to_numpy()
    out: dict[str, PhaseTokens] = {}
    steps_by_phase: dict[str, np.ndarray] = {}
    stream_flat: dict[str, np.ndarray] = {}
    for phase in PHASES:
        idx = np.nonzero(is_prefill if phase == "prefill" else ~is_prefill)[0]
        cached = 0
        if phase == "prefill" and prefix_hit and idx.size:
            keep = _uncached(request[idx], position[idx], prefix_hit)
            cached = int((~keep).sum())
            idx = idx[keep]
        stream_flat[phase] = flat[idx]
        if not idx.size:
            continue
        if kv_len is not None and (phase == "decode" or np.isnan(position[idx].astype(np.float64)).any()):
            kv = np.full(idx.size, kv_len, dtype=np.int64)
        else:
            kv = position[idx].astype(np.int64) + 1
            if kv_len_mean is not None and phase == "decode":
                kv = np.maximum(np.rint(kv * (kv_len_mean / kv.mean())), 1).astype(np.int64)
        out[phase] = PhaseTokens(
            phase=phase,
            trace_step=t_step[idx],
            trace_rank=t_rank[idx],
            request=request[idx],
            kv_len=kv,
            output=np.ones(idx.size, dtype=bool) if phase == "decode" else last[idx].astype(bool),
            cached=cached,
        )
        ts = t_step[idx]  # ascending
        steps_by_phase[phase] = ts[np.concatenate([[True], np.diff(ts) != 0])]
    index = TokenIndex(
        step_min=step_min,
        num_steps=num_steps,
        ranks=ranks,
        offset=offset,
        stream_flat=stream_flat,
        steps_by_phase=steps_by_phase,
    )
    return out, index


def _uncached(request: np.ndarray, position: np.ndarray, hit: float) -> np.ndarray:
    """bool: the prompt tokens not found in the prefix cache (position >= floor(hit x prompt
    length), the prompt length being the request's largest position + 1; tokens without a request or
    a position are all computed)."""
    pos = np.asarray(position, dtype=np.float64)
    known = (request >= 0) & ~np.isnan(pos)
    if not known.any():
        return np.ones(request.size, dtype=bool)
    frame = pl.DataFrame({"r": np.where(known, request, -1), "p": np.where(known, pos, -1.0)})
    length = frame.select(pl.col("p").max().over("r") + 1.0)["p"].to_numpy()
    return ~known | (pos >= np.floor(hit * length))


def _phased_tokens(trace: Trace, *, kv_len: int | None, min_step: int | None) -> pl.DataFrame:
    """The trace's tokens with their phase (``is_prefill``) and whether each produces an output
    token (``_last``), from ``min_step`` on."""
    tok = _token_frame(trace)
    if tok.height == 0:
        raise TraceError(
            f"{trace.path}: the trace has no tokens and no routing rows; record or synthesize a trace "
            "with routing before replaying it"
        )
    steps = trace.scan("steps").select("rank", "step", "phase").collect()
    if steps.height:
        tok = tok.join(steps.unique(["rank", "step"]), on=["rank", "step"], how="left", maintain_order="left")
    else:
        tok = tok.with_columns(pl.lit(None, pl.String).alias("phase"))
    tok = tok.with_columns(
        pl.when(pl.col("is_prefill").is_not_null())
        .then(pl.col("is_prefill"))
        .otherwise(pl.col("phase") == "prefill")
        .fill_null(False)
        .alias("is_prefill")
    )
    if kv_len is None and tok["position"].null_count():
        raise TraceError(
            f"{trace.path}: {tok['position'].null_count()} tokens have no position, so their KV length "
            f"is unknown; pass {param('kv_len')} N to give one"
        )
    # The last prompt token of a request (in prefill) produces the first output token.
    tok = tok.with_columns(
        pl.when(pl.col("request_id").is_null())
        .then(pl.lit(True))
        .otherwise(pl.col("position") == pl.col("position").max().over(["request_id", "is_prefill"]))
        .fill_null(True)
        .alias("_last"),
    )
    if min_step is not None:
        last_step = int(tok["step"].max())  # type: ignore[arg-type]
        tok = tok.filter(pl.col("step") >= min_step)
        if tok.height == 0:
            raise UsageError(
                f"{trace.path}: every trace step (the last is {last_step}) comes before step {min_step}, "
                "where the placement comes into force; nothing is left to replay: compute the placement "
                f"with a shorter --window, or replay without {param('placement')}"
            )
    return tok


def _token_frame(trace: Trace) -> pl.DataFrame:
    """The trace's tokens in (step, rank, token index) order, each once (its first row)."""
    cols = ["rank", "step", "token_index", "request_id", "position", "is_prefill"]
    tok = trace.scan("tokens").select(cols).collect()
    if tok.height:
        return _sorted_unique(tok)
    # No tokens table: the distinct tokens of the routing table's first layer.
    first = trace.scan("routing").select(pl.col("layer").min()).collect().item()
    if first is None:
        return tok
    return _sorted_unique(
        trace.scan("routing")
        .filter(pl.col("layer") == first)
        .select("rank", "step", "token_index")
        .collect()
        .with_columns(
            pl.lit(None, pl.Int64).alias("request_id"),
            pl.lit(None, pl.Int32).alias("position"),
            pl.lit(None, pl.Boolean).alias("is_prefill"),
        )
        .select(cols)
    )


def _sorted_unique(tok: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted by (step, rank, token_index), the first of equal keys kept (a trace written
    step by step is in that order already within a rank: only then checked, not sorted)."""
    keys = ["step", "rank", "token_index"]

    def steps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.diff(tok[k].to_numpy().astype(np.int64)) for k in keys)  # type: ignore[return-value]

    d_step, d_rank, d_tok = steps()
    if not bool(((d_step > 0) | ((d_step == 0) & ((d_rank > 0) | ((d_rank == 0) & (d_tok >= 0))))).all()):
        tok = tok.sort(keys, maintain_order=True)  # stable: the first of equal keys stays first
        d_step, d_rank, d_tok = steps()
    repeat = (d_step == 0) & (d_rank == 0) & (d_tok == 0)
    if repeat.any():
        tok = tok.filter(pl.Series(np.concatenate([[True], ~repeat])))
    return tok


# ---- schedule ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Schedule:
    """Where each token of a phase's stream is replayed: step and rank, per copy of the stream."""

    phase: str
    num_steps: int
    num_ranks: int
    rebatched: bool
    #: Tokens per rank per step when re-batched (None: as recorded).
    batch_per_gpu: int | None
    #: [C, N] replayed step of copy c of stream token p (-1: not replayed).
    step: np.ndarray
    #: [C, N] replayed rank.
    rank: np.ndarray
    #: Replayed tokens / distinct trace tokens.
    token_reuse: float

    @cached_property
    def tokens(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every replayed token: (stream position, step, rank), in replay order (steps ascending:
        copy by copy, each in stream order)."""
        c, p = np.nonzero(self.step >= 0)
        return p, self.step[c, p], self.rank[c, p]

    @cached_property
    def token_copy(self) -> np.ndarray:
        """The copy of the stream each replayed token (in the order of ``tokens``) comes from."""
        return np.nonzero(self.step >= 0)[0]

    def token_range(self, step_lo: int, step_hi: int) -> slice:
        """The replayed tokens (a slice of ``tokens``) of steps ``step_lo .. step_hi - 1``."""
        step = self.tokens[1]
        return slice(int(np.searchsorted(step, step_lo)), int(np.searchsorted(step, step_hi)))


def make_schedule(
    tokens: PhaseTokens,
    *,
    num_ranks: int,
    batch_per_gpu: int | None,
    num_steps: int | None = None,
    trace_ranks: np.ndarray | None = None,
) -> Schedule:
    """Place a phase's tokens on replayed steps and ranks.

    ``batch_per_gpu=None`` keeps the recorded steps and ranks (the trace's ranks must then be
    ``num_ranks`` ranks). Otherwise token ``g`` of the (cyclically repeated) stream goes to step
    ``g // (batch_per_gpu * num_ranks)`` and rank ``(g mod (batch_per_gpu * num_ranks)) // batch_per_gpu``.
    """
    n = tokens.num_tokens
    if batch_per_gpu is None:
        rank_ids = np.unique(tokens.trace_rank) if trace_ranks is None else trace_ranks
        if rank_ids.size > num_ranks or (rank_ids.size and rank_ids.max() >= num_ranks):
            raise DeploymentError(
                f"the trace's {tokens.phase} tokens were recorded on ranks {rank_ids.tolist()[:8]}..., "
                f"which a {num_ranks}-rank deployment cannot keep as recorded; pass {param('batch_per_gpu')} "
                "to re-batch them"
            )
        uniq, step = np.unique(tokens.trace_step, return_inverse=True)
        steps = int(uniq.size)
        if num_steps is not None:
            keep = step < num_steps
            step = np.where(keep, step, -1)
            steps = min(steps, num_steps)
        return Schedule(
            phase=tokens.phase,
            num_steps=steps,
            num_ranks=num_ranks,
            rebatched=False,
            batch_per_gpu=None,
            step=step.astype(np.int64)[None, :],
            rank=tokens.trace_rank.astype(np.int64)[None, :],
            token_reuse=float((step >= 0).sum()) / max(n, 1),
        )
    if batch_per_gpu < 1:
        raise UsageError(f"{param('batch_per_gpu')} must be >= 1, got {batch_per_gpu}")
    per_step = batch_per_gpu * num_ranks
    steps = num_steps if num_steps is not None else max(1, -(-n // per_step))
    total = steps * per_step
    copies = -(-total // n)
    g = np.arange(n, dtype=np.int64)[None, :] + n * np.arange(copies, dtype=np.int64)[:, None]
    live = g < total
    step = np.where(live, g // per_step, -1)
    rank = np.where(live, (g % per_step) // batch_per_gpu, -1)
    return Schedule(
        phase=tokens.phase,
        num_steps=steps,
        num_ranks=num_ranks,
        rebatched=True,
        batch_per_gpu=batch_per_gpu,
        step=step,
        rank=rank,
        token_reuse=total / n,
    )


def sequence_ids(tokens: PhaseTokens, schedule: Schedule, sel: slice | None = None) -> np.ndarray:
    """int64: the sequence of each replayed token (in the order of ``schedule.tokens``, those of
    ``sel`` when given). Copies of a request in different replayed positions are distinct sequences:
    request ``r`` of copy ``c`` is ``r * C + c``; a token without a request is a sequence of its own,
    ``-1 - (c * N + p)`` for stream position ``p``."""
    sel = slice(None) if sel is None else sel
    p = schedule.tokens[0][sel]
    copy = schedule.token_copy[sel]
    req = tokens.request[p]
    copies = schedule.step.shape[0]
    return np.where(req >= 0, req * copies + copy, -1 - (copy * tokens.num_tokens + p))


def default_batch(tokens: PhaseTokens) -> int:
    """The trace's own tokens per rank per step (mean, rounded up)."""
    cells = np.unique(tokens.trace_step * 1_000_003 + tokens.trace_rank).size
    return max(1, -(-tokens.num_tokens // max(cells, 1)))


# ---- attention load ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class AttentionLoad:
    """Per (step, rank) attention work of one phase; arrays [T, R]."""

    tokens: np.ndarray
    #: Query-key pairs (sum of KV lengths), per attention window (None: full attention).
    pairs: dict[int | None, np.ndarray]
    #: Keys read from the KV cache (per request and step: its longest KV length), per window.
    keys: dict[int | None, np.ndarray]
    #: Tokens that produce an output token (LM head rows).
    outputs: np.ndarray
    #: [T] distinct requests per step.
    requests: np.ndarray
    #: [T] first and last trace step feeding each replayed step.
    trace_step_first: np.ndarray
    trace_step_last: np.ndarray


def attention_load(tokens: PhaseTokens, schedule: Schedule, windows: tuple[int | None, ...]) -> AttentionLoad:
    """Aggregate a phase's tokens into per (step, rank) attention work."""
    p, step, rank = schedule.tokens
    T, R = schedule.num_steps, schedule.num_ranks
    cell = step * R + rank
    nbins = T * R
    kv = tokens.kv_len[p].astype(np.float64)
    out_tokens = np.bincount(cell, minlength=nbins).reshape(T, R)
    outputs = np.bincount(cell, weights=tokens.output[p].astype(np.float64), minlength=nbins).reshape(T, R)
    seq = sequence_ids(tokens, schedule)
    frame = pl.DataFrame({"cell": cell, "seq": seq, "kv": kv, "step": step})
    per_seq = frame.group_by(["cell", "seq"]).agg(pl.col("kv").max().alias("kmax"))
    cells = per_seq["cell"].to_numpy()
    kmax = per_seq["kmax"].to_numpy()
    pairs: dict[int | None, np.ndarray] = {}
    keys: dict[int | None, np.ndarray] = {}
    for w in windows:
        kvw = kv if w is None else np.minimum(kv, float(w))
        km = kmax if w is None else np.minimum(kmax, float(w))
        pairs[w] = np.bincount(cell, weights=kvw, minlength=nbins).reshape(T, R)
        keys[w] = np.bincount(cells, weights=km, minlength=nbins).reshape(T, R)
    reqs = frame.group_by("step").agg(pl.col("seq").n_unique().alias("n")).sort("step")
    requests = np.zeros(T, dtype=np.int64)
    requests[reqs["step"].to_numpy()] = reqs["n"].to_numpy()
    tstep = tokens.trace_step[p]
    first = np.full(T, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(T, -1, dtype=np.int64)
    np.minimum.at(first, step, tstep)
    np.maximum.at(last, step, tstep)
    return AttentionLoad(
        tokens=out_tokens,
        pairs=pairs,
        keys=keys,
        outputs=outputs,
        requests=requests,
        trace_step_first=first,
        trace_step_last=last,
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class WindowSequences:
    """The sequences of replayed steps [lo, hi) per (step, rank), zero padded along ``P``."""

    #: [W, R, P] new tokens of each sequence in the step.
    new_tokens: np.ndarray
    #: [W, R, P] tokens already in its KV cache before the step.
    context_tokens: np.ndarray
    #: [W, R, P] its micro-batch under two-batch overlap (0 / 1 by its index in the cell).
    micro_batch: np.ndarray


def window_sequences(tokens: PhaseTokens, schedule: Schedule, lo: int, hi: int) -> WindowSequences:
    """Per-sequence attention inputs of replayed steps ``lo .. hi - 1``."""
    sel = schedule.token_range(lo, hi)
    p, step, rank = (x[sel] for x in schedule.tokens)
    R = schedule.num_ranks
    W = hi - lo
    seq = sequence_ids(tokens, schedule, sel)
    frame = pl.DataFrame({"cell": (step - lo) * R + rank, "seq": seq, "kv": tokens.kv_len[p]})
    per = frame.group_by(["cell", "seq"], maintain_order=True).agg(
        pl.len().alias("q"), pl.col("kv").min().alias("kmin")
    )
    per = per.with_columns(pl.int_range(pl.len()).over("cell").alias("i"))
    n_seq = int(per["i"].max() or 0) + 1 if per.height else 1  # type: ignore[arg-type]
    new = np.zeros((W * R, n_seq))
    ctx = np.zeros((W * R, n_seq))
    cells = per["cell"].to_numpy()
    idx = per["i"].to_numpy()
    new[cells, idx] = per["q"].to_numpy()
    ctx[cells, idx] = per["kmin"].to_numpy() - 1
    mb = np.broadcast_to((np.arange(n_seq) % 2)[None, :], new.shape)
    return WindowSequences(
        new_tokens=new.reshape(W, R, n_seq),
        context_tokens=np.maximum(ctx, 0).reshape(W, R, n_seq),
        micro_batch=mb.reshape(W, R, n_seq),
    )
