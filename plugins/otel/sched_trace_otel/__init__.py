"""sched-trace-otel: OpenTelemetry spans per rank, batch, stage and request, built off the hot path.

Registered through the ``sched_trace`` entry point ``otel``; configured by the
``[plugins.otel]`` table (see :class:`OtelSettings`) and the standard
``OTEL_*`` variables.
"""

from __future__ import annotations

from .encode import proto_spans, read_otlp_json
from .plugin import OtelPlugin
from .propagation import (TraceCarrier, attach, forget_traceparent, new_traceparent,
                          register_traceparent, request_context)
from .settings import OtelSettings

__version__ = "0.1.0"

__all__ = [
    "OtelPlugin", "OtelSettings", "TraceCarrier", "attach", "forget_traceparent", "new_traceparent",
    "proto_spans", "read_otlp_json", "register_traceparent", "request_context",
]
