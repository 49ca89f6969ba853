"""The benchmark suite runs in --quick mode and writes docs/performance.md's shape.

Behaviour only: numbers are reported by the suite, never asserted here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_the_table_and_writes_the_markdown(tmp_path):
    output = tmp_path / "performance.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "dispatch", "--only", "memory",
         "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD="1"),
    )
    assert done.returncode == 0, done.stderr
    assert "cached guarded call list vs pm.hook.x" in done.stdout
    text = output.read_text(encoding="utf-8")
    assert "python -m benchmarks --quick --only dispatch --only memory" in text
    for heading in ("## Machine", "## Results", "### hook dispatch", "### memory, exporters stalled",
                    "## Targets not met in this run"):
        assert heading in text
    for key in ("- cpu:", "- cores:", "- python:", "- packages:", "- date:"):
        assert key in text
    assert "| 4 plugin(s): cached guarded call list" in text
    assert "events dropped (counted) vs events beyond the buffer" in text


def test_a_failing_module_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    from benchmarks import __main__ as runner

    broken = types.ModuleType("benchmarks.bench_broken")

    def run(quick: bool) -> list:
        raise RuntimeError("exporter went away")

    broken.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.bench_broken", broken)
    rows, problem, _ = runner.run_module("broken", quick=True)
    assert rows == [] and "exporter went away" in problem
    rows, problem, _ = runner.run_module("absent_module", quick=True)
    assert rows == [] and problem == "not present"


def test_markdown_lists_missed_targets_and_modules_that_did_not_run(tmp_path):
    from benchmarks.harness import machine, row
    from benchmarks.report import write_markdown

    results = [
        ("call", row("traced vs wrapt", 2000.0, 100.0, 20.0, "ns/call", target="<= 10x", met=False, group="on")),
        ("call", row("off vs wrapt", 110.0, 100.0, 1.1, "ns/call", target="<= 1.2x", met=True, group="off")),
    ]
    output = tmp_path / "performance.md"
    write_markdown(output, results, [("otel", "failed:\nTraceback ...")], machine(), "python -m benchmarks",
                   {"call": 1.0})
    text = output.read_text(encoding="utf-8")
    assert "| traced vs wrapt | 2,000 ns/call | 100 ns/call | 20.0x | <= 10x: NOT met |" in text
    assert "- traced vs wrapt: 20.0x against <= 10x" in text
    assert "- `otel`: failed:" in text


@pytest.mark.parametrize("module", ["call", "dispatch", "threads", "memory", "ranks", "instructions"])
def test_every_own_module_exposes_run(module):
    import importlib

    bench = importlib.import_module(f"benchmarks.bench_{module}")
    assert callable(bench.run)
