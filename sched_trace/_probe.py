"""The hot path: what runs on every call of a traced stage or batch.

A ``Probe`` is compiled once per declaration (stage or batch, level, extractors).
Its ``wrapper`` has wrapt's ``(wrapped, instance, args, kwargs)`` signature. Every
kind of function (plain, generator, coroutine, async generator) goes through the
same gate (:func:`gated`): one comparison when the level is off, and no tracing
while ``torch.compile`` traces. Past the gate, plain functions run
:meth:`Probe._sync_traced` (begin and finish inlined: it is the common case) and
the others run :meth:`Probe.begin` / :meth:`Probe.finish` around their body.
"""

from __future__ import annotations

import inspect
import itertools
from time import monotonic_ns
from typing import Any, Callable, Mapping, Optional

import wrapt

from . import _clock, _extract, _rank
from ._events import NO_ATTRS, BatchEvent, StageEvent
from ._manager import BATCH_END, BATCH_START, STAGE_END, STAGE_START, get_manager
from ._stages import LEVEL

_next_span_id = itertools.count(1).__next__
_next_batch_id = itertools.count(1).__next__
_tuple_new = tuple.__new__
_context = _rank.context
# torch.compiler.is_compiling once torch is imported (see watch_torch).
compiling: list[Optional[Callable[[], bool]]] = [None]

Wrapper = Callable[[Any, Any, tuple, dict], Any]


def gated(level: int, traced: Wrapper) -> Wrapper:
    """The wrapper every probe installs: ``traced`` when ``level`` is on, else a plain call."""
    active = LEVEL

    def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        # Kept tiny: a frame's cost grows with its local variables, and this one
        # must stay as cheap as a plain wrapt passthrough when the level is off.
        if level > active.active or (compiling[0] is not None and compiling[0]()):
            # Without keywords, skip unpacking an empty dict: ~4% of this path.
            return wrapped(*args, **kwargs) if kwargs else wrapped(*args)
        return traced(wrapped, instance, args, kwargs)

    return wrapper


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


