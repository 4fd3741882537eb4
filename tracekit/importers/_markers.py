"""Step and layer markers on a kernel timeline: ranges that contain kernels, and layers inferred from
the repeating kernel sequence of a step when a profile has no layer ranges.

Everything is columnar: markers are few (steps x layers) and are walked in Python; kernels are only
ever handled as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracekit.schema import ModelArch

#: Fewest repetitions of the layer pattern accepted as layers.
MIN_LAYERS = 2


def assign_innermost(
    times: np.ndarray, starts: np.ndarray, ends: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Value of the innermost interval containing each time (-1 where none). Intervals may nest."""
    out = np.full(times.shape, -1, dtype=np.int64)
    if starts.size == 0 or times.size == 0:
        return out
    order = np.lexsort((-ends, starts))  # by start; the longer first when starts tie (outer first)
    s, e, v = starts[order], ends[order], values[order]
    parent = np.full(s.size, -1, dtype=np.int64)
    stack: list[int] = []
    for i in range(s.size):  # markers are few (steps x layers), not per kernel
        while stack and e[stack[-1]] <= s[i]:
            stack.pop()
        parent[i] = stack[-1] if stack else -1
        stack.append(i)
    idx = np.searchsorted(s, times, side="right") - 1
    ok = times == times  # not NaN
    idx = np.where(ok, idx, -1)
    for _ in range(len(stack) + 64):
        live = idx >= 0
        inside = np.zeros(times.shape, dtype=bool)
        inside[live] = times[live] < e[idx[live]]
        move = live & ~inside
        if not move.any():
            break
        idx[move] = parent[idx[move]]
    live = idx >= 0
    out[live] = v[idx[live]]
    return out


def launch_times(corr: np.ndarray, launch_corr: np.ndarray, launch_ts: np.ndarray) -> np.ndarray:
    """Launch (CPU) time of each kernel by correlation id; NaN when the launch is not in the trace.
    Where a correlation id has several launch records, the earliest counts."""
    out = np.full(corr.shape, np.nan)
    if launch_corr.size == 0 or corr.size == 0:
        return out
    order = np.lexsort((launch_ts, launch_corr))
    sc, st = launch_corr[order], launch_ts[order]
    pos = np.clip(np.searchsorted(sc, corr, side="left"), 0, sc.size - 1)
    hit = (sc[pos] == corr) & (corr >= 0)
    out[hit] = st[pos[hit]]
    return out


def _layer_anchors(codes: np.ndarray) -> np.ndarray | None:
    """Positions of a name that occurs once per layer in one step's kernel sequence: the count
    shared by the most distinct names is the layer count L; the earliest name seen exactly L times
    is the anchor when at least two L-times names (and at least half of them) have each occurrence
    between consecutive anchor occurrences."""
    if codes.size < 2 * MIN_LAYERS:
        return None
    _uniq, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    multi = counts >= MIN_LAYERS
    if not multi.any():
        return None
    ks, freq = np.unique(counts[multi], return_counts=True)
    num_layers = int(ks[freq == freq.max()].min())  # ties: the coarser repetition
    positions = {int(a): np.flatnonzero(inverse == a) for a in np.flatnonzero(counts == num_layers).tolist()}
    for cand in sorted(positions, key=lambda a: int(positions[a][0])):
        firsts = positions[cand]
        upper = np.append(firsts[1:], np.iinfo(np.int64).max)
        consistent = sum(1 for pos in positions.values() if np.all((pos >= firsts) & (pos < upper)))
        if consistent >= 2 and 2 * consistent >= len(positions):
            return firsts
    return None


