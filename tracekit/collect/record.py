"""``record(model, out)``: record every forward of a transformers model as one step.

A forward pre-hook on the model opens a step and reads, from the call's own arguments (no device
sync): batch rows and tokens per row (``input_ids`` or ``inputs_embeds``), the 2-D attention mask
(padding tokens are dropped; positions are the mask's running count), and the cache length; a
forward hook closes the step. Request ids are the caller's (one per batch row), or else numbered
per batch: a step with an empty cache starts a new batch whose rows get the next ids.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from tracekit.collect.collector import PhaseDetector, RoutingCollector, StepInfo, default_phase
from tracekit.errors import CollectorError


class ForwardRecorder:
    """Drives a :class:`RoutingCollector` from the forward calls of a model (see :func:`record`)."""

    def __init__(
        self,
        model: nn.Module,
        collector: RoutingCollector,
        *,
        phase_detector: PhaseDetector = default_phase,
        request_ids: Sequence[int] | None = None,
    ) -> None:
        self.model = model
        self.collector = collector
        self.phase_detector = phase_detector
        self._request_ids = None if request_ids is None else np.asarray(request_ids, dtype=np.int64)
        self._batch_ids: np.ndarray | None = None
        self._next_request = 0
        self._depth = 0
        self._handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post, with_kwargs=True),
        ]

    def set_request_ids(self, request_ids: Sequence[int] | None) -> None:
        """Request id of each batch row for the following forwards (None: number them per batch)."""
        self._request_ids = None if request_ids is None else np.asarray(request_ids, dtype=np.int64)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        t0, before = time.perf_counter_ns(), self.collector.host_time_ns
        try:
            self._begin(module, args, kwargs)
        finally:  # begin_step counts its own time too: count the whole hook once
            self.collector.host_time_ns = before + time.perf_counter_ns() - t0

    def _begin(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._depth += 1
        if self._depth > 1:  # the model calling itself: one step
            return
        if self.collector._open is not None:  # the previous forward raised
            self.collector.abandon_step()
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        tokens = kwargs.get("input_ids")
        embeds = kwargs.get("inputs_embeds")
        if tokens is None and first is not None:
            if not first.dtype.is_floating_point:
                tokens = first
            elif first.dim() == 3:
                embeds = first
        if tokens is not None:
            rows, seq = (
                (int(tokens.shape[0]), int(tokens.shape[1]))
                if tokens.dim() == 2
                else (1, int(tokens.shape[-1]))
            )
        elif isinstance(embeds, torch.Tensor) and embeds.dim() == 3:
            rows, seq = int(embeds.shape[0]), int(embeds.shape[1])
        else:
            raise CollectorError(
                f"{type(module).__name__} was called without input_ids [batch, seq] or inputs_embeds "
                "[batch, seq, hidden]; the recorder cannot tell the batch shape; drive a RoutingCollector "
                "with begin_step/end_step instead"
            )
        mask = kwargs.get("attention_mask")
        keep = positions = None
        if (
            isinstance(mask, torch.Tensor)
            and mask.dim() == 2
            and mask.shape[0] == rows
            and mask.shape[1] >= seq
        ):
            past = int(mask.shape[1]) - seq
            cur = mask[:, -seq:]
            keep = cur.reshape(-1) != 0
            positions = (mask.to(torch.int32).cumsum(-1)[:, -seq:] - 1).reshape(-1)
        else:
            past = _cache_len(kwargs)
            positions = (torch.arange(seq, dtype=torch.int32) + past).repeat(rows)
        info = StepInfo(batch_size=rows, seq_len=seq, past_len=past)
        phase = self.phase_detector(info)
        if self._request_ids is not None:
            if len(self._request_ids) != rows:
                raise CollectorError(
                    f"request_ids has {len(self._request_ids)} entries but the forward has {rows} batch rows; "
                    "give one request id per batch row (set_request_ids before each batch)"
                )
            row_ids = self._request_ids
        else:
            if past == 0 or self._batch_ids is None or len(self._batch_ids) != rows:
                self._batch_ids = np.arange(self._next_request, self._next_request + rows, dtype=np.int64)
                self._next_request += rows
            row_ids = self._batch_ids
        self.collector.begin_step(
            phase=phase, request_ids=np.repeat(row_ids, seq), positions=positions, keep=keep, info=info
        )

    def _post(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.collector.end_step()

    # forwarding helpers for the user
    def set_output_tokens(self, request_ids: Sequence[int], output_tokens: Sequence[int]) -> None:
        self.collector.set_output_tokens(request_ids, output_tokens)

    @property
    def out(self) -> Any:
        return self.collector.out

    @property
    def steps(self) -> int:
        return self.collector.step


def _cache_len(kwargs: dict[str, Any]) -> int:
    for key in ("cache", "past_key_values"):
        cache = kwargs.get(key)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    pos = kwargs.get("cache_position")
    if isinstance(pos, torch.Tensor) and pos.numel():
        return int(pos.reshape(-1)[0])  # small host read; only when no mask and no cache object
    return 0


@contextmanager
def record(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    rank: int = 0,
    world_size: int = 1,
    phase_detector: PhaseDetector = default_phase,
    request_ids: Sequence[int] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    source_detail: dict[str, Any] | None = None,
    rows_per_part: int | None = None,
    flush_interval_s: float = 30.0,
    top_k: int | None = None,
    num_experts: int | None = None,
    trace_id: str | None = None,
) -> Iterator[ForwardRecorder]:
    """Record the routing of every forward of ``model`` inside the block into the trace ``out``::

        with tracekit.record(model, "trace_dir") as rec:
            model.generate(**batch, max_new_tokens=32)

    Each forward is one step. ``request_ids`` gives the request of each batch row (else rows are
    numbered per batch); ``rec.set_request_ids`` changes them between batches. ``phase_detector``
    maps a :class:`StepInfo` to prefill/decode/mixed. On an exception the trace is closed as failed
    (still readable); hooks are always removed.
    """
    collector = RoutingCollector(
        model,
        out,
        rank=rank,
        world_size=world_size,
        name=name,
        overwrite=overwrite,
        source_detail=source_detail,
        rows_per_part=rows_per_part,
        flush_interval_s=flush_interval_s,
        top_k=top_k,
        num_experts=num_experts,
        trace_id=trace_id,
    )
    recorder = ForwardRecorder(model, collector, phase_detector=phase_detector, request_ids=request_ids)
    try:
        yield recorder
    except BaseException as exc:
        recorder.remove()
        collector.close(error=f"{type(exc).__name__}: {exc}")
        raise
    recorder.remove()
    collector.close()
