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
from .events import NO_ATTRS, BatchEvent, RankInfo, StageEvent
from .plugins import get_manager
from .stages import LEVEL

_next_span_id = itertools.count(1).__next__
_next_batch_id = itertools.count(1).__next__
_tuple_new = tuple.__new__


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.parent = 0  # span id of the innermost running stage or batch
        self.batch_id: Optional[int] = None
        self.rank: Optional[RankInfo] = None  # rank of that span: nested spans inherit its keys


_tls = _ThreadState()
# Set to torch.compiler.is_compiling once torch is imported (see instrument.py).
compiling: list[Optional[Callable[[], bool]]] = [None]


class Probe:
    """A compiled declaration: name, level, kind and extractors."""

    __slots__ = (
        "name", "level", "kind", "microbatch", "batch_size", "batch_id", "rank_keys",
        "attrs", "event_type", "start_calls", "end_calls", "wrapper", "is_batch",
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
        self.start_calls = "batch_start" if self.is_batch else "stage_start"
        self.end_calls = "batch_end" if self.is_batch else "stage_end"
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
        tls = _tls
        # A span without rank keys of its own (a P2P wait inside a pipeline step) is
        # attributed to the rank of the span it runs in.
        enclosing = tls.rank
        rank = enclosing if enclosing is not None else _rank.current()
        if self.rank_keys:
            rank = _rank.with_overrides(
                rank, tuple((key, read(instance, args, kwargs)) for key, read in self.rank_keys)
            )
        previous_batch = tls.batch_id
        if self.batch_id is not None:
            batch_id = self.batch_id(instance, args, kwargs)
        else:
            batch_id = _next_batch_id() if self.is_batch else previous_batch
        span_id = _next_span_id()
        parent = tls.parent
        start = _tuple_new(self.event_type, (
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
        ))
        manager = get_manager()
        calls = getattr(manager, self.start_calls)
        if calls:
            manager.fire(calls, start)
        if nest:
            tls.parent = span_id
            tls.rank = rank
            if self.is_batch:
                tls.batch_id = batch_id
        return start, parent, previous_batch, enclosing

    def finish(self, token: tuple, error: Optional[BaseException], nest: bool) -> None:
        end_ns = monotonic_ns() + clock._offset_ns
        start, parent, previous_batch, enclosing = token
        if nest:
            tls = _tls
            tls.parent = parent
            tls.rank = enclosing
            if self.is_batch:
                tls.batch_id = previous_batch
        manager = get_manager()
        calls = getattr(manager, self.end_calls)
        if calls:
            manager.fire(calls, _tuple_new(self.event_type, start[:3] + (end_ns,) + start[4:9] + (error,) + start[10:]))

    # --- wrappers -------------------------------------------------------------

    def _sync_wrapper(self) -> Callable[..., Any]:
        level, begin, finish = self.level, self.begin, self.finish

        def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            if level > LEVEL.active or (compiling[0] is not None and compiling[0]()):
                return wrapped(*args, **kwargs)
            token = begin(instance, args, kwargs, True)
            try:
                result = wrapped(*args, **kwargs)
            except BaseException as exc:
                finish(token, exc, True)
                raise
            finish(token, None, True)
            return result

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
