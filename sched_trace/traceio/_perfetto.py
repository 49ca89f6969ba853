"""Native Perfetto traces (TracePacket / TrackEvent protobuf): write and read back.

A file is a serialized ``perfetto.protos.Trace``; because ``Trace.packet`` is a
repeated field, appending more serialized ``Trace`` chunks to a file yields a
valid longer trace, which is how exporters write incrementally.

Layout, per process: a process track whose description records the clock
offset; one named child track per RankInfo (``host:Label-PP1-DP0-TP0``) whose
description holds the rank as JSON; stage and batch slices (BEGIN/END pairs,
written adjacently) with ids, sizes and attrs as debug annotations; flow ids
from :func:`flow_id`; counter tracks for batch size and numeric attrs.

The ``perfetto`` package is imported lazily so the core imports without it.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional

from .._events import RankInfo
from . import _protowire as _wire
from ._model import (
    Event, ProcessKey, counter_uuid, counter_values, event_args, flow_id, process_uuid, rank_to_dict,
    RANK_KEYS_ARG, slice_rank_keys, stable_id, track_name, track_rank, track_uuid,
)

REALTIME, MONOTONIC, BOOTTIME = 1, 3, 6
INT32_LIMIT = 1 << 31
SLICE_BEGIN, SLICE_END, COUNTER = 1, 2, 4


def protos() -> Any:
    """The ``perfetto_trace_pb2`` module, or a clear error naming the missing package."""
    try:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2
    except ImportError as exc:  # the core works without perfetto; only this format needs it
        raise ImportError(
            "reading or writing Perfetto protobuf traces needs the 'perfetto' package: "
            "pip install perfetto (or sched-trace[perfetto]); Chrome JSON needs nothing"
        ) from exc
    return perfetto_trace_pb2


class PerfettoEncoder:
    """Turns batches of end events into serialized Trace chunks, descriptors first.

    Stateful: each process, rank track and counter track is described once, in
    the first chunk that uses it. ``clock_offsets`` is consulted when a process is
    first seen; ``counter_attrs`` names attrs plotted as counters; ``track_keys``
    names extra rank keys that get a track per value (others are slice arguments).
    """

    def __init__(self, sequence_id: int = 1, counter_attrs: Iterable[str] = ("queue_depth",),
                 flows: bool = True, track_keys: Iterable[str] = ()) -> None:
        self.pb = protos()
        self.sequence_id = sequence_id & 0x7FFF_FFFF or 1
        self.counter_attrs = tuple(counter_attrs)
        self.flows = flows
        self.track_keys = frozenset(track_keys)
        self.clock_offsets: dict[ProcessKey, int] = {}
        #: Per host: how its clock was aligned in a merge (recorded in its process descriptors).
        self.process_notes: dict[str, Any] = {}
        self._described: set[int] = set()
        self._pids: dict[ProcessKey, int] = {}
        self._first = True
        self._fields: dict[Any, bytes] = {}
        self._counter_uuids: dict[tuple[int, str], bytes] = {}

    def clock_snapshot(self, offset_ns: int, now_ns: int) -> bytes:
        """A ClockSnapshot saying REALTIME - MONOTONIC = offset (timestamps are REALTIME)."""
        trace = self.pb.Trace()
        packet = self._packet(trace, now_ns)
        for clock_id, value in ((BOOTTIME, now_ns), (REALTIME, now_ns), (MONOTONIC, now_ns - offset_ns)):
            clock = packet.clock_snapshot.clocks.add()
            clock.clock_id, clock.timestamp = clock_id, value
        packet.clock_snapshot.primary_trace_clock = BOOTTIME
        return trace.SerializeToString()

    def encode(self, events: Iterable[Event]) -> bytes:
        """Slices and counters as hand-written wire bytes (``_protowire``), descriptors via protobuf."""
        chunks: list[bytes] = []
        head = _wire.sequence_field(self.sequence_id)
        tracks: dict[int, tuple[RankInfo, bytes, int, bytes]] = {}  # by id(): RankInfo hashes slowly
        for event in events:
            if event.end_ns is None:
                continue
            rank = event.rank
            track = tracks.get(id(rank))
            if track is None:
                track = tracks[id(rank)] = self._track(chunks, rank)
            start = _wire.timestamp_field(event.start_ns)
            chunks.append(_wire.slice_packets(
                head, self._first_flags(), track[1], self._field(_wire.category_field, event.kind),
                self._field(_wire.name_field, event.name), event_args(event, self.track_keys, False),
                flow_id(event) if self.flows else None, start, event.end_ns, track[3]))
            for name, value in counter_values(event, self.counter_attrs).items():
                uuid = self._counter_track(chunks, rank, track[2], name)
                chunks.append(_wire.counter_packet(head, self._first_flags(), uuid, value, start))
        return b"".join(chunks)

    def encode_messages(self, events: Iterable[Event]) -> bytes:
        """The same bytes as :meth:`encode`, built as protobuf messages (the reference, for tests)."""
        trace = self.pb.Trace()
        for event in events:
            if event.end_ns is None:
                continue
            self._describe(trace, event.rank)
            self._slice(trace, event)
            for name, value in counter_values(event, self.counter_attrs).items():
                self._counter(trace, event.rank, name, value, event.start_ns)
        return trace.SerializeToString()

    # --- wire-bytes helpers --------------------------------------------------------

    def _first_flags(self) -> bytes:
        if not self._first:
            return b""
        self._first = False
        return b"\x68" + _wire.varint(self.pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED)

    def _field(self, make: Any, text: str) -> bytes:
        # Stage names and kinds repeat: encode each once.
        encoded = self._fields.get((text, make))
        if encoded is None:
            encoded = self._fields[(text, make)] = make(text)
        return encoded

    def _track(self, chunks: list, rank: RankInfo) -> tuple[RankInfo, bytes, int, bytes]:
        """Describe the rank's tracks if new (protobuf, once); its uuid as an encoded field,
        and its extra rank keys as an encoded slice argument (every slice of it repeats them)."""
        uuid = track_uuid(rank, self.track_keys)
        if uuid not in self._described or process_uuid(rank.host_id, rank.pid) not in self._described:
            trace = self.pb.Trace()
            self._describe(trace, rank)
            chunks.append(trace.SerializeToString())
        rank_keys = slice_rank_keys(rank.extra, self.track_keys) if rank.extra else None
        encoded = _wire.annotation_field(b"\x22", RANK_KEYS_ARG, rank_keys) if rank_keys else b""
        return rank, _wire.uuid_field(uuid), uuid, encoded

    def _counter_track(self, chunks: list, rank: RankInfo, track: int, name: str) -> bytes:
        """The counter track's uuid as an encoded field; described (protobuf) the first time."""
        field = self._counter_uuids.get((track, name))
        if field is None:
            uuid = counter_uuid(rank, name, self.track_keys)
            if uuid not in self._described:
                trace = self.pb.Trace()
                self._describe_counter(trace, rank, name, uuid)
                chunks.append(trace.SerializeToString())
            field = self._counter_uuids[(track, name)] = _wire.uuid_field(uuid)
        return field

    # --- packets ---------------------------------------------------------------

    def _packet(self, trace: Any, timestamp: Optional[int] = None) -> Any:
        packet = trace.packet.add()
        packet.trusted_packet_sequence_id = self.sequence_id
        if self._first:  # no interning is used, but the state must start clean
            packet.sequence_flags = self.pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            self._first = False
        if timestamp is not None:
            packet.timestamp = timestamp
        return packet

    def _describe(self, trace: Any, rank: RankInfo) -> None:
        key = (rank.host_id, rank.pid)
        parent = process_uuid(*key)
        if parent not in self._described:
            self._described.add(parent)
            descriptor = self._packet(trace).track_descriptor
            descriptor.uuid = parent
            descriptor.process.pid = self._descriptor_pid(key)
            rank_id = rank.extras.get("rank")
            suffix = f" rank {rank_id}" if rank_id is not None else ""
            descriptor.process.process_name = f"{rank.host_id} pid {rank.pid}{suffix}"
            descriptor.child_ordering = self.pb.TrackDescriptor.EXPLICIT
            meta = {"host_id": rank.host_id, "pid": rank.pid, "clock_offset_ns": self.clock_offsets.get(key)}
            if rank.host_id in self.process_notes:
                meta["clock_alignment"] = self.process_notes[rank.host_id]
            descriptor.description = json.dumps({"sched_trace_process": meta})
        uuid = track_uuid(rank, self.track_keys)
        if uuid not in self._described:
            self._described.add(uuid)
            track = track_rank(rank, self.track_keys)
            descriptor = self._packet(trace).track_descriptor
            descriptor.uuid, descriptor.parent_uuid = uuid, parent
            descriptor.name = track_name(track, self.track_keys)
            descriptor.description = json.dumps({"sched_trace_rank": rank_to_dict(track)}, default=str)
            descriptor.sibling_order_rank = _order(rank)

    def _descriptor_pid(self, key: ProcessKey) -> int:
        # Two hosts may reuse a pid; the viewer keys processes by pid, so shift collisions.
        # The descriptor's pid is an int32 (the real pid is in the description).
        pid = key[1] % INT32_LIMIT
        used = set(self._pids.values())
        while pid in used:
            pid = (pid + (1 << 22)) % INT32_LIMIT
        self._pids[key] = pid
        return pid

    def _slice(self, trace: Any, event: Event) -> None:
        begin = self._packet(trace, event.start_ns)
        track_event = begin.track_event
        track_event.type = SLICE_BEGIN
        track_event.track_uuid = track_uuid(event.rank, self.track_keys)
        track_event.name = event.name
        track_event.categories.append(event.kind)
        for name, value in event_args(event, self.track_keys).items():
            set_annotation(track_event.debug_annotations.add(), name, value)
        flow = flow_id(event) if self.flows else None
        if flow is not None:
            track_event.flow_ids.append(flow)
        end = self._packet(trace, event.end_ns).track_event
        end.type = SLICE_END
        end.track_uuid = track_event.track_uuid

    def _describe_counter(self, trace: Any, rank: RankInfo, name: str, uuid: int) -> None:
        self._described.add(uuid)
        descriptor = self._packet(trace).track_descriptor
        descriptor.uuid, descriptor.parent_uuid = uuid, process_uuid(rank.host_id, rank.pid)
        descriptor.name = f"{track_name(track_rank(rank, self.track_keys), self.track_keys)} {name}"
        descriptor.counter.unit = self.pb.CounterDescriptor.UNIT_COUNT
        descriptor.sibling_order_rank = _order(rank) + 1

    def _counter(self, trace: Any, rank: RankInfo, name: str, value: float, timestamp: int) -> None:
        uuid = counter_uuid(rank, name, self.track_keys)
        if uuid not in self._described:
            self._describe_counter(trace, rank, name, uuid)
        track_event = self._packet(trace, timestamp).track_event
        track_event.type = COUNTER
        track_event.track_uuid = uuid
        if isinstance(value, int):
            track_event.counter_value = value
        else:
            track_event.double_counter_value = value


