"""Spans as OpenTelemetry SDK ``ReadableSpan`` objects, for any SDK span exporter (``console`` ...)."""

from __future__ import annotations

from typing import Any, Mapping

from .otlp_proto import SCOPE_NAME, SCOPE_VERSION
from .otlp_value import otlp_value
from .spans import span_parts


class SdkSpanBuilder:
    """Spans to ``ReadableSpan`` objects, which the standard exporters encode and send."""

    def __init__(self, resource: Mapping[str, Any]) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk import trace as sdk_trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._trace, self._sdk = trace, sdk_trace
        self.resource = Resource.create(dict(resource))
        self.scope = InstrumentationScope(SCOPE_NAME, SCOPE_VERSION)
        self._sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)

    def _context(self, trace_id: int, span_id: int) -> Any:
        return self._trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=self._sampled)

    def build(self, span: Any) -> Any:
        trace, sdk = self._trace, self._sdk
        name, start, end, attributes, events, status_code, status_message = span_parts(span)
        status = trace.Status(trace.StatusCode.ERROR, status_message) if status_code else trace.Status()
        return sdk.ReadableSpan(
            name=name,
            context=self._context(span.trace_id, span.span_id),
            parent=self._context(span.trace_id, span.parent_span_id) if span.parent_span_id else None,
            resource=self.resource,
            attributes={key: otlp_value(value) for key, value in attributes.items()},
            events=[sdk.Event(n, {k: otlp_value(v) for k, v in a.items()}, t) for n, t, a in events],
            links=[trace.Link(self._context(t, s), a) for t, s, a in span.links],
            kind=trace.SpanKind.INTERNAL,
            status=status,
            start_time=start,
            end_time=end,
            instrumentation_scope=self.scope,
        )
