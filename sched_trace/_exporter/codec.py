"""The one encoding of events for exporters: events -> frame bytes -> events.

Every exporter process (and every exporter run on a thread) receives the events
the scheduler recorded, as the same :class:`~sched_trace.StageEvent`,
:class:`~sched_trace.BatchEvent` and :class:`~sched_trace.RequestEvent` tuples, and
reads them by field name. Between them lies one frame: the C pickler writes each
event as a plain tuple of its fields; a :class:`~sched_trace.RankInfo` is written
once per frame (the pickle memo) and each event class once. Only values that are
not plain data reach :meth:`_EventPickler.reducer_override`, and each leaves as
what a trace shows of it (:func:`plain_value`), so user objects never leave the
scheduler process and the exporter process imports no user code:

* a ``requests`` attribute becomes a tuple of the request ids (:func:`request_ids` rules);
  their W3C trace contexts travel once per request beside the events and land in
  the receiving process's table (:func:`~.contexts.traceparent_of`);
* an exception becomes a :class:`~sched_trace.export.RecordedError` (type name and
  message) whose ``stacktrace`` holds the formatted traceback;
* mapping proxies become dicts; subclasses of int/float/str/tuple/list their base
  value (an ``IntEnum`` its number); anything else its text, at most 256 characters.

Where the C extension is built, ``_speedups.encode_frame`` (``sched_trace/_encode.c``)
writes the same pickle without the pickler: straight from the event tuples, the
request ids from :class:`~.contexts.ContextCache`'s table. It takes a frame only when
every value is plain data, and answers None for any other, which the pickler writes;
the pickler stays the reference (tests/exporters/test_codec.py holds one to the other).
"""

from __future__ import annotations

import io
import operator
import pickle
import traceback
from collections.abc import Mapping
from types import FunctionType, MappingProxyType
from typing import Any, Iterable, Sequence

from .. import _native
from .._events import NO_ATTRS, BatchEvent, RankInfo, RecordedError, RequestEvent, StageEvent
from .contexts import _MAPPING_KINDS, ContextCache, _remember, _table as contexts_table, traceparent_of

PROTOCOL = pickle.HIGHEST_PROTOCOL
MAX_TEXT = 256            # characters kept of an object written as text
MAX_STACK = 8192          # characters kept of a traceback (its end: the raising frame)
CONTEXTS_SENT_LIMIT = 65536
_ATTRS = 8                # index of ``attrs`` in StageEvent / BatchEvent
_EVENT_CLASSES = frozenset((StageEvent, BatchEvent, RequestEvent))
_SEQUENCES = (list, tuple)
_BASES = ((int, int.__index__), (float, float.__float__), (str, str.__str__), (tuple, tuple),
          (list, list))


def _text(value: Any) -> str:
    try:
        return str(value)[:MAX_TEXT]
    except Exception:  # a broken __str__ must not cost the batch
        return f"<unprintable {type(value).__name__}>"


def plain_value(value: Any) -> Any:
    """What an exporter may hold of an attribute value: plain data, as the frames carry it.

    None, bool, int, float, str and bytes as they are; tuples, lists and dicts with
    their items made plain; a subclass of a plain type its base value; an exception
    a :class:`RecordedError`; anything else its text (at most 256 characters).
    """
    kind = type(value)
    if value is None or kind in (bool, int, float, str, bytes):
        return value
    if kind in (tuple, list):
        return kind(map(plain_value, value))
    if isinstance(value, Mapping):
        return {str(key): plain_value(item) for key, item in value.items()}
    if isinstance(value, BaseException):
        return remote_error(value)
    for base, convert in _BASES:
        if isinstance(value, base):
            return plain_value(convert(value))
    return _text(value)


def remote_error(error: BaseException) -> RecordedError:
    """A recorded exception as plain data, its formatted traceback in ``stacktrace``."""
    if isinstance(error, RecordedError):
        return error
    remote = RecordedError.of(error)
    try:
        stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    except Exception:  # a traceback that cannot be formatted is left out, never raised
        stack = ""
    remote.stacktrace = stack[-MAX_STACK:]
    return remote


def _rebuild_error(type_name: str, message: str, stacktrace: str) -> RecordedError:
    return RecordedError(type_name, message, stacktrace)


def _reduce_error(error: BaseException) -> tuple:
    remote = remote_error(error)
    return _rebuild_error, (remote.type_name, remote.message, getattr(remote, "stacktrace", ""))


#: What the frames name by reference: the event types and the few callables that rebuild values.
_GLOBALS = frozenset((RankInfo, StageEvent, BatchEvent, RequestEvent, dict, int, float, str, tuple, list,
                      _rebuild_error))


_RANK_ARGS: dict[int, tuple[RankInfo, tuple]] = {}  # id -> (the rank, its arguments)
_KINDS = (StageEvent, BatchEvent, RequestEvent, RankInfo)


def rank_args(rank: RankInfo) -> tuple:
    """What a RankInfo is rebuilt from, as plain data; remembered per rank (a thread's rank lives long)."""
    known = _RANK_ARGS.get(id(rank))
    if known is not None and known[0] is rank:
        return known[1]
    args = (rank.host_id, rank.pid, rank.tid, rank.thread_label, rank.tp_rank, rank.pp_rank, rank.dp_rank,
            tuple((key, plain_value(value)) for key, value in rank.extra))
    if len(_RANK_ARGS) >= 256:
        _RANK_ARGS.clear()
    _RANK_ARGS[id(rank)] = (rank, args)
    return args


