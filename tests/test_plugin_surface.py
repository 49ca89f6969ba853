"""Plugins use only the documented surface: ``sched_trace``, ``sched_trace.analysis`` and ``sched_trace.export``.

Every module under plugins/ is parsed (never imported) and each ``import``/``from``
of a ``sched_trace`` module, and each attribute read off an imported ``sched_trace``
module, is checked against those modules' ``__all__`` lists. The plugin-author page
(docs/plugins.md) must name every exported name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sched_trace
import sched_trace.analysis as analysis
import sched_trace.export as export

REPO = Path(__file__).resolve().parents[1]
PLUGIN_MODULES = sorted(path for path in (REPO / "plugins").rglob("*.py") if ".egg-info" not in str(path))
ALLOWED = {"sched_trace": set(sched_trace.__all__) | {"export", "__version__"},
           "sched_trace.analysis": set(analysis.__all__), "sched_trace.export": set(export.__all__)}


def violations(source: str) -> list[str]:
    """Every use of a ``sched_trace`` name outside the documented surface, as ``line: text``."""
    tree = ast.parse(source)
    found: list[str] = []
    module_names: dict[str, str] = {}  # local name -> sched_trace module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "sched_trace":
                    continue
                if alias.name not in ALLOWED:
                    found.append(f"{node.lineno}: import {alias.name}")
                local = alias.asname or alias.name.split(".")[0]
                module_names[local] = alias.name if alias.asname else "sched_trace"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "sched_trace":
                continue
            allowed = ALLOWED.get(node.module)
            if allowed is None:
                found.append(f"{node.lineno}: from {node.module} import ...")
                continue
            for alias in node.names:
                if alias.name not in allowed:
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                elif node.module == "sched_trace" and alias.name in ("analysis", "export"):
                    module_names[alias.asname or alias.name] = f"sched_trace.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = module_names.get(node.value.id)
            if module is not None and node.attr not in ALLOWED[module]:
                found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_every_plugin_module_was_found() -> None:
    packages = {path.relative_to(REPO / "plugins").parts[0] for path in PLUGIN_MODULES}
    assert {"otel", "perfetto", "prometheus", "cuda"} <= packages


@pytest.mark.parametrize("path", PLUGIN_MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugin_imports_only_the_documented_surface(path: Path) -> None:
    bad = violations(path.read_text())
    assert not bad, (f"{path.relative_to(REPO)} reaches into sched-trace internals: {bad}. "
                     "Use sched_trace.export (add the name there, with a docstring and a line in "
                     "docs/plugins.md) or the top-level sched_trace API.")


@pytest.mark.parametrize("source, expected", [
    ("from sched_trace._rank import parse_traceparent", ["1: from sched_trace._rank import ..."]),
    ("import sched_trace._manager", ["1: import sched_trace._manager"]),
    ("from sched_trace import plugins", ["1: from sched_trace import plugins"]),
    ("import sched_trace\nsched_trace.plugins.get_manager()", ["2: sched_trace.plugins"]),
    ("import sched_trace.export as ex\nex.get_manager()", ["2: ex.get_manager"]),
    ("from sched_trace.export import emit, _get_manager", ["1: from sched_trace.export import _get_manager"]),
    ("import sched_trace\nfrom sched_trace.export import emit\nsched_trace.hookimpl\nemit([])", []),
])
def test_the_checker_catches_internal_names(source: str, expected: list[str]) -> None:
    assert violations(source) == expected


def test_every_export_name_is_documented_and_importable() -> None:
    page = (REPO / "docs" / "plugins.md").read_text()
    for name in export.__all__:
        assert f"`{name}" in page, f"docs/plugins.md does not document sched_trace.export.{name}"
        value = getattr(export, name)
        assert value.__doc__, f"sched_trace.export.{name} has no docstring"


def test_emit_delivers_each_kind_to_its_hook_and_counts_a_faulty_plugin() -> None:
    from sched_trace import BatchEvent, MemoryRecorder, RequestEvent, StageEvent

    class Faulty:
        def sched_trace_stage_end(self, event: object) -> None:
            raise RuntimeError("exporter bug")

    recorder, faulty = MemoryRecorder(), Faulty()
    sched_trace.register(recorder, name="surface-recorder")
    sched_trace.register(faulty, name="surface-faulty")
    try:
        rank = export.current_rank()
        now = export.now_ns()
        stage = StageEvent("forward/gpu", 2, now, now + 10, rank, 0, None, None, {}, None, 1 << 62, 0)
        batch = BatchEvent("step", 1, now, now + 20, rank, None, 7, 8, {}, None, (1 << 62) + 1, 0)
        request = RequestEvent("finished", now, "req-1", rank, 3, 5, 7, {})
        assert export.emit([stage, batch, request]) == 3
        assert recorder.events == [stage, batch] and recorder.request_events == [request]
        assert sched_trace.stats()["plugin_errors"]["surface-faulty"] == 1  # counted; the others still served
        with pytest.raises(TypeError):
            export.emit(["not an event"])
        assert export.is_registered(recorder) and not export.is_registered(object())
    finally:
        sched_trace.unregister(recorder)
        sched_trace.unregister(faulty)
        sched_trace.reset_stats()
