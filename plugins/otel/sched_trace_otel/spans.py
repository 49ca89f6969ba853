"""The spans the otel exporter writes: a stage or batch event with its span ids, or a span it made.

A stage or batch span is the decoded event itself plus the ids the assembler gave
it (:class:`EventSpan`): its fields are read by name when the span is encoded, never
copied into a record of another shape. Thread, request and phase spans, which no
single event stands for, are :class:`SpanRecord`. :func:`span_parts` gives any
encoder (OTLP-JSON, OTLP protobuf, SDK spans) the same view of either.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

STATUS_UNSET, STATUS_ERROR = 0, 2
_EMPTY: Mapping[str, Any] = {}


class SpanRecord(NamedTuple):
    """A span no single event stands for: a thread span, a request's root, rank and phase spans."""

    trace_id: int
    span_id: int
    parent_span_id: int
    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    events: tuple = ()       # (name, time_ns, attributes)
    links: tuple = ()        # (trace_id, span_id, attributes)
    status_code: int = STATUS_UNSET
    status_message: str = ""


class EventSpan(NamedTuple):
    """A stage or batch event as a span: the event, its ids, and what the span adds to its attributes."""

    event: Any
    trace_id: int
    span_id: int
    parent_span_id: int
    links: tuple = ()
    extra: Mapping[str, Any] = _EMPTY   # rank keys that differ from the thread span's, a copy's rid


def event_attributes(span: EventSpan) -> dict[str, Any]:
    event = span.event
    attrs: dict[str, Any] = {"sched_trace.level": event.level, "sched_trace.kind": event.kind}
    if event.microbatch is not None:
        attrs["pp_mb_id"] = event.microbatch
    if event.batch_id is not None:
        attrs["bid"] = event.batch_id
    if event.batch_size is not None:
        attrs["batch_size"] = event.batch_size
    for key, value in event.attrs.items():
        if value is not None and key != "requests":  # request ids become per-request spans, not a list here
            attrs[key] = value
    if span.extra:
        attrs.update(span.extra)
    return attrs


def span_parts(span: Any) -> tuple[str, int, int, Mapping[str, Any], tuple, int, str]:
    """``(name, start_ns, end_ns, attributes, events, status_code, status_message)`` of either kind of span."""
    if type(span) is not EventSpan:
        return (span.name, span.start_ns, span.end_ns, span.attributes, span.events, span.status_code,
                span.status_message)
    event = span.event
    error = event.error
    if error is None:
        return event.name, event.start_ns, event.end_ns, event_attributes(span), (), STATUS_UNSET, ""
    kind, text = getattr(error, "type_name", type(error).__name__), getattr(error, "message", str(error))
    exception = ("exception", event.end_ns, {"exception.type": kind, "exception.message": text,
                                             "exception.stacktrace": getattr(error, "stacktrace", ""),
                                             "exception.escaped": True})
    return (event.name, event.start_ns, event.end_ns, event_attributes(span), (exception,), STATUS_ERROR,
            f"{kind}: {text}")


def thread_name(attrs: Mapping[str, Any]) -> str:
    """``host8:Label-PP1-DP0-TP0``, as SGLang names a thread span (unknown ranks left out)."""
    name = f"{str(attrs.get('host_id', ''))[:8]}:{attrs.get('thread_label', 'thread')}"
    for key, tag in (("pp_rank", "PP"), ("dp_rank", "DP"), ("tp_rank", "TP")):
        if key in attrs:
            name += f"-{tag}{attrs[key]}"
    return name