class Probe:
    """A compiled stage or batch declaration: name, level, kind and extractors."""

    __slots__ = (
        "name", "level", "kind", "microbatch", "batch_size", "batch_id", "rank_keys",
        "attrs", "event_type", "start_index", "end_index", "wrapper", "is_batch", "manager",
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
        self.attrs = _extract.parse_mapping(attr_specs or None, "attrs", params)
        body = {"sync": self._sync_traced, "generator": self._gen_traced, "coroutine": self._async_traced,
                "async_generator": self._async_gen_traced}[kind_of(function)]
        self.wrapper = gated(level, body())

    # --- begin/finish: every kind but the inlined sync path ---------------------

    def begin(self, instance: Any, args: tuple, kwargs: dict) -> tuple:
        """Fire the start event; returns the fields the end event reuses."""
        parent, previous_batch, rank = _context.top[0]
        if rank is None:  # a span without rank keys of its own takes the enclosing span's
            rank = _rank.current()
        if self.rank_keys:
            rank = _rank.with_overrides(
                rank, tuple((key, read(instance, args, kwargs)) for key, read in self.rank_keys)
            )
        if self.batch_id is not None:
            batch_id = self.batch_id(instance, args, kwargs)
        else:
            batch_id = _next_batch_id() if self.is_batch else previous_batch
        fields = (
            self.name, self.level, monotonic_ns() + _clock._offset_ns, None, rank,
            self.microbatch(instance, args, kwargs) if self.microbatch is not None else None,
            batch_id,
            self.batch_size(instance, args, kwargs) if self.batch_size is not None else None,
            {key: read(instance, args, kwargs) for key, read in self.attrs} if self.attrs else NO_ATTRS,
            None, _next_span_id(), parent,
        )
        calls = self.manager.event_calls[self.start_index]
        if calls:
            self.manager.fire(calls, _tuple_new(self.event_type, fields))
        return fields

    def finish(self, fields: tuple, error: Optional[BaseException]) -> None:
        end_ns = monotonic_ns() + _clock._offset_ns
        calls = self.manager.event_calls[self.end_index]
        if calls:
            self.manager.fire(calls, _tuple_new(self.event_type, fields[:3] + (end_ns,) + fields[4:9] + (error,)
                                                + fields[10:]))

    # --- the traced bodies, one per kind of function ----------------------------

    # long: begin and finish inlined, so an enabled call costs one Python frame (bench_instructions)
    def _sync_traced(self) -> Wrapper:
        name, level, kind, is_batch, event_type = self.name, self.level, self.kind, self.is_batch, self.event_type
        microbatch, batch_size, batch_id_of, rank_keys = self.microbatch, self.batch_size, self.batch_id, self.rank_keys
        attrs = self.attrs or None
        # One attribute (usually ``requests``) is the common case: no loop, no comprehension frame.
        attr_key, attr_read = self.attrs[0] if len(self.attrs) == 1 else (None, None)
        calls_of, start_index, end_index = self.manager.event_calls, self.start_index, self.end_index
        count_error, context = self.manager._count_error, _context
        current_with_epoch, rank_epoch, with_overrides = _rank.current_with_epoch, _rank.epoch, _rank.with_overrides

        # long: the whole enabled hot path in one frame
        def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            cell = context.top
            top = cell[0]
            parent, previous_batch, rank = top
            if rank is None:
                rank, epoch = cell[1]
                if epoch != rank_epoch[0]:
                    cell[1] = rank, epoch = current_with_epoch()
            if rank_keys:
                rank = with_overrides(rank, tuple((key, read(instance, args, kwargs)) for key, read in rank_keys))
            if batch_id_of is not None:
                batch_id = batch_id_of(instance, args, kwargs)
            else:
                batch_id = _next_batch_id() if is_batch else previous_batch
            span_id = _next_span_id()
            start_ns = monotonic_ns() + _clock._offset_ns
            mb = microbatch(instance, args, kwargs) if microbatch is not None else None
            size = batch_size(instance, args, kwargs) if batch_size is not None else None
            if attrs is None:
                extra = NO_ATTRS
            elif attr_key is not None:
                extra = {attr_key: attr_read(instance, args, kwargs)}
            else:
                extra = {key: read(instance, args, kwargs) for key, read in attrs}
            calls = calls_of[start_index]
            if calls:
                event = _tuple_new(event_type, (name, level, start_ns, None, rank, mb, batch_id, size, extra,
                                                None, span_id, parent))
                for function, owner in calls:
                    try:
                        function(event)
                    except Exception as exc:
                        count_error(owner, kind, exc)
            cell[0] = (span_id, batch_id if is_batch else previous_batch, rank)
            error = None
            try:
                return wrapped(*args, **kwargs) if kwargs else wrapped(*args)
            except BaseException as exc:
                error = exc
                raise
            finally:
                end_ns = monotonic_ns() + _clock._offset_ns
                cell[0] = top
                calls = calls_of[end_index]
                if calls:
                    event = _tuple_new(event_type, (name, level, start_ns, end_ns, rank, mb, batch_id, size, extra,
                                                    error, span_id, parent))
                    for function, owner in calls:
                        try:
                            function(event)
                        except Exception as exc:
                            count_error(owner, kind, exc)
                error = event = None  # no frame -> exception -> traceback -> frame cycle

        return traced

    def _gen_traced(self) -> Wrapper:
        begin, finish = self.begin, self.finish

        def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            fields = begin(instance, args, kwargs)
            try:
                result = yield from wrapped(*args, **kwargs)
            except GeneratorExit:
                finish(fields, None)
                raise
            except BaseException as exc:
                finish(fields, exc)
                raise
            finish(fields, None)
            return result

        return traced

    def _async_traced(self) -> Wrapper:
        begin, finish = self.begin, self.finish

        async def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            fields = begin(instance, args, kwargs)
            try:
                result = await wrapped(*args, **kwargs)
            except BaseException as exc:
                finish(fields, exc)
                raise
            finish(fields, None)
            return result

        return traced

    def _async_gen_traced(self) -> Wrapper:
        begin, finish = self.begin, self.finish

        async def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            fields = begin(instance, args, kwargs)
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
                finish(fields, error)

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

    wrapt.register_post_import_hook(on_torch, "torch")
