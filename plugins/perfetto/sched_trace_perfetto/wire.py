"""Batches of events to picklable frames and back.

The scheduler process's exporter thread must spend as little as it can per
event (it holds the GIL while it works), so a batch is sent as two C-built
lists, the event classes and the events as plain tuples, pickled by the C
pickler. Only objects it cannot pickle natively reach :meth:`EventPickler.
reducer_override` (a RankInfo once per frame, thanks to the memo; user objects
in attrs; exceptions), and each leaves as what the trace encoders would show of
it: text, or the plain int/float/str/dict/list. So nothing unpicklable or
costly to copy leaves the process, and the exporter process imports no user code.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from typing import Any, Sequence

from sched_trace import BatchEvent, RankInfo, StageEvent
from sched_trace.export import RecordedError, request_ids

_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _error_text(error: BaseException) -> str:
    # As sched_trace.traceio writes an error: a RecordedError is text already.
    return str(error) if isinstance(error, RecordedError) else f"{type(error).__name__}: {error}"


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not cost the batch
        return f"<unprintable {type(value).__name__}>"


_GLOBALS = frozenset((RankInfo, RecordedError, StageEvent, BatchEvent, int, float, str, tuple, list, dict))
_BASES = ((int, int.__index__), (float, float.__float__), (str, str.__str__), (tuple, tuple), (list, list))


class EventPickler(pickle.Pickler):
    """The C pickler, with every non-builtin value replaced by what the trace shows of it."""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is type and obj in _GLOBALS:  # the callables named below, and the event classes
            return NotImplemented
        if kind is RankInfo:
            return RankInfo, (obj.host_id, obj.pid, obj.tid, obj.thread_label, obj.tp_rank, obj.pp_rank,
                              obj.dp_rank, obj.extra)
        if isinstance(obj, BaseException):
            return RecordedError, (_error_text(obj),)
        # Subclasses (enums, numpy floats, named tuples) keep the value the encoders read,
        # not what a __str__ or __int__ of theirs says.
        for base, value in _BASES:
            if isinstance(obj, base):
                return base, (value(obj),)
        if isinstance(obj, Mapping):
            return dict, (dict(obj),)
        return str, (_text(obj),)


def _fields(event: Any) -> tuple:
    attrs = event.attrs
    if attrs and "requests" in attrs:  # request objects carry prompts: only their ids leave
        return tuple(event._replace(attrs={**attrs, "requests": request_ids(attrs["requests"])}))
    return tuple(event)


def pack_events(events: Sequence[Any]) -> bytes:
    """One ``events`` frame's payload for a batch of end events."""
    buffer = io.BytesIO()
    EventPickler(buffer, _PROTOCOL).dump(("events", list(map(type, events)), list(map(_fields, events))))
    return buffer.getvalue()


def unpack_events(frame: tuple) -> list[Any]:
    """The events of an ``events`` frame, in the exporter process."""
    _, classes, fields = frame
    return [cls(*values) for cls, values in zip(classes, fields)]
