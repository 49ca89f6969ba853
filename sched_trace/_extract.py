"""Extractors: how a wrapped call's arguments become micro-batch ids, sizes and ranks.

The grammar, parsed once when instrumentation is declared and never eval'd::

    extractor := path | "len(" path ")"
    path      := root ("." attribute)* [".__class__.__name__" | ".__class__.__qualname__"]
    root      := a parameter name of the wrapped function | "self"
    attribute := a name not starting with "__" (dunders reach interpreter internals)

or a callable ``(instance, args, kwargs) -> value``. Conditions (``when=``,
``keep_if=``, ``"EXPR if CONDITION"`` attributes) build on it: see ``_conditions``.
At call time a value that cannot be read (missing attribute, ``None`` on the way)
becomes ``None`` and is counted in ``sched_trace.stats()['extract_missing']``; it
never raises into the scheduler.
"""

from __future__ import annotations

import difflib
import inspect
import keyword
import logging
import operator
import re
from collections import Counter
from typing import Any, Callable, Optional

from ._errors import ExtractorError

log = logging.getLogger("sched_trace")

Extractor = Callable[[Any, tuple, dict], Any]
#: The only dunder steps allowed, and only as a path's last two: the value's type name.
TYPE_NAME_STEPS = (("__class__", "__name__"), ("__class__", "__qualname__"))
missing: Counter[str] = Counter()
_logged: set[str] = set()

_GRAMMAR = re.compile(
    r"^\s*(?:(len)\(\s*(?P<inner>[A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*\)"
    r"|(?P<plain>[A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*))\s*$"
)
_HELP = (
    "an extractor is a parameter name or 'self', then attribute steps, optionally inside "
    "len(...): e.g. 'mb_id', 'self.stage_index', 'len(batch.reqs)'; or a callable "
    "(instance, args, kwargs) -> value"
)


