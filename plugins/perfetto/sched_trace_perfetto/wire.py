"""Batches of events to picklable frames and back, and the length-prefixed frames themselves.

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
import os
import pickle
import struct
from collections.abc import Mapping
from typing import Any, BinaryIO, Optional, Sequence

from sched_trace.events import BatchEvent, RankInfo, StageEvent
from sched_trace.traceio import RecordedError

_HEADER = struct.Struct("<I")
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


def pack_events(events: Sequence[Any]) -> bytes:
    """One ``events`` frame's payload for a batch of end events."""
    buffer = io.BytesIO()
    EventPickler(buffer, _PROTOCOL).dump(("events", list(map(type, events)), list(map(tuple, events))))
    return buffer.getvalue()


def unpack_events(frame: tuple) -> list[Any]:
    """The events of an ``events`` frame, in the exporter process."""
    _, classes, fields = frame
    return [cls(*values) for cls, values in zip(classes, fields)]


def write_frame(fd: int, message: Any) -> int:
    """Write ``message`` (a payload from :func:`pack_events`, or any picklable) whole to ``fd``.

    Straight to the descriptor, no user-space buffer: a fork in the middle of a
    write leaves nothing half-buffered for the child to send a second time.
    """
    payload = message if isinstance(message, bytes) else pickle.dumps(message, protocol=_PROTOCOL)
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    total = len(view)
    while view:
        view = view[os.write(fd, view):]
    return total


def read_frame(stream: BinaryIO) -> Optional[Any]:
    """The next message, or None at end of stream."""
    header = _read_exact(stream, _HEADER.size)
    if header is None:
        return None
    payload = _read_exact(stream, _HEADER.unpack(header)[0])
    return None if payload is None else pickle.loads(payload)


def _read_exact(stream: BinaryIO, size: int) -> Optional[bytes]:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
