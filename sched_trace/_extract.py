"""Extractors and conditions: how a wrapped call's arguments become ids, sizes, ranks and decisions.

Both grammars are parsed once, when instrumentation is declared, and never eval'd.
An extractor::

    extractor := path | "len(" path ")"
    path      := root ("." attribute)* [".__class__.__name__" | ".__class__.__qualname__"]
    root      := a parameter name of the wrapped function | "self"
    attribute := a name not starting with "__" (dunders reach interpreter internals)

or a callable ``(instance, args, kwargs) -> value``. A condition (``when=``,
``keep_if=``, an attribute's ``"EXPR if CONDITION"``)::

    condition := ["not"] value [op literal]
    value     := an extractor; "result" (the return value) in keep_if only
    op        := "is None" | "is not None" | "==" | "!=" | "in" | "not in" | "<" | "<=" | ">" | ">="
    literal   := int | float | quoted string | None | True | False | a tuple of them

At call time a value that cannot be read (missing attribute, ``None`` on the way)
becomes ``None`` and is counted in ``sched_trace.stats()['extract_missing']``; a
condition on it does not hold. Neither ever raises into the scheduler.
"""

from __future__ import annotations

import ast
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
_IF = re.compile(r"\s+if\s+")  # "EXPR if CONDITION": an extractor has no spaces around a keyword
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

    position = params.position.get(root) if root != "self" else None
    shifted = position - 1 if position is not None else None

    def extract(instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            if position is not None:
                # The usual case, read in place: one Python call per extractor, not two.
                index = position if instance is None else shifted
                value = args[index] if 0 <= index < len(args) else read_root(instance, args, kwargs)
            else:
                value = read_root(instance, args, kwargs)
            if getter is not None:
                value = getter(value)
            return len(value) if use_len else value
        except Exception:
            _count_missing(label)
            return None

    extract.spec = spec  # type: ignore[attr-defined]
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


def parse_mapping(specs: Any, what: str, params: Parameters) -> tuple[tuple[str, Extractor], ...]:
    """Parse ``{key: extractor}`` (rank keys or attributes) in a stable order."""
    if specs is None:
        return ()
    if not isinstance(specs, dict):
        raise ExtractorError(f"{what} must be a mapping of name to extractor, got {specs!r}")
    parsed = []
    for key, spec in specs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ExtractorError(f"{what} key {key!r} must be an identifier")
        parsed.append((key, parse(spec, f"{what}[{key!r}]", params)))
    return tuple(parsed)


def _count_missing(label: str) -> None:
    missing[label] += 1
    if label not in _logged:
        _logged.add(label)
        log.warning("sched-trace could not read %s at call time; recorded as missing", label)


# --- conditions: when=, keep_if= and "EXPR if CONDITION" attributes ---------------

Condition = Callable[..., bool]
_CONDITION_HELP = (
    "a condition is [not] VALUE [OP LITERAL]: VALUE an extractor ('batch.reqs', 'len(batch.reqs)', "
    "'self.x'; 'result' is the return value, in keep_if only), OP one of is None, is not None, ==, !=, "
    "in, not in, <, <=, >, >=, LITERAL a number, a quoted string, None, True, False or a tuple of them: "
    "e.g. 'result is not None', 'len(recv_reqs) > 0', \"batch.forward_mode.name in ('EXTEND', 'MIXED')\""
)
_COMPARISONS: dict[type, Callable[[Any], Callable[[Any], bool]]] = {
    ast.Eq: lambda literal: lambda value: value == literal,
    ast.NotEq: lambda literal: lambda value: value != literal,
    ast.Lt: lambda literal: lambda value: value < literal,
    ast.LtE: lambda literal: lambda value: value <= literal,
    ast.Gt: lambda literal: lambda value: value > literal,
    ast.GtE: lambda literal: lambda value: value >= literal,
    ast.In: lambda literal: lambda value: value in literal,
    ast.NotIn: lambda literal: lambda value: value not in literal,
}
_LITERAL_TYPES = (int, float, str, bool, type(None))


def parse_condition(spec: Any, what: str, params: Parameters, *, after_call: bool = False) -> Optional[Condition]:
    """Compile a condition into ``(instance, args, kwargs, result=None) -> bool``; raise if malformed.

    Never raises at call time: a value that cannot be read, or cannot be compared
    (``None > 0``), makes the condition false, whatever its ``not``. A bare VALUE
    holds when the value is truthy; ``not VALUE`` when it is falsy but not None
    (None is "unknown": write ``VALUE is None`` to test for it). ``after_call``:
    the condition is decided after the call (keep_if), so ``result`` may be read.
    """
    if spec is None:
        return None
    if callable(spec):
        return _condition_from_callable(spec, what, after_call)
    if not isinstance(spec, str):
        raise ExtractorError(f"{what}={spec!r} is not a condition: {_CONDITION_HELP}")
    text = spec.strip()
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ExtractorError(f"{what}={spec!r} is not a condition: {_CONDITION_HELP}") from None
    negate = isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.Not)
    test = tree.operand if negate else tree  # type: ignore[attr-defined]
    compare = None
    if isinstance(test, ast.Compare):
        if len(test.ops) != 1:
            raise ExtractorError(f"{what}={spec!r}: one comparison only; {_CONDITION_HELP}")
        compare = _comparison(test.ops[0], test.comparators[0], what, spec)
        test = test.left
    segment = ast.get_source_segment(text, test)
    read = _value_reader(segment or "", what, spec, params, after_call)
    return _condition(read, compare, negate, f"{what}={spec!r}")


