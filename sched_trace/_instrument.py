"""Decorators for code you own, ``instrument()`` for code you don't, exact undo.

``instrument("pkg.mod:Class.method", ...)`` wraps the attribute with a wrapt
``FunctionWrapper``; when ``pkg.mod`` is not imported yet, a wrapt post-import hook
patches it the moment it is. A plain (not async, not generator) function of a class
is wrapped by a method descriptor instead (``traced_method``: the C ``TracedMethod``, or
a Python function without the extension): the interpreter specializes ``self.method()``
on a method descriptor, not on a wrapt proxy (nor, on 3.11, on a Python function taking
``*args``), and in a real engine a method behind a proxy costs the step several
microseconds more (docs/performance.md, "A function in the class, not a proxy", "A
method descriptor in C"). ``uninstrument`` puts the original object back
(by identity), or, when another wrapt wrapper was stacked on top of ours, unlinks ours
from the chain and leaves theirs in place.

A target whose level (2 or more) is above the configured level is resolved and checked
as any other (a missing attribute or a bad extractor fails at once), but not patched: it
waits, ``dormant``, until the level reaches it (``set_level``, ``configure``), and costs the
scheduler nothing until then, where a patched target above the level costs a call through
its wrapper. Lowering the level leaves patched targets in place. A scheduler that keeps a
bound method it took before the level rose (``self.step_fn = self.step``) goes on calling
the unpatched one, so targets of levels 0 and 1 (engine steps, request phases, the
thread's identity: what turning tracing on must reach) are patched at every level, 0 too.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import sys
import threading
import warnings
from inspect import CO_ASYNC_GENERATOR, CO_COROUTINE, CO_GENERATOR, CO_ITERABLE_COROUTINE
from types import FunctionType, MethodType, WrapperDescriptorType
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

import wrapt

from . import _native, _options
from ._errors import ExtractorError, InstrumentationError, SchedTraceWarning
from ._probe import Probe, watch_torch
from ._rank import ThreadProbe
from ._request_probe import RequestProbe
from ._stages import LEVEL, check_level, level_listeners, register_stage
from ._targets import default_name, lookup, parse_target, resolve_qualname

if TYPE_CHECKING:
    from typing import Unpack  # 3.11+; only type checkers read this, never the runtime

    from ._options import RequestOptions, SpanOptions, ThreadOptions

log = logging.getLogger("sched_trace")
# wrapt 2 moved the common base of proxies and function wrappers to BaseObjectProxy.
_PROXY = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)
F = TypeVar("F", bound=Callable[..., Any])

unresolved: list[str] = []
#: Targets of this level and below are patched whatever the configured level (0 included):
#: turning tracing on at run time must reach the references a scheduler took at start.
ALWAYS_PATCHED = 1
# Set by `sched-trace run`'s bootstrap: sys.path is not complete before the program
# starts, and the launcher has already checked that every target's package exists.
DEFER_MISSING_MODULES = [False]


class _BoundTraced(wrapt.BoundFunctionWrapper):
    def __reduce_ex__(self, protocol: int) -> Any:
        owner = self._self_instance if self._self_instance is not None else self._self_owner
        return getattr, (owner, self.__name__)

    def __deepcopy__(self, memo: dict) -> Any:  # as a bound method copies: bound to the copy
        owner = self._self_instance if self._self_instance is not None else self._self_owner
        return getattr(copy.deepcopy(owner, memo), self.__name__)


def _function_wrapper() -> type:
    """wrapt's FunctionWrapper, or its C subclass that binds a traced method cheaply.

    With the C extension (and wrapt's own C wrappers), ``obj.method`` of a traced plain
    function is an ordinary bound method of a ``TracedMethod`` instead of a wrapt
    BoundFunctionWrapper (sched_trace/_binding.c): the same call reaches the same
    probe, for a fraction of wrapt's binding cost. Each Traced chooses when it is made
    (``_native.speedups``); without the C form, wrapt binds as always.
    """
    base = wrapt.FunctionWrapper
    speedups = _native.speedups
    if speedups is None or not hasattr(speedups, "fast_binding") or not isinstance(base.__get__,
                                                                                    WrapperDescriptorType):
        return base  # wrapt's own pure-Python wrappers (WRAPT_DISABLE_EXTENSIONS) define __get__ in Python
    return speedups.fast_binding(base)


class Traced(_function_wrapper()):  # type: ignore[misc]
    """A traced function: behaves as the original, pickles by reference like it."""

    __bound_function_wrapper__ = _BoundTraced

    def __init__(self, wrapped: Any, wrapper: Any, probe: Any) -> None:
        super().__init__(wrapped, wrapper)
        self._self_probe = probe
        speedups = _native.speedups
        if BINDS_IN_C and speedups is not None and type(wrapped) is FunctionType:
            self._self_method = speedups.TracedMethod(wrapped, wrapper)

    def __reduce_ex__(self, protocol: int) -> Any:
        return resolve_qualname, (self.__module__, self.__qualname__)


#: Whether ``obj.method`` can be bound in C here (the extension built, wrapt's C wrappers).
BINDS_IN_C = Traced.__base__ is not wrapt.FunctionWrapper

_NOT_PLAIN = CO_COROUTINE | CO_GENERATOR | CO_ASYNC_GENERATOR | CO_ITERABLE_COROUTINE


def method_form(owner: Any, original: Any, table_key: Any) -> bool:
    """Whether a target is wrapped by traced_method (not a wrapt proxy): a plain function
    in a class's own namespace or a base's, not a coroutine or generator function (which
    callers recognise by their code's flags, as wrapt's proxy forwards them)."""
    return (table_key is None and isinstance(owner, type) and type(original) is FunctionType
            and not original.__code__.co_flags & _NOT_PLAIN)


def traced_method(original: FunctionType, wrapper: Any) -> Any:
    """What stands in a class for ``original``: ``obj.method(*args)`` calls
    ``wrapper(original bound to obj, obj, args, kwargs)``, what wrapt's binding passes.

    With the C extension, a ``TracedMethod`` (sched_trace/_binding.c): a method descriptor
    as a function is, so the interpreter's specialized ``self.method()`` loads it without
    binding and calls it with the instance first, and it calls its probe with the call's
    own arguments (a shut gate calls the original with them, making nothing). Without
    it, a plain Python function (:func:`python_method`), which 3.11 does not specialize
    (it takes ``*args``). Either answers as the original does (name, qualified name,
    module, docstring, attributes, ``__wrapped__`` and so ``inspect.signature``), pickles
    by reference as it does, and sits under another wrapt wrapper as it would.
    """
    speedups = _native.speedups
    if speedups is not None and hasattr(speedups, "TracedMethod"):
        return speedups.TracedMethod(original, wrapper)
    return python_method(original, wrapper)


def python_method(original: FunctionType, wrapper: Any) -> FunctionType:
    """traced_method in pure Python: a plain function in the class, whose ``__code__`` is
    its own (what ``inspect.getfullargspec``, which does not follow ``__wrapped__``, reads)."""
    bind = MethodType

    def method(instance: Any, /, *args: Any, **kwargs: Any) -> Any:
        return wrapper(bind(original, instance), instance, args, kwargs)

    functools.update_wrapper(method, original)
    # torch.compile traces the original in its place (what the probe does while torch
    # compiles: no span, no graph break); torch's own convention for a function's stand-in.
    method._torchdynamo_inline = original  # type: ignore[attr-defined]
    return method


def _declare(name: str, level: int, kind: str, function: Any, options: dict, where: str) -> Any:
    """Compile a declaration against its function: the probe whose wrapper is installed.

    An extractor or condition that does not fit the function raises ExtractorError
    naming ``where`` (the target, or the decorated stage), the option and the fix.
    """
    check_level(level, f"level of {kind} {name!r}")
    try:
        return _compile(name, level, kind, function, options)
    except ExtractorError as exc:
        raise ExtractorError(f"{where}: {exc}") from None


def _compile(name: str, level: int, kind: str, function: Any, options: dict) -> Any:
    options = dict(options)
    parent = options.pop("parent", None)
    if kind == "request":
        return RequestProbe(name, level, function, options)
    if kind == "thread":
        return ThreadProbe(name, level, function, options)
    register_stage(name, level, parent)
    return Probe(name, level, kind, function, options)


def _decorator(name: str, level: int, kind: str, options: dict) -> Callable[[F], F]:
    _options.check(f"@{kind}({name!r})", kind, options)

    def decorate(function: F) -> F:
        probe = _declare(name, level, kind, function, options, f"@{kind}({name!r}) on {function.__qualname__}")
        watch_torch()
        return Traced(function, probe.wrapper, probe)  # type: ignore[return-value]

    return decorate


def stage(name: str, level: int = _options.DEFAULT_LEVEL["stage"],
          **options: "Unpack[SpanOptions]") -> Callable[[F], F]:
    """Decorate a function you own as a stage; extractors are checked right here.

    Options (docs/instrument.md): ``parent``, ``microbatch``, ``batch_size``,
    ``batch_id``, ``requests``, ``rank``, ``attrs``.
    """
    return _decorator(name, level, "stage", options)


def batch(name: str, level: int = _options.DEFAULT_LEVEL["batch"],
          **options: "Unpack[SpanOptions]") -> Callable[[F], F]:
    """Decorate a whole scheduler step; stages inside it inherit its ``batch_id``.

    Options: those of :func:`stage` but ``parent``.
    """
    return _decorator(name, level, "batch", options)


# --- instrument(): patching code you do not own --------------------------------


class Handle:
    """One instrumented target. ``uninstrument()`` restores it exactly."""

    def __init__(self, target: str, kind: str, name: str, level: int, options: dict) -> None:
        self.target, self.kind, self.name, self.level = target, kind, name, level
        self.options = options
        self.module, self.path, self.key = parse_target(target)
        self.table_key: Any = None  # the resolved key, for a dispatch-table target
        self.state = "pending"  # pending -> [dormant ->] active -> removed; or unresolved
        self._module: Any = None  # what apply() resolved the target in, for a dormant one's patch
        self.owner: Any = None
        self.original: Any = None
        self.own_attribute = False
        self.proxy: Any = None  # what is patched in: a Traced, or what traced_method made
        self.probe: Any = None

    @property
    def active(self) -> bool:
        return self.state == "active"

    def signature(self) -> tuple:
        return (self.kind, self.name, self.level, tuple(sorted((k, repr(v)) for k, v in self.options.items())))

    def __repr__(self) -> str:
        return f"<sched_trace.Handle {self.target} {self.kind}={self.name!r} level={self.level} {self.state}>"

    def _current(self) -> Any:
        if self.key is not None:
            return self.owner.get(self.table_key)
        name = self.path[-1]
        return vars(self.owner).get(name) if isinstance(self.owner, type) else getattr(self.owner, name, None)

    def _put(self, value: Any) -> None:
        if self.key is not None:
            self.owner[self.table_key] = value
        else:
            setattr(self.owner, self.path[-1], value)

    def apply(self, module: Any) -> None:
        """Patch now (module imported). Raises InstrumentationError if the target is missing."""
        owner, original, own, table_key = lookup(self.target, module)
        function = original.__func__ if isinstance(original, (classmethod, staticmethod)) else original
        if not callable(function):
            raise InstrumentationError(
                f"cannot instrument {self.target!r}: it is a {type(original).__name__}, not a function"
            )
        probe = _declare(self.name, self.level, self.kind, function, self.options, repr(self.target))
        proxy = (traced_method(original, probe.wrapper) if method_form(owner, original, table_key)
                 else Traced(original, probe.wrapper, probe))
        self.owner, self.original, self.own_attribute, self.table_key = owner, original, own, table_key
        self.proxy, self.probe, self._module = proxy, probe, module
        if self.level > max(LEVEL.configured, ALWAYS_PATCHED):
            self.state = "dormant"  # checked, patched when the level reaches it (wake)
            return
        self._put(proxy)
        self.state = "active"

    def wake(self) -> None:
        """Patch a dormant target now that the level reaches it: the proxy made when it was
        resolved, or, where the attribute changed meanwhile, a new resolution of it."""
        if self.state != "dormant":
            return
        current = self._current()
        if current is (self.original if self.own_attribute or self.key is not None else None):
            self._put(self.proxy)
            self.state = "active"
            return
        self._apply_or_report(self._module)  # never raise out of set_level

    def on_import(self, module: Any) -> None:
        if self.state == "pending":
            self._apply_or_report(module)  # never raise out of the user's import

    def _apply_or_report(self, module: Any) -> None:
        """apply(), where a failure is logged, warned about and counted as unresolved, not raised."""
        try:
            self.apply(module)
        except (InstrumentationError, ExtractorError) as exc:
            self.state = "unresolved"
            unresolved.append(self.target)
            log.error("%s", exc)
            warnings.warn(str(exc), SchedTraceWarning, stacklevel=3)

    def uninstrument(self) -> None:
        """Restore the original object; a no-op when already removed."""
        with _lock:
            _handles.pop(self.target, None)
            if self.state != "active":
                self.state = "removed"
                return
            self.state = "removed"
            current = self._current()
            if current is self.proxy:
                if self.own_attribute:
                    self._put(self.original)
                else:
                    delattr(self.owner, self.path[-1])
                return
            # Someone wrapped our proxy: unlink ours from their chain, keep theirs.
            outer = current
            while isinstance(outer, _PROXY):
                inner = object.__getattribute__(outer, "__wrapped__")
                if inner is self.proxy:
                    outer.__wrapped__ = self.original
                    return
                outer = inner
            log.warning("sched-trace: %s was replaced by someone else; left as it is", self.target)


_handles: dict[str, Handle] = {}
_lock = threading.RLock()


def _follow_level(level: int) -> None:
    """Patch the dormant targets the configured level now reaches."""
    with _lock:
        for handle in list(_handles.values()):
            if handle.level <= level:
                handle.wake()  # a no-op unless dormant


level_listeners.append(_follow_level)


def instrument(
    target: str,
    stage: Optional[str] = None,
    level: Optional[int] = None,
    *,
    kind: str = "stage",
    **options: "Unpack[Union[SpanOptions, RequestOptions, ThreadOptions]]",
) -> Handle:
    """Trace ``target`` ("pkg.mod:Class.method") without editing its source.

    ``kind`` is ``"stage"`` (default) or ``"batch"`` for a span per call;
    ``"request"`` reports a phase of a request's life at each call (docs/vllm.md);
    ``"thread"`` sets the calling thread's label and ranks after each call, from
    ``thread_label`` and ``rank`` (e.g. on ``Scheduler.__init__``). The options of
    each kind are the TypedDicts of ``sched_trace._options`` (docs/instrument.md).
    Idempotent: instrumenting the same target again with the same options returns
    the same handle. If the module is not imported yet, it is patched on import.
    """
    parse_target(target)
    _options.check(target, kind, options)
    name = stage or default_name(target)
    level = _options.DEFAULT_LEVEL[kind] if level is None else level
    check_level(level, f"level of {target!r}")
    options = {k: v for k, v in options.items() if v is not None}
    with _lock:
        known = _handles.get(target)
        handle = Handle(target, kind, name, level, options)
        if known is not None:
            if known.signature() == handle.signature():
                return known
            raise InstrumentationError(
                f"{target!r} is already instrumented as {known.kind} {known.name!r} level "
                f"{known.level} with other options; call uninstrument({target!r}) first"
            )
        _patch_now_or_on_import(handle)
        _handles[target] = handle
    watch_torch()
    return handle


def _patch_now_or_on_import(handle: Handle) -> None:
    module = sys.modules.get(handle.module)
    if module is not None:
        handle.apply(module)
        return
    # Grammar now; whether each root names a parameter once the module is imported.
    try:
        _options.check_grammar(handle.options)
    except ExtractorError as exc:
        raise ExtractorError(f"{handle.target!r}: {exc}") from None
    top = handle.module.split(".")[0]
    if not DEFER_MISSING_MODULES[0] and importlib.util.find_spec(top) is None:
        raise InstrumentationError(
            f"cannot instrument {handle.target!r}: no module named {top!r} is installed "
            f"(check the spelling, or install the package that provides it)"
        )
    wrapt.register_post_import_hook(handle.on_import, handle.module)


def uninstrument(target: "str | Handle | None" = None) -> None:
    """Undo one target (a name or a Handle), or every instrumentation when None."""
    if isinstance(target, Handle):
        target.uninstrument()
        return
    with _lock:
        handles = list(_handles.values()) if target is None else [_handles.get(target)]
    for handle in handles:
        if handle is not None:
            handle.uninstrument()


def handles() -> list[Handle]:
    with _lock:
        return list(_handles.values())
