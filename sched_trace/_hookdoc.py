"""Render the hook reference (docs/hooks.md) from the hook spec's docstrings.

``python -m sched_trace._hookdoc > docs/hooks.md``; a test keeps the file current.
"""

from __future__ import annotations

import inspect

from . import _hookspecs as hookspecs

HEADER = """# Hook reference

Generated from `sched_trace/_hookspecs.py` by `python -m sched_trace._hookdoc > docs/hooks.md`;
do not edit by hand. A plugin implements any of these as functions or methods of the
same name (see [Write a plugin](plugins.md)).
"""


def hooks() -> list[tuple[str, object]]:
    return [
        (name, function)
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("sched_trace_")
    ]


def signature(function: object) -> str:
    text = str(inspect.signature(function))  # type: ignore[arg-type]
    return text.replace("'", "").replace('"', "")


def render() -> str:
    parts = [HEADER]
    order = {name: i for i, name in enumerate(hookspecs.__dict__)}
    for name, function in sorted(hooks(), key=lambda item: order[item[0]]):
        opts = getattr(function, "sched_trace_spec", {}) or {}
        flags = [flag for flag in ("historic", "firstresult") if opts.get(flag)]
        parts.append(f"## `{name}{signature(function)}`\n")
        if flags:
            parts.append(f"*{', '.join(flags)}*\n")
        parts.append(inspect.cleandoc(function.__doc__ or "") + "\n")
    return "\n".join(parts)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
