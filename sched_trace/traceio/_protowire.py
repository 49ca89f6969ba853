"""Protobuf wire bytes for the packets every event produces: slice begin/end and counters.

Building ``perfetto_trace_pb2`` messages costs about 15 us per event in Python;
these few fields written by hand cost a fraction of that. The bytes are what
``SerializeToString`` gives for the same messages (fields in field-number order,
proto2 presence: a field that was set is written even when it is zero), which
``tests/perfetto/test_protowire.py`` checks against the protobuf path. Track
descriptors and the clock snapshot, once per track, still go through protobuf.

Field numbers (perfetto/protos/perfetto/trace/): Trace.packet 1;
TracePacket timestamp 8, trusted_packet_sequence_id 10, track_event 11,
sequence_flags 13; TrackEvent debug_annotations 4, type 9, track_uuid 11,
categories 22, name 23, counter_value 30, double_counter_value 44, flow_ids 47
(fixed64); DebugAnnotation bool_value 2, int_value 4, double_value 5,
string_value 6, legacy_json_value 9, name 10, dict_entries 11, array_values 12.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from .._protowire import double, field, fixed64, varint

_DOUBLE = double
_FIXED64 = fixed64
_field = field  # a length-delimited field (string, bytes, message), from the core's one writer


def annotation(name: Optional[str], value: Any) -> bytes:
    """A DebugAnnotation's body, as ``_perfetto.set_annotation`` fills the message."""
    if isinstance(value, bool):
        body = b"\x10\x01" if value else b"\x10\x00"
    elif isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
        body = b"\x20" + varint(value)
    elif isinstance(value, float):
        body = b"\x29" + _DOUBLE(value)
    elif isinstance(value, str):
        body = _field(b"\x32", value.encode())
    elif isinstance(value, Mapping) and value:
        entries = b"".join([annotation_field(b"\x5a", str(key), item) for key, item in value.items()])
        return (b"" if name is None else _field(b"\x52", name.encode())) + entries
    elif isinstance(value, (list, tuple)) and value:
        items = b"".join([annotation_field(b"\x62", None, item) for item in value])
        return (b"" if name is None else _field(b"\x52", name.encode())) + items
    elif value is None or isinstance(value, (Mapping, list, tuple)):
        body = _field(b"\x4a", json.dumps(value if value is None else type(value)()).encode())
    else:
        body = _field(b"\x32", str(value).encode())
    return body if name is None else body + _field(b"\x52", name.encode())


_ANNOTATIONS: dict[tuple, bytes] = {}
_ANNOTATIONS_LIMIT = 4096
_SCALARS = frozenset((int, str, bool, type(None)))
_STR = frozenset((str,))


def annotation_field(tag: bytes, name: Optional[str], value: Any) -> bytes:
    """An annotation as the field ``tag`` (an argument, a dict entry, an array item).

    Levels, sizes, micro-batch and batch ids repeat from event to event, so
    annotations of ints and strings come from a small cache (cleared when full).
    """
    kind = type(value)
    if kind is int or kind is str:
        key: tuple = (tag, name, value, kind)
    elif kind is dict and len(value) <= 8 and _STR.issuperset(map(type, value)):
        # attrs: a few scalars, often the same ones. Types are part of the key: 1 == True.
        types = tuple(map(type, value.values()))
        if not _SCALARS.issuperset(types):
            return _field(tag, annotation(name, value))
        key = (tag, name, tuple(value.items()), types)
    else:
        return _field(tag, annotation(name, value))
    found = _ANNOTATIONS.get(key)
    if found is None:
        if len(_ANNOTATIONS) >= _ANNOTATIONS_LIMIT:
            _ANNOTATIONS.clear()
        found = _ANNOTATIONS[key] = _field(tag, annotation(name, value))
    return found


def timestamp_field(timestamp_ns: int) -> bytes:
    return b"\x40" + varint(timestamp_ns)


def sequence_field(sequence_id: int) -> bytes:
    return b"\x50" + varint(sequence_id)


def uuid_field(uuid: int) -> bytes:
    return b"\x58" + varint(uuid)


def category_field(kind: str) -> bytes:
    return _field(b"\xb2\x01", kind.encode())


def name_field(name: str) -> bytes:
    return _field(b"\xba\x01", name.encode())


def _packet(timestamp: bytes, head: bytes, track_event: bytes, tail: bytes) -> bytes:
    """One ``Trace.packet``: ``head`` is the sequence id field, ``tail`` the sequence flags if any."""
    return _field(b"\x0a", timestamp + head + _field(b"\x5a", track_event) + tail)


def slice_packets(head: bytes, tail: bytes, uuid: bytes, kind: bytes, name: bytes, args: Mapping[str, Any],
                  flow: Optional[int], start: bytes, end_ns: int, more_args: bytes = b"") -> bytes:
    """BEGIN and END packets of one slice; every ``bytes`` argument is an encoded field
    (``more_args``: annotations encoded already, written after ``args``)."""
    begin = b"".join([annotation_field(b"\x22", key, value) for key, value in args.items()])
    begin += more_args + b"\x48\x01" + uuid + kind + name
    if flow is not None:
        begin += b"\xf9\x02" + _FIXED64(flow)
    return _packet(start, head, begin, tail) + _packet(timestamp_field(end_ns), head, b"\x48\x02" + uuid, b"")


def counter_packet(head: bytes, tail: bytes, uuid: bytes, value: Any, timestamp: bytes) -> bytes:
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError(f"counter value out of range for int64: {value}")  # as protobuf refuses it ("Value out of range")
        sample = b"\xf0\x01" + varint(value)
    else:
        sample = b"\xe1\x02" + _DOUBLE(value)
    return _packet(timestamp, head, b"\x48\x04" + uuid + sample, tail)
