"""``from x import f`` copies a reference: one taken before instrument() keeps the original."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sched_trace

LIBRARY = "def work(value):\n    return value + 1\n"
PROGRAM = textwrap.dedent("""
    from alias_lib import work   # the alias the program takes at import time
    print(type(work).__name__, work(1))
""")


@pytest.fixture
def alias_lib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "alias_lib.py").write_text(LIBRARY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("alias_lib", None)


def test_an_alias_taken_before_instrument_is_not_traced(sched_trace_recorder, alias_lib: Path) -> None:
    from alias_lib import work as early  # noqa: PLC0415 - the point of the test

    sched_trace.instrument("alias_lib:work")
    import alias_lib

    early(1)
    assert sched_trace_recorder.stages("work") == []
    alias_lib.work(1)  # looked up through the module at call time: traced
    assert len(sched_trace_recorder.stages("work")) == 1


def test_instrumenting_before_the_import_patches_every_later_alias(sched_trace_recorder, alias_lib: Path) -> None:
    sched_trace.instrument("alias_lib:work")  # alias_lib is not imported yet: a post-import hook waits
    assert "alias_lib" not in sys.modules
    late = importlib.import_module("alias_lib").work
    from alias_lib import work  # noqa: PLC0415

    work(1)
    late(2)
    assert len(sched_trace_recorder.stages("work")) == 2


def test_sched_trace_run_instruments_before_the_program_takes_its_aliases(alias_lib: Path) -> None:
    (alias_lib / "program.py").write_text(PROGRAM)
    (alias_lib / "sched_trace.toml").write_text('[[instrument]]\ntarget = "alias_lib:work"\n')
    env = dict(os.environ, PYTHONPATH=str(alias_lib), SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD="1")
    plain = subprocess.run([sys.executable, "program.py"], cwd=alias_lib, env=env,
                           capture_output=True, text=True, timeout=60)
    traced = subprocess.run([sys.executable, "-m", "sched_trace.cli", "run", "--", sys.executable, "program.py"],
                            cwd=alias_lib, env=env, capture_output=True, text=True, timeout=60)
    assert plain.stdout.split() == ["function", "2"]
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.split() == ["Traced", "2"]
