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
import os
import warnings
from typing import Any, Iterator, Mapping, Optional

from .._errors import SchedTraceWarning
from ._checks import (
    MAX_DEPTH, checked_event, checked_rank, expect_dict, expect_list, expect_str, optional_dict,
    optional_list, to_float, to_int,
)
from ._model import RANK_FIELDS, Event, TraceFile, TraceFormatError

#: span attribute -> event argument
RENAMES = {"pp_mb_id": "microbatch", "bid": "batch_id", "batch_size": "batch_size",
           "sched_trace.level": "level", "level": "level",
           "sched_trace.span_id": "span_id", "sched_trace.parent_id": "parent_id"}
KIND_KEYS = ("sched_trace.kind", "sched_trace.span_kind")
OFFSET_KEYS = ("sched_trace.clock.wall_offset_ns", "sched_trace.clock_offset_ns", "clock_offset_ns")
RANK_EXTRA_KEYS = ("rank", "world_size", "local_rank", "ep_rank")
STAGE_MARKERS = ("pp_mb_id", "bid", "batch_size", "sched_trace.level", "sched_trace.kind")
_RANK_KEYS = RANK_FIELDS + RANK_EXTRA_KEYS
_OFFSET = "\0offset"  # where an inherited clock offset is kept among the rank keys


def attribute_value(value: Any, depth: int = 0) -> Any:
    """One OTLP AnyValue as a Python value."""
    value = optional_dict(value, "an attribute value")
    if "stringValue" in value:
        return expect_str(value["stringValue"], "stringValue")
    if "intValue" in value:
        return to_int(value["intValue"], "intValue")  # int64 travels as a string in JSON
    if "doubleValue" in value:
        return to_float(value["doubleValue"], "doubleValue")
    if "boolValue" in value:
        if not isinstance(value["boolValue"], bool):
            raise TraceFormatError(f"boolValue must be true or false, got {value['boolValue']!r:.40}")
        return value["boolValue"]
    if depth >= MAX_DEPTH and ("arrayValue" in value or "kvlistValue" in value):
        raise TraceFormatError(f"attribute values nested deeper than {MAX_DEPTH} levels")
    if "arrayValue" in value:
        items = optional_dict(value["arrayValue"], "arrayValue").get("values")
        return [attribute_value(v, depth + 1) for v in optional_list(items, "arrayValue.values")]
    if "kvlistValue" in value:
        return attributes(optional_dict(value["kvlistValue"], "kvlistValue").get("values"), depth + 1)
    if "bytesValue" in value:
        return expect_str(value["bytesValue"], "bytesValue")
    return None


