"""Per-request bookkeeping of a recording: one small record per request, folded once per step.

Arrival is the start of a request's first recorded step, the first token the end of that step
(its prefill), and the finish the end of the step that produced its last output token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(kw_only=True)
class _Request:
    first_step: int
    prompt_tokens: int = 0
    decode_tokens: int = 0
    last_step: int = 0
    output_tokens: int | None = None


class RequestLog:
    """Prompt/decode token counts and first/last steps of every request seen."""

    def __init__(self) -> None:
        self._requests: dict[int, _Request] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def note_step(self, step: int, request_ids: np.ndarray, is_prefill: bool | None) -> None:
        """Fold one step's tokens (their request ids) in: one update per request, not per token."""
        uniq, counts = np.unique(request_ids, return_counts=True)
        for r, c in zip(uniq.tolist(), counts.tolist(), strict=True):
            st = self._requests.get(r)
            if st is None:
                st = self._requests[r] = _Request(first_step=step)
            if is_prefill:
                st.prompt_tokens += c
            elif is_prefill is False:
                st.decode_tokens += c
            st.last_step = step

    def set_output_tokens(self, request_ids: Sequence[int], output_tokens: Sequence[int]) -> None:
        for r, n in zip(request_ids, output_tokens, strict=True):
            if int(r) in self._requests:
                self._requests[int(r)].output_tokens = int(n)

    def columns(self, step_times_ns: Mapping[int, tuple[int, int]], rank: int) -> dict[str, object]:
        """The requests table. Without a known output length, a request generated one token per
        decode step plus the one its prefill produced."""
        ids = np.fromiter(self._requests, dtype=np.int64, count=len(self._requests))
        reqs = list(self._requests.values())
        first = np.array([r.first_step for r in reqs], dtype=np.int64)
        prompt = np.array([r.prompt_tokens for r in reqs], dtype=np.int32)
        out = np.array(
            [r.output_tokens if r.output_tokens is not None else r.decode_tokens + 1 for r in reqs],
            dtype=np.int32,
        )
        last = np.array([r.last_step for r in reqs], dtype=np.int64)
        finish_step = np.minimum(first + np.maximum(out, 1) - 1, last)

        def at(steps: np.ndarray, which: int) -> np.ndarray:
            return np.array([step_times_ns.get(int(s), (0, 0))[which] for s in steps], dtype=np.int64)

        first_end = at(first, 1)
        return {
            "request_id": ids,
            "rank": np.full(ids.size, rank, np.int32),
            "arrival_ns": at(first, 0),
            "prompt_tokens": prompt,
            "output_tokens": out,
            "first_token_ns": [int(t) if p > 0 else None for t, p in zip(first_end, prompt, strict=True)],
            "finish_ns": at(finish_step, 1),
        }
