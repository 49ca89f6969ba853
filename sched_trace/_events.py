"""The events that cross the hook boundary: what ran, where, for which micro-batch.

Events are built on the scheduler thread, so they are tuples (``NamedTuple``):
immutable, slotted and cheap to create. ``RankInfo`` is made once per thread (and
once per distinct per-call rank override) and shared by reference.

Events are plain data: they pickle (``gather_object``, multiprocessing queues, files
for a later ``pipeline_report``) and compare equal after the round trip. What does
not pickle as is is converted only when pickled, never on the hot path: a mapping
proxy travels as a dict and comes back as a proxy; a recorded exception travels as
a :class:`RecordedError` (type name and message) that compares equal to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, NamedTuple, Optional

#: The shared empty mapping used when a stage declares no extra attributes.
NO_ATTRS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RankInfo:
    """Who recorded an event: host, process, thread and parallel ranks.

    ``tp_rank``, ``pp_rank`` and ``dp_rank`` are ``None`` when unknown. ``extra``
    holds further keys (``rank``, ``world_size``, ``ep_rank`` ...) as sorted pairs so
    that the object stays hashable.
    """

    host_id: str
    pid: int
    tid: int
    thread_label: str
    tp_rank: Optional[int] = None
    pp_rank: Optional[int] = None
    dp_rank: Optional[int] = None
    extra: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def extras(self) -> dict[str, Any]:
        return dict(self.extra)

    @property
    def track_name(self) -> str:
        """``host:Label-PP1-DP0-TP0``, the track naming SGLang's tooling uses."""
        return (
            f"{self.host_id}:{self.thread_label}"
            f"-PP{self.pp_rank or 0}-DP{self.dp_rank or 0}-TP{self.tp_rank or 0}"
        )

    def as_attributes(self) -> dict[str, Any]:
        """Flat attribute dict (unknown ranks omitted), for span and track metadata."""
        attrs: dict[str, Any] = {
            "host_id": self.host_id,
            "pid": self.pid,
            "tid": self.tid,
            "thread_label": self.thread_label,
        }
        for key in ("tp_rank", "pp_rank", "dp_rank"):
            value = getattr(self, key)
            if value is not None:
                attrs[key] = value
        attrs.update(self.extra)
        return attrs

    def replace(self, **changes: Any) -> "RankInfo":
        fields = {
            "host_id": self.host_id, "pid": self.pid, "tid": self.tid,
            "thread_label": self.thread_label, "tp_rank": self.tp_rank,
            "pp_rank": self.pp_rank, "dp_rank": self.dp_rank,
        }
        extra = dict(self.extra)
        for key, value in changes.items():
            if key in fields:
                fields[key] = value
            else:
                extra[key] = value
        return RankInfo(**fields, extra=tuple(sorted(extra.items())))


class RecordedError(Exception):
    """An exception kept as plain data: its type's name, its message (and its traceback's text).

    A live exception is no plain data: its arguments may be live objects (a batch, a
    lock), and it may not survive unpickling in another process. So an event's
    ``error`` travels as this, and a trace file's error text is read back as this. It
    compares equal to the exception it stands for (same type name and message), so a
    round-tripped event equals the original. ``str()`` is ``"TypeName: message"``.
    """

    def __init__(self, type_name: str, message: str = "", stacktrace: str = "") -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message
        self.stacktrace = stacktrace  # the formatted traceback, where an exporter kept it

    @classmethod
    def of(cls, error: BaseException) -> "RecordedError":
        if isinstance(error, RecordedError):
            return error
        return cls(_type_name(type(error)), _message(error))

    @classmethod
    def parse(cls, text: str) -> "RecordedError":
        """The error a trace file recorded as ``"TypeName: message"`` (or a bare message)."""
        type_name, separator, message = str(text).partition(": ")
        return cls(type_name, message) if separator and type_name.replace(".", "").isidentifier() else cls("", text)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BaseException):
            other = RecordedError.of(other)
            return (self.type_name, self.message) == (other.type_name, other.message)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.type_name, self.message))

    def __reduce__(self) -> tuple:
        return RecordedError, (self.type_name, self.message, self.stacktrace)

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.type_name else self.message


def _type_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # a broken __str__ must not make the event unpicklable
        return f"<unprintable {type(error).__name__}>"


def _portable(value: Any) -> Any:
    if type(value) is MappingProxyType:
        return _Proxied(value)
    if isinstance(value, BaseException):
        return RecordedError.of(value)
    return value


class _Proxied(dict):
    """A mapping proxy's contents on the wire; unpickled back into a proxy."""

    __slots__ = ()