def _comparison(op: ast.cmpop, node: ast.expr, what: str, spec: str) -> Callable[[Any], bool]:
    literal = _literal(node, what, spec)
    if isinstance(op, (ast.Is, ast.IsNot)):
        if literal is not None or not isinstance(node, ast.Constant):
            raise ExtractorError(f"{what}={spec!r}: 'is' and 'is not' compare with None only; use == or != "
                                 f"for other values")
        return (lambda value: value is None) if isinstance(op, ast.Is) else (lambda value: value is not None)
    if isinstance(op, (ast.In, ast.NotIn)) and not isinstance(literal, (tuple, str)):
        raise ExtractorError(f"{what}={spec!r}: 'in' needs a tuple or a string, e.g. ('EXTEND', 'MIXED')")
    return _COMPARISONS[type(op)](literal)


def _literal(node: ast.expr, what: str, spec: str) -> Any:
    if isinstance(node, ast.Tuple):
        return tuple(_literal(item, what, spec) for item in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.Constant) and type(node.value) in _LITERAL_TYPES:
        return node.value
    raise ExtractorError(
        f"{what}={spec!r}: {ast.unparse(node)!r} is not a literal; compare with a number, a quoted "
        f"string, None, True, False or a tuple of them, e.g. 0, 'EXTEND' or ('EXTEND', 'MIXED')"
    )


def _value_reader(text: str, what: str, spec: str, params: Parameters, after_call: bool) -> Callable[..., Any]:
    """``(instance, args, kwargs, result) -> value`` for a condition's VALUE; raises when unreadable."""
    match = _GRAMMAR.match(text)
    if match is None:
        raise ExtractorError(f"{what}={spec!r}: {text!r} is not a value: {_CONDITION_HELP}")
    steps = [step.strip() for step in (match.group("inner") or match.group("plain")).split(".")]
    _check_steps(steps, what, spec)
    root, use_len = steps[0], match.group(1) is not None
    getter = operator.attrgetter(".".join(steps[1:])) if len(steps) > 1 else None
    if root == "result" and (after_call or not (params.known and "result" in params.names)):
        if not after_call:
            raise ExtractorError(
                f"{what}={spec!r}: 'result' is the return value, known only after the call; a condition "
                f"on it belongs in keep_if (decided after the call)"
            )

        def read_root(instance: Any, args: tuple, kwargs: dict, result: Any) -> Any:
            return result
    else:
        if root != "self":
            params.check(root, what, spec)
        base = _root_reader(root, params)

        def read_root(instance: Any, args: tuple, kwargs: dict, result: Any) -> Any:
            return base(instance, args, kwargs)

    def read(instance: Any, args: tuple, kwargs: dict, result: Any) -> Any:
        value = read_root(instance, args, kwargs, result)
        if getter is not None:
            value = getter(value)
        return len(value) if use_len else value

    return read


def _condition(read: Callable[..., Any], compare: Optional[Callable[[Any], bool]], negate: bool,
               label: str) -> Condition:
    def holds(instance: Any, args: tuple, kwargs: dict, result: Any = None) -> bool:
        try:
            value = read(instance, args, kwargs, result)
        except Exception:
            _count_missing(label)
            return False
        try:
            if compare is None:
                if value is None:  # unknown: neither it nor its negation holds
                    return False
                return not value if negate else bool(value)
            return (not compare(value)) if negate else bool(compare(value))
        except Exception:  # None > 0, or a value with no truth value: the condition does not hold
            return False

    holds.spec = label  # type: ignore[attr-defined]
    return holds


def _condition_from_callable(function: Callable[..., Any], what: str, after_call: bool) -> Condition:
    arity = 4 if after_call else 3
    try:
        inspect.signature(function).bind(*([None] * arity))
    except TypeError:
        expected = "(instance, args, kwargs, result)" if after_call else "(instance, args, kwargs)"
        raise ExtractorError(f"{what}={function!r}: a callable condition takes {expected}") from None
    except ValueError:  # builtins without a signature: accept
        pass
    label = f"{what}={getattr(function, '__qualname__', function)!r}"

    def holds(instance: Any, args: tuple, kwargs: dict, result: Any = None) -> bool:
        try:
            value = function(instance, args, kwargs, result) if after_call else function(instance, args, kwargs)
            return value is not None and bool(value)
        except Exception:
            _count_missing(label)
            return False

    return holds


def parse_attributes(specs: Any, params: Parameters) -> tuple[tuple[str, Extractor, Optional[Condition]], ...]:
    """Parse ``attrs={key: "EXPR" or "EXPR if CONDITION" or callable}``: (key, extractor, condition)."""
    if specs is None:
        return ()
    if not isinstance(specs, dict):
        raise ExtractorError(f"attrs must be a mapping of name to extractor, got {specs!r}")
    parsed = []
    for key, spec in specs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ExtractorError(f"attrs key {key!r} must be an identifier")
        what = f"attrs[{key!r}]"
        condition = None
        if isinstance(spec, str) and _IF.search(spec):
            spec, condition_text = _IF.split(spec, maxsplit=1)
            condition = parse_condition(condition_text, f"{what} condition", params)
        parsed.append((key, parse(spec, what, params), condition))
    return tuple(parsed)

