"""Events to compact, picklable records for the exporter process.

Runs on the exporter thread of the scheduler process: it reads each event once,
resolves request ids and trace contexts (so request objects never leave the
process), and ships plain tuples. A RankInfo is sent once per exporter process
as an index plus its attributes.
"""

from __future__ import annotations

import traceback
import weakref
from typing import Any, Iterable, Optional

from . import requests as _requests  # module import: it imports this module too
from .propagation import request_context

# Record fields, by position (a tuple pickles several times faster than a dict).
KIND, NAME, LEVEL, START, END, RANK, MICROBATCH, BATCH_ID, BATCH_SIZE, ATTRS, ERROR, SPAN_ID, \
    PARENT_ID, REQUESTS, TID = range(15)
PRIMITIVES = (str, bool, int, float)


def attribute_value(value: Any) -> Any:
    """An OTLP-safe attribute value: primitives as is, anything else as short text."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < 1 << 63:
        return str(value)  # OTLP integers are int64
    if isinstance(value, PRIMITIVES):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, PRIMITIVES) for v in value[:64]):
        return [v for v in value[:64]]
    return str(value)[:256]


def error_info(error: BaseException) -> tuple[str, str, str]:
    """(exception.type, exception.message, exception.stacktrace) as OTel's exception event wants."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    stack = "".join(traceback.format_exception(kind, error, error.__traceback__))
    return name, str(error), stack[-8192:]


class RecordEncoder:
    """Turns events into records; remembers which RankInfos the receiving side knows."""

    def __init__(self, max_requests: int = 4096, resolve_requests: bool = True) -> None:
        self.max_requests = max_requests
        self.resolve_requests = resolve_requests
        self.truncated_requests = 0
        self._ranks: dict[Any, int] = {}
        self._contexts: dict[int, tuple[Any, tuple[str, Optional[str]]]] = {}

    def forget_ranks(self) -> None:
        """A new receiver (restarted exporter process) must be told every rank again."""
        self._ranks.clear()

    def encode(self, events: Iterable[Any]) -> tuple[list, list]:
        """``(new_ranks, records)`` for a batch of end events."""
        new_ranks: list[tuple[int, dict[str, Any]]] = []
        records = []
        ranks = self._ranks
        for event in events:
            rank = event.rank
            index = ranks.get(rank)
            if index is None:
                index = ranks[rank] = len(ranks)
                new_ranks.append((index, {k: attribute_value(v) for k, v in rank.as_attributes().items()}))
            if event.kind == "request":  # a request lifecycle event: its own small record
                records.append(_requests.request_record(event, index))
                continue
            attrs = event.attrs
            requests = None
            extra: tuple = ()
            if attrs:
                extra = tuple((k, attribute_value(v)) for k, v in attrs.items() if k != "requests" and v is not None)
                if "requests" in attrs and self.resolve_requests:
                    requests = self._requests(attrs["requests"])
            microbatch = event.microbatch
            if microbatch is not None and not isinstance(microbatch, PRIMITIVES):
                microbatch = str(microbatch)
            records.append((
                1 if event.kind == "batch" else 0, event.name, event.level, event.start_ns, event.end_ns,
                index, microbatch, event.batch_id, event.batch_size, extra,
                None if event.error is None else error_info(event.error),
                event.span_id, event.parent_id, requests, rank.tid,
            ))
        return new_ranks, records

    def _requests(self, value: Any) -> Optional[tuple]:
        if value is None:
            return None
        if isinstance(value, (str, int)) or not hasattr(value, "__iter__"):
            value = (value,)
        try:
            items = list(value)  # the scheduler may mutate its list later; read it once
        except Exception:
            return None
        if len(items) > self.max_requests:
            self.truncated_requests += len(items) - self.max_requests
            items = items[: self.max_requests]
        return tuple(map(self._request_context, items))

    def _request_context(self, request: Any) -> tuple[str, Optional[str]]:
        """request_context(), remembered per live request object.

        A decode request is in every batch until it finishes, and reading its id and
        trace context (attribute probes, a traceparent parse) each time was most of
        this thread's work, under the scheduler's GIL.
        """
        if isinstance(request, (str, int)):
            return request_context(request)
        key = id(request)
        known = self._contexts.get(key)
        if known is not None and known[0]() is request:
            return known[1]
        context = request_context(request)
        if context[1] is None:  # a trace context may still be attached later: look again next time
            return context
        try:
            reference = weakref.ref(request)
        except TypeError:  # no weak references: read it every time
            return context
        if len(self._contexts) >= 65536:
            self._contexts.clear()
        self._contexts[key] = (reference, context)
        return context
