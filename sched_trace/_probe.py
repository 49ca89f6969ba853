"""The hot path: what runs on every call of a traced stage or batch.

A ``Probe`` is compiled once per declaration (stage or batch, level, extractors).
Its ``wrapper`` has wrapt's ``(wrapped, instance, args, kwargs)`` signature. Every
kind of function (plain, generator, coroutine, async generator) goes through the
same gate (:func:`gated`, or its comparison at the top of a plain function's
generated body): one comparison when the level is off, and no tracing while
``torch.compile`` traces. Past the gate, plain functions run
:meth:`Probe._sync_traced` (begin and finish inlined, written for the probe by
``_hotpath``: it is the common case) and
the others run :meth:`Probe.begin` / :meth:`Probe.finish` around their body.

A probe with ``keep_if`` decides after the call whether the call did work. Until
then, the events of spans inside it wait in a list (the context's ``sink``). Kept,
it delivers its start event (late, with its true start time), theirs, and its end
event; dropped, it fires no hook, is counted in :data:`idle_calls`, and the spans
inside it are delivered as children of the span around it.
"""

from __future__ import annotations

import inspect
import itertools
from time import monotonic_ns
from typing import Any, Callable, Mapping, Optional

import wrapt

from . import _clock, _conditions, _extract, _hotpath, _rank
from ._events import NO_ATTRS, BatchEvent, StageEvent
from ._manager import BATCH_END, BATCH_START, STAGE_END, STAGE_START, get_manager
from ._stages import LEVEL

_next_span_id = itertools.count(1).__next__
_next_batch_id = itertools.count(1).__next__
_tuple_new = tuple.__new__
_cell_or_none, _context_cell = _rank.cell_or_none, _rank.context_cell
# torch.compiler.is_compiling once torch is imported (see watch_torch); then [1] is
# (is_compiling, its module's globals) if all it reads there is ``_is_compiling_flag``:
# the C hot path (_speedups) reads that flag instead of making two Python calls, for
# as long as [0] is that function.
compiling: list[Any] = [None, None]
#: Calls dropped by keep_if, per stage name (``sched_trace.stats()["idle_calls"]``).
idle_calls: dict[str, int] = {}

Wrapper = Callable[[Any, Any, tuple, dict], Any]


def gated(level: int, traced: Wrapper) -> Wrapper:
    """The wrapper a probe installs: ``traced`` when ``level`` is on, else a plain call.

    A plain function's generated traced function (``_hotpath``) opens with this same
    comparison and is installed as it is: it has no closure, so its frame costs about
    what this one does when the level is off, and an enabled call saves a frame.

    ``traced`` itself skips tracing while torch.compile traces (:data:`compiling`): that
    check costs nothing here, where nothing is traced anyway.
    """
    active = LEVEL

    def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        # Kept tiny: a frame's cost grows with its variables, and this one must stay
        # as cheap as a plain wrapt passthrough when the level is off.
        if level > active.active:
            # Without keywords, skip unpacking an empty dict: ~4% of this path.
            return wrapped(*args, **kwargs) if kwargs else wrapped(*args)
        return traced(wrapped, instance, args, kwargs)

    return wrapper


def _thread_rank(cell: list) -> Any:
    """The thread's own rank, read again (its identity changed) and cached in ``cell``."""
    cell[1] = rank, _ = _rank.current_with_epoch()
    return rank


#: What every generated traced function reads besides its probe's own fields (``_hotpath``).
_HELPERS = {
    "rank_epoch": _rank.epoch, "compiling": compiling, "_cell_or_none": _cell_or_none, "_context_cell": _context_cell,
    "_thread_rank": _thread_rank, "_next_span_id": _next_span_id, "_next_batch_id": _next_batch_id,
    "monotonic_ns": monotonic_ns, "_clock": _clock, "_tuple_new": _tuple_new, "NO_ATTRS": NO_ATTRS, "LEVEL": LEVEL,
    "idle": idle_calls, "current_rank": _rank.current, "current_with_epoch": _rank.current_with_epoch}


def kind_of(function: Optional[Callable[..., Any]]) -> str:
    """``sync``, ``generator``, ``coroutine`` or ``async_generator``: how a call must be traced."""
    target = inspect.unwrap(function) if function is not None else None
    if isinstance(target, (classmethod, staticmethod)):
        target = target.__func__
    if inspect.isasyncgenfunction(target):
        return "async_generator"
    if inspect.iscoroutinefunction(target):
        return "coroutine"
    if inspect.isgeneratorfunction(target):
        return "generator"
    return "sync"


