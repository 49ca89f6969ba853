"""Spans straight to OTLP protobuf bytes (an ``ExportTraceServiceRequest``), written by hand.

benchmarks/bench_encoders.py measures this against opentelemetry-proto's generated
classes on the same spans: building messages field by field from Python costs
several times more, and every attribute KeyValue repeats (rank, level, kind), so
spans are joined from cached, already-encoded fragments. Field numbers are those of
``opentelemetry/proto/trace/v1/trace.proto`` and ``common/v1/common.proto``; the
tests decode the result with opentelemetry-proto. The varint and field writer is
the core's (``sched_trace.export.protowire``), shared with the Perfetto writer.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Sequence

from sched_trace.export import protowire

from .otlp_value import otlp_value
from .spans import span_parts

SCOPE_NAME, SCOPE_VERSION = "sched_trace", "0.1.0"
_CACHE_LIMIT = 200_000
_KEYS = {number: protowire.tag(number, 2) for number in range(1, 16)}
_varint, _fixed64, _double = protowire.varint, protowire.fixed64, protowire.double


def _field(number: int, payload: bytes) -> bytes:
    return protowire.field(_KEYS[number], payload)


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"                         # bool_value = 2
    if isinstance(value, int):
        return b"\x18" + _varint(value)                                     # int_value = 3
    if isinstance(value, float):
        return b"\x21" + _double(value)                                     # double_value = 4
    if isinstance(value, list):                                             # array_value = 5
        return _field(5, b"".join([_field(1, _any_value(v)) for v in value]))
    return _field(1, value.encode())                                        # string_value = 1


_kv_cache: dict[tuple, bytes] = {}


def key_value(number: int, key: str, value: Any) -> bytes:
    """Field ``number`` holding the ``KeyValue`` (key, value), encoded once and cached."""
    try:
        cache_key = (number, key, type(value), value)
        found = _kv_cache.get(cache_key)
    except TypeError:  # a list value
        return _field(number, _field(1, key.encode()) + _field(2, _any_value(otlp_value(value))))
    if found is None:
        if len(_kv_cache) > _CACHE_LIMIT:
            _kv_cache.clear()
        found = _kv_cache[cache_key] = _field(number, _field(1, key.encode())
                                              + _field(2, _any_value(otlp_value(value))))
    return found


_FROZEN: dict[tuple[int, int], tuple[Any, bytes]] = {}  # read-only attribute sets (a rank's), written once


def _attributes(number: int, attributes: Mapping[str, Any]) -> bytes:
    if type(attributes) is MappingProxyType:
        found = _FROZEN.get((number, id(attributes)))
        if found is not None and found[0] is attributes:
            return found[1]
        if len(_FROZEN) > 4096:
            _FROZEN.clear()
        data = b"".join([key_value(number, k, v) for k, v in attributes.items()])
        _FROZEN[(number, id(attributes))] = (attributes, data)
        return data
    return b"".join([key_value(number, k, v) for k, v in attributes.items()])


def span_bytes(span: Any) -> bytes:
    name, start, end, attributes, events, status_code, status_message = span_parts(span)
    parts = [
        b"\x0a\x10", span.trace_id.to_bytes(16, "big"),                     # trace_id = 1
        b"\x12\x08", span.span_id.to_bytes(8, "big"),                       # span_id = 2
    ]
    if span.parent_span_id:
        parts += (b"\x22\x08", span.parent_span_id.to_bytes(8, "big"))      # parent_span_id = 4
    parts += (
        _field(5, name.encode()),                                           # name = 5
        b"\x30\x01",                                                        # kind = 6: INTERNAL
        b"\x39", _fixed64(start),                                           # start_time_unix_nano = 7
        b"\x41", _fixed64(end),                                             # end_time_unix_nano = 8
        _attributes(9, attributes),                                         # attributes = 9
    )
    for event_name, time_ns, event_attributes in events:                     # events = 11
        parts.append(_field(11, b"\x09" + _fixed64(time_ns) + _field(2, event_name.encode())
                            + _attributes(3, event_attributes)))
    for trace_id, span_id, link_attributes in span.links:                   # links = 13
        parts.append(_field(13, b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08"
                            + span_id.to_bytes(8, "big") + _attributes(4, link_attributes)))
    if status_code:                                                         # status = 15
        parts.append(_field(15, _field(2, status_message.encode()) + b"\x18" + _varint(status_code)))
    return b"".join(parts)


class ProtoEncoder:
    """Whole requests: one resource, one scope, the spans."""

    def __init__(self, resource: Mapping[str, Any]) -> None:
        self.resource = _field(1, _attributes(1, resource))                 # ResourceSpans.resource = 1
        self.scope = _field(1, _field(1, SCOPE_NAME.encode()) + _field(2, SCOPE_VERSION.encode()))

    def request(self, spans: Sequence[Any]) -> bytes:
        body = self.scope + b"".join([_field(2, span_bytes(s)) for s in spans])   # ScopeSpans.spans = 2
        resource_spans = self.resource + _field(2, body)                     # ResourceSpans.scope_spans = 2
        return _field(1, resource_spans)                                     # resource_spans = 1
