"""profile_check reads sources to find missing targets, without importing what is fine."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from sched_trace import config, profile_check

FILES = {
    "fakelib/__init__.py": "from .engine import Engine as PublicEngine\n",
    "fakelib/base.py": textwrap.dedent("""
        from abc import ABC

        class Base(ABC):
            def forward_one_chunk(self, chunk_id):
                return chunk_id
    """),
    "fakelib/engine.py": textwrap.dedent("""
        from . import instructions
        from .base import Base
        from .instructions import *  # noqa

        class Engine(Base):
            def step(self):
                pass

            def _exec_forward(self, buffer_id):
                pass

            TABLE = {instructions.ForwardPass: _exec_forward, "named": _exec_forward}

        def wait_p2p(work):
            pass
    """),
    "fakelib/instructions.py": "class ForwardPass:\n    pass\n",
    "fakelib/lazy.py": "def __getattr__(name):\n    return len\n",
}


@pytest.fixture
def fakelib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "fakelib" or m.startswith("fakelib.")]:
        del sys.modules[name]


@pytest.mark.parametrize("target", [
    "fakelib.engine:Engine.step",
    "fakelib.engine:Engine.forward_one_chunk",          # inherited from another module
    "fakelib.engine:wait_p2p",
    "fakelib.engine:Engine.TABLE[instructions.ForwardPass]",
    "fakelib.engine:Engine.TABLE['named']",
    "fakelib:PublicEngine.step",                         # re-exported under another name
    "fakelib.engine:ForwardPass",                        # bound by a star import
    "fakelib.lazy:anything",                             # module __getattr__
    "notinstalled.mod:f",                                # nothing to compare against
])
def test_present_or_undecidable_targets_pass_without_importing(fakelib: Path, target: str) -> None:
    assert profile_check.target_problem(target) is None
    assert "fakelib" not in sys.modules


@pytest.mark.parametrize("target, message", [
    ("fakelib.engine:Engine.stepp", "'Engine' has no attribute 'stepp'"),
    ("fakelib.engine:Engine.forward_chunk", "'Engine' has no attribute 'forward_chunk'"),
    ("fakelib.base:Bsae", "module 'fakelib.base' has no attribute 'Bsae'; close names: Base"),
    ("fakelib.engine:Engine.TABLE[BackwardPass]", "has no entry 'BackwardPass' (entries: instructions.ForwardPass, 'named')"),
    ("fakelib.gone:f", "module 'fakelib.gone' does not exist"),
])
def test_missing_targets_are_named_with_a_hint(fakelib: Path, target: str, message: str) -> None:
    problem = profile_check.target_problem(target)
    assert problem is not None and message in problem and "installed: fakelib" in problem


def test_a_profile_with_a_missing_target_raises_naming_the_entry(fakelib: Path) -> None:
    profile = config.parse({"instrument": [
        {"target": "fakelib.engine:Engine.step"}, {"target": "fakelib.engine:Engine.stepp"}]}, "fake.toml")
    with pytest.raises(config.ConfigError) as caught:
        profile_check.check_profile("fake", profile)
    assert "instrument[1].target" in str(caught.value) and "profile 'fake'" in str(caught.value)