def attributes_reader(attrs: tuple) -> Optional[Callable[[Any, tuple, dict], Mapping[str, Any]]]:
    """``(instance, args, kwargs) -> attrs`` for parsed attributes; None when there are none."""
    if not attrs:
        return None
    if all(condition is None for _, _, condition in attrs):
        plain = tuple((key, read) for key, read, _ in attrs)
        return lambda instance, args, kwargs: {key: read(instance, args, kwargs) for key, read in plain}

    def read_attributes(instance: Any, args: tuple, kwargs: dict) -> Mapping[str, Any]:
        found = {}
        for key, read, condition in attrs:
            if condition is None or condition(instance, args, kwargs):
                found[key] = read(instance, args, kwargs)
        return found or NO_ATTRS

    return read_attributes


def _adopted(event: Any, dropped: int, parent: int, dropped_batch: Any, batch: Any) -> Any:
    """``event`` with a dropped keep_if span taken out: its children go to the span around it."""
    changes = {}
    if getattr(event, "parent_id", None) == dropped:
        changes["parent_id"] = parent
    if dropped_batch is not None and event.batch_id == dropped_batch and dropped_batch != batch:
        changes["batch_id"] = batch
    return event._replace(**changes) if changes else event


class Probe:
    """A compiled stage or batch declaration: name, level, kind and extractors."""

    __slots__ = (
        "name", "level", "kind", "microbatch", "batch_size", "batch_id", "rank_keys", "attrs", "read_attrs",
        "keep", "event_type", "start_index", "end_index", "wrapper", "is_batch", "manager",
    )

    def __init__(self, name: str, level: int, kind: str, function: Optional[Callable[..., Any]],
                 options: Mapping[str, Any]) -> None:
        params = _extract.Parameters(function)
        self.name, self.level, self.kind = name, level, kind
        self.is_batch = kind == "batch"
        self.event_type = BatchEvent if self.is_batch else StageEvent
        self.start_index = BATCH_START if self.is_batch else STAGE_START
        self.end_index = BATCH_END if self.is_batch else STAGE_END
        self.manager = get_manager()
        self.microbatch = _extract.parse(options.get("microbatch"), "microbatch", params)
        self.batch_size = _extract.parse(options.get("batch_size"), "batch_size", params)
        self.batch_id = _extract.parse(options.get("batch_id"), "batch_id", params)
        self.rank_keys = _extract.parse_mapping(options.get("rank"), "rank", params)
        attr_specs = dict(options.get("attrs") or {})
        if options.get("requests") is not None:
            attr_specs["requests"] = options["requests"]
        self.attrs = _conditions.parse_attributes(attr_specs or None, params)
        self.read_attrs = attributes_reader(self.attrs)
        self.keep = _conditions.parse_condition(options.get("keep_if"), "keep_if", params, after_call=True)
        if self.keep is not None:
            idle_calls.setdefault(name, 0)
        body = {"sync": self._sync_traced if self.keep is None else self._sync_kept,
                "generator": self._gen_traced, "coroutine": self._async_traced,
                "async_generator": self._async_gen_traced}[kind_of(function)]
        # The generated sync body holds the gate itself (see gated).
        self.wrapper = body() if body in (self._sync_traced, self._sync_kept) else gated(level, body())

    # --- the fields of an event, and delivering them --------------------------

    def fields(self, instance: Any, args: tuple, kwargs: dict, start_ns: int) -> tuple:
        """A start event's fields: the thread's context, the ids, the extractors' values."""
        parent, batch_id, rank, _ = _context_cell()[0]
        rank, batch_id, _ = self.identity(instance, args, kwargs, rank if rank is not None else _rank.current(), batch_id)
        return self.event_fields(instance, args, kwargs, start_ns, rank, batch_id, _next_span_id(), parent)

    def identity(self, instance: Any, args: tuple, kwargs: dict, rank: Any, batch_id: Any) -> tuple:
        """(rank, batch id, batch id of spans inside) of a call, given the enclosing span's
        rank (or the thread's) and batch id."""
        if self.rank_keys:
            rank = _rank.with_overrides(rank, tuple((key, read(instance, args, kwargs)) for key, read in self.rank_keys))
        if self.is_batch:
            own = self.batch_id(instance, args, kwargs) if self.batch_id is not None else _next_batch_id()
            return rank, own, own
        if self.batch_id is not None:
            return rank, self.batch_id(instance, args, kwargs), batch_id
        return rank, batch_id, batch_id

    def event_fields(self, instance: Any, args: tuple, kwargs: dict, start_ns: int, rank: Any, batch_id: Any,
                     span_id: int, parent: int) -> tuple:
        return (
            self.name, self.level, start_ns, None, rank,
            self.microbatch(instance, args, kwargs) if self.microbatch is not None else None,
            batch_id,
            self.batch_size(instance, args, kwargs) if self.batch_size is not None else None,
            self.read_attrs(instance, args, kwargs) if self.read_attrs is not None else NO_ATTRS,
            None, span_id, parent,
        )

    def fire(self, index: int, fields: tuple) -> None:
        calls = self.manager.event_calls[index]
        if calls:
            self.manager.fire(calls, _tuple_new(self.event_type, fields))

    def begin(self, instance: Any, args: tuple, kwargs: dict) -> Any:
        """Generators and coroutines, at the start: fire the start event (keep_if: note the time).

        They interleave with other code, so they are never the parent of other spans and
        deliver their events at once, whatever encloses them.
        """
        start_ns = monotonic_ns() + _clock._offset_ns
        if self.keep is not None:
            return start_ns
        fields = self.fields(instance, args, kwargs, start_ns)
        self.fire(self.start_index, fields)
        return fields

    def finish(self, token: Any, instance: Any, args: tuple, kwargs: dict, error: Optional[BaseException],
               result: Any = None) -> None:
        """Generators and coroutines, at the end: fire the end event (keep_if: both, if it did work)."""
        end_ns = monotonic_ns() + _clock._offset_ns
        if self.keep is None:
            fields = token
        elif error is None and not self.keep(instance, args, kwargs, result):
            idle_calls[self.name] += 1
            return
        else:  # kept: an error is never idle
            fields = self.fields(instance, args, kwargs, token)
            self.fire(self.start_index, fields)
        self.fire(self.end_index, fields[:3] + (end_ns,) + fields[4:9] + (error,) + fields[10:])

    # --- the traced bodies, one per kind of function ----------------------------

    def _sync_traced(self) -> Wrapper:
        """Begin and finish inlined, extractors written in: an enabled call costs one Python
        frame (``_hotpath``; bench_instructions)."""
        return _hotpath.sync_traced(self, _HELPERS)

    def _sync_kept(self) -> Wrapper:
        """keep_if on a plain function: the call, the decision, then the events (see above;
        generated for the probe by ``_hotpath``, the gate inside)."""
        return _hotpath.kept_traced(self, _HELPERS)

    def _decided(self, kept: bool, top: tuple, span: tuple, pending: list, instance: Any, args: tuple,
                 kwargs: dict, error: Optional[BaseException]) -> None:
        """Deliver a decided keep_if span (kept: with what ran inside it; dropped: only that)."""
        end_ns = monotonic_ns() + _clock._offset_ns
        span_id, batch_id, rank, start_ns = span
        parent, previous_batch, _, sink = top
        if kept:
            rank = rank if rank is not None else _rank.current()
            fields = self.event_fields(instance, args, kwargs, start_ns, rank, batch_id, span_id, parent)
            pending.insert(0, (self.start_index, _tuple_new(self.event_type, fields)))
            pending.append((self.end_index, _tuple_new(self.event_type, fields[:3] + (end_ns,) + fields[4:9]
                                                         + (error,) + fields[10:])))
        else:
            pending = [(index, _adopted(event, span_id, parent, batch_id, previous_batch))
                       for index, event in pending]
        if sink is not None:  # this span is itself inside an undecided one
            sink.extend(pending)
            return
        calls_of, fire = self.manager.event_calls, self.manager.fire
        for index, event in pending:
            calls = calls_of[index]
            if calls:
                fire(calls, event)

    def _gen_traced(self) -> Wrapper:
        begin, finish = self.begin, self.finish

        def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            token = begin(instance, args, kwargs)
            try:
                result = yield from wrapped(*args, **kwargs)
            except GeneratorExit:
                finish(token, instance, args, kwargs, None)
                raise
            except BaseException as exc:
                finish(token, instance, args, kwargs, exc)
                raise
            finish(token, instance, args, kwargs, None, result)
            return result

        return traced

    def _async_traced(self) -> Wrapper:
        begin, finish = self.begin, self.finish

        async def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            token = begin(instance, args, kwargs)
            try:
                result = await wrapped(*args, **kwargs)
            except BaseException as exc:
                finish(token, instance, args, kwargs, exc)
                raise
            finish(token, instance, args, kwargs, None, result)
            return result

        return traced

    def _async_gen_traced(self) -> Wrapper:
        begin, finish = self.begin, self.finish

        async def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            token = begin(instance, args, kwargs)
            error: Optional[BaseException] = None
            try:
                async for item in wrapped(*args, **kwargs):
                    yield item
            except GeneratorExit:
                raise
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(token, instance, args, kwargs, error)

        return traced


_torch_watched = [False]


def watch_torch() -> None:
    """Once torch is imported, skip tracing while torch.compile traces (no graph breaks)."""
    if _torch_watched[0]:
        return
    _torch_watched[0] = True

    def on_torch(torch: Any) -> None:
        is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
        if callable(is_compiling):
            compiling[0] = is_compiling
            home, code = getattr(is_compiling, "__globals__", None), getattr(is_compiling, "__code__", None)
            # torch >= 2.4: ``return False if torch.jit.is_scripting() else _is_compiling_flag``
            # (scripting is never true where Python runs the hot path)
            if isinstance(home, dict) and "_is_compiling_flag" in home and \
                    "_is_compiling_flag" in getattr(code, "co_names", ()):
                compiling[1] = (is_compiling, home)

    wrapt.register_post_import_hook(on_torch, "torch")
