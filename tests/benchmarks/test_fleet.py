"""The fleet benchmark makes its trace through sched-trace itself and times what a user runs.

Behaviour only (numbers are the benchmark's to report): every slice the ranks traced
is in their files, and the commands it times run on them.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sched_trace_perfetto")
pytest.importorskip("rich")
pytest.importorskip("matplotlib")

from benchmarks import bench_fleet  # noqa: E402
from sched_trace.analysis import open_traces  # noqa: E402


def test_the_generated_trace_holds_every_traced_slice_and_the_commands_run(tmp_path, monkeypatch):
    directory = bench_fleet.generate(2 * bench_fleet.RANKS * bench_fleet.SLICES_PER_STEP, root=tmp_path)
    info = json.loads((directory / "generated.txt").read_text())
    assert info["slices"] == 2 * bench_fleet.RANKS * bench_fleet.SLICES_PER_STEP
    assert len(list(directory.glob("*.perfetto-trace"))) == bench_fleet.RANKS
    with open_traces([directory]) as traces:
        assert traces.store.count == info["slices"] and traces.duplicates == 0
    assert bench_fleet.generate(info["slices"], root=tmp_path) == directory  # reused, not made again
    monkeypatch.setattr(bench_fleet, "ROOT", tmp_path)
    found = bench_fleet.measure(info["slices"])
    assert "steps 1" in found["report"]["stdout"] and "-> " in found["merge"]["stdout"]
    for command in ("report", "merge"):
        assert found[command]["wall_s"] > 0 and found[command]["rss_mib"] > 0
