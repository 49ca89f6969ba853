"""Request lifecycle events: ``instrument(..., kind="request")`` and ``request_event()``.

A request probe reports one moment (a phase) of one request when the instrumented
function is called: ``Scheduler.add_request(request)`` is "arrived", a free of
the request's resources is "finished". It emits at call entry, so the event's
timestamp is when the scheduler saw the phase, and it costs what a stage's start
event costs: a few extractor reads and one tuple, whatever the batch size.
"""

from __future__ import annotations

from time import monotonic_ns
from typing import Any, Callable, Iterable, Mapping, Optional

from . import clock, extract, rank as _rank
from .errors import InstrumentationError
from .events import NO_ATTRS, REQUEST_PHASES, RequestEvent
from .plugins import REQUEST, get_manager
from .probe import _tls, compiling  # the stage probes' thread state: same rank cache, same batch
from .stages import LEVEL

DEFAULT_REQUEST_LEVEL = 1  # SGLang's tiers: 1 = request phases
#: Options only request probes take, and those only stages/batches take.
REQUEST_OPTIONS = ("phase", "request_id", "prompt_tokens", "output_tokens", "when", "status", "aborted_statuses")
SPAN_OPTIONS = ("parent", "microbatch", "batch_size", "batch_id", "requests")
_tuple_new = tuple.__new__


def check_options(target: str, kind: str, options: Mapping[str, Any]) -> None:
    """Raise InstrumentationError when ``options`` do not fit ``kind`` (at declaration)."""
    if kind != "request":
        wrong = [key for key in REQUEST_OPTIONS if options.get(key) is not None]
        if wrong:
            raise InstrumentationError(
                f"{target!r}: {', '.join(wrong)} only apply to kind='request' (this target is kind={kind!r})"
            )
        return
    wrong = [key for key in SPAN_OPTIONS if options.get(key) is not None]
    if wrong:
        raise InstrumentationError(
            f"{target!r}: {', '.join(wrong)} do not apply to kind='request'; a request event "
            "takes phase, request_id, prompt_tokens, output_tokens, rank, attrs, when, status, aborted_statuses"
        )
    phase = options.get("phase")
    if phase not in REQUEST_PHASES:
        raise InstrumentationError(
            f"{target!r}: kind='request' needs phase= one of {', '.join(REQUEST_PHASES)}, got {phase!r}"
        )
    if options.get("request_id") is None:
        raise InstrumentationError(
            f"{target!r}: kind='request' needs request_id= an extractor such as 'request.request_id'"
        )
    aborted = options.get("aborted_statuses")
    if aborted is not None:
        if phase != "finished" or options.get("status") is None:
            raise InstrumentationError(
                f"{target!r}: aborted_statuses= needs phase='finished' and a status= extractor"
            )
        if isinstance(aborted, str) or not all(isinstance(item, str) for item in aborted):
            raise InstrumentationError(f"{target!r}: aborted_statuses= must be a list of strings, got {aborted!r}")


def parse_condition(spec: Any, params: extract.Parameters) -> tuple[Optional[extract.Extractor], bool]:
    """``when="x.y"`` fires when the value is truthy, ``when="not x.y"`` when it is falsy;
    an unreadable value (None) never fires. Returns (extractor, negated)."""
    if spec is None:
        return None, False
    negate = isinstance(spec, str) and spec.lstrip().startswith("not ")
    text = spec.lstrip()[4:] if negate else spec
    return extract.parse(text, "when", params), negate


def thread_rank_and_batch() -> tuple[Any, Optional[int]]:
    """The rank and batch id of the innermost span open on this thread (else the thread's own)."""
    cell = _tls.top
    _, batch_id, rank = cell[0]
    if rank is None:
        rank, epoch = cell[1]
        if epoch != _rank.epoch[0]:
            cell[1] = rank, epoch = _rank.current_with_epoch()
    return rank, batch_id


class RequestProbe:
    """A compiled ``kind="request"`` declaration; ``wrapper`` is the wrapt wrapper."""

    __slots__ = ("name", "level", "kind", "phase", "wrapper", "emit")

    def __init__(
        self,
        name: str,
        level: int,
        function: Optional[Callable[..., Any]],
        *,
        phase: str,
        request_id: Any,
        prompt_tokens: Any = None,
        output_tokens: Any = None,
        rank: Any = None,
        attrs: Any = None,
        when: Any = None,
        status: Any = None,
        aborted_statuses: Optional[Iterable[str]] = None,
    ) -> None:
        params = extract.Parameters(function)
        self.name, self.level, self.kind, self.phase = name, level, "request", phase
        attr_specs = dict(attrs or {})
        if status is not None:
            attr_specs["status"] = status
        self.emit = _emitter(
            phase,
            extract.parse(request_id, "request_id", params),
            extract.parse(prompt_tokens, "prompt_tokens", params),
            extract.parse(output_tokens, "output_tokens", params),
            extract.parse_mapping(rank, "rank", params),
            extract.parse_mapping(attr_specs or None, "attrs", params),
            parse_condition(when, params),
            frozenset(aborted_statuses or ()),
        )
        self.wrapper = self._make_wrapper(level)

    def _make_wrapper(self, level: int) -> Callable[..., Any]:
        emit, active = self.emit, LEVEL

        def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            if level <= active.active and (compiling[0] is None or not compiling[0]()):
                emit(instance, args, kwargs)
            return wrapped(*args, **kwargs) if kwargs else wrapped(*args)

        return wrapper


def _emitter(
    phase: str,
    request_id: extract.Extractor,
    prompt_tokens: Optional[extract.Extractor],
    output_tokens: Optional[extract.Extractor],
    rank_keys: tuple,
    attrs: tuple,
    condition: tuple[Optional[extract.Extractor], bool],
    aborted: frozenset,
) -> Callable[[Any, tuple, dict], None]:
    """The per-call work, closed over everything it reads: no attribute lookups per call."""
    manager = get_manager()
    calls_of, count_error = manager.event_calls, manager._count_error
    when, negate = condition

    def emit(instance: Any, args: tuple, kwargs: dict) -> None:
        calls = calls_of[REQUEST]
        if not calls:
            return
        if when is not None:
            value = when(instance, args, kwargs)
            if value is None or (not value) != negate:
                return
        rid = request_id(instance, args, kwargs)
        if rid is None:
            return  # unreadable: counted in stats()['extract_missing'] by the extractor
        rank, batch_id = thread_rank_and_batch()
        if rank_keys:
            rank = _rank.with_overrides(rank, tuple((key, read(instance, args, kwargs)) for key, read in rank_keys))
        extra = {key: read(instance, args, kwargs) for key, read in attrs} if attrs else NO_ATTRS
        this_phase = "aborted" if aborted and str(extra.get("status")) in aborted else phase
        event = _tuple_new(RequestEvent, (
            this_phase,
            monotonic_ns() + clock._offset_ns,
            rid if rid.__class__ is str else str(rid),
            rank,
            prompt_tokens(instance, args, kwargs) if prompt_tokens is not None else None,
            output_tokens(instance, args, kwargs) if output_tokens is not None else None,
            batch_id,
            extra,
        ))
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
    rank, batch_id = thread_rank_and_batch()
    event = _tuple_new(RequestEvent, (
        phase, monotonic_ns() + clock._offset_ns,
        request_id if request_id.__class__ is str else str(request_id),
        rank, prompt_tokens, output_tokens, batch_id, attrs or NO_ATTRS,
    ))
    get_manager().fire(calls, event)
