"""The core is layered and nothing imports in a circle (docs/architecture.md).

Every module of ``sched_trace/`` and of each ``plugins/*/sched_trace_*`` package is
parsed (never imported). Every import counts: at module level, inside functions,
under ``if TYPE_CHECKING``, and ``importlib.import_module("...")`` with a constant
name. Then:

- no import cycle, in the core or in any plugin;
- a core module imports only from its own layer or the layers below (``LAYERS``);
- the core never imports a plugin, and a plugin imports only the public surface.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "sched_trace"
PLUGIN_PACKAGES = sorted(p for p in REPO.glob("plugins/*/sched_trace_*") if p.is_dir() and (p / "__init__.py").exists())

#: Layer of each core module (a name covers its submodules). A new module needs a line here.
LAYERS = {
    # 1, leaves: what everything else builds on
    "sched_trace._errors": 1, "sched_trace._events": 1, "sched_trace._clock": 1, "sched_trace._stages": 1,
    "sched_trace._extract": 1, "sched_trace._targets": 1, "sched_trace._options": 1, "sched_trace._protowire": 1,
    "sched_trace._conditions": 1, "sched_trace._native": 1,
    # 2, configuration and identity; trace files and their analysis need only the leaves
    "sched_trace.config": 2, "sched_trace._rank": 2, "sched_trace.profile_check": 2, "sched_trace.source_attrs": 2,
    "sched_trace._level_file": 2,
    "sched_trace.traceio": 2, "sched_trace.analysis": 2,
    # 3, plugins and hand-off buffers
    "sched_trace._hookspecs": 3, "sched_trace._manager": 3, "sched_trace._watchdog": 3, "sched_trace.recorder": 3,
    # 4, the hot path and what installs it
    "sched_trace._hotpath": 4, "sched_trace._probe": 4, "sched_trace._request_probe": 4, "sched_trace._instrument": 4,
    # 5, process life and the exporter process
    "sched_trace._lifecycle": 5, "sched_trace._exporter": 5, "sched_trace.capture": 5,
    # 6, the public faces
    "sched_trace._api": 6, "sched_trace": 6, "sched_trace.export": 6, "sched_trace.testing": 6,
    "sched_trace._hookdoc": 6, "sched_trace._otlp_receiver": 6, "sched_trace.contracts": 6,
    "sched_trace.snapshots": 6,
    # 7, programs built on the faces
    "sched_trace.commands": 7, "sched_trace.cli": 7, "sched_trace.pytest_plugin": 7,
    "sched_trace._bootstrap": 7, "sched_trace._demo": 7,
}
#: Cycles that exist today and are being removed; the test fails on any other, and on an
#: entry here that no longer exists (delete it then).
KNOWN_CYCLES: list[list[str]] = []
#: What a plugin may import of sched-trace (tests/test_plugin_surface.py checks the names).
PUBLIC = {"sched_trace", "sched_trace.export", "sched_trace.analysis", "sched_trace.testing"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {module_name(p, CORE): p for p in CORE.rglob("*.py")}
    for package in PLUGIN_PACKAGES:
        found.update({module_name(p, package): p for p in package.rglob("*.py")})
    return found


MODULES = modules()


def _resolve(importer: str, is_package: bool, module: Optional[str], level: int) -> str:
    if not level:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _known(name: str) -> Optional[str]:
    """The scanned module ``name`` refers to (itself, or its nearest scanned package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(name: str) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in module ``name``, wherever it sits."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.module, node.level)
            for alias in node.names:
                yield (f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base), node.lineno
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            target = node.args[0]
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                relative = target.value.startswith(".")
                level = len(target.value) - len(target.value.lstrip(".")) if relative else 0
                yield _resolve(name, is_package, target.value.lstrip(".") or None, level), node.lineno


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or \
        (isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for target, _ in imports(name):
            known = _known(target)
            if known is not None and known != name and not name.startswith(known + "."):
                graph[name].add(known)  # a package's own __init__ is not an import of it
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(name: str) -> Optional[int]:
    """The layer of ``name``, or of the subpackage it is in (never the root package's)."""
    while name:
        if name in LAYERS:
            return LAYERS[name]
        name = name.rpartition(".")[0]
        if name == "sched_trace":
            return None
    return None


def test_every_core_module_and_plugin_package_was_found() -> None:
    assert {"sched_trace._probe", "sched_trace._api", "sched_trace.traceio._model"} <= set(MODULES)
    assert {p.parent.name for p in PLUGIN_PACKAGES} >= {"otel", "perfetto", "prometheus", "cuda"}


def test_no_import_cycle_in_the_core_or_any_plugin() -> None:
    found = cycles(edges())
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, "import cycles (function-level imports count): " + "; ".join(" <-> ".join(c) for c in new)
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"these cycles are gone: delete them from KNOWN_CYCLES in tests/test_layers.py: {gone}"


def test_every_core_module_has_a_layer() -> None:
    missing = sorted(name for name in MODULES if name.startswith("sched_trace") and not
                     name.startswith("sched_trace_") and layer(name) is None)
    assert not missing, f"give these modules a layer in tests/test_layers.py LAYERS: {missing}"


def test_core_modules_import_only_their_layer_or_below() -> None:
    upward = []
    for name, targets in edges().items():
        if not name.startswith("sched_trace") or name.startswith("sched_trace_"):
            continue
        for target in targets:
            if target.startswith("sched_trace_"):
                upward.append(f"{name} imports the plugin {target}: the core never imports a plugin")
            elif layer(target) > layer(name):  # type: ignore[operator]
                upward.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
    assert not upward, "imports that go up the layers:\n" + "\n".join(sorted(upward))


def test_plugins_import_only_the_public_modules() -> None:
    bad = []
    for name in MODULES:
        if not name.startswith("sched_trace_"):
            continue
        for target, line in imports(name):
            if target.split(".")[0] == "sched_trace" and target not in PUBLIC:
                bad.append(f"{name}:{line} imports {target}")
    assert not bad, "plugins reach into sched-trace internals:\n" + "\n".join(bad)


def test_the_checker_finds_a_cycle_through_several_modules() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}) == [["a", "b", "c"]]


