"""The hot path: what runs on every call of an instrumented function.

A ``Probe`` is compiled once per declaration (stage or batch, level, extractors).
Its ``wrapper`` has wrapt's ``(wrapped, instance, args, kwargs)`` signature and
costs one comparison when its level is off; when on, it reads the clock twice,
builds two small tuples and hands them to the cached plugin call lists.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from time import monotonic_ns
from typing import Any, Callable, Optional

from . import clock, extract, rank as _rank
from .events import NO_ATTRS, BatchEvent, StageEvent
from .plugins import BATCH_END, BATCH_START, STAGE_END, STAGE_START, get_manager
from .stages import LEVEL

_next_span_id = itertools.count(1).__next__
_next_batch_id = itertools.count(1).__next__
_tuple_new = tuple.__new__


#: (span id, batch id, rank) outside any span: no parent, no batch, the thread's own rank.
_ROOT: tuple = (0, None, None)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        # top[0]: (span id, batch id, rank) of the innermost running stage or batch on
        # this thread; nested spans inherit its batch id and rank. top[1]: the thread's
        # own rank, cached while rank.epoch is unchanged. A list, so a span costs one
        # thread-local read; the writes are list stores.
        self.top: list = [_ROOT, (None, -1)]  # [1]: (this thread's RankInfo, rank.epoch)


_tls = _ThreadState()
# Set to torch.compiler.is_compiling once torch is imported (see instrument.py).
compiling: list[Optional[Callable[[], bool]]] = [None]


class Probe:
    """A compiled declaration: name, level, kind and extractors."""

    __slots__ = (
        "name", "level", "kind", "microbatch", "batch_size", "batch_id", "rank_keys",
        "attrs", "event_type", "start_index", "end_index", "wrapper", "is_batch", "manager",
    )

    def __init__(
        self,
        name: str,
        level: int,
        kind: str,
        function: Optional[Callable[..., Any]],
        *,
        microbatch: Any = None,
        batch_size: Any = None,
        batch_id: Any = None,
        rank: Any = None,
        attrs: Any = None,
        requests: Any = None,
    ) -> None:
        params = extract.Parameters(function)
        self.name, self.level, self.kind = name, level, kind
        self.is_batch = kind == "batch"
        self.event_type = BatchEvent if self.is_batch else StageEvent
        self.start_index = BATCH_START if self.is_batch else STAGE_START
        self.end_index = BATCH_END if self.is_batch else STAGE_END
        self.manager = get_manager()
        self.microbatch = extract.parse(microbatch, "microbatch", params)
        self.batch_size = extract.parse(batch_size, "batch_size", params)
        self.batch_id = extract.parse(batch_id, "batch_id", params)
        self.rank_keys = extract.parse_mapping(rank, "rank", params)
        attr_specs = dict(attrs or {})
        if requests is not None:
            attr_specs["requests"] = requests
        self.attrs = extract.parse_mapping(attr_specs or None, "attrs", params)
        self.wrapper = self._make_wrapper(function)

    def _make_wrapper(self, function: Optional[Callable[..., Any]]) -> Callable[..., Any]:
        target = inspect.unwrap(function) if function is not None else None
        if isinstance(target, (classmethod, staticmethod)):
            target = target.__func__
        if inspect.isasyncgenfunction(target):
            return self._async_gen_wrapper()
        if inspect.iscoroutinefunction(target):
            return self._async_wrapper()
        if inspect.isgeneratorfunction(target):
            return self._gen_wrapper()
        return self._sync_wrapper()

    # --- begin/finish: shared by every wrapper kind --------------------------

    def begin(self, instance: Any, args: tuple, kwargs: dict, nest: bool) -> tuple:
        cell = _tls.top
        top = cell[0]
        parent, previous_batch, enclosing = top
        # A span without rank keys of its own (a P2P wait inside a pipeline step) is
        # attributed to the rank of the span it runs in.
        rank = enclosing if enclosing is not None else _rank.current()
        if self.rank_keys:
            rank = _rank.with_overrides(
                rank, tuple((key, read(instance, args, kwargs)) for key, read in self.rank_keys)
            )
        if self.batch_id is not None:
            batch_id = self.batch_id(instance, args, kwargs)
        else:
            batch_id = _next_batch_id() if self.is_batch else previous_batch
        span_id = _next_span_id()
        fields = (
            self.name,
            self.level,
            monotonic_ns() + clock._offset_ns,
            None,
            rank,
            self.microbatch(instance, args, kwargs) if self.microbatch is not None else None,
            batch_id,
            self.batch_size(instance, args, kwargs) if self.batch_size is not None else None,
            {key: read(instance, args, kwargs) for key, read in self.attrs} if self.attrs else NO_ATTRS,
            None,
            span_id,
            parent,
        )
        calls = self.manager.event_calls[self.start_index]
        if calls:
            self.manager.fire(calls, _tuple_new(self.event_type, fields))
        if nest:
            cell[0] = (span_id, batch_id if self.is_batch else previous_batch, rank)
        return fields, cell, top

    def finish(self, token: tuple, error: Optional[BaseException], nest: bool) -> None:
        end_ns = monotonic_ns() + clock._offset_ns
        fields, cell, top = token
        if nest:
            cell[0] = top
        calls = self.manager.event_calls[self.end_index]
        if calls:
            self.manager.fire(calls, _tuple_new(self.event_type, fields[:3] + (end_ns,) + fields[4:9] + (error,) + fields[10:]))

    # --- wrappers -------------------------------------------------------------

    def _sync_wrapper(self) -> Callable[..., Any]:
        """begin/finish inlined into ``traced``: that closure is the whole enabled hot path."""
        name, level, kind, is_batch, event_type = self.name, self.level, self.kind, self.is_batch, self.event_type
        microbatch, batch_size, batch_id_of, rank_keys = self.microbatch, self.batch_size, self.batch_id, self.rank_keys
        attrs = self.attrs or None
        # One attribute (usually ``requests``) is the common case: no loop, no comprehension frame.
        attr_key, attr_read = self.attrs[0] if len(self.attrs) == 1 else (None, None)
        calls_of, start_index, end_index = self.manager.event_calls, self.start_index, self.end_index
        count_error, tls, active = self.manager._count_error, _tls, LEVEL
        current_with_epoch, rank_epoch = _rank.current_with_epoch, _rank.epoch

        def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            # Kept tiny: a frame's cost grows with its local variables, and this one
            # must stay as cheap as a plain wrapt passthrough when the level is off.
            if level > active.active or (compiling[0] is not None and compiling[0]()):
                # Without keywords, skip unpacking an empty dict: ~4% of this path.
                return wrapped(*args, **kwargs) if kwargs else wrapped(*args)
            return traced(wrapped, instance, args, kwargs)

        def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            cell = tls.top
            top = cell[0]
            parent, previous_batch, rank = top
            if rank is None:
                rank, epoch = cell[1]
                if epoch != rank_epoch[0]:
                    cell[1] = rank, epoch = current_with_epoch()
            if rank_keys:
                rank = _rank.with_overrides(rank, tuple((key, read(instance, args, kwargs)) for key, read in rank_keys))
            if batch_id_of is not None:
                batch_id = batch_id_of(instance, args, kwargs)
            else:
                batch_id = _next_batch_id() if is_batch else previous_batch
            span_id = _next_span_id()
            start_ns = monotonic_ns() + clock._offset_ns
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
                end_ns = monotonic_ns() + clock._offset_ns
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

        return wrapper

    def _gen_wrapper(self) -> Callable[..., Any]:
        level, begin, finish = self.level, self.begin, self.finish

        def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            token = begin(instance, args, kwargs, False)
            try:
                result = yield from wrapped(*args, **kwargs)
            except GeneratorExit:
                finish(token, None, False)
                raise
            except BaseException as exc:
                finish(token, exc, False)
                raise
            finish(token, None, False)
            return result

        def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            if level > LEVEL.active:
                return wrapped(*args, **kwargs)
            return traced(wrapped, instance, args, kwargs)

        return wrapper

    def _async_wrapper(self) -> Callable[..., Any]:
        level, begin, finish = self.level, self.begin, self.finish

        async def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            token = begin(instance, args, kwargs, False)
            try:
                result = await wrapped(*args, **kwargs)
            except BaseException as exc:
                finish(token, exc, False)
                raise
            finish(token, None, False)
            return result

        def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            if level > LEVEL.active:
                return wrapped(*args, **kwargs)
            return traced(wrapped, instance, args, kwargs)

        return wrapper

    def _async_gen_wrapper(self) -> Callable[..., Any]:
        level, begin, finish = self.level, self.begin, self.finish

        async def traced(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            token = begin(instance, args, kwargs, False)
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
                finish(token, error, False)

        def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            if level > LEVEL.active:
                return wrapped(*args, **kwargs)
            return traced(wrapped, instance, args, kwargs)

        return wrapper
