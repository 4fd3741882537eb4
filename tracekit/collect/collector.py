"""The routing collector: hooks on a live MoE model, one trace shard per rank.

Per forward step the hooks keep references to each MoE layer's ``expert_ids[T, K]`` and
``gate_weights[T, K]`` on the device: no copy, no synchronisation per layer. ``end_step`` stacks
them, counts tokens per expert with one scatter-add (the expert_load table), packs everything into
one int32 buffer and copies it to (pinned) host memory with one non-blocking copy. The host side of
a step is processed one step later, once its copy has certainly landed, and handed to a
:class:`~tracekit.trace.TraceWriter` that encodes Parquet on a background thread. Memory stays
bounded: at most two steps in flight, part files flushed by row count.

Step time: CUDA events on a GPU (``timing_source = cuda_event``; read a step later, never
synchronising the step itself), ``time.perf_counter_ns`` on the CPU (``host_timer``).

Shape legend: L hooked MoE layers, T tokens of the step, K top-k, E routed experts.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tracekit.collect import env
from tracekit.collect.arch import model_arch
from tracekit.collect.batching import ColumnBatcher
from tracekit.collect.requests import RequestLog
from tracekit.collect.sites import MoESite, find_moe_sites
from tracekit.errors import CollectorError, UsageError
from tracekit.schema import Manifest, ParallelLayout
from tracekit.trace import TraceWriter

PHASES = ("prefill", "decode", "mixed")


@dataclass(frozen=True, kw_only=True)
class StepInfo:
    """What is known about a step before it runs (input to a phase detector)."""

    #: Batch rows of the forward call.
    batch_size: int
    #: Tokens per row in this call.
    seq_len: int
    #: Tokens already in the KV cache before this call (0 for a first forward).
    past_len: int


#: ``phase_detector(info) -> "prefill" | "decode" | "mixed"``.
PhaseDetector = Callable[[StepInfo], str]


def default_phase(info: StepInfo) -> str:
    """Prefill for a first forward or a multi-token chunk; decode for one token per row on a cache."""
    return "decode" if info.seq_len == 1 and info.past_len > 0 else "prefill"


@dataclass(kw_only=True)
class _Pending:
    step: int
    phase: str
    num_layers: int
    num_rows_tokens: int  # T: routed tokens per layer, padding included
    host: Any  # host int32 buffer (torch tensor)
    copy_done: Any  # cuda event or None
    start: Any  # cuda event or host ns
    end: Any
    request_ids_T: np.ndarray | None
    is_prefill: bool | None
    has_keep: bool
    has_positions: bool
    has_weights: bool


@dataclass(kw_only=True)
class _StepTokens:
    """Per-token metadata of the open step (device tensors or host arrays, length T)."""

    keep: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    request_ids: np.ndarray | None = None
    phase: str | None = None
    info: StepInfo | None = None
    calls: dict[int, list[tuple[torch.Tensor, torch.Tensor | None]]] = field(default_factory=dict)


class RoutingCollector:
    """Records the routing of every MoE layer of ``model`` into the trace directory ``out``.

    For engines that drive their own steps: call :meth:`begin_step` before each forward and
    :meth:`end_step` after it, then :meth:`close`. :func:`tracekit.collect.record` does this around
    each forward of a transformers model. ``rank``/``world_size`` make each expert-parallel rank write
    its own shard of one trace. ``top_k``/``num_experts`` are read from the model's config unless given.
    Processed steps are handed to the writer every ``host_batch_steps`` steps (fewer, larger
    conversions); parts are written every ``rows_per_part`` rows and every ``flush_interval_s``.
    """

    def __init__(
        self,
        model: nn.Module,
        out: str | os.PathLike[str],
        *,
        rank: int = 0,
        world_size: int = 1,
        name: str | None = None,
        top_k: int | None = None,
        num_experts: int | None = None,
        parallel: ParallelLayout | None = None,
        source_detail: dict[str, Any] | None = None,
        overwrite: bool = False,
        rows_per_part: int | None = None,
        flush_interval_s: float = 30.0,
        host_batch_steps: int = 32,
        trace_id: str | None = None,
        sites: Sequence[MoESite] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
        self.model = model
        self.out = Path(out)
        self.rank = rank
        config = getattr(model, "config", None)
        self.model_name = name or env.model_name(model, config)
        self.sites = list(sites) if sites is not None else find_moe_sites(model, model_name=self.model_name)
        self.layers = tuple(s.layer for s in self.sites)
        self.top_k = int(top_k or env.config_int(config, "num_experts_per_tok", "moe_topk", "top_k") or 0)
        self.num_experts = int(
            num_experts
            or env.config_int(
                config, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"
            )
            or 0
        )
        if self.top_k < 1 or self.num_experts < 1:
            raise UsageError(
                f"{self.model_name}: cannot read top_k / number of experts from the model config; "
                "pass top_k= and num_experts= to the collector"
            )
        self.device = env.model_device(model)
        self._cuda = self.device.type == "cuda"
        arch = model_arch(
            env.text_config(config) if config is not None else _NoConfig(),
            name=self.model_name,
            moe_layers=self.layers,
            top_k=self.top_k,
            num_experts=self.num_experts,
            dtype=env.model_dtype(model),
        )
        detail = {
            "collector": "tracekit.collect.RoutingCollector",
            "hook": sorted({s.registration.label for s in self.sites}),
            "hooked_modules": [s.module_name for s in self.sites],
            "padding_tokens": "dropped (attention mask 0); steps.num_tokens counts the recorded tokens",
            **(source_detail or {}),
        }
        manifest_kwargs: dict[str, Any] = {}
        if trace_id:
            manifest_kwargs["trace_id"] = trace_id
        self.manifest = Manifest(
            model=arch,
            source="recorded",
            source_detail=detail,
            parallel=parallel
            or ParallelLayout(world_size=world_size, ep_size=world_size, dp_size=world_size),
            hardware=env.hardware(self.device),
            software=env.software(),
            clock=(
                "CUDA events, relative to an event recorded when the collector started"
                if self._cuda
                else "host perf_counter_ns, relative to when the collector started"
            ),
            **manifest_kwargs,
        )
        self._writer = TraceWriter(
            self.out,
            self.manifest,
            rank=rank,
            background=True,
            overwrite=overwrite,
            rows_per_part=rows_per_part,
        )
        self._layer_pos = {s.layer: i for i, s in enumerate(self.sites)}
        self._step = 0
        self._open: _StepTokens | None = None
        self._pending: deque[_Pending] = deque()
        self._pinned: list[torch.Tensor | None] = [None, None]
        self._pinned_next = 0
        self._requests = RequestLog()
        self._batch = ColumnBatcher(self._writer.append, max_steps=max(1, host_batch_steps))
        self._step_times: dict[int, tuple[int, int]] = {}
        self._padding_dropped = 0
        self._closed = False
        self._handles: list[Any] = []
        #: Host time spent in the collector on the model's thread (hooks, begin/end_step), in ns.
        self.host_time_ns = 0
        self._flush_interval_ns = int(flush_interval_s * 1e9)
        self._last_flush_ns = time.monotonic_ns()
        if self._cuda:
            self._origin: Any = torch.cuda.Event(enable_timing=True)
            self._origin.record(torch.cuda.current_stream(self.device))
        else:
            self._origin = time.perf_counter_ns()
        self._attach()

    # -- hooks ------------------------------------------------------------------------------------
    def _attach(self) -> None:
        for site in self.sites:
            reg = site.registration
            layer = site.layer
            if reg.when == "before":

                def pre(mod: nn.Module, args: Any, kwargs: Any, _l: int = layer, _r: Any = reg) -> None:
                    t0 = time.perf_counter_ns()
                    self._capture(_l, _r.extractor(mod, args, kwargs, None), args)
                    self.host_time_ns += time.perf_counter_ns() - t0

                self._handles.append(site.module.register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(
                    mod: nn.Module, args: Any, kwargs: Any, output: Any, _l: int = layer, _r: Any = reg
                ) -> None:
                    t0 = time.perf_counter_ns()
                    self._capture(_l, _r.extractor(mod, args, kwargs, output), args)
                    self.host_time_ns += time.perf_counter_ns() - t0

                self._handles.append(site.module.register_forward_hook(post, with_kwargs=True))

    def detach(self) -> None:
        """Remove every hook this collector placed (close() does it too)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _capture(self, layer: int, got: tuple[torch.Tensor, torch.Tensor | None], args: Any) -> None:
        if self._open is None:
            raise CollectorError(
                f"MoE layer {layer} of {self.model_name} ran outside begin_step()/end_step(); "
                "call begin_step() before each forward (or use tracekit.collect.record)"
            )
        ids, weights = got
        self._check_call(layer, ids, weights, args)
        ids = ids.detach().reshape(-1, self.top_k)
        if weights is not None:
            weights = weights.detach().reshape(-1, self.top_k)
        self._open.calls.setdefault(layer, []).append((ids, weights))

    def _check_call(self, layer: int, ids: Any, weights: Any, args: Any) -> None:
        """Shape and dtype checks only (no device sync): does what we read look like routing?"""
        where = f"layer {layer} of {self.model_name}"
        if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise CollectorError(
                f"{where}: expected integer expert ids [tokens, top_k], got "
                f"{getattr(ids, 'dtype', type(ids).__name__)}: the router API changed; register the model's "
                "router with tracekit.collect.register_moe and an extractor"
            )
        if ids.shape[-1] != self.top_k:
            raise CollectorError(
                f"{where}: expert ids of shape {tuple(ids.shape)} but the model's top_k is {self.top_k}: "
                "the router API changed; register an extractor with tracekit.collect.register_moe"
            )
        if weights is not None and (
            not isinstance(weights, torch.Tensor)
            or not weights.dtype.is_floating_point
            or tuple(weights.shape) != tuple(ids.shape)
        ):
            raise CollectorError(
                f"{where}: gate weights {getattr(weights, 'dtype', type(weights).__name__)} "
                f"{tuple(getattr(weights, 'shape', ()))} do not match expert ids {tuple(ids.shape)}: "
                "the router API changed; register an extractor with tracekit.collect.register_moe"
            )
        hidden = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if (
            hidden is not None
            and hidden.dim() >= 2
            and hidden.numel() // hidden.shape[-1] != ids.numel() // self.top_k
        ):
            raise CollectorError(
                f"{where}: {ids.numel() // self.top_k} routed tokens but {hidden.numel() // hidden.shape[-1]} "
                "hidden states: the hooked call is not (hidden_states, top_k_index, top_k_weights); "
                "register an extractor with tracekit.collect.register_moe"
            )

    # -- steps ------------------------------------------------------------------------------------
    @property
    def writer(self) -> TraceWriter:
        """The shard's trace writer (other collectors of the same run append their tables to it)."""
        return self._writer

    @property
    def clock_origin(self) -> Any:
        """Origin of the ``*_ns`` times: the CUDA event recorded at start on a GPU, else the
        ``perf_counter_ns`` value at start."""
        return self._origin

    @property
    def step(self) -> int:
        """Index of the next step to begin (steps are numbered from 0)."""
        return self._step

    def begin_step(
        self,
        *,
        phase: str | None = None,
        request_ids: Sequence[int] | np.ndarray | None = None,
        positions: torch.Tensor | np.ndarray | None = None,
        keep: torch.Tensor | np.ndarray | None = None,
        info: StepInfo | None = None,
    ) -> None:
        """Open a step. Per-token arguments have one entry per routed token, in batch order:
        ``request_ids`` (host), ``positions`` and ``keep`` (False: padding, not recorded; device or
        host). ``phase`` is prefill, decode or mixed (tokens' is_prefill is null for mixed)."""
        t0 = time.perf_counter_ns()
        if self._closed:
            raise UsageError(f"{self.out}: the collector is closed")
        if phase is None and info is None:
            raise UsageError(
                "begin_step needs phase= (prefill, decode or mixed) or info= (a StepInfo the phase is "
                "derived from); the collector does not guess a step's phase"
            )
        if phase is not None and phase not in PHASES:
            raise UsageError(f"phase {phase!r} is not one of {', '.join(PHASES)}")
        self._open = _StepTokens(
            keep=_as_device(keep, self.device, torch.bool),
            positions=_as_device(positions, self.device, torch.int32),
            request_ids=None if request_ids is None else np.asarray(request_ids, dtype=np.int64),
            phase=phase,
            info=info,
        )
        self._open_start = self._now()
        self.host_time_ns += time.perf_counter_ns() - t0

    def abandon_step(self) -> None:
        """Drop the open step (its forward failed); nothing of it is written."""
        self._open = None

    def end_step(self) -> None:
        """Close the open step: stack its routing on the device and start the copy to the host."""
        t0 = time.perf_counter_ns()
        try:
            self._end_step()
        finally:
            self.host_time_ns += time.perf_counter_ns() - t0

    def _end_step(self) -> None:
        st = self._open
        if st is None:
            raise UsageError("end_step() without begin_step()")
        self._open = None
        end = self._now()
        missing = [s.module_name for s in self.sites if s.layer not in st.calls]
        if missing:
            raise CollectorError(
                f"{self.model_name}: step {self._step}: {len(missing)} of {len(self.sites)} hooked MoE "
                f"module(s) did not run (first: {missing[0]}); a fused kernel, CUDA graph or torch.compile "
                "may have replaced their forward; record with the eager transformers implementation, or "
                "register the module that does run with tracekit.collect.register_moe"
            )
        ids_per_layer: list[torch.Tensor] = []
        w_per_layer: list[torch.Tensor | None] = []
        for s in self.sites:
            calls = [(i.to(self.device, non_blocking=True), w) for i, w in st.calls[s.layer]]
            ids_per_layer.append(calls[0][0] if len(calls) == 1 else torch.cat([c[0] for c in calls]))
            ws = [c[1].to(self.device, non_blocking=True) for c in calls if c[1] is not None]
            if len(ws) < len(calls):
                w_per_layer.append(None)
            else:
                w_per_layer.append(ws[0] if len(ws) == 1 else torch.cat(ws))
        num_tokens = {int(i.shape[0]) for i in ids_per_layer}
        if len(num_tokens) != 1:
            raise CollectorError(
                f"{self.model_name}: step {self._step}: MoE layers routed different token counts "
                f"{sorted(num_tokens)}; the collector expects every layer to route every token of the step"
            )
        T = num_tokens.pop()
        for name, t in (("keep", st.keep), ("positions", st.positions), ("request_ids", st.request_ids)):
            if t is not None and len(t) != T:
                raise CollectorError(
                    f"{self.model_name}: step {self._step}: {name} has {len(t)} entries but the MoE layers "
                    f"routed {T} tokens; give one entry per routed token, in batch order"
                )
        L, K, E = len(self.sites), self.top_k, self.num_experts
        ids_LTK = torch.stack(ids_per_layer).to(torch.int32)
        has_w = all(w is not None for w in w_per_layer)
        parts = [ids_LTK.reshape(-1)]
        if has_w:
            w_LTK = torch.stack([w for w in w_per_layer if w is not None]).to(torch.float32)
            parts.append(w_LTK.reshape(-1).view(torch.int32))
        keep_T = st.keep if st.keep is not None else None
        # expert_load: one scatter-add over all layers (ids outside 0..E-1 are checked on the host)
        flat = (
            ids_LTK.clamp(0, E - 1)
            + torch.arange(L, device=ids_LTK.device, dtype=torch.int32)[:, None, None] * E
        )
        count = (
            keep_T.to(torch.int32)[None, :, None].expand(L, T, K)
            if keep_T is not None
            else torch.ones((L, T, K), dtype=torch.int32, device=ids_LTK.device)
        )
        load = torch.zeros(L * E, dtype=torch.int32, device=ids_LTK.device)
        load.scatter_add_(0, flat.reshape(-1).to(torch.int64), count.reshape(-1))
        parts.append(load)
        if keep_T is not None:
            parts.append(keep_T.to(torch.int32))
        if st.positions is not None:
            parts.append(st.positions.to(torch.int32))
        packed = torch.cat(parts)
        host, copy_done = self._to_host(packed)
        if st.phase is not None:
            phase = st.phase
        elif st.info is not None:
            phase = default_phase(st.info)
        else:  # begin_step refuses this
            raise UsageError("begin_step needs phase= or info=")
        self._pending.append(
            _Pending(
                step=self._step,
                phase=phase,
                num_layers=L,
                num_rows_tokens=T,
                host=host,
                copy_done=copy_done,
                start=self._open_start,
                end=end,
                request_ids_T=st.request_ids,
                is_prefill=None if phase == "mixed" else phase == "prefill",
                has_keep=keep_T is not None,
                has_positions=st.positions is not None,
                has_weights=has_w,
            )
        )
        self._step += 1
        # process every step whose copy has surely landed: all but the newest on a GPU
        while len(self._pending) > (1 if self._cuda else 0):
            self._process(self._pending.popleft())
        now = time.monotonic_ns()
        if now - self._last_flush_ns >= self._flush_interval_ns:
            self._batch.drain()
            self._writer.flush()  # part files on disk: a killed run keeps everything up to here
            self._last_flush_ns = now

    def _now(self) -> Any:
        if self._cuda:
            # on the model's device (the current device may be another one): events on one stream
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            return ev
        return time.perf_counter_ns()

    def _to_host(self, packed: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if not self._cuda:
            return packed, None
        n = packed.numel()
        i = self._pinned_next
        self._pinned_next = 1 - i
        buf = self._pinned[i]
        if buf is None or buf.numel() < n:  # grows geometrically, then is reused step after step
            size = max(n, 2 * (buf.numel() if buf is not None else 0))
            buf = self._pinned[i] = torch.empty(size, dtype=torch.int32, pin_memory=True)
        host = buf[:n]
        stream = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(stream):  # the copy and its event on the stream that made `packed`
            host.copy_(packed, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
        return host, done

    def _times_ns(self, p: _Pending) -> tuple[int, int]:
        if self._cuda:
            p.end.synchronize()
            start = round(self._origin.elapsed_time(p.start) * 1e6)
            end = round(self._origin.elapsed_time(p.end) * 1e6)
            return start, end
        return int(p.start - self._origin), int(p.end - self._origin)

    def _process(self, p: _Pending) -> None:
        if p.copy_done is not None:
            p.copy_done.synchronize()
        buf = p.host.numpy()
        L, T, K, E = p.num_layers, p.num_rows_tokens, self.top_k, self.num_experts
        o = 0
        ids = buf[o : o + L * T * K].reshape(L, T, K)
        o += L * T * K
        w = None
        if p.has_weights:
            w = buf[o : o + L * T * K].view(np.float32).reshape(L, T, K)
            o += L * T * K
        load = buf[o : o + L * E].reshape(L, E)
        o += L * E
        keep = buf[o : o + T].astype(bool) if p.has_keep else np.ones(T, dtype=bool)
        o += T if p.has_keep else 0
        pos = buf[o : o + T] if p.has_positions else None
        self._check_values(p.step, ids, w)
        idx = np.flatnonzero(keep)
        n = int(idx.size)
        self._padding_dropped += T - n
        start_ns, end_ns = self._times_ns(p)
        self._step_times[p.step] = (start_ns, end_ns)
        req = p.request_ids_T[idx] if p.request_ids_T is not None else None
        num_requests = int(np.unique(req).size) if req is not None else 0
        prefill_n = n if p.is_prefill else (0 if p.is_prefill is False else None)
        decode_n = None if prefill_n is None else n - prefill_n
        self._batch.add(
            "steps",
            {
                "step": [p.step],
                "phase": [p.phase],
                "num_tokens": [n],
                "num_requests": [num_requests],
                "num_prefill_tokens": [prefill_n],
                "num_decode_tokens": [decode_n],
                "start_ns": [start_ns],
                "duration_ns": [end_ns - start_ns],
                "timing_source": ["cuda_event" if self._cuda else "host_timer"],
            },
            1,
        )
        token_index = np.arange(n, dtype=np.int32)
        tokens: dict[str, np.ndarray] = {"step": np.full(n, p.step, np.int32), "token_index": token_index}
        if req is not None:
            tokens["request_id"] = req
        if pos is not None:
            tokens["position"] = pos[idx].astype(np.int32)
        if p.is_prefill is not None:
            tokens["is_prefill"] = np.full(n, p.is_prefill)
        self._batch.add("tokens", tokens, n)
        layers = np.asarray(self.layers, dtype=np.int16)
        routing: dict[str, np.ndarray] = {
            "step": np.full(L * n, p.step, np.int32),
            "layer": np.repeat(layers, n),
            "token_index": np.tile(token_index, L),
            "expert_ids": ids[:, idx].reshape(L * n, K).astype(np.int16),
        }
        if w is not None:
            routing["gate_weights"] = w[:, idx].reshape(L * n, K)  # fancy indexing copies
        self._batch.add("routing", routing, L * n)
        self._batch.add(
            "expert_load",
            {
                "step": np.full(L * E, p.step, np.int32),
                "layer": np.repeat(layers, E),
                "expert": np.tile(np.arange(E, dtype=np.int16), L),
                "num_tokens": load.reshape(-1).astype(np.int64),
            },
            L * E,
        )
        if req is not None:
            self._requests.note_step(p.step, req, p.is_prefill)
        self._batch.end_step()

    def _check_values(self, step: int, ids: np.ndarray, w: np.ndarray | None) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_experts):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise CollectorError(
                f"{self.model_name}: step {step}: expert id {bad} outside 0..{self.num_experts - 1}: what the "
                "hook reads is not logical expert ids (router API drift, or ids already remapped for expert "
                "parallelism); register an extractor with tracekit.collect.register_moe"
            )
        if w is not None and w.size and not np.isfinite(w).all():
            raise CollectorError(
                f"{self.model_name}: step {step}: non-finite gate weights; the model's routing produced NaN/inf "
                "(check the dtype and weights of the model)"
            )

    def set_output_tokens(self, request_ids: Sequence[int], output_tokens: Sequence[int]) -> None:
        """Tell the collector how many tokens each request really generated (e.g. up to its EOS);
        without it, a request's output is its decode tokens + 1."""
        self.flush_pending()
        self._requests.set_output_tokens(request_ids, output_tokens)

    def flush(self) -> None:
        """Process the steps in flight and write every buffered row as part files (a checkpoint:
        a run killed later keeps all of it). Synchronises with the device once."""
        self.flush_pending()
        self._writer.flush()
        self._last_flush_ns = time.monotonic_ns()

    def flush_pending(self) -> None:
        """Process every step still in flight (synchronises with the device once)."""
        while self._pending:
            self._process(self._pending.popleft())
        self._batch.drain()

    # -- closing ----------------------------------------------------------------------------------
    def close(self, error: str | None = None) -> Path:
        """Finish the trace: process the last steps, write requests, mark the shard complete."""
        if self._closed:
            return self.out
        self._closed = True
        self.detach()
        try:
            if error is None:
                self.flush_pending()
                self._write_requests()
            else:  # keep the steps already processed: the failed trace stays readable up to them
                self._batch.drain()
        finally:
            self._writer.close(error=error)
        if self.rank == 0 and error is None:
            detail = dict(self.manifest.source_detail)
            detail["padding_tokens_dropped"] = self._padding_dropped
            detail["steps"] = self._step
            self.manifest = self.manifest.replace(source_detail=detail)
            self._writer.update_manifest(self.manifest)
        return self.out

    def _write_requests(self) -> None:
        if len(self._requests):
            self._writer.append("requests", self._requests.columns(self._step_times, self.rank))

    def __enter__(self) -> RoutingCollector:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(error=None if exc is None else f"{type(exc).__name__}: {exc}")


class _NoConfig:
    model_type = "unknown"


def _as_device(x: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.reshape(-1).to(device=device, dtype=dtype, non_blocking=True)
    return torch.as_tensor(np.asarray(x).reshape(-1)).to(device=device, dtype=dtype)