def _unpickle_event(event_type: type, fields: tuple) -> Any:
    values = tuple(
        (NO_ATTRS if not value else MappingProxyType(dict(value))) if type(value) is _Proxied else value
        for value in fields
    )
    return tuple.__new__(event_type, values)


def reduce_event(event: tuple) -> tuple:
    """``__reduce__`` for event tuples: mapping proxies and odd exceptions made portable.

    Any ``NamedTuple`` event class can use it: ``__reduce__ = reduce_event``.
    """
    return _unpickle_event, (type(event), tuple(_portable(value) for value in event))


def request_ids(requests: Any) -> list[str]:
    """What an exporter may record of a ``requests`` attribute: the requests' ids only.

    The value is what the scheduler batched (request objects, mappings or bare ids);
    request objects carry prompts and token ids, so they are never printed. An id is
    a request's ``rid``, ``request_id`` or ``id`` (attribute or key); a request
    without one is ``obj-<hex>``.
    """
    if requests is None:
        return []
    if isinstance(requests, (str, int)) or not isinstance(requests, Iterable):
        requests = (requests,)
    ids = []
    for request in requests:
        if isinstance(request, (str, int)):
            ids.append(str(request))
            continue
        for key in ("rid", "request_id", "id"):
            try:
                value = request.get(key) if isinstance(request, Mapping) else getattr(request, key, None)
            except Exception:  # a property that raises is no id
                value = None
            if isinstance(value, (str, int)):
                ids.append(str(value))
                break
        else:
            ids.append(f"obj-{id(request):x}")
    return ids


class _EventFields(NamedTuple):
    name: str
    level: int
    start_ns: int
    end_ns: Optional[int]
    rank: RankInfo
    microbatch: Any
    batch_id: Optional[int]
    batch_size: Optional[int]
    attrs: Mapping[str, Any]
    error: Optional[BaseException]
    span_id: int
    parent_id: int


class _Event(_EventFields):
    __slots__ = ()
    kind = "event"
    __reduce__ = reduce_event

    @property
    def duration_ns(self) -> Optional[int]:
        return None if self.end_ns is None else self.end_ns - self.start_ns


class StageEvent(_Event):
    """One execution of a stage (``run_batch_cpu``, ``forward``, ``send`` ...).

    Fields: ``name``, ``level``, ``start_ns``, ``end_ns``, ``rank``, ``microbatch``,
    ``batch_id``, ``batch_size``, ``attrs``, ``error``, ``span_id``, ``parent_id``.
    ``end_ns`` and ``error`` are ``None`` on the start event. Timestamps are
    nanoseconds since the Unix epoch, read from the monotonic clock plus a
    per-process offset (see :func:`sched_trace.export.wall_offset_ns`).
    ``microbatch``, ``batch_size`` and extracted ``attrs`` values are ``None`` when
    not declared or when the extractor could not read them. ``span_id`` is unique in
    the process; ``parent_id`` is the enclosing stage or batch on the same thread
    (0 at top level).
    """

    __slots__ = ()
    kind = "stage"


class BatchEvent(_Event):
    """One scheduler step (``decode_step``, a pipeline schedule's ``step`` ...).

    Same fields as :class:`StageEvent`; ``batch_id`` is assigned per process in
    increasing order and is inherited by every stage that runs inside the batch on
    the same thread.
    """

    __slots__ = ()
    kind = "batch"


Event = "StageEvent | BatchEvent"


#: The phases of a request's life, in the order they normally happen.
REQUEST_PHASES = ("arrived", "queued", "scheduled", "first_token", "finished", "aborted")


class _RequestFields(NamedTuple):
    phase: str
    ts_ns: int
    request_id: str
    rank: RankInfo
    prompt_tokens: Optional[int]
    output_tokens: Optional[int]
    batch_id: Optional[int]
    attrs: Mapping[str, Any]


class RequestEvent(_RequestFields):
    """One moment in a request's life (arrived, queued, scheduled, first_token,
    finished, aborted), reported by the thread that saw it.

    Fields: ``phase`` (one of :data:`REQUEST_PHASES`), ``ts_ns`` (same clock as
    :attr:`StageEvent.start_ns`), ``request_id`` (a string), ``rank``,
    ``prompt_tokens`` and ``output_tokens`` (``None`` when not declared or not
    readable), ``batch_id`` (the batch open on this thread at that moment, else
    ``None``) and ``attrs``. A phase may be reported more than once (``scheduled``
    again after a preemption): consumers take the first arrived/queued/scheduled/
    first_token and the last finished/aborted.
    """

    __slots__ = ()
    kind = "request"
    __reduce__ = reduce_event  # attrs may be the shared mapping proxy

    @property
    def name(self) -> str:
        """The phase, so code that reads ``event.name`` on any event keeps working."""
        return self.phase
