"""OTLP-JSON (the OpenTelemetry Collector file exporter's format) read as events.

Each line is one ``ExportTraceServiceRequest`` in the protobuf JSON mapping:
``resourceSpans[].scopeSpans[].spans[]`` with ``startTimeUnixNano``, attributes
as ``{key, value: {stringValue|intValue|...}}``. Ids may be hex (the OTLP/JSON
spec) or base64 (plain protobuf ``MessageToJson``); both are accepted. A whole
file holding a single JSON document (or a JSON array of them) also works.

Span model (DESIGN.md, as SGLang uses it): a thread span carries the rank
identity (``host_id``, ``pid``, ``thread_label``, ``tp_rank`` ...); stage spans
nest under it with ``pp_mb_id`` (micro-batch), ``bid`` (batch id) and
``batch_size``. Rank keys are looked up on the span, then its ancestors, then
the resource. Spans marked ``sched_trace.kind`` = ``stage``/``batch`` (what
sched-trace-otel writes) are the events; per-request copies of them (linked
back with ``sched_trace.link = batch``) are skipped so no slice counts twice.
Files from other tools, without the marker, fall back to: a span is a thread
span when it has ``thread_label`` and no stage attribute. The clock offset is
``sched_trace.clock.wall_offset_ns`` on the resource or the thread span.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Iterator, Mapping, Optional

from ._model import RANK_FIELDS, Event, TraceFile, TraceFormatError, make_event, rank_from_dict

#: span attribute -> event argument
RENAMES = {"pp_mb_id": "microbatch", "bid": "batch_id", "batch_size": "batch_size",
           "sched_trace.level": "level", "level": "level",
           "sched_trace.span_id": "span_id", "sched_trace.parent_id": "parent_id"}
KIND_KEYS = ("sched_trace.kind", "sched_trace.span_kind")
OFFSET_KEYS = ("sched_trace.clock.wall_offset_ns", "sched_trace.clock_offset_ns", "clock_offset_ns")
RANK_EXTRA_KEYS = ("rank", "world_size", "local_rank", "ep_rank")
STAGE_MARKERS = ("pp_mb_id", "bid", "batch_size", "sched_trace.level", "sched_trace.kind")


def attribute_value(value: Mapping[str, Any]) -> Any:
    """One OTLP AnyValue as a Python value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])  # int64 travels as a string in JSON
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [attribute_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return attributes(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def attributes(items: Any) -> dict[str, Any]:
    return {item["key"]: attribute_value(item.get("value", {})) for item in items or []}


def span_id_int(raw: Optional[str]) -> int:
    """An OTLP span id (hex per the spec, or base64 from MessageToJson) as an int."""
    if not raw:
        return 0
    if len(raw) == 16:
        try:
            return int(raw, 16)
        except ValueError:
            pass
    try:
        return int.from_bytes(base64.b64decode(raw, validate=True), "big")
    except (binascii.Error, ValueError):
        return 0


def _documents(path: str, text: str) -> Iterator[dict]:
    stripped = text.strip()
    if not stripped:
        return
    try:  # one document (pretty-printed) or an array of them
        whole = json.loads(stripped)
        yield from whole if isinstance(whole, list) else [whole]
        return
    except ValueError:
        pass
    for number, line in enumerate(stripped.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError as exc:
            raise TraceFormatError(f"{path}:{number}: not an OTLP-JSON line ({exc})") from None


def _spans(path: str, text: str) -> Iterator[tuple[dict, dict]]:
    """(resource attributes, span) for every span in the file."""
    for document in _documents(path, text):
        if not isinstance(document, dict) or "resourceSpans" not in document:
            raise TraceFormatError(f"{path}: no 'resourceSpans'; not an OTLP-JSON trace file")
        for resource_spans in document["resourceSpans"]:
            resource = attributes((resource_spans.get("resource") or {}).get("attributes"))
            scopes = resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans") or []
            for scope in scopes:
                for span in scope.get("spans", []):
                    yield resource, span


def _is_event(attrs: Mapping[str, Any], marked: bool = False) -> bool:
    if any(attrs.get(k) in ("stage", "batch") for k in KIND_KEYS):
        return True
    if marked or any(k in attrs for k in KIND_KEYS):
        return False
    return "thread_label" not in attrs or any(k in attrs for k in STAGE_MARKERS)


def _is_request_copy(span: dict) -> bool:
    for link in span.get("links") or []:
        if attributes(link.get("attributes")).get("sched_trace.link") == "batch":
            return True
    return False


def read_otlp_json(path: str, text: str) -> TraceFile:
    result = TraceFile(path=path, format="otlp-json")
    spans: dict[int, tuple[dict, dict, dict]] = {}
    for resource, span in _spans(path, text):
        spans[span_id_int(span.get("spanId"))] = (resource, span, attributes(span.get("attributes")))
    marked = any(k in attrs for _, _, attrs in spans.values() for k in KIND_KEYS)
    for span_id, (resource, span, attrs) in spans.items():
        if not _is_event(attrs, marked) or _is_request_copy(span):
            continue
        rank_values, offset = _rank_values(span, attrs, resource, spans)
        rank = rank_from_dict(rank_values)
        if offset is not None:
            result.clock_offsets[(rank.host_id, rank.pid)] = int(offset)
        result.events.append(_event(span, span_id, attrs, rank, spans, marked))
    result.events.sort(key=lambda e: (e.start_ns, e.end_ns))
    return result


def _rank_values(span: dict, attrs: dict, resource: dict, spans: dict) -> tuple[dict, Optional[int]]:
    """Rank keys from resource, then ancestors (outermost first), then the span."""
    chain = [attrs]
    parent = span_id_int(span.get("parentSpanId"))
    seen = set()
    while parent in spans and parent not in seen:
        seen.add(parent)
        chain.append(spans[parent][2])
        parent = span_id_int(spans[parent][1].get("parentSpanId"))
    values: dict[str, Any] = {}
    offset = next((resource[k] for k in OFFSET_KEYS if k in resource), None)
    rank_keys = RANK_FIELDS + RANK_EXTRA_KEYS
    for layer in [resource, *reversed(chain)]:
        for key in rank_keys:
            if key in layer:
                values[key] = layer[key]
        offset = next((layer[k] for k in OFFSET_KEYS if k in layer), offset)
    if "pid" not in values and "process.pid" in resource:
        values["pid"] = resource["process.pid"]
    if "host_id" not in values:
        host = resource.get("host.id", resource.get("host.name"))
        if host is not None:
            values["host_id"] = host
    return values, offset


def _event(span: dict, span_id: int, attrs: dict, rank: Any, spans: dict, marked: bool) -> Event:
    args: dict[str, Any] = {"span_id": span_id}
    extra: dict[str, Any] = {}
    skip = set(RANK_FIELDS) | set(RANK_EXTRA_KEYS) | set(KIND_KEYS) | set(OFFSET_KEYS)
    for key, value in attrs.items():
        if key in RENAMES:
            args[RENAMES[key]] = value
        elif key not in skip:
            extra[key.removeprefix("attrs.")] = value
    args["attrs"] = extra
    parent = span_id_int(span.get("parentSpanId"))
    if "parent_id" not in args:
        args["parent_id"] = parent if parent in spans and _is_event(spans[parent][2], marked) else 0
    error = _error(span)
    if error is not None:
        args["error"] = error
    kind = next((attrs[k] for k in KIND_KEYS if attrs.get(k) in ("stage", "batch")), "stage")
    return make_event(kind, span.get("name", ""), int(span.get("startTimeUnixNano", 0)),
                      int(span.get("endTimeUnixNano", 0)), rank, args)


def _error(span: dict) -> Optional[str]:
    status = span.get("status") or {}
    if status.get("code") not in (2, "STATUS_CODE_ERROR"):
        return None
    for item in span.get("events", []) or []:
        if item.get("name") == "exception":
            values = attributes(item.get("attributes"))
            return f"{values.get('exception.type', 'Exception')}: {values.get('exception.message', '')}"
    return status.get("message") or "error"
