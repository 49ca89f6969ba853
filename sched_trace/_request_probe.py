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

from . import _clock, _conditions, _extract, _hotpath, _rank
from ._errors import InstrumentationError
from ._events import NO_ATTRS, REQUEST_PHASES, RequestEvent
from ._manager import REQUEST, get_manager
from ._options import DEFAULT_LEVEL
from ._probe import attributes_reader
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
    """A compiled ``kind="request"`` declaration; ``wrapper`` is the wrapt wrapper, generated
    for it (``_hotpath.request_traced``): its gate, ``when``, extractors and event in one frame."""

    __slots__ = ("name", "level", "kind", "phase", "wrapper", "manager", "request_id", "prompt_tokens",
                 "output_tokens", "rank_keys", "attrs", "read_attrs", "when", "aborted")

    def __init__(self, name: str, level: int, function: Optional[Callable[..., Any]],
                 options: Mapping[str, Any]) -> None:
        params = _extract.Parameters(function)
        self.name, self.level, self.kind, self.phase = name, level, "request", options["phase"]
        attr_specs = dict(options.get("attrs") or {})
        if options.get("status") is not None:
            attr_specs["status"] = options["status"]
        self.manager = get_manager()
        self.request_id = _extract.parse(options["request_id"], "request_id", params)
        self.prompt_tokens = _extract.parse(options.get("prompt_tokens"), "prompt_tokens", params)
        self.output_tokens = _extract.parse(options.get("output_tokens"), "output_tokens", params)
        self.rank_keys = _extract.parse_mapping(options.get("rank"), "rank", params)
        self.attrs = _conditions.parse_attributes(attr_specs or None, params)
        self.read_attrs = attributes_reader(self.attrs)
        self.when = _conditions.parse_condition(options.get("when"), "when", params)
        self.aborted = frozenset(options.get("aborted_statuses") or ())
        self.wrapper = _hotpath.request_traced(self, _HELPERS)


#: What every generated request traced function reads besides its probe's own fields.
_HELPERS = {
    "LEVEL": LEVEL, "REQUEST": REQUEST, "RequestEvent": RequestEvent, "NO_ATTRS": NO_ATTRS,
    "rank_epoch": _rank.epoch, "current_with_epoch": _rank.current_with_epoch,
    "with_overrides": _rank.with_overrides, "_cell_or_none": _rank.cell_or_none, "_context_cell": _rank.context_cell,
    "monotonic_ns": monotonic_ns, "_clock": _clock, "_tuple_new": _tuple_new}


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
