"""The C hot path is optional: a build without a compiler still gives a working package.

Ground truth: the wheel pip builds from this checkout, with the compiler the machine
has and with one that always fails (``CC=/bin/false``), and the package imported from
the second wheel's files, tracing with the generated Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("setuptools")


def _wheel(tmp_path: Path, name: str, **env: str) -> zipfile.ZipFile:
    """The wheel of a clean copy of the sources (the checkout holds the editable install's build)."""
    source, out = tmp_path / f"{name}-src", tmp_path / name
    for file in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / file, source / file if source.exists() else _made(source) / file)
    shutil.copytree(REPO / "sched_trace", source / "sched_trace",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), "-q"], check=True, capture_output=True, text=True, timeout=300,
                   cwd=tmp_path, env=dict(os.environ, **env))
    (wheel,) = out.glob("sched_trace-*.whl")
    return zipfile.ZipFile(wheel)


def _made(directory: Path) -> Path:
    directory.mkdir()
    return directory


def _extension(names: list[str]) -> list[str]:
    return [name for name in names if name.startswith("sched_trace/_speedups") and not name.endswith(".c")]


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler here")
def test_a_build_with_a_compiler_carries_the_c_hot_path(tmp_path):
    assert _extension(_wheel(tmp_path, "built").namelist())


def test_a_build_without_a_compiler_goes_on_and_traces_in_python(tmp_path):
    wheel = _wheel(tmp_path, "pure", CC="/bin/false")
    assert _extension(wheel.namelist()) == []
    site = tmp_path / "site"
    wheel.extractall(site)
    code = """if True:
        import sys  # the checkout's editable install maps sched_trace to itself: not here
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        import sched_trace
        from sched_trace import _native
        from sched_trace.testing import MemoryRecorder
        assert _native.speedups is None, _native.speedups
        assert sched_trace.__file__.startswith(%r), sched_trace.__file__

        @sched_trace.stage("work", microbatch="mb")
        def work(mb):
            return mb + 1

        recorder = MemoryRecorder()
        sched_trace.register(recorder)
        assert [work(mb) for mb in range(3)] == [1, 2, 3]
        assert [event.microbatch for event in recorder.stages("work")] == [0, 1, 2]
        print("ok")
    """ % str(site)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(site), SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert done.stdout.strip() == "ok", done.stderr
