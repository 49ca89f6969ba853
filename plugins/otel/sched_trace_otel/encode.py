"""SpanRecords to OTLP: JSON lines as the Collector's file exporter writes, or SDK spans.

The JSON follows the OTLP/JSON mapping: ids are hex, 64-bit integers are
strings, enums are numbers. :func:`read_otlp_json` turns such a file back into
``TracesData`` messages through ``google.protobuf.json_format``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .assemble import STATUS_ERROR, SpanRecord

SCOPE = {"name": "sched_trace", "version": "0.1.0"}
SPAN_KIND_INTERNAL = 1
_INT64 = 1 << 63


def any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)} if -_INT64 <= value < _INT64 else {"stringValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def key_values(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": any_value(value)} for key, value in attributes.items()]


_dumps = json.JSONEncoder(separators=(",", ":")).encode
_KV_CACHE: dict[tuple, str] = {}
_KV_CACHE_LIMIT = 200_000
_SCOPE_JSON = _dumps(SCOPE)


def _kv(key: str, value: Any) -> str:
    """One encoded KeyValue; cached, since rank and level attributes repeat on every span."""
    try:
        cache_key = (key, type(value), value)
        text = _KV_CACHE.get(cache_key)
    except TypeError:  # a list value: not hashable, not cached
        return _dumps({"key": key, "value": any_value(value)})
    if text is None:
        if len(_KV_CACHE) > _KV_CACHE_LIMIT:
            _KV_CACHE.clear()
        text = _KV_CACHE[cache_key] = _dumps({"key": key, "value": any_value(value)})
    return text


def _kvs(attributes: Mapping[str, Any]) -> str:
    return "[" + ",".join([_kv(k, v) for k, v in attributes.items()]) + "]"


def span_json(span: SpanRecord) -> str:
    """One span in OTLP/JSON, built from cached fragments (json.dumps of dicts is 3x slower)."""
    parts = [
        '{"traceId":"%032x","spanId":"%016x"' % (span.trace_id, span.span_id),
        ',"parentSpanId":"%016x"' % span.parent_span_id if span.parent_span_id else "",
        ',"name":', _dumps(span.name),
        ',"kind":1,"startTimeUnixNano":"%d","endTimeUnixNano":"%d"' % (span.start_ns, span.end_ns),
        ',"attributes":', _kvs(span.attributes),
    ]
    if span.events:
        parts.append(',"events":[' + ",".join(
            '{"timeUnixNano":"%d","name":%s,"attributes":%s}' % (t, _dumps(n), _kvs(a))
            for n, t, a in span.events) + "]")
    if span.links:
        parts.append(',"links":[' + ",".join(
            '{"traceId":"%032x","spanId":"%016x","attributes":%s}' % (t, i, _kvs(a))
            for t, i, a in span.links) + "]")
    if span.status_code:
        parts.append(',"status":{"code":%d,"message":%s}}' % (STATUS_ERROR, _dumps(span.status_message)))
    else:
        parts.append(',"status":{}}')
    return "".join(parts)


def traces_json_line(resource: Mapping[str, Any], spans: Sequence[SpanRecord]) -> str:
    """One line of the file: a TracesData with one resource and one scope."""
    return ('{"resourceSpans":[{"resource":{"attributes":%s},"scopeSpans":[{"scope":%s,"spans":[%s]}]}]}'
            % (_kvs(resource), _SCOPE_JSON, ",".join([span_json(s) for s in spans])))


# --- reading back --------------------------------------------------------------

def _hex_to_b64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode()


def _ids_to_proto_json(document: dict) -> dict:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping expects base64 bytes."""
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = _hex_to_b64(span[key])
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        if link.get(key):
                            link[key] = _hex_to_b64(link[key])
    return document


def read_otlp_json(path: "str | Path") -> Iterator[Any]:
    """Each line of an OTLP-JSON lines file as an ``opentelemetry.proto`` ``TracesData``."""
    from google.protobuf import json_format
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json_format.ParseDict(_ids_to_proto_json(json.loads(line)), TracesData())


def proto_spans(messages: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """``(resource, span)`` pairs from TracesData / ExportTraceServiceRequest messages."""
    for message in messages:
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    yield resource_spans.resource, span


# --- SDK spans for the standard OTLP exporters -----------------------------------

class SdkSpanBuilder:
    """SpanRecords to ``ReadableSpan`` objects, which the standard exporters encode and send."""

    def __init__(self, resource: Mapping[str, Any]) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk import trace as sdk_trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._trace, self._sdk = trace, sdk_trace
        self.resource = Resource.create(dict(resource))
        self.scope = InstrumentationScope(SCOPE["name"], SCOPE["version"])
        self._sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        self._error = trace.Status(trace.StatusCode.ERROR)

    def _context(self, trace_id: int, span_id: int) -> Any:
        return self._trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=self._sampled)

    def build(self, span: SpanRecord) -> Any:
        trace, sdk = self._trace, self._sdk
        status = trace.Status(trace.StatusCode.ERROR, span.status_message) if span.status_code else trace.Status()
        return sdk.ReadableSpan(
            name=span.name,
            context=self._context(span.trace_id, span.span_id),
            parent=self._context(span.trace_id, span.parent_span_id) if span.parent_span_id else None,
            resource=self.resource,
            attributes=span.attributes,
            events=[sdk.Event(n, a, t) for n, t, a in span.events],
            links=[trace.Link(self._context(t, s), a) for t, s, a in span.links],
            kind=trace.SpanKind.INTERNAL,
            status=status,
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=self.scope,
        )

