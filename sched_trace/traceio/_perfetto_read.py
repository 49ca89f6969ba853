"""Native Perfetto traces read back into events (see ``_perfetto`` for the layout).

A rank killed mid-write leaves a file whose last packet is incomplete: exactly
the file a user wants to open. Such a file is read up to its last complete
packet, with a :class:`~sched_trace.SchedTraceWarning` saying how much was cut.
Anything else wrong is a :class:`TraceFormatError` naming the file and the packet.
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Optional

from .._errors import SchedTraceWarning
from .._events import RankInfo
from ._checks import checked_event, checked_rank, expect_dict, hashable, optional_int, to_int
from ._model import ProcessKey, TraceFile, TraceFormatError
from ._perfetto import MONOTONIC, REALTIME, SLICE_BEGIN, SLICE_END, protos

_PACKET_TAG = 0x0A  # Trace.packet: field 1, length-delimited; a Trace has no other field


def read_perfetto(path: str, data: bytes) -> TraceFile:
    trace = _parse(path, data)
    result = TraceFile(path=path, format="perfetto")
    tracks: dict[int, Any] = {}
    processes: dict[int, ProcessKey] = {}
    open_slices: dict[int, list[Any]] = {}
    snapshot_offsets: list[int] = []
    for number, packet in enumerate(trace.packet):
        try:
            if packet.HasField("track_descriptor"):
                _read_descriptor(packet.track_descriptor, tracks, processes, result)
            elif packet.HasField("clock_snapshot"):
                clocks = {c.clock_id: c.timestamp for c in packet.clock_snapshot.clocks}
                if REALTIME in clocks and MONOTONIC in clocks:
                    snapshot_offsets.append(to_int(clocks[REALTIME] - clocks[MONOTONIC], "clock offset"))
            elif packet.HasField("track_event"):
                _read_track_event(packet, tracks, processes, open_slices, result)
        except TraceFormatError as exc:
            raise exc.located(path, f"packet {number}") from None
        except UnicodeDecodeError as exc:  # proto2 strings are checked only when read
            raise TraceFormatError(f"a string field is not UTF-8 ({exc.reason})", path=path,
                                   where=f"packet {number}") from None
    if snapshot_offsets and not result.clock_offsets:
        for key in result.processes():
            result.clock_offsets[key] = snapshot_offsets[0]
    return result


def _parse(path: str, data: bytes) -> Any:
    """The ``Trace`` message; a file cut inside its last packet yields the packets before it."""
    trace = protos().Trace()
    try:
        trace.ParseFromString(data)
        return trace
    except Exception as exc:  # protobuf raises DecodeError (or RuntimeError); any failure means the same
        first = exc
    end, packets = complete_prefix(data)
    if 0 < end < len(data) and _cut_inside_packet(data, end):
        trace = protos().Trace()
        try:
            trace.ParseFromString(data[:end])
        except Exception:
            pass
        else:
            warnings.warn(SchedTraceWarning(
                f"{path}: cut short: read {packets} complete packets, dropped the last "
                f"{len(data) - end} bytes (an incomplete packet; was the writer killed?)"), stacklevel=4)
            return trace
    if end == 0 and _cut_inside_packet(data, 0):
        raise TraceFormatError("cut short inside its first packet: no complete packet to read", path=path)
    where = f" after {packets} complete packets (byte {end})" if packets else ""
    raise TraceFormatError(f"not a Perfetto protobuf trace, or corrupt{where} ({first})", path=path)


def complete_prefix(data: bytes) -> tuple[int, int]:
    """``(end, count)`` of the complete packets (``Trace.packet``, field 1) the data starts with."""
    position = count = 0
    while position < len(data) and data[position] == _PACKET_TAG:
        length, cursor = _varint(data, position + 1)
        if length is None or cursor + length > len(data):
            break
        position, count = cursor + length, count + 1
    return position, count


def _cut_inside_packet(data: bytes, position: int) -> bool:
    """A packet starts at ``position`` and the file ends before it does: the writer was stopped."""
    if position >= len(data) or data[position] != _PACKET_TAG:
        return False
    length, cursor = _varint(data, position + 1)
    return length is None and len(data) - position < 11 or length is not None and cursor + length > len(data)


def _varint(data: bytes, position: int) -> tuple[Optional[int], int]:
    value = shift = 0
    for index in range(position, min(position + 10, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    return None, position


def _read_descriptor(descriptor: Any, tracks: dict, processes: dict, result: TraceFile) -> None:
    tracks[descriptor.uuid] = descriptor
    meta = _description(descriptor).get("sched_trace_process")
    if meta is not None:
        meta = expect_dict(meta, "sched_trace_process")
        key = (str(hashable(meta.get("host_id", "unknown"))), to_int(meta.get("pid", 0), "process pid"))
        processes[descriptor.uuid] = key
        offset = optional_int(meta.get("clock_offset_ns"), "clock_offset_ns")
        if offset is not None:
            result.clock_offsets[key] = offset
    elif descriptor.HasField("process"):
        processes[descriptor.uuid] = ("unknown", descriptor.process.pid)


def _description(descriptor: Any) -> dict:
    """The JSON sched-trace keeps in a track description; ``{}`` for other tools' text."""
    description = _text(descriptor.description)
    if not description.startswith("{"):
        return {}
    try:
        found = json.loads(description)
    except (ValueError, RecursionError):
        return {}
    return found if isinstance(found, dict) else {}


