"""W3C trace context for requests: read it from a request, carry it across processes.

A request's ``traceparent`` arrives as an HTTP header upstream; the scheduler
process sees the request object (or just its id). The core reads the context once,
in the scheduler process (``sched_trace.export.request_context``): a ``traceparent``
attribute or key on the request (a string or a :class:`TraceCarrier`), a
``trace_context`` / ``external_trace_header`` mapping on it, then the process-wide
table filled by :func:`register_traceparent`; it travels to the exporter with the
events. :class:`TraceCarrier` is a small picklable value to put on requests that
cross ``multiprocessing`` queues or pipes between scheduler processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from sched_trace.export import (format_traceparent, forget_traceparent, parse_traceparent, register_traceparent,
                                request_context)

__all__ = [
    "TraceCarrier", "attach", "forget_traceparent", "new_traceparent", "parse_traceparent",
    "register_traceparent", "request_context",
]

@dataclass(frozen=True)
class TraceCarrier:
    """A request's W3C trace context, as a picklable value (``traceparent`` plus ``tracestate``)."""

    traceparent: str
    tracestate: str = ""

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Optional["TraceCarrier"]:
        """From HTTP headers (any case); None when there is no valid ``traceparent``."""
        lowered = {str(k).lower(): v for k, v in headers.items()}
        value = lowered.get("traceparent")
        if not value or parse_traceparent(value) is None:
            return None
        return cls(value.strip().lower(), lowered.get("tracestate", ""))

    def to_headers(self) -> dict[str, str]:
        headers = {"traceparent": self.traceparent}
        if self.tracestate:
            headers["tracestate"] = self.tracestate
        return headers

    @property
    def sampled(self) -> bool:
        parsed = parse_traceparent(self.traceparent)
        return bool(parsed and parsed[2] & 1)


def new_traceparent(sampled: bool = True) -> str:
    """A fresh root context, for the process where a request enters the system."""
    trace_id = int.from_bytes(os.urandom(16), "big") or 1
    span_id = int.from_bytes(os.urandom(8), "big") or 1
    return format_traceparent(trace_id, span_id, sampled)


def attach(request: Any, context: "TraceCarrier | str | Mapping[str, str]") -> Any:
    """Set ``request.traceparent`` from a carrier, a header value or a header mapping."""
    if isinstance(context, TraceCarrier):
        value = context.traceparent
    elif isinstance(context, Mapping):
        carrier = TraceCarrier.from_headers(context)
        value = carrier.traceparent if carrier else None
    else:
        value = context
    if value is None or parse_traceparent(value) is None:
        raise ValueError(f"not a valid W3C traceparent: {context!r}")
    if isinstance(request, dict):
        request["traceparent"] = value
    else:
        setattr(request, "traceparent", value)
    return request
