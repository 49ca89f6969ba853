"""Target strings: ``"pkg.mod:Class.method"`` parsed, and looked up on an imported module.

A leaf: it imports nothing of sched-trace but its errors, so configuration checks
(``config``, ``profile_check``, ``sched-trace run``) read targets without pulling in
the instrumentation.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import MutableMapping
from typing import Any, NamedTuple, Optional

from ._errors import InstrumentationError

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


def default_name(target: str) -> str:
    """The stage name a target gets when none is given: its attribute (or table key) name."""
    _, path, key = parse_target(target)
    return key.strip("'\"").rsplit(".", 1)[-1] if key is not None else path[-1]


class Found(NamedTuple):
    """Where a target lives on an imported module, and what is there now."""

    owner: Any  # the class, module or dispatch table holding it
    original: Any  # the object found (a function, classmethod, staticmethod ...)
    own: bool  # defined on ``owner`` itself, not inherited from a base class
    table_key: Any  # the resolved key, for a dispatch-table target; else None


def lookup(target: str, module: Any) -> Found:
    """Find ``target`` on its imported ``module``; InstrumentationError naming close names if absent."""
    _, path, key = parse_target(target)
    if key is not None:
        return _lookup_entry(target, module, path, key)
    owner = module
    for part in path[:-1]:
        try:
            owner = getattr(owner, part)
        except AttributeError:
            raise _missing(target, part, owner) from None
    name = path[-1]
    if isinstance(owner, type):
        for klass in owner.__mro__:
            if name in vars(klass):
                return Found(owner, vars(klass)[name], klass is owner, None)
        raise _missing(target, name, owner)
    if not hasattr(owner, name):
        raise _missing(target, name, owner)
    return Found(owner, getattr(owner, name), True, None)


def _lookup_entry(target: str, module: Any, path: list[str], key: str) -> Found:
    table = module
    for part in path:
        try:
            table = getattr(table, part)
        except AttributeError:
            raise _missing(target, part, table) from None
    if not isinstance(table, MutableMapping):
        raise InstrumentationError(
            f"cannot instrument {target!r}: {'.'.join(path)} is a "
            f"{type(table).__name__}, not a dict-like dispatch table"
        )
    try:
        table_key = _table_key(key, module)
    except AttributeError:
        raise InstrumentationError(
            f"cannot instrument {target!r}: key {key!r} names nothing in module {module.__name__!r}"
        ) from None
    if table_key not in table:
        known = ", ".join(getattr(k, "__name__", repr(k)) for k in list(table)[:12])
        raise InstrumentationError(
            f"cannot instrument {target!r}: {'.'.join(path)} has no entry "
            f"{key!r} (entries: {known}). Check the target against the installed version."
        )
    return Found(table, table[table_key], True, table_key)


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


def _missing(target: str, part: str, owner: Any) -> InstrumentationError:
    names = [n for n in dir(owner) if not n.startswith("__")]
    close = difflib.get_close_matches(part, names, n=3)
    hint = f" Close names: {', '.join(close)}." if close else ""
    return InstrumentationError(
        f"cannot instrument {target!r}: {getattr(owner, '__name__', owner)!r} has no "
        f"attribute {part!r}.{hint} Check the target against the installed version."
    )


def resolve_qualname(module: str, qualname: str) -> Any:
    """Unpickling helper: the object at ``module:qualname`` as it is now."""
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target