class Parameters:
    """Where each named parameter of a function sits in ``args``.

    When wrapt reports an instance (a bound method or classmethod), ``args`` lacks
    the first parameter, so positions shift by one.
    """

    def __init__(self, function: Optional[Callable[..., Any]]) -> None:
        self.known = function is not None
        self.names: list[str] = []
        self.position: dict[str, int] = {}
        self.defaults: dict[str, Any] = {}
        self.var_keyword = False
        if function is None:
            return
        try:
            signature = inspect.signature(function, follow_wrapped=True)
        except (TypeError, ValueError):
            self.known = False
            return
        for index, param in enumerate(signature.parameters.values()):
            if param.kind is param.VAR_KEYWORD:
                self.var_keyword = True
                continue
            if param.kind is param.VAR_POSITIONAL:
                continue
            self.names.append(param.name)
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                self.position[param.name] = index
            if param.default is not param.empty:
                self.defaults[param.name] = param.default

    def check(self, name: str, what: str, spec: str) -> None:
        if not self.known or name in self.names or self.var_keyword:
            return
        close = difflib.get_close_matches(name, self.names, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ExtractorError(
            f"{what}={spec!r}: {name!r} is not a parameter of the wrapped function "
            f"(parameters: {', '.join(self.names) or 'none'}).{hint}"
        )


def parse(spec: Any, what: str, params: Parameters) -> Optional[Extractor]:
    """Compile ``spec`` into ``(instance, args, kwargs) -> value``; raise if malformed."""
    if spec is None:
        return None
    if callable(spec):
        return _from_callable(spec, what)
    if not isinstance(spec, str):
        raise ExtractorError(f"{what}={spec!r} is not an extractor: {_HELP}")
    match = _GRAMMAR.match(spec)
    if match is None:
        raise ExtractorError(f"{what}={spec!r} is malformed: {_HELP}")
    path = match.group("inner") or match.group("plain")
    steps = [step.strip() for step in path.split(".")]
    _check_steps(steps, what, spec)
    root, attributes = steps[0], steps[1:]
    if root != "self":
        params.check(root, what, spec)
    read_root = _root_reader(root, params)
    getter = operator.attrgetter(".".join(attributes)) if attributes else None
    use_len = match.group(1) is not None
    label = f"{what}={spec!r}"

    def slow(instance: Any, args: tuple, kwargs: dict) -> Any:
        """Any call shape: keywords, defaults; an unreadable value is counted, never raised."""
        try:
            value = read_root(instance, args, kwargs)
            if getter is not None:
                value = getter(value)
            return len(value) if use_len else value
        except Exception:
            _count_missing(label)
            return None

    extract = _fast(root, params, getter, use_len, slow)
    extract.spec = spec  # type: ignore[attr-defined]
    extract.plan = _plan(root, params, attributes, use_len)  # type: ignore[attr-defined]
    extract.inline = _inline(extract.plan)  # type: ignore[attr-defined]
    return extract


def _plan(root: str, params: Parameters, attributes: list[str], use_len: bool) -> Optional[tuple]:
    """Where the extractor's fast path reads: ``(position, bound, steps, use_len)``, the
    root's index in ``args`` called unbound and bound (``position`` None: the instance),
    the attribute steps, whether to take ``len``; None for shapes whose fast path does
    not raise. ``_speedups`` follows it; :func:`_inline` writes it as an expression."""
    if not all(step.isascii() and step.isidentifier() for step in attributes):
        return None  # source text normalises non-ASCII names (NFKC): getattr reads them as written
    if root == "self":
        return (None, 0, tuple(attributes), use_len) if attributes else None
    position = params.position.get(root)
    if position is None:
        return None
    # Bound, args lack the first parameter: a root that *is* it is out of reach (a far index).
    return position, position - 1 if position else 1 << 30, tuple(attributes), use_len


def _inline(plan: Optional[tuple]) -> Optional[str]:
    """The extractor's fast path as a Python expression over ``instance`` and ``args`` that
    raises where the fast path would fall back (``_hotpath`` writes it into the probe's
    traced function, with the extractor itself as the fallback); None without a plan.
    Made only of checked names (``_check_steps``), never user text."""
    if plan is None:
        return None
    position, bound, attributes, use_len = plan
    base = "instance" if position is None else f"args[{position} if instance is None else {bound}]"
    expression = base + "".join(f".{step}" for step in attributes)
    return f"len({expression})" if use_len else expression


# long: one small closure per shape of extractor, each a handful of instructions per call
def _fast(root: str, params: Parameters, getter: Any, use_len: bool, slow: Extractor) -> Extractor:
    """The extractor for the usual call: the root passed positionally (or ``self``), read in
    place by a closure of a few instructions; anything else falls back to ``slow``.

    A small closure on purpose: the hot path calls each extractor once per event, and a
    frame's cost grows with its variables (benchmarks/bench_instructions.py).
    """
    if root == "self":
        if getter is None:
            return lambda instance, args, kwargs: instance if instance is not None else slow(instance, args, kwargs)
        if use_len:
            def extract(instance: Any, args: tuple, kwargs: dict) -> Any:
                try:
                    return len(getter(instance))
                except Exception:  # no instance, or unreadable: the slow path says which
                    return slow(instance, args, kwargs)
        else:
            def extract(instance: Any, args: tuple, kwargs: dict) -> Any:
                try:
                    return getter(instance)
                except Exception:
                    return slow(instance, args, kwargs)
        return extract
    position = params.position.get(root)
    if position is None:
        return slow
    # Bound (a method or classmethod called on its instance or class): args lack the first
    # parameter. A root that *is* the first parameter cannot be read then: a far index
    # sends it to the slow path.
    bound = position - 1 if position else 1 << 30
    if getter is None and not use_len:
        def extract(instance: Any, args: tuple, kwargs: dict) -> Any:
            try:
                return args[position if instance is None else bound]
            except IndexError:  # passed by keyword, or left to its default
                return slow(instance, args, kwargs)
    elif getter is None:
        def extract(instance: Any, args: tuple, kwargs: dict) -> Any:
            try:
                return len(args[position if instance is None else bound])
            except Exception:
                return slow(instance, args, kwargs)
    elif use_len:
        def extract(instance: Any, args: tuple, kwargs: dict) -> Any:
            try:
                return len(getter(args[position if instance is None else bound]))
            except Exception:
                return slow(instance, args, kwargs)
    else:
        def extract(instance: Any, args: tuple, kwargs: dict) -> Any:
            try:
                return getter(args[position if instance is None else bound])
            except Exception:
                return slow(instance, args, kwargs)
    return extract


def _check_steps(steps: list[str], what: str, spec: str) -> None:
    """Refuse keywords and dunder steps, except a type name as the last two steps."""
    for index, step in enumerate(steps):
        if keyword.iskeyword(step):
            raise ExtractorError(f"{what}={spec!r}: {step!r} is a Python keyword, not a name")
        if step.startswith("__"):
            if index and tuple(steps[index:]) in TYPE_NAME_STEPS:
                return
            # Dunders reach interpreter internals: __class__.__init__.__globals__ is a module's globals.
            raise ExtractorError(
                f"{what}={spec!r}: {step!r} is a dunder attribute, which extractors refuse "
                f"(it reaches interpreter internals such as a module's globals). To record a "
                f"type name end the path with '.__class__.__name__' or '.__class__.__qualname__'; "
                f"for anything else pass a callable (instance, args, kwargs) -> value"
            )


def _root_reader(root: str, params: Parameters) -> Callable[[Any, tuple, dict], Any]:
    if root == "self":
        return lambda instance, args, kwargs: instance if instance is not None else args[0]
    position = params.position.get(root)
    has_default = root in params.defaults
    default = params.defaults.get(root)

    def read(instance: Any, args: tuple, kwargs: dict) -> Any:
        if position is not None:
            index = position - 1 if instance is not None else position
            if 0 <= index < len(args):
                return args[index]
        if root in kwargs:
            return kwargs[root]
        if has_default:
            return default
        raise LookupError(root)

    return read


def _from_callable(function: Callable[..., Any], what: str) -> Extractor:
    try:
        inspect.signature(function).bind(None, (), {})
    except TypeError:
        raise ExtractorError(
            f"{what}={function!r}: a callable extractor takes (instance, args, kwargs)"
        ) from None
    except ValueError:  # builtins without a signature: accept
        pass
    label = f"{what}={getattr(function, '__qualname__', function)!r}"

    def extract(instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return function(instance, args, kwargs)
        except Exception:
            _count_missing(label)
            return None

    return extract


def mapping_items(specs: Any, what: str) -> list[tuple[str, Any]]:
    """The ``(key, spec)`` pairs of a ``{key: extractor}`` option, checked, in a stable order."""
    if specs is None:
        return []
    if not isinstance(specs, dict):
        raise ExtractorError(f"{what} must be a mapping of name to extractor, got {specs!r}")
    for key in specs:
        if not isinstance(key, str) or not key.isidentifier():
            raise ExtractorError(f"{what} key {key!r} must be an identifier")
    return list(specs.items())


def parse_mapping(specs: Any, what: str, params: Parameters) -> tuple[tuple[str, Extractor], ...]:
    """Parse ``{key: extractor}`` (rank keys or attributes) in a stable order."""
    return tuple((key, parse(spec, f"{what}[{key!r}]", params)) for key, spec in mapping_items(specs, what))


def _count_missing(label: str) -> None:
    missing[label] += 1
    if label not in _logged:
        _logged.add(label)
        log.warning("sched-trace could not read %s at call time; recorded as missing", label)
