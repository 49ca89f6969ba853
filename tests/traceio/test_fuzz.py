"""The atheris fuzz script for the trace readers runs briefly as part of the suite.

It fails on any exception from a reader other than sched-trace's own errors, and
on any input slower than its per-input timeout (a hang). A longer run:
``python fuzz/fuzz_readers.py corpus/ -max_total_time=600``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris has wheels for Linux x86_64 only (pip install atheris)")
pytest.importorskip("perfetto")

SCRIPT = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_readers.py"


def test_readers_survive_a_few_thousand_fuzzed_inputs(tmp_path):
    command = [sys.executable, str(SCRIPT), "-atheris_runs=3000", "-max_total_time=20", "-timeout=10",
               f"-artifact_prefix={tmp_path}/"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "Done" in log and "Uncaught Python exception" not in log
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))


def test_the_fuzz_target_flags_a_foreign_exception(tmp_path, monkeypatch):
    """The harness is no test that cannot fail: a reader bug surfaces as the raw exception."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import fuzz_readers
    finally:
        sys.path.remove(str(SCRIPT.parent))

    def broken(path, text):
        raise KeyError("a reader bug")

    monkeypatch.setattr(fuzz_readers, "read_chrome", broken)
    with pytest.raises(KeyError):
        fuzz_readers.test_one_input(b"\x05{}")
    fuzz_readers.test_one_input(b"\x06{\"resourceSpans\": \"x\"}")  # a project error is no finding