def _track_rank(uuid: int, tracks: dict, processes: dict) -> RankInfo:
    descriptor = tracks.get(uuid)
    if descriptor is None:
        return RankInfo(host_id="unknown", pid=0, tid=0, thread_label=f"track-{uuid}")
    stored = _description(descriptor).get("sched_trace_rank")
    if stored is not None:
        return checked_rank(stored, "sched_trace_rank")
    host, pid = processes.get(descriptor.parent_uuid, ("unknown", 0))
    if descriptor.HasField("thread"):
        pid, tid = descriptor.thread.pid, descriptor.thread.tid
        label = _text(descriptor.thread.thread_name) or _text(descriptor.name) or f"tid-{tid}"
        return RankInfo(host_id=host, pid=pid, tid=tid, thread_label=label)
    return RankInfo(host_id=host, pid=pid, tid=0, thread_label=_text(descriptor.name) or f"track-{uuid}")


def _read_track_event(packet: Any, tracks: dict, processes: dict, open_slices: dict,
                      result: TraceFile) -> None:
    track_event = packet.track_event
    uuid = track_event.track_uuid
    if track_event.type == SLICE_BEGIN:
        open_slices.setdefault(uuid, []).append(packet)
    elif track_event.type == SLICE_END and open_slices.get(uuid):
        begin = open_slices[uuid].pop()
        args = {_text(a.name): get_annotation(a) for a in begin.track_event.debug_annotations}
        kind = "batch" if "batch" in map(_text, begin.track_event.categories) else "stage"
        rank = _track_rank(uuid, tracks, processes)
        result.events.append(checked_event(kind, _text(begin.track_event.name), begin.timestamp,
                                           packet.timestamp, rank, args))


def get_annotation(annotation: Any) -> Any:
    """A DebugAnnotation as the Python value ``set_annotation`` encoded."""
    if annotation.dict_entries:
        return {_text(entry.name): get_annotation(entry) for entry in annotation.dict_entries}
    if annotation.array_values:
        return [get_annotation(item) for item in annotation.array_values]
    which = annotation.WhichOneof("value")
    if which is None:
        return None
    value = getattr(annotation, which)
    if isinstance(value, bytes):
        value = _text(value)
    elif not isinstance(value, (bool, int, float, str)):  # a nested or proto value: its text
        return str(value)
    if which == "legacy_json_value":
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # another tool's text: keep it as text
            return value
    return value


def _text(value: "str | bytes") -> str:
    """A proto2 string field; protobuf hands out bytes when the file's bytes are not UTF-8."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
