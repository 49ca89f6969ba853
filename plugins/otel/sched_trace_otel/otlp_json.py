"""Spans to OTLP-JSON lines, as the Collector's file exporter writes them, and such files read back.

The JSON follows the OTLP/JSON mapping: ids are hex, 64-bit integers are strings,
enums are numbers. Spans are joined from cached fragments (``json.dumps`` of
dicts is three times slower). Files are read back by sched-trace's one OTLP-JSON
parser, ``sched_trace.traceio.otlp_documents``; :func:`proto_spans` turns its
documents into ``opentelemetry.proto`` spans through ``google.protobuf.json_format``.
"""

from __future__ import annotations

import base64
import json
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .otlp_proto import SCOPE_NAME, SCOPE_VERSION
from .otlp_value import otlp_value
from .spans import span_parts

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_KV_CACHE: dict[tuple, str] = {}
_KV_CACHE_LIMIT = 200_000
_SCOPE_JSON = _dumps({"name": SCOPE_NAME, "version": SCOPE_VERSION})


def any_value(value: Any) -> dict[str, Any]:
    """An ``AnyValue`` in OTLP/JSON, for a value :func:`otlp_value` made."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    return {"stringValue": value}


def _kv(key: str, value: Any) -> str:
    """One encoded KeyValue; cached, since rank and level attributes repeat on every span."""
    try:
        cache_key = (key, type(value), value)
        text = _KV_CACHE.get(cache_key)
    except TypeError:  # a list value: not hashable, not cached
        return _dumps({"key": key, "value": any_value(otlp_value(value))})
    if text is None:
        if len(_KV_CACHE) > _KV_CACHE_LIMIT:
            _KV_CACHE.clear()
        text = _KV_CACHE[cache_key] = _dumps({"key": key, "value": any_value(otlp_value(value))})
    return text


_FROZEN: dict[int, tuple[Any, str]] = {}  # read-only attribute sets (a rank's), written once


def _kvs(attributes: Mapping[str, Any]) -> str:
    if type(attributes) is MappingProxyType:
        found = _FROZEN.get(id(attributes))
        if found is not None and found[0] is attributes:
            return found[1]
        if len(_FROZEN) > 4096:
            _FROZEN.clear()
        text = _join(attributes)
        _FROZEN[id(attributes)] = (attributes, text)
        return text
    return _join(attributes)


def _join(attributes: Mapping[str, Any]) -> str:
    # The cache read inlined: six or so attributes per span, most of them seen before.
    cache, parts = _KV_CACHE, []
    for key, value in attributes.items():
        try:
            text = cache.get((key, type(value), value))
        except TypeError:  # a list value: not hashable, not cached
            text = None
        parts.append(text if text is not None else _kv(key, value))
    return "[" + ",".join(parts) + "]"


_NAMES: dict[str, str] = {}  # span names, JSON-quoted once: a run has a handful


def _name(name: str) -> str:
    quoted = _NAMES.get(name)
    if quoted is None:
        if len(_NAMES) > 4096:
            _NAMES.clear()
        quoted = _NAMES[name] = _dumps(name)
    return quoted


def span_json(span: Any) -> str:
    """One span in OTLP/JSON (one format operation for the fixed fields)."""
    name, start, end, attributes, events, status_code, status_message = span_parts(span)
    tail = ""
    if events:
        tail = ',"events":[' + ",".join(
            ['{"timeUnixNano":"%d","name":%s,"attributes":%s}' % (t, _name(n), _kvs(a)) for n, t, a in events]) + "]"
    if span.links:
        tail += ',"links":[' + ",".join(['{"traceId":"%032x","spanId":"%016x","attributes":%s}' % (t, i, _kvs(a))
                                         for t, i, a in span.links]) + "]"
    status = ('{"code":%d,"message":%s}' % (status_code, _dumps(status_message))) if status_code else "{}"
    if span.parent_span_id:
        return ('{"traceId":"%032x","spanId":"%016x","parentSpanId":"%016x","name":%s,"kind":1,'
                '"startTimeUnixNano":"%d","endTimeUnixNano":"%d","attributes":%s%s,"status":%s}'
                % (span.trace_id, span.span_id, span.parent_span_id, _name(name), start, end, _kvs(attributes), tail,
                   status))
    return ('{"traceId":"%032x","spanId":"%016x","name":%s,"kind":1,"startTimeUnixNano":"%d",'
            '"endTimeUnixNano":"%d","attributes":%s%s,"status":%s}'
            % (span.trace_id, span.span_id, _name(name), start, end, _kvs(attributes), tail, status))


def traces_json_line(resource: Mapping[str, Any], spans: Sequence[Any]) -> str:
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
                for item in (span, *span.get("links", [])):
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if item.get(key):
                            item[key] = _hex_to_b64(item[key])
    return document


def otlp_messages(documents: Iterable[Any]) -> Iterator[Any]:
    """The ``(where, document)`` pairs ``sched_trace.traceio.otlp_documents(path)`` reads (or plain
    documents) as ``opentelemetry.proto`` ``TracesData`` messages."""
    from google.protobuf import json_format
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

    for document in documents:
        if isinstance(document, tuple):  # (where, document) from the parser
            document = document[1]
        yield json_format.ParseDict(_ids_to_proto_json(json.loads(json.dumps(document))), TracesData())


def proto_spans(messages: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """``(resource, span)`` pairs from TracesData / ExportTraceServiceRequest messages, or from the
    documents ``sched_trace.traceio.otlp_documents(path)`` reads from a file."""
    for message in messages:
        if isinstance(message, (tuple, dict)):
            (message,) = otlp_messages([message])
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    yield resource_spans.resource, span