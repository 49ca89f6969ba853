"""SpanRecords straight to OTLP protobuf bytes (``ExportTraceServiceRequest``).

Building ``opentelemetry.proto`` messages field by field from Python costs more
than the rest of the exporter together; the wire format is simple, and every
attribute KeyValue repeats (rank, level, kind), so spans are concatenated from
cached, already-encoded fragments. Field numbers are those of
``opentelemetry/proto/trace/v1/trace.proto`` and ``common/v1/common.proto``;
the tests decode the result with opentelemetry-proto.
"""

from __future__ import annotations

import struct
from typing import Any, Mapping, Sequence

from .assemble import SpanRecord
from .encode import SCOPE

_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack
_INT64 = 1 << 63
_CACHE_LIMIT = 200_000


_SMALL = [bytes([i]) for i in range(128)]


def _varint(value: int) -> bytes:
    if value < 128:
        return _SMALL[value]
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")                   # bool_value = 2
    if isinstance(value, int) and -_INT64 <= value < _INT64:
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)                # int_value = 3
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)                                # double_value = 4
    if isinstance(value, (list, tuple)):                                    # array_value = 5
        return _field(5, b"".join(_field(1, _any_value(v)) for v in value))
    return _field(1, str(value).encode())                                   # string_value = 1


_kv_cache: dict[tuple, bytes] = {}


def key_value(number: int, key: str, value: Any) -> bytes:
    """Field ``number`` holding the ``KeyValue`` (key, value), encoded once and cached."""
    try:
        cache_key = (number, key, type(value), value)
        found = _kv_cache.get(cache_key)
    except TypeError:  # a list value
        return _field(number, _field(1, key.encode()) + _field(2, _any_value(value)))
    if found is None:
        if len(_kv_cache) > _CACHE_LIMIT:
            _kv_cache.clear()
        found = _kv_cache[cache_key] = _field(number, _field(1, key.encode()) + _field(2, _any_value(value)))
    return found


def _attributes(number: int, attributes: Mapping[str, Any]) -> bytes:
    return b"".join([key_value(number, k, v) for k, v in attributes.items()])


def span_bytes(span: SpanRecord) -> bytes:
    parts = [
        b"\x0a\x10", span.trace_id.to_bytes(16, "big"),                     # trace_id = 1
        b"\x12\x08", span.span_id.to_bytes(8, "big"),                       # span_id = 2
    ]
    if span.parent_span_id:
        parts += (b"\x22\x08", span.parent_span_id.to_bytes(8, "big"))      # parent_span_id = 4
    parts += (
        _field(5, span.name.encode()),                                      # name = 5
        b"\x30\x01",                                                        # kind = 6: INTERNAL
        b"\x39", _pack_fixed64(span.start_ns),                              # start_time_unix_nano = 7
        b"\x41", _pack_fixed64(span.end_ns),                                # end_time_unix_nano = 8
        _attributes(9, span.attributes),                                    # attributes = 9
    )
    for name, time_ns, attributes in span.events:                           # events = 11
        parts.append(_field(11, b"\x09" + _pack_fixed64(time_ns) + _field(2, name.encode())
                            + _attributes(3, attributes)))
    for trace_id, span_id, attributes in span.links:                        # links = 13
        parts.append(_field(13, b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08"
                            + span_id.to_bytes(8, "big") + _attributes(4, attributes)))
    if span.status_code:                                                    # status = 15
        parts.append(_field(15, _field(2, span.status_message.encode()) + b"\x18" + _varint(span.status_code)))
    return b"".join(parts)


class WireEncoder:
    """Whole requests: one resource, one scope, the spans."""

    def __init__(self, resource: Mapping[str, Any]) -> None:
        self.resource = _field(1, _attributes(1, resource))                 # ResourceSpans.resource = 1
        self.scope = _field(1, _field(1, SCOPE["name"].encode()) + _field(2, SCOPE["version"].encode()))

    def request(self, spans: Sequence[SpanRecord]) -> bytes:
        body = self.scope + b"".join([_field(2, span_bytes(s)) for s in spans])   # ScopeSpans.spans = 2
        resource_spans = self.resource + _field(2, body)                     # ResourceSpans.scope_spans = 2
        return _field(1, resource_spans)                                     # resource_spans = 1
