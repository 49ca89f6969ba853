"""Request lifecycle events: ``instrument(..., kind="request")`` and ``request_event()``.

A request probe reports one moment (a phase) of one request when the instrumented
function is called: ``Scheduler.add_request(request)`` is "arrived", a free of
the request's resources is "finished". It emits at call entry, so the event's
timestamp is when the scheduler saw the phase, and it costs what a stage's start
event costs: a few extractor reads and one tuple, whatever the batch size.
"""

from __future__ import annotations

from time import monotonic_ns
from typing import Any, Callable, Mapping, Optional

from . import _clock, _conditions, _extract, _rank
from ._errors import InstrumentationError
from ._events import NO_ATTRS, REQUEST_PHASES, RequestEvent
from ._manager import REQUEST, get_manager
from ._options import DEFAULT_LEVEL
from ._probe import attributes_reader, gated
from ._stages import LEVEL

DEFAULT_REQUEST_LEVEL = DEFAULT_LEVEL["request"]
_tuple_new = tuple.__new__


def thread_context() -> tuple[Any, Optional[int], Optional[list]]:
    """The calling thread's own rank (never an enclosing span's: rank identity belongs to
    the thread), the batch id of the innermost span open on it, and where its events go
    (a list while an enclosing keep_if span is undecided, else None: fire at once)."""
    cell = _rank.cell_or_none(None) or _rank.context_cell()
    rank, epoch = cell[1]
    if epoch != _rank.epoch[0]:
        cell[1] = rank, epoch = _rank.current_with_epoch()
    top = cell[0]
    return rank, top[1], top[3]


class RequestProbe:
    """A compiled ``kind="request"`` declaration; ``wrapper`` is the wrapt wrapper."""

    __slots__ = ("name", "level", "kind", "phase", "wrapper", "emit")

    def __init__(self, name: str, level: int, function: Optional[Callable[..., Any]],
                 options: Mapping[str, Any]) -> None:
        params = _extract.Parameters(function)
        self.name, self.level, self.kind, self.phase = name, level, "request", options["phase"]
        attr_specs = dict(options.get("attrs") or {})
        if options.get("status") is not None:
            attr_specs["status"] = options["status"]
        self.emit = _emitter(
            self.phase,
            _extract.parse(options["request_id"], "request_id", params),
            _extract.parse(options.get("prompt_tokens"), "prompt_tokens", params),
            _extract.parse(options.get("output_tokens"), "output_tokens", params),
            _extract.parse_mapping(options.get("rank"), "rank", params),
            attributes_reader(_conditions.parse_attributes(attr_specs or None, params)),
            _conditions.parse_condition(options.get("when"), "when", params),
            frozenset(options.get("aborted_statuses") or ()),
        )
        self.wrapper = self._make_wrapper(level)

    def _make_wrapper(self, level: int) -> Callable[..., Any]:
        emit = self.emit

        def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            emit(instance, args, kwargs)  # at entry: the phase is when the scheduler saw it
            return wrapped(*args, **kwargs) if kwargs else wrapped(*args)

        return gated(level, traced)


def _emitter(
    phase: str,
    request_id: _extract.Extractor,
    prompt_tokens: Optional[_extract.Extractor],
    output_tokens: Optional[_extract.Extractor],
    rank_keys: tuple,
    read_attrs: Optional[Callable[[Any, tuple, dict], Mapping[str, Any]]],
    when: Optional[_conditions.Condition],
    aborted: frozenset,
) -> Callable[[Any, tuple, dict], None]:
    """The per-call work, closed over everything it reads: no attribute lookups per call."""
    manager = get_manager()
    calls_of, count_error = manager.event_calls, manager._count_error

    def emit(instance: Any, args: tuple, kwargs: dict) -> None:
        calls = calls_of[REQUEST]
        if not calls:
            return
        if when is not None and not when(instance, args, kwargs):
            return
        rid = request_id(instance, args, kwargs)
        if rid is None:
            return  # unreadable: counted in stats()['extract_missing'] by the extractor
        rank, batch_id, sink = thread_context()
        if rank_keys:
            rank = _rank.with_overrides(rank, tuple((key, read(instance, args, kwargs)) for key, read in rank_keys))
        extra = read_attrs(instance, args, kwargs) if read_attrs is not None else NO_ATTRS
        this_phase = "aborted" if aborted and str(extra.get("status")) in aborted else phase
        event = _tuple_new(RequestEvent, (
            this_phase,
            monotonic_ns() + _clock._offset_ns,
            rid if rid.__class__ is str else str(rid),
            rank,
            prompt_tokens(instance, args, kwargs) if prompt_tokens is not None else None,
            output_tokens(instance, args, kwargs) if output_tokens is not None else None,
            batch_id,
            extra,
        ))
        if sink is not None:  # inside an undecided keep_if span: wait for its decision
            sink.append((REQUEST, event))
            return
        for function, owner in calls:
            try:
                function(event)
            except Exception as exc:
                count_error(owner, "request", exc)

    return emit


def request_event(
    phase: str,
    request_id: Any,
    prompt_tokens: Optional[int] = None,
    output_tokens: Optional[int] = None,
    **attrs: Any,
) -> None:
    """Report a request phase from code that owns its scheduler (no instrumentation needed).

    ``phase`` is one of ``arrived``, ``queued``, ``scheduled``, ``first_token``,
    ``finished``, ``aborted``; ``attrs`` become the event's attributes (e.g.
    ``finish_reason="stop"``). A no-op while no plugin listens or the level is 0.
    """
    if phase not in REQUEST_PHASES:
        raise InstrumentationError(f"request_event: phase must be one of {', '.join(REQUEST_PHASES)}, got {phase!r}")
    calls = get_manager().event_calls[REQUEST]
    if not calls or DEFAULT_REQUEST_LEVEL > LEVEL.active:
        return
    rank, batch_id, sink = thread_context()
    event = _tuple_new(RequestEvent, (
        phase, monotonic_ns() + _clock._offset_ns,
        request_id if request_id.__class__ is str else str(request_id),
        rank, prompt_tokens, output_tokens, batch_id, attrs or NO_ATTRS,
    ))
    if sink is not None:
        sink.append((REQUEST, event))
    else:
        get_manager().fire(calls, event)
