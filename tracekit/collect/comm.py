"""Communication collector: one ``comm`` row per torch.distributed call this rank issues.

While enabled, the collector replaces the collective and point-to-point functions of
``torch.distributed`` (and of ``torch.distributed.distributed_c10d``, so ``dist.X`` and
``distributed_c10d.X`` both go through it) by thin wrappers; ``disable()`` puts the originals back.
When disabled nothing is wrapped, so an idle collector costs nothing.

Per call it records the op, the process group's global ranks, the payload dtype, the bytes sent to
and received from each group member (the per-peer vectors; for ``all_to_all_single`` straight from
the split sizes), the issue and completion times, and the step, layer and purpose the caller named
with :func:`context`::

    with comm.context(step=3, layer=7, purpose="dispatch"):
        dist.all_to_all_single(out, inp, out_splits, in_splits)

Byte accounting is the *logical* exchange: what each peer must receive from this rank, whatever
algorithm (ring, tree) the backend uses to relay it. ``bytes_sent``/``bytes_recv`` exclude the
rank's own entry. For ``all_reduce`` the payload is split into ``G`` nearly equal chunks and counted
as a reduce-scatter followed by an all-gather (``2 (G-1)/G`` of the tensor each way). docs/
expert-parallel.md has the table for every op.

Timing: the issue time is taken before the call; the completion time when the work completes. For
``async_op=True`` calls the returned work handle is wrapped so that ``wait()`` (or the first
``is_completed()`` that says True) records the end; on gloo the work's future also reports the
completion time itself. On CUDA tensors both times are CUDA events on the current stream (resolved
without synchronising, when the events have completed), anchored to the host clock once at
``enable()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from tracekit.errors import CollectorError, UsageError
from tracekit.trace.writer import TraceWriter

__all__ = ["OPS", "CommCollector", "CommContext", "context", "current_context"]


# -- caller's context ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CommContext:
    """What the calls issued inside a :func:`context` block belong to."""

    #: Forward step (joins ``steps.step``).
    step: int | None = None
    #: Decoder layer index.
    layer: int | None = None
    #: dispatch, combine, tp_allreduce, dp_allgather, kv_transfer, other, ...
    purpose: str | None = None


_EMPTY = CommContext()
_CONTEXT: contextvars.ContextVar[CommContext] = contextvars.ContextVar(
    "tracekit_comm_context", default=_EMPTY
)
#: Set while a recorded call runs, so that a wrapped function calling another wrapped one (the
#: deprecated ``all_gather_into_tensor`` calls ``all_gather_single``) is recorded once.
_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("tracekit_comm_inside", default=False)
_KEEP: Any = object()


def current_context() -> CommContext:
    """The context in force on this thread (or task)."""
    return _CONTEXT.get()


@contextlib.contextmanager
def context(
    *, step: int | None = _KEEP, layer: int | None = _KEEP, purpose: str | None = _KEEP
) -> Iterator[CommContext]:
    """Label the calls issued in the block; fields not given keep the enclosing block's value.

    Cheap enough to leave in production code: it only sets a context variable, recorded or not.
    """
    outer = _CONTEXT.get()
    ctx = CommContext(
        step=outer.step if step is _KEEP else step,
        layer=outer.layer if layer is _KEEP else layer,
        purpose=outer.purpose if purpose is _KEEP else purpose,
    )
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


# -- what each op moves -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Payload:
    group: Any
    dtype: str | None
    #: Bytes to / from each group member, indexed by group rank (own entry = kept locally).
    send: list[int] | None
    recv: list[int] | None
    #: Bytes sent / received (excluding self) when not the sum of the vectors less the own entry.
    sent: int | None = None
    received: int | None = None
    peer: int | None = None
    peer_group_rank: int | None = None
    is_async: bool = False
    tensor: torch.Tensor | None = None


class _Group:
    """Facts about a process group, cached per group object."""

    __slots__ = ("backend", "my_index", "ranks")

    def __init__(self, group: Any) -> None:
        pg = group if group is not None else c10d._get_default_group()
        self.ranks: tuple[int, ...] = tuple(int(r) for r in dist.get_process_group_ranks(pg))
        me = dist.get_rank()
        self.my_index = self.ranks.index(me) if me in self.ranks else -1
        try:
            self.backend: str | None = str(dist.get_backend(pg))
        except (RuntimeError, ValueError):
            self.backend = None

    @property
    def size(self) -> int:
        return len(self.ranks)


def _nbytes(t: torch.Tensor) -> int:
    return int(t.numel()) * int(t.element_size())


def _dtype(t: torch.Tensor | None) -> str | None:
    return None if t is None else str(t.dtype).removeprefix("torch.")


def _chunks(numel: int, size: int) -> list[int]:
    """``numel`` elements split into ``size`` nearly equal chunks (the first ones one larger)."""
    base, extra = divmod(numel, size)
    return [base + (1 if j < extra else 0) for j in range(size)]


def _excluding(vec: list[int] | None, own: int) -> int:
    return 0 if vec is None else sum(vec) - vec[own]


#: Facts about each process group seen while a collector is enabled (cleared on enable/disable,
#: since a destroyed group's id can be reused).
_GROUPS: dict[int, _Group] = {}


def _group_info(group: Any) -> _Group:
    g = _GROUPS.get(id(group))
    if g is None:
        g = _GROUPS[id(group)] = _Group(group)
    return g


def _group_size(group: Any) -> int:
    return _group_info(group).size


def _split_rows(splits: Sequence[int] | None, rows: int, size: int) -> list[int]:
    if splits is None or len(splits) == 0:
        return [rows // size] * size  # torch itself refuses rows not divisible by the size
    return [int(s) for s in splits]


def _row_bytes(t: torch.Tensor) -> int:
    row = 1
    for d in t.shape[1:]:
        row *= int(d)
    return row * int(t.element_size())


def _p_all_to_all_single(
    output: torch.Tensor,
    input: torch.Tensor,
    output_split_sizes: Sequence[int] | None = None,
    input_split_sizes: Sequence[int] | None = None,
    group: Any = None,
    async_op: bool = False,
) -> _Payload:
    size = _group_size(group)
    ins = _split_rows(input_split_sizes, int(input.shape[0]) if input.dim() else 1, size)
    outs = _split_rows(output_split_sizes, int(output.shape[0]) if output.dim() else 1, size)
    rb_in, rb_out = _row_bytes(input), _row_bytes(output)
    return _Payload(
        group=group,
        dtype=_dtype(input),
        send=[s * rb_in for s in ins],
        recv=[s * rb_out for s in outs],
        is_async=bool(async_op),
        tensor=input,
    )


def _p_all_to_all(
    output_tensor_list: Sequence[torch.Tensor],
    input_tensor_list: Sequence[torch.Tensor],
    group: Any = None,
    async_op: bool = False,
) -> _Payload:
    first = input_tensor_list[0] if len(input_tensor_list) else None
    return _Payload(
        group=group,
        dtype=_dtype(first),
        send=[_nbytes(t) for t in input_tensor_list],
        recv=[_nbytes(t) for t in output_tensor_list],
        is_async=bool(async_op),
        tensor=first,
    )


def _p_all_reduce(
    tensor: torch.Tensor, op: Any = None, group: Any = None, async_op: bool = False
) -> _Payload:
    size = _group_size(group)
    me = max(_group_info(group).my_index, 0)
    es = int(tensor.element_size())
    chunk = [c * es for c in _chunks(int(tensor.numel()), size)]
    # reduce-scatter (peer j gets my part of chunk j) then all-gather (peer j gets my reduced chunk)
    send = [chunk[j] + chunk[me] for j in range(size)]
    recv = [chunk[me] + chunk[j] for j in range(size)]
    return _Payload(
        group=group, dtype=_dtype(tensor), send=send, recv=recv, is_async=bool(async_op), tensor=tensor
    )


def _p_all_gather(
    tensor_list: Sequence[torch.Tensor], tensor: torch.Tensor, group: Any = None, async_op: bool = False
) -> _Payload:
    size = _group_size(group)
    return _Payload(
        group=group,
        dtype=_dtype(tensor),
        send=[_nbytes(tensor)] * size,
        recv=[_nbytes(t) for t in tensor_list],
        is_async=bool(async_op),
        tensor=tensor,
    )


def _p_all_gather_into_tensor(
    output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any = None, async_op: bool = False
) -> _Payload:
    size = _group_size(group)
    return _Payload(
        group=group,
        dtype=_dtype(input_tensor),
        send=[_nbytes(input_tensor)] * size,
        recv=[_nbytes(output_tensor) // size] * size,
        is_async=bool(async_op),
        tensor=input_tensor,
    )


def _p_reduce_scatter(
    output: torch.Tensor,
    input_list: Sequence[torch.Tensor],
    op: Any = None,
    group: Any = None,
    async_op: bool = False,
) -> _Payload:
    size = _group_size(group)
    return _Payload(
        group=group,
        dtype=_dtype(output),
        send=[_nbytes(t) for t in input_list],
        recv=[_nbytes(output)] * size,
        is_async=bool(async_op),
        tensor=output,
    )


def _p_reduce_scatter_tensor(
    output: torch.Tensor, input: torch.Tensor, op: Any = None, group: Any = None, async_op: bool = False
) -> _Payload:
    size = _group_size(group)
    return _Payload(
        group=group,
        dtype=_dtype(output),
        send=[_nbytes(input) // size] * size,
        recv=[_nbytes(output)] * size,
        is_async=bool(async_op),
        tensor=output,
    )


def _peer(group: Any, global_rank: int | None, group_rank: int | None) -> tuple[int | None, int | None]:
    """(global rank, group rank) of a peer given either."""
    if global_rank is None and group_rank is None:
        return None, None
    pg = group if group is not None else c10d._get_default_group()
    if global_rank is None:
        assert group_rank is not None
        return int(dist.get_global_rank(pg, group_rank)), int(group_rank)
    return int(global_rank), int(dist.get_group_rank(pg, global_rank))


def _p_broadcast(
    tensor: torch.Tensor,
    src: int | None = None,
    group: Any = None,
    async_op: bool = False,
    group_src: int | None = None,
) -> _Payload:
    size = _group_size(group)
    root, root_index = _peer(group, src, group_src)
    n = _nbytes(tensor)
    me = _group_info(group).my_index
    if me == root_index:
        send = [n] * size
        recv = [0] * size
        recv[me] = n
    else:
        send = [0] * size
        recv = [0] * size
        if root_index is not None:
            recv[root_index] = n
    return _Payload(
        group=group,
        dtype=_dtype(tensor),
        send=send,
        recv=recv,
        peer=root,
        is_async=bool(async_op),
        tensor=tensor,
    )


def _point_to_point(
    tensor: torch.Tensor,
    peer: int | None,
    group: Any,
    group_peer: int | None,
    *,
    sending: bool,
    is_async: bool,
) -> _Payload:
    size = _group_size(group)
    glob, index = _peer(group, peer, group_peer)
    vec = [0] * size
    if index is not None:
        vec[index] = _nbytes(tensor)
    zeros = [0] * size
    return _Payload(
        group=group,
        dtype=_dtype(tensor),
        send=vec if sending else zeros,
        recv=zeros if sending else vec,
        sent=_nbytes(tensor) if sending else 0,
        received=0 if sending else _nbytes(tensor),
        peer=glob,
        peer_group_rank=index,
        is_async=is_async,
        tensor=tensor,
    )


def _p_send(
    tensor: torch.Tensor,
    dst: int | None = None,
    group: Any = None,
    tag: int = 0,
    group_dst: int | None = None,
) -> _Payload:
    return _point_to_point(tensor, dst, group, group_dst, sending=True, is_async=False)


def _p_isend(
    tensor: torch.Tensor,
    dst: int | None = None,
    group: Any = None,
    tag: int = 0,
    group_dst: int | None = None,
) -> _Payload:
    return _point_to_point(tensor, dst, group, group_dst, sending=True, is_async=True)


def _p_recv(
    tensor: torch.Tensor,
    src: int | None = None,
    group: Any = None,
    tag: int = 0,
    group_src: int | None = None,
) -> _Payload:
    return _point_to_point(tensor, src, group, group_src, sending=False, is_async=False)


def _p_irecv(
    tensor: torch.Tensor,
    src: int | None = None,
    group: Any = None,
    tag: int = 0,
    group_src: int | None = None,
) -> _Payload:
    return _point_to_point(tensor, src, group, group_src, sending=False, is_async=True)


def _p_barrier(
    group: Any = c10d.GroupMember.WORLD, async_op: bool = False, device_ids: Any = None, timeout: Any = None
) -> _Payload:
    size = _group_size(group)
    return _Payload(group=group, dtype=None, send=[0] * size, recv=[0] * size, is_async=bool(async_op))


#: Recorded functions of torch.distributed: name -> payload extractor (same parameters as the op).
OPS: dict[str, Callable[..., _Payload]] = {
    "all_to_all_single": _p_all_to_all_single,
    "all_to_all": _p_all_to_all,
    "all_reduce": _p_all_reduce,
    "all_gather": _p_all_gather,
    "all_gather_into_tensor": _p_all_gather_into_tensor,
    "all_gather_single": _p_all_gather_into_tensor,
    "reduce_scatter": _p_reduce_scatter,
    "reduce_scatter_tensor": _p_reduce_scatter_tensor,
    "reduce_scatter_single": _p_reduce_scatter_tensor,
    "broadcast": _p_broadcast,
    "send": _p_send,
    "recv": _p_recv,
    "isend": _p_isend,
    "irecv": _p_irecv,
    "barrier": _p_barrier,
}


# -- one recorded call --------------------------------------------------------------------------


class _Call:
    """A call in flight or done; turned into a row when its end time is known."""

    __slots__ = (
        "backend",
        "device",
        "dtype",
        "end_event",
        "end_ns",
        "group_ranks",
        "is_async",
        "layer",
        "op",
        "peer",
        "purpose",
        "received",
        "recv",
        "send",
        "sent",
        "seq",
        "start_event",
        "start_ns",
        "step",
    )

    def __init__(self, *, seq: int, op: str, ctx: CommContext, group: _Group, payload: _Payload) -> None:
        self.seq = seq
        self.op = op
        self.step, self.layer, self.purpose = ctx.step, ctx.layer, ctx.purpose
        self.backend = group.backend
        self.group_ranks = list(group.ranks)
        self.dtype = payload.dtype
        self.peer = payload.peer
        self.is_async = payload.is_async
        self.send, self.recv = payload.send, payload.recv
        own = max(group.my_index, 0)
        self.sent = payload.sent if payload.sent is not None else _excluding(payload.send, own)
        self.received = payload.received if payload.received is not None else _excluding(payload.recv, own)
        self.start_ns: int | None = None
        self.end_ns: int | None = None
        self.start_event: Any = None
        self.end_event: Any = None
        #: CUDA device of the payload (None on the CPU): its current stream carries the events.
        self.device: Any = None


class _TimedWork:
    """Wraps the work handle of an ``async_op=True`` call: completion is recorded when it is seen."""

    __slots__ = ("_call", "_collector", "_work")

    def __init__(self, work: Any, call: _Call, collector: CommCollector) -> None:
        self._work = work
        self._call = call
        self._collector = collector

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        out = self._work.wait(*args, **kwargs)
        self._collector._completed(self._call)
        return out

    def is_completed(self) -> bool:
        done = bool(self._work.is_completed())
        if done:
            self._collector._completed(self._call)
        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._work, name)

    def __repr__(self) -> str:
        return f"TimedWork({self._work!r})"


# -- the collector ------------------------------------------------------------------------------

_ACTIVE_LOCK = threading.Lock()
_ACTIVE: CommCollector | None = None


class CommCollector:
    """Records every torch.distributed call of this rank into the ``comm`` table of ``writer``.

    ``writer`` is this rank's shard (its ``rank`` must be this process's global rank).
    ``clock_origin_ns`` is the ``time.perf_counter_ns()`` value that ``*_ns`` columns count from (give
    the same origin to every collector of a trace; default: the time of ``enable()``). On a GPU,
    ``cuda_origin`` (a recorded ``torch.cuda.Event`` with timing) is the origin of CUDA-event times
    instead, so that they line up with step times measured from the same event; without it the
    first CUDA call anchors the event clock to the host clock. Finished calls are handed to the
    writer every ``flush_rows`` calls and on :meth:`flush` / :meth:`disable`. Only one collector can
    be enabled per process.
    """

    def __init__(
        self,
        writer: TraceWriter,
        *,
        clock_origin_ns: int | None = None,
        cuda_origin: Any = None,
        flush_rows: int = 4096,
    ) -> None:
        self.writer = writer
        self.clock_origin_ns = clock_origin_ns
        self.flush_rows = flush_rows
        self._originals: dict[tuple[Any, str], Any] = {}
        self._pending: list[_Call] = []
        self._seq = 0
        self._rows = 0
        self._anchor: tuple[Any, int] | None = None if cuda_origin is None else (cuda_origin, 0)
        self._enabled = False

    # -- switching on and off -------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self._enabled

    def enable(self) -> CommCollector:
        global _ACTIVE
        if self._enabled:
            return self
        if not dist.is_available() or not dist.is_initialized():
            raise UsageError(
                "comm collector: torch.distributed is not initialised; call "
                "torch.distributed.init_process_group before enabling it"
            )
        if dist.get_rank() != self.writer.rank:
            raise UsageError(
                f"comm collector: the trace writer is for rank {self.writer.rank} but this process is "
                f"rank {dist.get_rank()}; open the writer with rank=torch.distributed.get_rank()"
            )
        with _ACTIVE_LOCK:
            if _ACTIVE is not None:
                raise UsageError(
                    "comm collector: another collector is already enabled in this process; disable it first"
                )
            _ACTIVE = self
        _GROUPS.clear()
        if self.clock_origin_ns is None:
            self.clock_origin_ns = time.perf_counter_ns()
        for module in (dist, c10d):
            for name in OPS:
                original = getattr(module, name, None)
                if original is None:
                    continue
                self._originals[(module, name)] = original
                setattr(module, name, self._wrap(name, original))
        self._enabled = True
        return self

    def disable(self) -> None:
        """Restore the original functions and hand every recorded call to the writer."""
        global _ACTIVE
        if not self._enabled:
            return
        for (module, name), original in self._originals.items():
            setattr(module, name, original)
        self._originals.clear()
        self._enabled = False
        with _ACTIVE_LOCK:
            _ACTIVE = None
        _GROUPS.clear()
        self.flush(final=True)

    def __enter__(self) -> CommCollector:
        return self.enable()

    def __exit__(self, *exc: object) -> None:
        self.disable()

    @property
    def calls_recorded(self) -> int:
        """Calls issued so far while enabled (written or still pending)."""
        return self._seq

    # -- wrapping -------------------------------------------------------------------------------
    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        extract = OPS[name]

        def recorded(*args: Any, **kwargs: Any) -> Any:
            if _INSIDE.get():
                return original(*args, **kwargs)
            payload = extract(*args, **kwargs)
            call = self._start(name, payload)
            token = _INSIDE.set(True)
            try:
                out = original(*args, **kwargs)
            finally:
                _INSIDE.reset(token)
            if name == "recv" and call.peer is None and isinstance(out, int) and out >= 0:
                self._fill_any_source(call, payload, out)
            if payload.is_async and out is not None:
                self._watch(out, call)
                return _TimedWork(out, call, self)
            self._completed(call)
            return out

        recorded.__name__ = name
        recorded.__qualname__ = f"tracekit_recorded_{name}"
        recorded.__doc__ = original.__doc__
        recorded.__wrapped__ = original  # type: ignore[attr-defined]
        return recorded

    def _start(self, name: str, payload: _Payload) -> _Call:
        ctx = _CONTEXT.get()
        g = _group_info(payload.group)
        call = _Call(seq=self._seq, op=name, ctx=ctx, group=g, payload=payload)
        self._seq += 1
        tensor = payload.tensor
        if tensor is not None and tensor.is_cuda:
            self._ensure_anchor(tensor.device)
            call.device = tensor.device
            call.start_event = torch.cuda.Event(enable_timing=True)
            call.start_event.record(torch.cuda.current_stream(tensor.device))
        else:
            call.start_ns = time.perf_counter_ns() - self._origin
        self._pending.append(call)
        return call

    @property
    def _origin(self) -> int:
        assert self.clock_origin_ns is not None
        return self.clock_origin_ns

    def _fill_any_source(self, call: _Call, payload: _Payload, src: int) -> None:
        index = int(
            dist.get_group_rank(
                payload.group if payload.group is not None else c10d._get_default_group(), src
            )
        )
        call.peer = src
        call.recv = [0] * len(call.group_ranks)
        call.recv[index] = call.received

    def _watch(self, work: Any, call: _Call) -> None:
        """Let the work's own future report the completion time where the backend supports it."""
        if call.start_event is not None:
            return  # CUDA: the end event is recorded on the stream at wait()
        try:
            fut = work.get_future()
        except (RuntimeError, AttributeError):
            return

        def done(_: Any) -> None:
            if call.end_ns is None:
                call.end_ns = time.perf_counter_ns() - self._origin

        with contextlib.suppress(RuntimeError):
            fut.then(done)

    def _completed(self, call: _Call) -> None:
        if call.start_event is not None:
            if call.end_event is None:
                # after the call (or its wait()) the current stream waits for the collective, so an
                # event recorded on it now completes when the collective has
                ev = torch.cuda.Event(enable_timing=True)
                ev.record(torch.cuda.current_stream(call.device))
                call.end_event = ev
        elif call.end_ns is None:
            call.end_ns = time.perf_counter_ns() - self._origin
        if len(self._pending) >= self.flush_rows:
            self.flush()

    # -- CUDA clock -----------------------------------------------------------------------------
    def _ensure_anchor(self, device: torch.device) -> None:
        if self._anchor is None:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(device))
            ev.synchronize()
            self._anchor = (ev, time.perf_counter_ns() - self._origin)

    def _event_ns(self, ev: Any) -> int:
        assert self._anchor is not None
        anchor, anchor_ns = self._anchor
        return anchor_ns + round(anchor.elapsed_time(ev) * 1e6)

    # -- writing --------------------------------------------------------------------------------
    def flush(self, *, final: bool = False) -> int:
        """Hand finished calls (in issue order, up to the first unfinished one) to the writer.

        With ``final=True`` everything pending is written: CUDA events are waited for, and calls
        whose completion was never seen get a null ``end_ns``. Returns the rows handed over.
        """
        ready: list[_Call] = []
        keep_from = len(self._pending)
        for i, call in enumerate(self._pending):
            if call.start_event is not None:
                if call.end_event is None:
                    if not final:
                        keep_from = i
                        break
                    call.start_event.synchronize()  # elapsed_time needs a completed event
                    call.start_ns = self._event_ns(call.start_event)
                elif final or call.end_event.query():
                    call.end_event.synchronize()
                    call.start_ns = self._event_ns(call.start_event)
                    call.end_ns = self._event_ns(call.end_event)
                else:
                    keep_from = i
                    break
            elif call.end_ns is None and not final:
                keep_from = i
                break
            ready.append(call)
        self._pending = self._pending[keep_from:]
        if ready:
            self._write(ready)
        return len(ready)

    def _write(self, calls: list[_Call]) -> None:
        cols: dict[str, Any] = {
            "seq": np.fromiter((c.seq for c in calls), np.int64, len(calls)),
            "step": [c.step for c in calls],
            "layer": [c.layer for c in calls],
            "purpose": [c.purpose for c in calls],
            "op": [c.op for c in calls],
            "backend": [c.backend for c in calls],
            "group_ranks": [c.group_ranks for c in calls],
            "dtype": [c.dtype for c in calls],
            "bytes_sent": np.fromiter((c.sent for c in calls), np.int64, len(calls)),
            "bytes_recv": np.fromiter((c.received for c in calls), np.int64, len(calls)),
            "send_bytes_per_peer": [c.send for c in calls],
            "recv_bytes_per_peer": [c.recv for c in calls],
            "peer": [c.peer for c in calls],
            "is_async": np.fromiter((c.is_async for c in calls), np.bool_, len(calls)),
            "start_ns": [c.start_ns for c in calls],
            "end_ns": [c.end_ns for c in calls],
            "timing_source": ["cuda_event" if c.start_event is not None else "host_timer" for c in calls],
        }
        try:
            self.writer.append("comm", cols)
        except Exception as exc:
            raise CollectorError(
                f"comm collector: writing {len(calls)} rows to {self.writer.path} failed: {exc}"
            ) from exc
        self._rows += len(calls)

    @property
    def rows_written(self) -> int:
        return self._rows
