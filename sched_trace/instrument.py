"""Decorators for code you own, ``instrument()`` for code you don't, exact undo.

``instrument("pkg.mod:Class.method", ...)`` wraps the attribute with a wrapt
``FunctionWrapper``; when ``pkg.mod`` is not imported yet, a wrapt post-import hook
patches it the moment it is. ``uninstrument`` puts the original object back (by
identity), or, when another wrapt wrapper was stacked on top of ours, unlinks ours
from the chain and leaves theirs in place.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
import threading
import warnings
from collections.abc import MutableMapping
from typing import Any, Callable, Optional, TypeVar

import wrapt

from .errors import ExtractorError, InstrumentationError, SchedTraceWarning
from .probe import Probe, compiling
from .request_probe import DEFAULT_REQUEST_LEVEL, REQUEST_OPTIONS, RequestProbe, check_options
from .stages import check_level, register_stage

log = logging.getLogger("sched_trace")
# wrapt 2 moved the common base of proxies and function wrappers to BaseObjectProxy.
_PROXY = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STAGE_LEVEL = 2
DEFAULT_BATCH_LEVEL = 1
unresolved: list[str] = []
# Set by `sched-trace run`'s bootstrap: sys.path is not complete before the program
# starts, and the launcher has already checked that every target's package exists.
DEFER_MISSING_MODULES = [False]


def _resolve_qualname(module: str, qualname: str) -> Any:
    """Unpickling helper: the object at ``module:qualname`` as it is now."""
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


class _BoundTraced(wrapt.BoundFunctionWrapper):
    def __reduce_ex__(self, protocol: int) -> Any:
        owner = self._self_instance if self._self_instance is not None else self._self_owner
        return getattr, (owner, self.__name__)


class Traced(wrapt.FunctionWrapper):
    """A traced function: behaves as the original, pickles by reference like it."""

    __bound_function_wrapper__ = _BoundTraced

    def __init__(self, wrapped: Any, wrapper: Any, probe: Probe) -> None:
        super().__init__(wrapped, wrapper)
        self._self_probe = probe

    def __reduce_ex__(self, protocol: int) -> Any:
        return _resolve_qualname, (self.__module__, self.__qualname__)


def _declare(name: str, level: int, kind: str, function: Any, parent: Optional[str], options: dict) -> Any:
    check_level(level, f"level of {kind} {name!r}")
    if kind == "request":
        return RequestProbe(name, level, function, **options)
    register_stage(name, level, parent)
    return Probe(name, level, kind, function, **options)


def stage(
    name: str,
    level: int = DEFAULT_STAGE_LEVEL,
    *,
    parent: Optional[str] = None,
    microbatch: Any = None,
    batch_size: Any = None,
    batch_id: Any = None,
    rank: Optional[dict[str, Any]] = None,
    attrs: Optional[dict[str, Any]] = None,
    requests: Any = None,
) -> Callable[[F], F]:
    """Decorate a function you own as a stage; extractors are checked right here."""
    options = dict(microbatch=microbatch, batch_size=batch_size, batch_id=batch_id,
                   rank=rank, attrs=attrs, requests=requests)

    def decorate(function: F) -> F:
        probe = _declare(name, level, "stage", function, parent, options)
        _watch_torch()
        return Traced(function, probe.wrapper, probe)  # type: ignore[return-value]

    return decorate


def batch(
    name: str,
    level: int = DEFAULT_BATCH_LEVEL,
    *,
    batch_size: Any = None,
    batch_id: Any = None,
    rank: Optional[dict[str, Any]] = None,
    attrs: Optional[dict[str, Any]] = None,
    requests: Any = None,
) -> Callable[[F], F]:
    """Decorate a whole scheduler step; stages inside it inherit its ``batch_id``."""
    options = dict(batch_size=batch_size, batch_id=batch_id, rank=rank, attrs=attrs, requests=requests)

    def decorate(function: F) -> F:
        probe = _declare(name, level, "batch", function, None, options)
        _watch_torch()
        return Traced(function, probe.wrapper, probe)  # type: ignore[return-value]

    return decorate


# --- instrument(): patching code you do not own --------------------------------


_SUBSCRIPT = re.compile(r"^(?P<table>[^\[\]]+)\[\s*(?P<key>[^\[\]]*?)\s*\]$")
_KEY = re.compile(r"^(?:'[^'\\]*'|\"[^\"\\]*\"|-?\d+|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


def parse_target(target: str) -> tuple[str, list[str], Optional[str]]:
    """``(module, attribute path, table key or None)`` of a target string.

    ``pkg.mod:Class.method`` names an attribute; ``pkg.mod:Class.TABLE[KEY]`` names an
    entry of a dispatch table (a dict the library calls through, like DeepSpeed's
    ``PipelineEngine._INSTRUCTION_MAP``). KEY is a name looked up in ``pkg.mod``
    (``schedule.ForwardPass``), a quoted string, or an integer.
    """
    if not isinstance(target, str) or target.count(":") != 1:
        raise InstrumentationError(
            f"target {target!r} must look like 'package.module:Class.method' or "
            "'package.module:function' (module path, one colon, attribute path)"
        )
    module, path = target.split(":")
    key = None
    subscript = _SUBSCRIPT.match(path)
    if subscript is not None:
        path, key = subscript.group("table"), subscript.group("key")
        if not _KEY.match(key):
            raise InstrumentationError(
                f"target {target!r}: table key {key!r} must be a name in {module!r} "
                "(e.g. schedule.ForwardPass), a quoted string or an integer"
            )
    parts = path.split(".")
    if not module or not all(part.isidentifier() for part in parts) or not all(
        piece.isidentifier() for piece in module.split(".")
    ):
        raise InstrumentationError(
            f"target {target!r} is malformed: expected 'package.module:Class.method' "
            "or 'package.module:Class.TABLE[KEY]'"
        )
    return module, parts, key


def split_target(target: str) -> tuple[str, list[str]]:
    module, parts, _ = parse_target(target)
    return module, parts


def _table_key(key: str, module: Any) -> Any:
    """The object a table key names: a literal, or a name looked up in the target module."""
    if key[0] in "'\"":
        return key[1:-1]
    if key.lstrip("-").isdigit():
        return int(key)
    value = module
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _key_label(key: str) -> str:
    return key.strip("'\"").rsplit(".", 1)[-1]


class Handle:
    """One instrumented target. ``uninstrument()`` restores it exactly."""

    def __init__(self, target: str, kind: str, name: str, level: int, options: dict) -> None:
        self.target, self.kind, self.name, self.level = target, kind, name, level
        self.options = options
        self.module, self.path, self.key = parse_target(target)
        self.table_key: Any = None  # the resolved key, for a dispatch-table target
        self.state = "pending"  # pending -> active -> removed; or unresolved
        self.owner: Any = None
        self.original: Any = None
        self.own_attribute = False
        self.proxy: Optional[Traced] = None
        self.probe: Optional[Probe] = None

    @property
    def active(self) -> bool:
        return self.state == "active"

    def signature(self) -> tuple:
        return (self.kind, self.name, self.level, tuple(sorted((k, repr(v)) for k, v in self.options.items())))

    def __repr__(self) -> str:
        return f"<sched_trace.Handle {self.target} {self.kind}={self.name!r} level={self.level} {self.state}>"

    def _lookup(self, module: Any) -> tuple[Any, Any, bool]:
        if self.key is not None:
            return self._lookup_entry(module)
        owner = module
        for part in self.path[:-1]:
            try:
                owner = getattr(owner, part)
            except AttributeError:
                raise self._missing(part, owner) from None
        name = self.path[-1]
        if isinstance(owner, type):
            for klass in owner.__mro__:
                if name in vars(klass):
                    return owner, vars(klass)[name], klass is owner
            raise self._missing(name, owner)
        if not hasattr(owner, name):
            raise self._missing(name, owner)
        return owner, getattr(owner, name), True

    def _lookup_entry(self, module: Any) -> tuple[Any, Any, bool]:
        table = module
        for part in self.path:
            try:
                table = getattr(table, part)
            except AttributeError:
                raise self._missing(part, table) from None
        if not isinstance(table, MutableMapping):
            raise InstrumentationError(
                f"cannot instrument {self.target!r}: {'.'.join(self.path)} is a "
                f"{type(table).__name__}, not a dict-like dispatch table"
            )
        try:
            self.table_key = _table_key(self.key, module)  # type: ignore[arg-type]
        except AttributeError:
            raise InstrumentationError(
                f"cannot instrument {self.target!r}: key {self.key!r} names nothing in module {self.module!r}"
            ) from None
        if self.table_key not in table:
            known = ", ".join(getattr(k, "__name__", repr(k)) for k in list(table)[:12])
            raise InstrumentationError(
                f"cannot instrument {self.target!r}: {'.'.join(self.path)} has no entry "
                f"{self.key!r} (entries: {known}). Check the target against the installed version."
            )
        return table, table[self.table_key], True

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

    def _missing(self, part: str, owner: Any) -> InstrumentationError:
        names = [n for n in dir(owner) if not n.startswith("__")]
        import difflib

        close = difflib.get_close_matches(part, names, n=3)
        hint = f" Close names: {', '.join(close)}." if close else ""
        return InstrumentationError(
            f"cannot instrument {self.target!r}: {getattr(owner, '__name__', owner)!r} has no "
            f"attribute {part!r}.{hint} Check the target against the installed version."
        )

    def apply(self, module: Any) -> None:
        """Patch now (module imported). Raises InstrumentationError if the target is missing."""
        owner, original, own = self._lookup(module)
        function = original.__func__ if isinstance(original, (classmethod, staticmethod)) else original
        if not callable(function):
            raise InstrumentationError(
                f"cannot instrument {self.target!r}: it is a {type(original).__name__}, not a function"
            )
        probe = _declare(self.name, self.level, self.kind, function, self.options.get("parent"),
                         {k: v for k, v in self.options.items() if k != "parent"})
        proxy = Traced(original, probe.wrapper, probe)
        self.owner, self.original, self.own_attribute = owner, original, own
        self._put(proxy)
        self.proxy, self.probe, self.state = proxy, probe, "active"

    def on_import(self, module: Any) -> None:
        if self.state != "pending":
            return
        try:
            self.apply(module)
        except (InstrumentationError, ExtractorError) as exc:  # never raise out of the user's import
            self.state = "unresolved"
            unresolved.append(self.target)
            log.error("%s", exc)
            warnings.warn(str(exc), SchedTraceWarning, stacklevel=2)

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


def _compile(name: str, level: int, kind: str, options: dict) -> Any:
    """Check the extractors' grammar before the target's module is imported."""
    if kind == "request":
        return RequestProbe(name, level, None, **options)
    return Probe(name, level, kind, None, **options)


def instrument(
    target: str,
    stage: Optional[str] = None,
    level: Optional[int] = None,
    *,
    kind: str = "stage",
    parent: Optional[str] = None,
    microbatch: Any = None,
    batch_size: Any = None,
    batch_id: Any = None,
    rank: Optional[dict[str, Any]] = None,
    attrs: Optional[dict[str, Any]] = None,
    requests: Any = None,
    **request: Any,
) -> Handle:
    """Trace ``target`` ("pkg.mod:Class.method") without editing its source.

    ``kind="request"`` reports a request phase at each call instead of a span: it
    takes ``phase``, ``request_id``, ``prompt_tokens``, ``output_tokens``, ``when``,
    ``status`` and ``aborted_statuses`` (see docs/vllm.md). Idempotent: instrumenting
    the same target again with the same options returns the same handle. If the
    module is not imported yet, it is patched on import.
    """
    if kind not in ("stage", "batch", "request"):
        raise InstrumentationError(f"kind must be 'stage', 'batch' or 'request', got {kind!r}")
    module_name, path, key = parse_target(target)
    unknown = sorted(set(request) - set(REQUEST_OPTIONS))
    if unknown:
        raise InstrumentationError(f"instrument({target!r}): unknown option(s) {', '.join(unknown)}")
    options = dict(microbatch=microbatch, batch_size=batch_size, batch_id=batch_id,
                   rank=rank, attrs=attrs, requests=requests, parent=parent, **request)
    check_options(target, kind, options)
    name = stage or (_key_label(key) if key is not None else path[-1])
    default_level = {"batch": DEFAULT_BATCH_LEVEL, "request": DEFAULT_REQUEST_LEVEL}.get(kind, DEFAULT_STAGE_LEVEL)
    level = default_level if level is None else level
    check_level(level, f"level of {target!r}")
    if kind != "stage":
        options.pop("parent")  # a stage's parent in the stage tree; batches and requests have none
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
        module = sys.modules.get(module_name)
        if module is not None:
            handle.apply(module)
        else:
            # Grammar now; whether each root names a parameter once the module is imported.
            _compile(name, level, kind, {k: v for k, v in options.items() if k != "parent"})
            top = module_name.split(".")[0]
            if not DEFER_MISSING_MODULES[0] and importlib.util.find_spec(top) is None:
                raise InstrumentationError(
                    f"cannot instrument {target!r}: no module named {top!r} is installed "
                    f"(check the spelling, or install the package that provides it)"
                )
            wrapt.register_post_import_hook(handle.on_import, module_name)
        _handles[target] = handle
    _watch_torch()
    return handle


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


_torch_watched = False


def _watch_torch() -> None:
    """Once torch is imported, skip tracing while torch.compile traces (no graph breaks)."""
    global _torch_watched
    if _torch_watched:
        return
    _torch_watched = True

    def on_torch(torch: Any) -> None:
        is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
        if callable(is_compiling):
            compiling[0] = is_compiling

    wrapt.register_post_import_hook(on_torch, "torch")