def _order(rank: RankInfo) -> int:
    """Tracks sort by PP, then DP, then TP rank; a rank's counters follow it."""
    return ((rank.pp_rank or 0) * 1000 + (rank.dp_rank or 0)) * 1000 + (rank.tp_rank or 0) * 10


def set_annotation(annotation: Any, name: Optional[str], value: Any) -> None:
    """Encode a Python value as a (possibly nested) DebugAnnotation."""
    if name is not None:
        annotation.name = name
    if isinstance(value, bool):
        annotation.bool_value = value
    elif isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
        annotation.int_value = value
    elif isinstance(value, float):
        annotation.double_value = value
    elif isinstance(value, str):
        annotation.string_value = value
    elif isinstance(value, Mapping) and value:
        for key, item in value.items():
            set_annotation(annotation.dict_entries.add(), str(key), item)
    elif isinstance(value, (list, tuple)) and value:
        for item in value:
            set_annotation(annotation.array_values.add(), None, item)
    elif value is None or isinstance(value, (Mapping, list, tuple)):
        annotation.legacy_json_value = json.dumps(value if value is None else type(value)())
    else:
        annotation.string_value = str(value)


def perfetto_sequence_id(host_id: str, pid: int) -> int:
    """A packet sequence id per writing process, so merged chunks never collide."""
    return stable_id("sequence", host_id, pid) & 0x7FFF_FFFF or 1
