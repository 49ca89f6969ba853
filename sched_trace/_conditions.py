"""Conditions: ``when=``, ``keep_if=`` and attributes written ``"EXPR if CONDITION"``.

One grammar, parsed once when instrumentation is declared (with :mod:`ast`, whose
tree is checked node by node and never evaluated)::

    condition := ["not"] value [op literal]
    value     := an extractor (see ``_extract``); "result" (the return value) in keep_if only
    op        := "is None" | "is not None" | "==" | "!=" | "in" | "not in" | "<" | "<=" | ">" | ">="
    literal   := int | float | quoted string | None | True | False | a tuple of them

A condition never raises at call time: a value that cannot be read (counted in
``sched_trace.stats()['extract_missing']``) or compared makes it false.
"""

from __future__ import annotations

import ast
import inspect
import operator
import re
from typing import Any, Callable, Optional

from . import _native
from ._errors import ExtractorError
from ._extract import _GRAMMAR, Extractor, Parameters, _check_steps, _count_missing, _root_reader, mapping_items, parse

_IF = re.compile(r"\s+if\s+")  # "EXPR if CONDITION": an extractor has no spaces around a keyword

Condition = Callable[..., bool]
_CONDITION_HELP = (
    "a condition is [not] VALUE [OP LITERAL]: VALUE an extractor ('batch.reqs', 'len(batch.reqs)', "
    "'self.x'; 'result' is the return value, in keep_if only), OP one of is None, is not None, ==, !=, "
    "in, not in, <, <=, >, >=, LITERAL a number, a quoted string, None, True, False or a tuple of them: "
    "e.g. 'result is not None', 'len(recv_reqs) > 0', \"batch.forward_mode.name in ('EXTEND', 'MIXED')\""
)
#: OP -> (operator, invert, flip, code): the comparison is ``operator(value, literal)``
#: (``flip``: ``operator(literal, value)``), negated when ``invert``. C functions: no frame
#: per call. ``code``: the OP in the C form (``_speedups.Condition``; ``not in`` is ``in``
#: inverted).
_COMPARISONS: dict[type, tuple[Callable[[Any, Any], Any], bool, bool, int]] = {
    ast.Eq: (operator.eq, False, False, 1), ast.NotEq: (operator.ne, False, False, 2),
    ast.Lt: (operator.lt, False, False, 3), ast.LtE: (operator.le, False, False, 4),
    ast.Gt: (operator.gt, False, False, 5), ast.GtE: (operator.ge, False, False, 6),
    ast.Is: (operator.is_, False, False, 7), ast.IsNot: (operator.is_not, False, False, 8),
    ast.In: (operator.contains, False, True, 9), ast.NotIn: (operator.contains, True, True, 9),
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
    plan = _value_plan(segment or "", what, spec, params, after_call)
    return _condition(plan, compare, negate, f"{what}={spec!r}")


def _comparison(op: ast.cmpop, node: ast.expr, what: str, spec: str) -> tuple:
    """(operator, literal, invert, flip) of ``OP LITERAL``."""
    literal = _literal(node, what, spec)
    if isinstance(op, (ast.Is, ast.IsNot)) and (literal is not None or not isinstance(node, ast.Constant)):
        raise ExtractorError(f"{what}={spec!r}: 'is' and 'is not' compare with None only; use == or != "
                             f"for other values")
    if isinstance(op, (ast.In, ast.NotIn)) and not isinstance(literal, (tuple, str)):
        raise ExtractorError(f"{what}={spec!r}: 'in' needs a tuple or a string, e.g. ('EXTEND', 'MIXED')")
    function, invert, flip, code = _COMPARISONS[type(op)]
    return function, literal, invert, flip, code


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


def _value_plan(text: str, what: str, spec: str, params: Parameters, after_call: bool) -> tuple:
    """How a condition reads its VALUE: (from the result, position, bound position, reader, getter, len,
    root, attribute steps).

    ``position`` is where the root sits in ``args`` (``bound``: with the instance taken
    out), None when the root is read by ``reader`` (``self``, keywords, defaults).
    """
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
        return True, None, None, None, getter, use_len, root, tuple(steps[1:])
    if root != "self":
        params.check(root, what, spec)
    position = params.position.get(root) if root != "self" else None
    bound = (position - 1 if position else 1 << 30) if position is not None else None
    return False, position, bound, _root_reader(root, params), getter, use_len, root, tuple(steps[1:])


# long: one frame per condition (read, compare, negate), as it runs on every call of its target
def _condition(plan: tuple, compare: Optional[tuple], negate: bool, label: str) -> Condition:
    from_result, position, bound, reader, getter, use_len, root, steps = plan
    op, literal, invert, flip, code = compare if compare is not None else (None, None, False, False, 0)

    def holds(instance: Any, args: tuple, kwargs: dict, result: Any = None) -> bool:
        try:
            if from_result:
                value = result
            elif position is not None:
                index = position if instance is None else bound
                value = args[index] if index < len(args) else reader(instance, args, kwargs)
            else:
                value = reader(instance, args, kwargs)
            if getter is not None:
                value = getter(value)
            if use_len:
                value = len(value)
        except Exception:
            _count_missing(label)
            return False
        try:
            if op is None:
                if value is None:  # unknown: neither it nor its negation holds
                    return False
                return not value if negate else bool(value)
            outcome = bool(op(literal, value) if flip else op(value, literal)) != invert
            return not outcome if negate else outcome
        except Exception:  # None > 0, or a value with no truth value: the condition does not hold
            return False

    holds.spec = label  # type: ignore[attr-defined]
    speedups = _native.speedups
    if speedups is None or not (from_result or position is not None or root == "self"):
        return holds
    # The C form: the same plan decided without a frame; what it cannot read goes to holds.
    return speedups.Condition(holds, from_result, -1 if position is None else position,
                              -1 if bound is None else bound, steps, use_len, code, literal, invert, negate)


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
    parsed = []
    for key, spec in mapping_items(specs, "attrs"):
        what = f"attrs[{key!r}]"
        condition = None
        if isinstance(spec, str) and _IF.search(spec):
            spec, condition_text = _IF.split(spec, maxsplit=1)
            condition = parse_condition(condition_text, f"{what} condition", params)
        parsed.append((key, parse(spec, what, params), condition))
    return tuple(parsed)

