"""Docs that run: every ```python block in README.md and docs/ executes; hooks are documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sched_trace import hookdoc

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets():
    for doc in DOCS:
        if not doc.exists():
            continue
        for index, match in enumerate(BLOCK.finditer(doc.read_text())):
            code = match.group(1)
            if code.lstrip().startswith("# not-run"):
                continue
            yield pytest.param(code, id=f"{doc.relative_to(REPO)}#{index}")


@pytest.mark.parametrize("code", list(snippets()))
def test_snippet_runs(code, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_hook_reference_is_generated_from_the_hookspecs():
    assert (REPO / "docs" / "hooks.md").read_text() == hookdoc.render(), (
        "docs/hooks.md is stale: run `python -m sched_trace.hookdoc > docs/hooks.md`"
    )


@pytest.mark.parametrize("name, function", hookdoc.hooks())
def test_every_hook_is_documented_with_its_signature(name, function):
    text = (REPO / "docs" / "hooks.md").read_text()
    assert f"## `{name}{hookdoc.signature(function)}`" in text
    assert function.__doc__ and len(function.__doc__.strip().splitlines()) >= 3, f"{name} needs a real docstring"
