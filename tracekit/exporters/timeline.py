"""A Perfetto timeline written with the official ``perfetto`` package's protobuf trace builder.

:class:`Timeline` collects tracks (a process per rank, named child tracks, counter tracks) and
events (slices, counter values, flows between slices), then writes them sorted by time through
``perfetto.trace_builder.proto_builder.StreamingTraceProtoBuilder`` as ``TracePacket`` protos
(``TrackDescriptor`` for tracks, ``TrackEvent`` for slices and counters). Times are integer
nanoseconds; a slice is a BEGIN/END pair on its track, so slices nest by time (a step holds its
layers, a layer its pieces). :func:`lanes` spreads intervals that may overlap over as few tracks as
keep each one properly nested.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The trusted packet sequence every packet of an export belongs to.
SEQUENCE_ID = 0x7A6B
_END, _COUNTER, _BEGIN = 0, 1, 2


def _protos() -> Any:
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2

    return perfetto_trace_pb2


@dataclass
class _Event:
    ts_ns: int
    kind: int
    depth: int
    track: int
    name: str = ""
    category: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    flows_out: list[int] = field(default_factory=list)
    flows_in: list[int] = field(default_factory=list)
    value: float = 0.0


@dataclass(frozen=True, kw_only=True)
class TimelineCounts:
    """What :meth:`Timeline.write` wrote."""

    tracks: int
    slices: int
    counters: int
    flows: int


class Timeline:
    """Tracks and events of one Perfetto trace, written sorted by time."""

    def __init__(self) -> None:
        self._next_uuid = 1
        self._tracks: list[tuple[int, dict[str, Any]]] = []
        self._events: list[_Event] = []
        self._slices = 0
        self._counters = 0
        self._flow_ids: set[int] = set()
        self._next_flow = 1

    def _uuid(self) -> int:
        uuid = self._next_uuid
        self._next_uuid += 1
        return uuid

    def process(self, pid: int, name: str) -> int:
        """A process track (one per rank); returns its uuid."""
        uuid = self._uuid()
        self._tracks.append((uuid, {"pid": pid, "process_name": name}))
        return uuid

    def track(self, parent: int, name: str, order: int = 0) -> int:
        """A named slice track under ``parent``; returns its uuid."""
        uuid = self._uuid()
        self._tracks.append((uuid, {"parent": parent, "name": name, "order": order}))
        return uuid

    def counter_track(self, parent: int, name: str, unit: str) -> int:
        """A counter track under ``parent`` (``unit`` is shown beside its values)."""
        uuid = self._uuid()
        self._tracks.append((uuid, {"parent": parent, "name": name, "unit": unit}))
        return uuid

    def flow(self) -> int:
        """A new flow id: put it in one slice's ``flows_out`` and another's ``flows_in``."""
        fid = self._next_flow
        self._next_flow += 1
        self._flow_ids.add(fid)
        return fid

    def slice(
        self,
        track: int,
        name: str,
        start_ns: int,
        end_ns: int,
        *,
        depth: int = 0,
        category: str = "",
        args: dict[str, Any] | None = None,
        flows_out: Iterable[int] = (),
        flows_in: Iterable[int] = (),
    ) -> None:
        """A slice ``[start_ns, end_ns)`` on ``track``; ``depth`` orders nested slices that start or
        end together (the outer one has the smaller depth)."""
        if end_ns <= start_ns:
            return
        self._events.append(
            _Event(
                start_ns,
                _BEGIN,
                depth,
                track,
                name,
                category,
                dict(args or {}),
                list(flows_out),
                list(flows_in),
            )
        )
        self._events.append(_Event(end_ns, _END, depth, track))
        self._slices += 1

    def counter(self, track: int, ts_ns: int, value: float) -> None:
        self._events.append(_Event(ts_ns, _COUNTER, 0, track, value=float(value)))
        self._counters += 1

    def write(self, path: Path) -> TimelineCounts:
        """Write the trace to ``path`` (through a temporary file beside it)."""
        pb = _protos()
        from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

        te = pb.TrackEvent
        tmp = path.with_name("." + path.name + ".tmp")
        # ends before counters before begins at one time; nested ends inner first, begins outer first
        order = sorted(
            range(len(self._events)),
            key=lambda i: (
                self._events[i].ts_ns,
                self._events[i].kind,
                -self._events[i].depth if self._events[i].kind == _END else self._events[i].depth,
                i,
            ),
        )
        with tmp.open("wb") as fh:
            builder = StreamingTraceProtoBuilder(fh)
            first = True
            for uuid, spec in self._tracks:
                packet = builder.create_packet()
                packet.trusted_packet_sequence_id = SEQUENCE_ID
                if first:
                    packet.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
                    first = False
                desc = packet.track_descriptor
                desc.uuid = uuid
                if "pid" in spec:
                    desc.process.pid = spec["pid"]
                    desc.process.process_name = spec["process_name"]
                else:
                    desc.parent_uuid = spec["parent"]
                    desc.name = spec["name"]
                    if "unit" in spec:
                        desc.counter.unit_name = spec["unit"]
                    else:
                        desc.sibling_order_rank = spec["order"]
                builder.write_packet(packet)
            for i in order:
                ev = self._events[i]
                packet = builder.create_packet()
                packet.trusted_packet_sequence_id = SEQUENCE_ID
                packet.timestamp = ev.ts_ns
                event = packet.track_event
                event.track_uuid = ev.track
                if ev.kind == _END:
                    event.type = te.TYPE_SLICE_END
                elif ev.kind == _COUNTER:
                    event.type = te.TYPE_COUNTER
                    event.double_counter_value = ev.value
                else:
                    event.type = te.TYPE_SLICE_BEGIN
                    event.name = ev.name
                    if ev.category:
                        event.categories.append(ev.category)
                    for key, value in ev.args.items():
                        _annotate(event.debug_annotations.add(), key, value)
                    event.flow_ids.extend(ev.flows_out)
                    event.terminating_flow_ids.extend(ev.flows_in)
                builder.write_packet(packet)
        os.replace(tmp, path)
        return TimelineCounts(
            tracks=len(self._tracks), slices=self._slices, counters=self._counters, flows=len(self._flow_ids)
        )


def _annotate(ann: Any, key: str, value: Any) -> None:
    ann.name = key
    if isinstance(value, bool):
        ann.bool_value = value
    elif isinstance(value, int):
        ann.int_value = value
    elif isinstance(value, float):
        ann.double_value = value
    else:
        ann.string_value = str(value)


def lanes(starts: Sequence[int], ends: Sequence[int]) -> list[int]:
    """A lane per interval (given sorted by start, longest first on ties) such that the intervals of a
    lane are disjoint or nested: a track per lane then holds them as proper slices."""
    stacks: list[list[int]] = []
    out = []
    for s, e in zip(starts, ends, strict=True):
        for lane, stack in enumerate(stacks):
            while stack and stack[-1] <= s:
                stack.pop()
            if not stack or e <= stack[-1]:
                stack.append(e)
                out.append(lane)
                break
        else:
            stacks.append([e])
            out.append(len(stacks) - 1)
    return out
