"""W3C trace context for requests: read it from a request, carry it across processes.

A request's ``traceparent`` arrives as an HTTP header upstream; the scheduler
process sees the request object (or just its id). The exporter looks for the
context, in order: a ``traceparent`` attribute or key on the request, a
``trace_context`` / ``external_trace_header`` mapping on it, then the
process-wide registry filled by :func:`register_traceparent`.
:class:`TraceCarrier` is a small picklable value to put on requests that
cross ``multiprocessing`` queues or pipes between scheduler processes.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from sched_trace.export import format_traceparent, parse_traceparent

__all__ = [
    "TraceCarrier", "attach", "forget_traceparent", "new_traceparent", "parse_traceparent",
    "register_traceparent", "request_context",
]

_REGISTRY_LIMIT = 65536
_registry: "OrderedDict[str, str]" = OrderedDict()
_registry_lock = threading.Lock()


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


def register_traceparent(rid: Any, traceparent: str) -> None:
    """Remember ``rid -> traceparent`` for requests that carry only their id (bounded, oldest forgotten)."""
    if parse_traceparent(traceparent) is None:
        raise ValueError(f"not a valid W3C traceparent for request {rid!r}: {traceparent!r}")
    with _registry_lock:
        _registry[str(rid)] = traceparent
        _registry.move_to_end(str(rid))
        while len(_registry) > _REGISTRY_LIMIT:
            _registry.popitem(last=False)


def forget_traceparent(rid: Any) -> None:
    with _registry_lock:
        _registry.pop(str(rid), None)


def _field(request: Any, name: str) -> Any:
    if isinstance(request, Mapping):
        return request.get(name)
    return getattr(request, name, None)


def request_context(request: Any) -> tuple[str, Optional[str]]:
    """``(rid, traceparent or None)`` for a request object, a mapping, or a bare id.

    Runs in the exporter thread, never on the scheduler thread.
    """
    if isinstance(request, (str, int)):
        rid = str(request)
        return rid, _registry.get(rid)
    rid_value = None
    for name in ("rid", "request_id", "id"):
        rid_value = _field(request, name)
        if rid_value is not None:
            break
    rid = str(rid_value) if rid_value is not None else f"obj-{id(request):x}"
    value = _field(request, "traceparent")
    if isinstance(value, TraceCarrier):
        value = value.traceparent
    if not isinstance(value, str):
        for name in ("trace_context", "external_trace_header"):
            headers = _field(request, name)
            if isinstance(headers, TraceCarrier):
                value = headers.traceparent
                break
            if isinstance(headers, Mapping):
                value = headers.get("traceparent")
                break
    if not isinstance(value, str) or parse_traceparent(value) is None:
        value = _registry.get(rid)
    return rid, value