def _layer_starts(codes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The anchors moved back to where each layer starts: going back from every anchor the kernels
    are the same in every layer until, before the first layer, the prologue (embedding) differs."""
    max_back = int(min(anchors[0], np.diff(anchors).min() - 1)) if anchors.size > 1 else 0
    back = 0
    while back < max_back:
        vals = codes[anchors - (back + 1)]
        if not np.all(vals == vals[0]):
            break
        back += 1
    return anchors - back


def _layer_ends(codes: np.ndarray, firsts: np.ndarray, closes_group: np.ndarray) -> np.ndarray:
    """Last position of each layer. A layer followed by another of its group ends where the next
    starts; the last layer of a group ends where the tail every such layer shares (its last kernels)
    is complete, the sequence's end when the tail is not found."""
    ends = np.append(firsts[1:] - 1, codes.size - 1)
    inner = ends[:-1][~closes_group[:-1]]
    if inner.size == 0:
        return ends
    longest = int(np.diff(firsts).min())
    tail = 0
    while tail < longest and np.all(codes[inner - tail] == codes[inner[0] - tail]):
        tail += 1
    if tail == 0:
        return ends
    pattern = codes[inner[0] - tail + 1 : inner[0] + 1]
    for i in np.flatnonzero(closes_group).tolist():
        lo = int(firsts[i]) + tail - 1
        hi = int(ends[i])
        for p in np.flatnonzero(codes[lo : hi + 1] == pattern[-1]).tolist():
            end = lo + p
            if np.array_equal(codes[end - tail + 1 : end + 1], pattern):
                ends[i] = end
                break
    return ends


def _split_steps(codes: np.ndarray, firsts: np.ndarray) -> np.ndarray | None:
    """Where steps start (positions into the sequence) when the layer boundaries ``firsts`` of a
    whole file fall into S equal groups separated by a name seen exactly S times (the embedding
    before each step's layers, or the LM head after them), else None."""
    total = firsts.size
    uniq, counts = np.unique(codes, return_counts=True)
    for s in sorted({int(c) for c in counts if c >= 2 and total % c == 0 and c < total}, reverse=True):
        per = total // s
        for code in uniq[counts == s].tolist():
            occ = np.flatnonzero(codes == code)
            cuts = np.searchsorted(firsts, occ)  # layer boundaries before each occurrence
            if np.array_equal(cuts, np.arange(s) * per):  # before its step's layers
                return occ
            if np.array_equal(cuts, np.arange(1, s + 1) * per):  # after its step's layers
                return np.concatenate([[0], occ[:-1] + 1])
    return None


def _layer_ids(num: int, arch: ModelArch | None) -> tuple[np.ndarray, str]:
    """Decoder layer ids of ``num`` repeated blocks and how they were numbered."""
    if arch is not None and arch.num_layers == num:
        return np.arange(num), f"the model's {num} layers"
    if arch is not None and len(arch.moe_layers) == num and num:
        return np.asarray(arch.moe_layers), f"the model's {num} MoE layers"
    return np.arange(num), "numbered from 0 in order (pass --model to map them to the model's layers)"


@dataclass(frozen=True, kw_only=True)
class InferredLayers:
    """Layers (and, without step markers, steps) inferred for the rows of one rank."""

    #: int64 per row: layer id, -1 where none.
    layer: np.ndarray
    #: int64 per row: inferred step, -1 where none (only set when steps were inferred too).
    step: np.ndarray
    #: Steps whose kernel sequence showed layers / steps looked at.
    steps_with_layers: int
    steps_seen: int
    #: Distinct layer counts found (one per kind of step).
    layer_counts: tuple[int, ...]
    steps_inferred: int
    numbering: str
    #: Time spans of the inferred layers (start inclusive, end exclusive) and their layer ids.
    layer_spans: tuple[np.ndarray, np.ndarray, np.ndarray]
    #: Time spans of the inferred steps (empty unless steps were inferred) and their step ids.
    step_spans: tuple[np.ndarray, np.ndarray, np.ndarray]

    def assign(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(layer, step) of rows starting at ``times`` (-1 where no span holds them)."""
        return assign_innermost(times, *self.layer_spans), assign_innermost(times, *self.step_spans)

    def describe(self) -> str:
        if not self.steps_with_layers:
            return (
                "no layer markers, and no repeating kernel sequence found to infer layers from: "
                "layer is null (emit record_function/NVTX ranges, docs/importers.md)"
            )
        counts = "/".join(str(c) for c in self.layer_counts)
        text = (
            f"no layer markers: layers inferred from the repeating kernel sequence ({counts} blocks) "
            f"in {self.steps_with_layers} of {self.steps_seen} step(s), {self.numbering}"
        )
        if self.steps_inferred:
            text += f"; no step markers either: {self.steps_inferred} steps inferred"
        return text


def infer_layers(
    start: np.ndarray,
    codes: np.ndarray,
    stream: np.ndarray,
    eligible: np.ndarray,
    step: np.ndarray,
    *,
    arch: ModelArch | None = None,
) -> InferredLayers:
    """Layers of a rank's rows from the repeating kernel sequence of each step.

    ``start``: row start times; ``codes``: name ids; ``stream``: stream ids (-1 for CPU rows);
    ``eligible``: rows that form the sequence (kernels, not copies); ``step``: each row's step from
    markers (-1 where none). The sequence of a step is its eligible rows on the busiest stream, in
    start order; every row of the step (any stream) then takes the layer whose time span holds its
    start. Without any step marker the whole file is one sequence, split into steps when a name that
    occurs once per step separates equal groups of layers.
    """
    n = start.size
    layer_out = np.full(n, -1, dtype=np.int64)
    step_out = np.full(n, -1, dtype=np.int64)
    marked = step >= 0
    groups: list[np.ndarray]
    if marked.any():
        steps = np.unique(step[marked])
        order = np.argsort(step, kind="stable")
        sorted_steps = step[order]
        groups = [
            order[np.searchsorted(sorted_steps, s, "left") : np.searchsorted(sorted_steps, s, "right")]
            for s in steps.tolist()
        ]
    else:
        groups = [np.arange(n)]
    spans: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    step_spans: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    found = 0
    counts: set[int] = set()
    numbering = ""
    steps_inferred = 0
    for rows in groups:
        seq = rows[eligible[rows]]
        if seq.size == 0:
            continue
        streams, per = np.unique(stream[seq], return_counts=True)
        seq = seq[stream[seq] == streams[np.argmax(per)]]
        seq = seq[np.argsort(start[seq], kind="stable")]
        seq_codes = codes[seq]
        anchors = _layer_anchors(seq_codes)
        if anchors is None:
            continue
        firsts = _layer_starts(seq_codes, anchors)
        step_firsts = None if marked.any() else _split_steps(seq_codes, firsts)
        num_steps = 1 if step_firsts is None else step_firsts.size
        per_step = firsts.size // num_steps
        closes = np.zeros(firsts.size, dtype=bool)
        closes[per_step - 1 :: per_step] = True
        last = _layer_ends(seq_codes, firsts, closes)
        ids, numbering = _layer_ids(per_step, arch)
        t_seq = start[seq]
        t_first = t_seq[firsts]
        after = last + 1
        ends = np.where(after < seq.size, t_seq[np.minimum(after, seq.size - 1)], t_seq[last] + 1)
        t_end = ends[-1]
        values = np.tile(ids, num_steps)
        t_rows = start[rows]
        idx = np.searchsorted(t_first, t_rows, side="right") - 1
        inside = (idx >= 0) & (t_rows < ends[np.clip(idx, 0, None)])
        layer_out[rows[inside]] = values[idx[inside]]
        spans.append((t_first, ends, values))
        if step_firsts is not None:
            step_starts = start[seq][step_firsts]
            sidx = np.searchsorted(step_starts, t_rows, side="right") - 1
            sidx = np.where(t_rows < step_starts[0], 0, sidx)
            step_out[rows] = sidx
            steps_inferred = num_steps
            lo = np.minimum(step_starts[0], t_rows.min())
            hi = max(float(t_rows.max()), float(t_end)) + 1
            step_spans.append(
                (np.append(lo, step_starts[1:]), np.append(step_starts[1:], hi), np.arange(num_steps))
            )
        found += 1
        counts.add(per_step)
    return InferredLayers(
        layer=layer_out,
        step=step_out,
        steps_with_layers=found,
        steps_seen=len(groups),
        layer_counts=tuple(sorted(counts)),
        steps_inferred=steps_inferred,
        numbering=numbering,
        layer_spans=_concat(spans),
        step_spans=_concat(step_spans),
    )


def _concat(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    return (
        np.concatenate([p[0] for p in parts]).astype(np.float64),
        np.concatenate([p[1] for p in parts]).astype(np.float64),
        np.concatenate([p[2] for p in parts]).astype(np.int64),
    )
