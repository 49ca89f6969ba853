"""sched-trace-otel: OpenTelemetry spans per rank, batch, stage and request, built off the hot path.

Registered through the ``sched_trace`` entry point ``otel``; configured by the
``[plugins.otel]`` table (see :class:`OtelSettings`) and the standard
``OTEL_*`` variables. The scheduler process imports only the plugin, its settings
and the trace-context helpers; the span builders and encoders load where the
exporter runs (its own process by default).
"""

from __future__ import annotations

import importlib
from typing import Any

from .plugin import OtelPlugin
from .propagation import (TraceCarrier, attach, forget_traceparent, new_traceparent,
                          register_traceparent, request_context)
from .settings import OtelSettings

__version__ = "0.1.0"

__all__ = [
    "OtelPlugin", "OtelSettings", "TraceCarrier", "attach", "forget_traceparent", "new_traceparent",
    "otlp_messages", "proto_spans", "register_traceparent", "request_context",
]


def __getattr__(name: str) -> Any:
    # Reading OTLP-JSON files back needs protobuf: loaded on first use, never in the scheduler.
    if name in ("otlp_messages", "proto_spans"):
        return getattr(importlib.import_module(".otlp_json", __name__), name)
    raise AttributeError(f"module 'sched_trace_otel' has no attribute {name!r}")
