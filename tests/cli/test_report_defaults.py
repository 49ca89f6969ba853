"""``sched-trace report``'s step defaults (the demo's too: tests/cli/test_demo_commands.py), said aloud."""

from __future__ import annotations

import json

import pytest

from sched_trace import cli, traceio

from ..analysis.synthetic import gpipe_order, one_f_one_b_order, simulate

pytest.importorskip("rich")
pytest.importorskip("matplotlib")


def write_ranks(directory, events):
    directory.mkdir()
    for rank in sorted({e.rank.pp_rank for e in events}):
        mine = [e for e in events if e.rank.pp_rank == rank]
        traceio.write_perfetto(mine, directory / f"rank{rank}.perfetto-trace", {("host", 1000 + rank): 0})
    return directory


def two_schedules(steps: int) -> list:
    gpipe = simulate(4, 8, gpipe_order, steps=steps)
    later = simulate(4, 8, one_f_one_b_order, steps=steps, schedule="Schedule1F1B",
                     start_ns=max(e.end_ns for e in gpipe))
    return gpipe + [e._replace(batch_id=e.batch_id + steps) for e in later]


def test_report_leaves_out_the_first_step_of_each_schedule_and_says_which(tmp_path, capsys):
    traces = write_ranks(tmp_path / "traces", two_schedules(steps=3))
    assert cli.main(["report", str(traces), "--out", str(tmp_path / "out"), "--no-png"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["skipped_steps"] == [0, 3] and [s["index"] for s in data["steps"]] == [1, 2, 4, 5]
    assert "steps 1-2, 4-5 (4 analysed; steps 0, 3 left out: the first step of each schedule, --skip-steps 1;" in printed
    assert "(sums over 4 steps of pp_step)" in printed and "ms/step" in printed


def test_report_keeps_the_only_step_of_a_schedule(tmp_path, capsys):
    traces = write_ranks(tmp_path / "traces", two_schedules(steps=1))
    assert cli.main(["report", str(traces), "--out", str(tmp_path / "out"), "--no-png"]) == 0
    assert "steps 0-1 (2 analysed; none left out)" in capsys.readouterr().out
    # asked for explicitly, skipping every step is refused, and nothing is written
    assert cli.main(["report", str(traces), "--out", str(tmp_path / "asked"), "--skip-steps", "1"]) == 2
    assert "leaves no step" in capsys.readouterr().err
    assert not (tmp_path / "asked").exists()


def test_step_lists_are_summarised_never_one_number_per_step():
    from sched_trace.commands._console import counted, number_ranges

    assert counted(list(range(1, 32662))) == "steps 1-32661"
    assert counted([0]) == "step 0" and counted([0, 3]) == "steps 0, 3"
    assert number_ranges([1, 2, 4, 5, 9]) == "1-2, 4-5, 9"
    scattered = number_ranges(list(range(0, 2000, 2)))  # 1,000 runs of one step each
    assert len(scattered) < 80 and scattered.startswith("0, 2, 4") and scattered.endswith("1998")
