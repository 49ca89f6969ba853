"""Targets in the program's own main module, and a warning for targets that never resolved.

``python -m examples.minimal.engine`` runs that module as ``__main__``: the module
``examples.minimal.engine`` is never imported, so a post-import hook on it never
fires. Classes are created through ``builtins.__build_class__``, in ``__main__`` as
anywhere, so wrapping it lets a target's class be patched the moment its
``class`` statement has run, before the program's ``main()`` uses it. A plain
function target in the main module cannot be caught this way; it is reported at
exit like any target that never resolved.

Each process that resolves a configured target drops a marker in a directory the
launcher named; the launched (root) process reads them at exit and warns once.
"""

from __future__ import annotations

import atexit
import builtins
import os
import sys
import types
from pathlib import Path
from typing import Any, Iterable, Optional

MAIN_NAMES = ("__main__", "__mp_main__")  # multiprocessing's spawn runs the main module as __mp_main__
_original_build_class = builtins.__build_class__


def main_module_matches(module_globals: dict, target_module: str) -> bool:
    """Whether these globals are the main module's and it is ``target_module`` under another name."""
    if module_globals.get("__name__") not in MAIN_NAMES:
        return False
    spec = module_globals.get("__spec__")
    if spec is not None and getattr(spec, "name", None):
        return spec.name == target_module  # python -m pkg.mod, or a spawn child of it
    file = module_globals.get("__file__")
    if not file:
        return False
    parts = target_module.split(".")
    path = Path(os.path.abspath(file)).with_suffix("")  # python pkg/mod.py: compare path tails
    return path.parts[-len(parts):] == tuple(parts)


def _pending(handles: Iterable[Any]) -> list[Any]:
    return [h for h in handles if h.state == "pending" and h.key is None and len(h.path) >= 2]


def _bind(module_globals: dict, name: str, cls: type) -> None:
    from sched_trace._instrument import handles

    for handle in _pending(handles()):
        if handle.path[0] == name and main_module_matches(module_globals, handle.module):
            handle.on_import(types.SimpleNamespace(**{name: cls}))  # patches the class itself


def _build_class(func: Any, name: str, *bases: Any, **kwargs: Any) -> Any:
    cls = _original_build_class(func, name, *bases, **kwargs)
    module_globals = getattr(func, "__globals__", None)
    if isinstance(module_globals, dict) and module_globals.get("__name__") in MAIN_NAMES \
            and getattr(func, "__qualname__", None) == name:
        try:
            _bind(module_globals, name, cls)
        except Exception as exc:  # tracing must never break the program's own class statement
            sys.stderr.write(f"sched-trace: could not instrument {name} in the main module: {exc}\n")
    return cls


def watch_main_module() -> None:
    """Patch main-module classes that are targets as soon as they are created."""
    from sched_trace._instrument import handles

    if _pending(handles()):
        builtins.__build_class__ = _build_class


# --- one warning per launched program for targets that never resolved ------------------


def _resolved(targets: Iterable[str]) -> set[str]:
    from sched_trace._instrument import handles

    wanted = set(targets)
    return {h.target for h in handles() if h.target in wanted and h.state in ("active", "dormant", "removed")}


def _mark(directory: str, targets: list[str]) -> None:
    """Record in the shared directory which targets this process resolved."""
    done = _resolved(targets)
    if not done:
        return
    try:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"resolved-{os.getpid()}"), "w", encoding="utf-8") as marker:
            marker.write("\n".join(sorted(done)))
    except OSError:
        pass  # the warning is advice; a read-only /tmp must not break the program


def _collect(directory: str) -> set[str]:
    found: set[str] = set()
    if not os.path.isdir(directory):
        return found
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        try:
            with open(path, encoding="utf-8") as marker:
                found.update(line for line in marker.read().splitlines() if line)
            os.unlink(path)
        except OSError:
            continue
    try:
        os.rmdir(directory)
    except OSError:
        pass
    return found


def _why(handle: Any) -> str:
    main = sys.modules.get("__main__")
    if handle.state == "unresolved":
        return "not found in its module (see the warning above)"
    if main is not None and main_module_matches(vars(main), handle.module):
        return ("a plain function in the program's main module cannot be patched: target a class "
                "method there, or move the function into a module the program imports")
    return f"module {handle.module!r} was never imported"


def _warn_at_exit(directory: Optional[str], targets: list[str]) -> None:
    from sched_trace._instrument import handles

    done = _resolved(targets) | (_collect(directory) if directory else set())
    missing = [h for h in handles() if h.target in targets and h.target not in done]
    if missing:
        lines = "".join(f"\n  {h.target}: {_why(h)}" for h in missing)
        sys.stderr.write(f"sched-trace: {len(missing)} configured target(s) were never instrumented "
                         f"in any process:{lines}\n")
        sys.stderr.flush()


def watch_unresolved(targets: list[str]) -> None:
    """Root process: warn at exit; every process: mark what it resolved for the root to read."""
    import wrapt

    if not targets:
        return
    directory = os.environ.get("SCHED_TRACE_RUN_DIR")
    if os.environ.get("SCHED_TRACE_RUN_ROOT") == str(os.getpid()):
        atexit.register(_warn_at_exit, directory, targets)
        return
    if directory:
        from sched_trace._instrument import handles

        for module in {h.module for h in handles() if h.target in targets}:
            # Marks right after the module is imported (our hook runs after sched-trace's),
            # so a child that ends with os._exit (fork start method) still counts.
            wrapt.register_post_import_hook(lambda _module: _mark(directory, targets), module)
        atexit.register(_mark, directory, targets)  # for targets bound in the main module