def test_importing_the_scheduler_side_leaves_analysis_and_trace_files_out() -> None:
    """The scheduler process imports what runs there: not the readers, not the analysis."""
    code = ("import sys, sched_trace, sched_trace.export\n"
            "print(sorted(m for m in sys.modules if m.startswith(('sched_trace.analysis', 'sched_trace.traceio'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("source, expected", [
    ("from . import _probe", ["sched_trace._probe"]),
    ("def f():\n    from ._api import configure", ["sched_trace._api"]),
    ("import importlib\nimportlib.import_module('.analysis', __name__)", ["importlib", "sched_trace.analysis"]),
])
def test_imports_are_read_wherever_they_sit(source: str, expected: list[str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "__init__.py"
    fake.write_text(source)
    monkeypatch.setitem(MODULES, "sched_trace", fake)
    assert [target for target, _ in imports("sched_trace")] == expected


# --- small modules, short functions --------------------------------------------------

MAX_MODULE_LINES = 420  # "about 400"
MAX_FUNCTION_LINES = 50
#: Modules over the bound today, and who is splitting them.
KNOWN_LONG_MODULES: set[str] = set()


#: Functions over the bound without a reason today, and whose they are.
KNOWN_LONG_FUNCTIONS: set[str] = set()


def _has_reason(lines: list[str], node: ast.AST) -> bool:
    """A function may be longer with a one-line reason: ``# long: why`` on its def line or above it."""
    start = node.lineno - 1 - len(getattr(node, "decorator_list", []))
    return any("# long:" in lines[i] for i in (start - 1, start, node.lineno - 1) if 0 <= i < len(lines))


def test_modules_and_functions_are_small_or_say_why() -> None:
    found = []
    for name, path in sorted(MODULES.items()):
        source = path.read_text()
        lines = source.splitlines()
        if len(lines) > MAX_MODULE_LINES and name not in KNOWN_LONG_MODULES:
            found.append(f"{name}: {len(lines)} lines (split it, or give a reason here)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES and not _has_reason(lines, node) \
                        and f"{name}:{node.name}" not in KNOWN_LONG_FUNCTIONS:
                    found.append(f"{name}:{node.lineno} {node.name}: {length} lines, no '# long:' reason")
    assert not found, "\n".join(found)
