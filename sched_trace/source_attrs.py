"""Extractor paths checked against the installed source: parameters, ``self``, attributes.

``sched-trace check`` reads a target's ``def`` to see that each extractor starts from
a parameter (or ``self`` on a method, ``result`` after the call), and follows the
attribute steps through the classes the source declares: a parameter's annotation,
``self``'s class, a dataclass field's or an ``self.x: T`` annotation. A step is
reported unknown only where the answer can be known: every class on the way is
Python source, defines how its instances are built (an ``__init__`` or a class
decorator such as ``@dataclass``), has no ``__getattr__`` or ``setattr``, and no
file on the way assigns an attribute of that name to anything. Everything else is
left undecided, never reported.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import re
from functools import lru_cache
from typing import Any, Iterator, Optional

from . import profile_check as _source
from .profile_check import UNDECIDED

#: What an extractor may start from besides a parameter.
SPECIAL_ROOTS = ("self", "result")
_STRING = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATH = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)(\s*\()?")
_WORDS = frozenset(keyword.kwlist) | {"None", "True", "False"}
_PROPERTIES = ("property", "cached_property", "functools.cached_property")
_PLAIN_METACLASSES = ("metaclass=ABCMeta", "metaclass=abc.ABCMeta")  # add no instance attributes
ClassTriple = tuple  # (module name, module scope, ast.ClassDef)


def paths(text: str) -> Iterator[list[str]]:
    """Each attribute path an extractor or condition reads (``len(batch.reqs) > 0`` -> batch.reqs)."""
    for match in _PATH.finditer(_STRING.sub("''", text)):
        if match.group(2):  # a call: len(...)
            continue
        steps = [step.strip() for step in match.group(1).split(".")]
        if steps[0] not in _WORDS:
            yield steps


class Signature:
    """A ``def``'s parameters as the source declares them."""

    def __init__(self, node: ast.FunctionDef, in_class: bool) -> None:
        arguments = node.args
        ordered = arguments.posonlyargs + arguments.args
        decorators = {ast.unparse(d) for d in node.decorator_list}
        self.static = "staticmethod" in decorators
        self.classmethod = "classmethod" in decorators
        self.bound = in_class and not self.static and bool(ordered)
        self.first = ordered[0] if self.bound else None
        named = ordered[1:] if self.bound else ordered
        self.parameters = {a.arg: a for a in named + arguments.kwonlyargs}
        self.var_keyword = arguments.kwarg is not None
        self.returns = node.returns

    def names(self) -> list[str]:
        return list(self.parameters)


def root_problem(signature: Signature, root: str, label: str, where: str) -> Optional[str]:
    """Why ``root`` cannot be read from a call of the function, or None."""
    if root == "result":
        return None
    if root == "self":
        if signature.bound:
            return None
        kind = "a static method" if signature.static else "a function, not a method"
        return f"{label}: reads 'self', but {where} is {kind}: the signature changed"
    if root in signature.parameters or signature.var_keyword:
        return None
    close = difflib.get_close_matches(root, signature.names(), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"{label}: {root!r} is not a parameter of {where} "
            f"(parameters: {', '.join(signature.names()) or 'none'}).{hint}")


def root_class(signature: Signature, root: str, function: Any, owner: Any) -> Any:
    """The class a root's value has, as (module, scope, ClassDef), when the source says so."""
    module_name, scope = function[0], function[1]
    if root == "self":
        if signature.first is not None and signature.first.annotation is not None:
            return annotation_class(module_name, scope, signature.first.annotation)
        return owner if owner is not None and not signature.classmethod else None
    if root == "result":
        return annotation_class(module_name, scope, signature.returns)
    argument = signature.parameters.get(root)
    return None if argument is None else annotation_class(module_name, scope, argument.annotation)