class _EventPickler(pickle.Pickler):
    """The C pickler; only what it cannot write natively comes here (once per object: the memo)."""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if (kind is type or kind is FunctionType) and obj in _GLOBALS:
            return NotImplemented
        if kind is RankInfo:
            return RankInfo, rank_args(obj)
        if kind is MappingProxyType:
            return dict, (dict(obj),)
        if isinstance(obj, BaseException):
            return _reduce_error(obj)
        for base, convert in _BASES:
            if isinstance(obj, base):
                return base, (convert(obj),)
        if isinstance(obj, Mapping):
            return dict, ({str(key): value for key, value in obj.items()},)
        return str, (_text(obj),)


class EventEncoder:
    """The scheduler side: batches of events to frame payloads.

    Stateful: it remembers which request trace contexts the receiving side has been
    sent; :meth:`reset` when that side is new (a restarted exporter process).
    """

    def __init__(self) -> None:
        self._contexts = ContextCache()
        self._sent: dict[str, None] = {}
        speedups = _native.speedups
        self._fast = getattr(speedups, "encode_frame", None)
        self._taken = getattr(speedups, "Taken", None)  # a batch taken from a ring: read by the C form as it is
        # what the C form reads of ContextCache.context's table, and calls where that is not enough
        self._cache = (self._contexts._known, self._contexts.context, contexts_table, self._send, _MAPPING_KINDS)
        self.frames_in_c = self.frames_in_python = 0
        self._last: Any = None  # the frame's last requests read, and their ids

    def reset(self) -> None:
        self._sent.clear()

    def counters(self) -> dict[str, int]:
        """Frames written in C and by the pickler (a frame with a value that is not plain data)."""
        return {"frames_in_c": self.frames_in_c, "frames_in_python": self.frames_in_python}

    def encode(self, events: Sequence[Any]) -> bytes:
        """One frame's payload: ``(new trace contexts, event classes, event fields)``.

        Written in C (``_speedups.encode_frame``) where the extension is built and every
        value is plain data; else, or for a frame holding anything else, by the pickler.
        Both write the same pickle; the receiving side cannot tell them apart.
        """
        contexts: list[tuple[str, str]] = []
        self._last = None
        if self._fast is not None:
            kind = type(events)
            payload = self._fast(events if kind is list or kind is self._taken else list(events), contexts,
                                 self._sent, self._context_of_request, self._request_ids, rank_args, _KINDS,
                                 NO_ATTRS, self._cache)
            if payload is not None:
                self.frames_in_c += 1
                return payload
        self.frames_in_python += 1
        if type(events) is not list:  # a Taken batch makes its events as they are asked for: once
            events = list(events)
        fields = list(map(tuple, events))
        for index, event in enumerate(events):
            if type(event) is RequestEvent:
                self._context_of_request(event.request_id, contexts)
                continue
            attrs = event[_ATTRS]
            if attrs and "requests" in attrs:
                plain = fields[index]
                fields[index] = plain[:_ATTRS] + (self._request_ids(attrs, contexts),) + plain[_ATTRS + 1:]
        self._last = None  # held for one frame only: the requests stay the scheduler's
        buffer = io.BytesIO()
        _EventPickler(buffer, PROTOCOL).dump((contexts, list(map(type, events)), fields))
        return buffer.getvalue()

    def _context_of_request(self, rid: str, contexts: list) -> None:
        if rid not in self._sent:
            traceparent = traceparent_of(rid)
            if traceparent is not None:
                self._send(rid, traceparent, contexts)

    def _request_ids(self, attrs: Any, contexts: list) -> dict:
        """``attrs`` with its ``requests`` as their ids; each id's trace context sent once.

        A list or tuple of the very requests (the same objects, in the same order) of the
        frame's last one read takes its ids: a decode batch is the same from step to step,
        so its requests are read once per frame, not once per step (the C form too).
        """
        requests = attrs["requests"]
        if requests is None:
            return {**attrs, "requests": ()}
        sequence = type(requests) in _SEQUENCES  # what the C form reads itself, and compares
        if not sequence and (isinstance(requests, (str, int)) or
                             not isinstance(requests, Iterable)):  # an ABC check: slow
            requests = (requests,)
        try:
            items = tuple(requests)  # the scheduler may change its list later: read it once
        except Exception:
            items = ()
        last = self._last
        if (sequence and last is not None and len(items) == len(last[0])
                and all(map(operator.is_, items, last[0]))):
            return {**attrs, "requests": last[1]}
        ids = []
        context = self._contexts.context
        for request in items:
            rid, traceparent = context(request)
            ids.append(rid)
            if traceparent is not None and rid not in self._sent:
                self._send(rid, traceparent, contexts)
        found = tuple(ids)
        if sequence:
            self._last = (items, found)
        return {**attrs, "requests": found}

    def _send(self, rid: str, traceparent: str, contexts: list) -> None:
        contexts.append((rid, traceparent))
        if len(self._sent) >= CONTEXTS_SENT_LIMIT:
            del self._sent[next(iter(self._sent))]
        self._sent[rid] = None


def decode_events(payload: bytes) -> list[Any]:
    """The events of one frame payload, in the receiving process; their trace contexts remembered."""
    contexts, classes, fields = pickle.loads(payload)
    for rid, traceparent in contexts:
        _remember(rid, traceparent)
    if not set(classes) <= _EVENT_CLASSES:
        raise ValueError(f"not an event frame: {sorted({c.__name__ for c in classes} - _names())}")
    return list(map(tuple.__new__, classes, fields))


def _names() -> set[str]:
    return {cls.__name__ for cls in _EVENT_CLASSES}
