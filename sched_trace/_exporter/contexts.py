"""Requests as an exporter may see them: their ids and W3C trace contexts, never the objects.

A batch's ``requests`` attribute holds the scheduler's request objects (prompts,
token ids); only ``(rid, traceparent)`` leaves the scheduler process. The trace
context is looked for, in order: a ``traceparent`` attribute or key on the request
(a string, or any object with a ``traceparent`` string such as sched-trace-otel's
``TraceCarrier``), a ``trace_context`` / ``external_trace_header`` mapping on it,
then the process-wide table filled by :func:`register_traceparent` (and, in an
exporter process, by the frames it decodes). :func:`traceparent_of` reads that table.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Mapping, Optional

from .._rank import parse_traceparent

TABLE_LIMIT = 65536
CACHE_LIMIT = 65536
Context = tuple[str, Optional[str]]

_table: "OrderedDict[str, str]" = OrderedDict()
_table_lock = threading.Lock()


def register_traceparent(rid: Any, traceparent: str) -> None:
    """Remember ``rid -> traceparent`` for requests that carry only their id (bounded, oldest forgotten)."""
    if parse_traceparent(traceparent) is None:
        raise ValueError(f"not a valid W3C traceparent for request {rid!r}: {traceparent!r}")
    _remember(str(rid), traceparent)


def _remember(rid: str, traceparent: str) -> None:
    with _table_lock:
        _table[rid] = traceparent
        _table.move_to_end(rid)
        while len(_table) > TABLE_LIMIT:
            _table.popitem(last=False)


def forget_traceparent(rid: Any) -> None:
    """Drop what :func:`register_traceparent` remembered for request ``rid``."""
    with _table_lock:
        _table.pop(str(rid), None)


def traceparent_of(rid: str) -> Optional[str]:
    """The trace context registered (or received) for request ``rid``, else None."""
    return _table.get(rid)


# The C encoder (_encode.c, plain_request_context) reads a plain object's re-read the same way where
# its ``rid`` is a str and no context is anywhere; it leaves everything else to request_context.
_ID_NAMES = ("rid", "request_id", "id")
_HEADER_NAMES = ("trace_context", "external_trace_header")
_MAPPING_KINDS: dict[type, bool] = {}  # per request type: is it a Mapping (an ABC check is slow)


def _is_mapping(request: Any) -> bool:
    kind = type(request)
    mapping = _MAPPING_KINDS.get(kind)
    if mapping is None:
        mapping = isinstance(request, Mapping)
        if len(_MAPPING_KINDS) < 256:
            _MAPPING_KINDS[kind] = mapping
    return mapping


def _field(request: Any, name: str, mapping: bool) -> Any:
    return request.get(name) if mapping else getattr(request, name, None)


def _as_traceparent(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        value = getattr(value, "traceparent", None)  # a carrier object
    return value if isinstance(value, str) and parse_traceparent(value) is not None else None


def request_context(request: Any) -> Context:
    """``(rid, traceparent or None)`` for a request object, a mapping, or a bare id."""
    if isinstance(request, (str, int)):
        rid = str(request)
        return rid, _table.get(rid)
    mapping = _is_mapping(request)
    rid_value = None
    for name in _ID_NAMES:
        try:
            rid_value = _field(request, name, mapping)
        except Exception:  # a property that raises is no id
            rid_value = None
        if isinstance(rid_value, (str, int)):
            break
        rid_value = None
    rid = str(rid_value) if rid_value is not None else f"obj-{id(request):x}"
    try:
        value = _as_traceparent(_field(request, "traceparent", mapping))
        if value is None:
            for name in _HEADER_NAMES:
                headers = _field(request, name, mapping)
                if headers is not None:
                    value = _as_traceparent(headers.get("traceparent") if isinstance(headers, Mapping) else headers)
                    break
    except Exception:  # a request whose attributes raise has no readable context
        value = None
    return rid, value if value is not None else _table.get(rid)


class ContextCache:
    """:func:`request_context`, remembered per live request object.

    A decode request is in every batch until it finishes; reading its id and trace
    context each time was most of the exporter thread's work, under the scheduler's GIL.
    A request without a context yet may get one later: its attributes are read again at
    its 2nd, 4th, 8th, ... sighting (a context attached at the k-th is seen by the 2k-th;
    SGLang's requests, read in full each time, cost 67 us of the exporter thread per
    decode step at batch 8), and the table of :func:`register_traceparent` at every one.
    """

    def __init__(self) -> None:
        # id -> [weak reference, context, sightings]; the C encoder (_encode.c, context_of) reads and
        # counts in it the same way: change both or neither
        self._known: dict[int, list] = {}

    def context(self, request: Any) -> Context:
        key = id(request)
        known = self._known.get(key)  # first: a request seen before is the common case
        if known is not None and known[0]() is not request:  # a new object at a freed one's address
            known = None
        if known is not None:
            context = known[1]
            if context[1] is not None:
                return context
            known[2] = seen = known[2] + 1
            if seen & (seen - 1):  # not a power of two: only the table is read again
                return (context[0], _table.get(context[0])) if _table else context
        elif isinstance(request, (str, int)):  # never kept (no weak references to them)
            return request_context(request)
        context = request_context(request)
        if known is not None:
            if context[1] is not None:
                known[1] = context
            return context
        try:
            reference = weakref.ref(request)
        except TypeError:  # no weak references: read it every time
            return context
        if len(self._known) >= CACHE_LIMIT:
            self._known.clear()
        self._known[key] = [reference, context, 1]
        return context