def annotation_class(module_name: str, scope: dict, node: Optional[ast.expr]) -> Any:
    """``X``, ``"X"``, ``Optional[X]``, ``X | None`` -> X's class triple; else None."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        sides = [s for s in (node.left, node.right) if not _is_none(s)]
        return annotation_class(module_name, scope, sides[0]) if len(sides) == 1 else None
    if isinstance(node, ast.Subscript):
        head = ast.unparse(node.value).rsplit(".", 1)[-1]
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        inner = [i for i in inner if not _is_none(i)]
        if head in ("Optional", "Union") and len(inner) == 1:
            return annotation_class(module_name, scope, inner[0])
        return None
    if not isinstance(node, (ast.Name, ast.Attribute)):
        return None
    found = _source.resolve_expression(module_name, scope, node, 0)
    if found in (None, UNDECIDED) or not isinstance(found[2], ast.ClassDef):
        return None
    return found


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def path_problem(start: Any, steps: list[str], label: str, files: tuple[str, ...]) -> Optional[str]:
    """Follow ``steps`` (after the root) from class ``start``; a message when a step is certainly unknown."""
    current = start
    for step in steps:
        if not current or step.startswith("__"):  # class unknown, or a type name
            return None
        found = attribute(current, step, files)
        if found is UNDECIDED:
            return None
        if found is None:
            names = sorted(_names_of(current))
            close = difflib.get_close_matches(step, names, n=3)
            hint = f"; close names: {', '.join(close)}" if close else ""
            return (f"{label}: class {current[2].name!r} ({current[0]}) has no attribute {step!r} "
                    f"in its source or its bases{hint}")
        current = found
    return None


def attribute(cls: ClassTriple, name: str, files: tuple[str, ...]) -> Any:
    """The class of ``cls().name`` (a triple), ``False`` when present but of unknown class,
    None when certainly absent, UNDECIDED when the source cannot tell."""
    classes = list(_mro(cls))
    for klass in classes:
        found = None if klass is UNDECIDED else _declared(klass, name)
        if found is not None:
            return found
    if any(c is UNDECIDED or _dynamic(c) for c in classes) or not any(map(_builds_instances, classes)):
        return UNDECIDED
    origins = files + tuple(_origin(c[0]) for c in classes)
    for stored in map(_stored_anywhere, origins):
        if stored is None or name in stored:
            return UNDECIDED  # some code may assign it from outside the class
    return None
    return None


def _declared(klass: ClassTriple, name: str) -> Any:
    module_name, scope, node = klass
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) \
                and statement.target.id == name:
            return annotation_class(module_name, scope, statement.annotation) or False
        if isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                     for t in statement.targets):
            return False
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and statement.name == name:
            if {ast.unparse(d) for d in statement.decorator_list} & set(_PROPERTIES):
                return annotation_class(module_name, scope, statement.returns) or False
            return False
        if isinstance(statement, ast.ClassDef) and statement.name == name:
            return False
    own = _source.bound_names(node.body, "")
    if name in own:  # bound in an if/try branch of the class body, or imported into it
        return False
    for method in node.body:
        if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotation = _self_store(method, name)
            if annotation is not None:
                return (annotation is not True and annotation_class(module_name, scope, annotation)) or False
    return None


def _self_store(method: ast.FunctionDef, name: str) -> Any:
    """``self.name = ...`` in ``method``: its annotation (or a parameter's), True if unannotated."""
    arguments = method.args.posonlyargs + method.args.args
    if not arguments:
        return None
    me = arguments[0].arg
    annotated = {a.arg: a.annotation for a in arguments + method.args.kwonlyargs if a.annotation is not None}
    for node in ast.walk(method):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = [t for target in node.targets for t in _unpack(target)]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and target.attr == name \
                    and isinstance(target.value, ast.Name) and target.value.id == me:
                if isinstance(node, ast.AnnAssign):
                    return node.annotation
                value = getattr(node, "value", None)
                if isinstance(value, ast.Name) and value.id in annotated:
                    return annotated[value.id]
                return True
    return None


def _unpack(target: ast.expr) -> list[ast.expr]:
    if isinstance(target, (ast.Tuple, ast.List)):
        return [t for element in target.elts for t in _unpack(element)]
    return [target]


def _mro(cls: ClassTriple, depth: int = 0) -> Iterator[Any]:
    """The class and its bases, depth first; UNDECIDED for a base the source cannot resolve."""
    yield cls
    if depth > 8:
        yield UNDECIDED
        return
    module_name, scope, node = cls
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id == "object":
            continue
        parent = _source.resolve_expression(module_name, scope, base, depth + 1)
        if parent in (None, UNDECIDED) or not isinstance(parent[2], ast.ClassDef):
            yield UNDECIDED
            continue
        yield from _mro(parent, depth + 1)


def _builds_instances(klass: Any) -> bool:
    node = klass[2]
    return bool(node.decorator_list) or any(
        isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name in ("__init__", "__new__")
        for s in node.body)


def _dynamic(klass: ClassTriple) -> bool:
    """Attributes this class's instances get in ways the source does not spell out."""
    node = klass[2]
    if any(ast.unparse(k) not in _PLAIN_METACLASSES for k in node.keywords):
        return True  # a metaclass that may add attributes, or __init_subclass__ arguments
    for child in ast.walk(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                and child.name in ("__getattr__", "__getattribute__", "__setattr__"):
            return True
        if isinstance(child, ast.Name) and child.id in ("setattr", "vars"):
            return True
        if isinstance(child, ast.Attribute) and child.attr == "__dict__":
            return True
    return False


def _names_of(cls: ClassTriple) -> set[str]:
    names: set[str] = set()
    for klass in _mro(cls):
        if klass is UNDECIDED:
            continue
        names.update(_source.bound_names(klass[2].body, ""))
        for method in klass[2].body:
            if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.update(_self_names(method))
    return names


def _self_names(method: ast.FunctionDef) -> set[str]:
    arguments = method.args.posonlyargs + method.args.args
    if not arguments:
        return set()
    me = arguments[0].arg
    return {n.attr for n in ast.walk(method) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name) and n.value.id == me}


def _origin(module_name: str) -> str:
    return _source.find_source(module_name) or ""


@lru_cache(maxsize=64)
def _stored_anywhere(origin: str) -> Optional[frozenset[str]]:
    """Every attribute name the file assigns to anything (``x.name = ...``); None if unreadable."""
    if not origin:
        return frozenset()
    try:
        tree = _source.parse_file(origin)
    except (OSError, SyntaxError, ValueError):
        return None
    return frozenset(n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store))