def attributes(items: Any, depth: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in optional_list(items, "attributes"):
        item = expect_dict(item, "an attribute")
        found[expect_str(item.get("key"), "an attribute key")] = attribute_value(item.get("value"), depth)
    return found


def span_id_int(raw: Any) -> int:
    """An OTLP span id (hex per the spec, or base64 from MessageToJson) as an int."""
    if not raw:
        return 0
    raw = expect_str(raw, "a span id")
    if len(raw) == 16:
        try:
            return int(raw, 16)
        except ValueError:
            pass
    try:
        return int.from_bytes(base64.b64decode(raw, validate=True), "big")
    except (binascii.Error, ValueError):
        return 0


def otlp_documents(path: "str | os.PathLike[str]", text: Optional[str] = None
                   ) -> Iterator[tuple[Optional[str], Any]]:
    """``(where, document)`` of an OTLP-JSON file: one pretty-printed document, an array of
    them, or one per line (the Collector's file exporter). A last line cut short is dropped
    with a :class:`~sched_trace.SchedTraceWarning`; a damaged one is a :class:`TraceFormatError`.

    The one parser of the format: :func:`read_otlp_json` reads events through it, and
    sched-trace-otel's tests read the spans it wrote through it.
    """
    path = os.fspath(path)
    if text is None:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    yield from _documents(path, text)


def _documents(path: str, text: str) -> Iterator[tuple[Optional[str], Any]]:
    stripped = text.strip()
    if not stripped:
        return
    try:
        whole = json.loads(stripped)
    except (ValueError, RecursionError):
        pass
    else:
        if isinstance(whole, list):
            yield from ((f"document {index}", document) for index, document in enumerate(whole))
        else:
            yield ("line 1" if "\n" not in stripped else None), whole
        return
    lines = stripped.split("\n")  # not splitlines(): U+0085 and U+2028 may sit raw inside JSON strings
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except (ValueError, RecursionError) as exc:
            if number == len(lines) and not text.endswith("\n"):  # the writer died mid-line
                warnings.warn(SchedTraceWarning(
                    f"{path}: line {number}: cut short ({len(line.encode())} bytes of an incomplete "
                    "line dropped); read up to the last complete line"), stacklevel=5)
                return
            detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise TraceFormatError(f"not an OTLP-JSON line ({detail})", path=path,
                                   where=f"line {number}") from None


def _spans(path: str, text: str) -> Iterator[tuple[Optional[str], dict, dict]]:
    """(where, resource attributes, span) for every span in the file."""
    for where, document in _documents(path, text):
        try:
            document = expect_dict(document, "an OTLP-JSON document")
            if "resourceSpans" not in document:
                raise TraceFormatError("no 'resourceSpans'; not an OTLP-JSON trace")
            for resource_spans in expect_list(document["resourceSpans"], "resourceSpans"):
                resource_spans = expect_dict(resource_spans, "resourceSpans[]")
                resource = optional_dict(resource_spans.get("resource"), "resource")
                resource_attrs = attributes(resource.get("attributes"))
                scopes = resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans")
                for scope in optional_list(scopes, "scopeSpans"):
                    for span in optional_list(expect_dict(scope, "scopeSpans[]").get("spans"), "spans"):
                        yield where, resource_attrs, expect_dict(span, "a span")
        except TraceFormatError as exc:
            raise exc.located(path, where) from None


def _is_event(attrs: Mapping[str, Any], marked: bool = False) -> bool:
    if any(attrs.get(k) in ("stage", "batch") for k in KIND_KEYS):
        return True
    if marked or any(k in attrs for k in KIND_KEYS):
        return False
    return "thread_label" not in attrs or any(k in attrs for k in STAGE_MARKERS)


def _is_request_copy(span: dict) -> bool:
    for link in optional_list(span.get("links"), "links"):
        if attributes(expect_dict(link, "a link").get("attributes")).get("sched_trace.link") == "batch":
            return True
    return False


class _Span:
    __slots__ = ("where", "resource", "span", "attrs", "parent")

    def __init__(self, where: Optional[str], resource: dict, span: dict) -> None:
        self.where, self.resource, self.span = where, resource, span
        self.attrs = attributes(span.get("attributes"))
        self.parent = span_id_int(span.get("parentSpanId"))


def read_otlp_json(path: "str | os.PathLike[str]", text: Optional[str] = None) -> TraceFile:
    """An OTLP-JSON file's stage and batch spans as events (see the module docstring);
    ``text`` when its content is in memory already."""
    path = os.fspath(path)
    if text is None:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    result = TraceFile(path=path, format="otlp-json")
    spans: dict[int, _Span] = {}
    for where, resource, span in _spans(path, text):
        try:
            spans[span_id_int(span.get("spanId"))] = _Span(where, resource, span)
        except TraceFormatError as exc:
            raise exc.located(path, where) from None
    marked = any(k in item.attrs for item in spans.values() for k in KIND_KEYS)
    inherited: dict[int, dict] = {}
    for span_id, item in spans.items():
        try:
            if not _is_event(item.attrs, marked) or _is_request_copy(item.span):
                continue
            rank_values, offset = _rank_values(span_id, item.resource, spans, inherited)
            rank = checked_rank(rank_values, "rank")
            if offset is not None:
                result.clock_offsets[(rank.host_id, rank.pid)] = to_int(offset, "clock offset")
            result.events.append(_event(item, span_id, rank, spans, marked))
        except TraceFormatError as exc:
            where = f"span {str(item.span.get('name', ''))[:60]!r}"
            raise exc.located(path, f"{item.where}: {where}" if item.where else where) from None
    result.events.sort(key=lambda e: (e.start_ns, e.end_ns))
    return result


def _rank_values(span_id: int, resource: dict, spans: dict, inherited: dict) -> tuple[dict, Optional[Any]]:
    """Rank keys from resource, then ancestors (outermost first), then the span."""
    values = {key: resource[key] for key in _RANK_KEYS if key in resource}
    offset = next((resource[k] for k in OFFSET_KEYS if k in resource), None)
    from_spans = _inherited(span_id, spans, inherited)
    offset = from_spans.get(_OFFSET, offset)
    values.update((k, v) for k, v in from_spans.items() if k != _OFFSET)
    if "pid" not in values and "process.pid" in resource:
        values["pid"] = resource["process.pid"]
    if "host_id" not in values:
        host = resource.get("host.id", resource.get("host.name"))
        if host is not None:
            values["host_id"] = host
    return values, offset


def _inherited(span_id: int, spans: dict, memo: dict) -> dict:
    """The rank keys (and clock offset) of a span and its ancestors, nearest winning; memoized."""
    chain: list[int] = []
    current = span_id
    while current in spans and current not in memo and current not in chain:
        chain.append(current)
        current = spans[current].parent
    below = {} if current in chain else memo.get(current, {})  # a cycle: start afresh
    for link in reversed(chain):
        attrs = spans[link].attrs
        layer = dict(below)
        layer.update((key, attrs[key]) for key in _RANK_KEYS if key in attrs)
        offset = next((attrs[k] for k in OFFSET_KEYS if k in attrs), None)
        if offset is not None:
            layer[_OFFSET] = offset
        memo[link] = below = layer
    return memo.get(span_id, {})


def _event(item: _Span, span_id: int, rank: Any, spans: dict, marked: bool) -> Event:
    args: dict[str, Any] = {"span_id": span_id}
    extra: dict[str, Any] = {}
    skip = set(RANK_FIELDS) | set(RANK_EXTRA_KEYS) | set(KIND_KEYS) | set(OFFSET_KEYS)
    for key, value in item.attrs.items():
        if key in RENAMES:
            args[RENAMES[key]] = value
        elif key not in skip:
            extra[key.removeprefix("attrs.")] = value
    args["attrs"] = extra
    if "parent_id" not in args:
        parent = item.parent
        args["parent_id"] = parent if parent in spans and _is_event(spans[parent].attrs, marked) else 0
    error = _error(item.span)
    if error is not None:
        args["error"] = error
    kind = next((item.attrs[k] for k in KIND_KEYS if item.attrs.get(k) in ("stage", "batch")), "stage")
    span = item.span
    return checked_event(kind, span.get("name", ""), span.get("startTimeUnixNano", 0),
                         span.get("endTimeUnixNano", 0), rank, args)


def _error(span: dict) -> Optional[Any]:
    status = optional_dict(span.get("status"), "status")
    if status.get("code") not in (2, "STATUS_CODE_ERROR"):
        return None
    for item in optional_list(span.get("events"), "events"):
        item = expect_dict(item, "a span event")
        if item.get("name") == "exception":
            values = attributes(item.get("attributes"))
            return f"{values.get('exception.type', 'Exception')}: {values.get('exception.message', '')}"
    return status.get("message") or "error"
