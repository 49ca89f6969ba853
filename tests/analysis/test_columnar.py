"""The analysis on columns gives the analysis on events, however it is cut up.

The per-step detail (phases, order, intervals, critical path) is computed from
events, one step at a time; the numbers of every step (busy, communication, idle)
from columns with vector operations, a bucket of steps at a time. These tests hold
the two against each other, and the file path (columns spilled to disk) against
events read into memory.
"""

from __future__ import annotations

import pickle

import pytest

from sched_trace import traceio
from sched_trace.analysis import StepSeries, load_events, open_traces, pipeline_report
from sched_trace.analysis import _engine

from .synthetic import MS, gpipe_order, one_f_one_b_order, simulate, stage_event

TRACES = {
    "gpipe": lambda: simulate(4, 8, gpipe_order, steps=5),
    "1f1b-gaps": lambda: simulate(4, 6, one_f_one_b_order, steps=6, gap_ms=7, schedule="Schedule1F1B"),
    "slow-rank": lambda: simulate(3, 4, gpipe_order, steps=4, slow={1: 2.5}),
    "inferred": lambda: [e for e in simulate(2, 4, gpipe_order, steps=4) if e.kind == "stage"],
    "whole-trace": lambda: [stage_event("pp_forward", (i + r) * 10 * MS, (i + r + 1) * 10 * MS, r, microbatch=i % 4)
                            for r in range(2) for i in range(8)],
    "with-waits": lambda: _with_waits(simulate(2, 4, gpipe_order, steps=3)),
}


def _with_waits(events: list) -> list:
    waits = [stage_event("pp_p2p_wait", e.start_ns - 3 * MS, e.start_ns + MS, e.rank.pp_rank, batch_id=e.batch_id)
             for e in events if e.name == "pp_forward" and e.microbatch % 2]
    return events + waits


def numbers(step) -> list:
    return [(r.lane, r.step_ns, r.busy_ns, r.comm_ns, r.idle_ns, r.bubble_ratio) for r in step.ranks]


@pytest.mark.parametrize("name", sorted(TRACES))
def test_steps_in_many_small_buckets_give_the_report_of_one_bucket(name, monkeypatch):
    events = TRACES[name]()
    whole = pipeline_report(events)
    monkeypatch.setattr(_engine, "BUCKET_ROWS", 5)  # a bucket per step, or less
    assert pipeline_report(events) == whole


@pytest.mark.parametrize("name", sorted(TRACES))
def test_the_numbers_of_every_step_are_those_of_its_detail(name):
    events = TRACES[name]()
    detailed = pipeline_report(events, detail="all")
    compact = pipeline_report(events, detail="representative")
    assert isinstance(compact.steps, StepSeries) and not isinstance(detailed.steps, StepSeries)
    for field in ("ranks", "schedules", "latencies", "skipped_steps", "notes", "step_name", "bubble_ratio"):
        assert getattr(compact, field) == getattr(detailed, field), field
    assert len(compact.steps) == len(detailed.steps)
    for ours, full in zip(compact.steps, detailed.steps):
        assert (ours.index, ours.start_ns, ours.end_ns, ours.attrs) == (full.index, full.start_ns, full.end_ns, full.attrs)
        assert numbers(ours) == numbers(full)
        assert ours.theory_bubble_ratio == full.theory_bubble_ratio
        if ours.index in compact.steps.detailed:
            assert ours == full


def test_representative_steps_are_first_median_worst_and_last_of_each_schedule():
    events = simulate(2, 4, gpipe_order, steps=9, slow={1: 1.5})
    report = pipeline_report(events, detail="representative")
    kept = [s.index for s in report.steps]
    ratios = {s.index: s.bubble_ratio for s in report.steps}
    chosen = set(report.steps.detailed)
    assert {kept[0], kept[-1], max(kept, key=lambda k: (ratios[k], k))} <= chosen
    assert len(chosen) <= 4


def test_a_step_series_is_a_sequence_that_pickles():
    report = pipeline_report(simulate(3, 4, gpipe_order, steps=6), detail="representative", skip_steps=1)
    steps = report.steps
    assert len(steps) == 5 and [s.index for s in steps] == [1, 2, 3, 4, 5]
    assert steps[-1].index == 5 and [s.index for s in steps[1:3]] == [2, 3]
    with pytest.raises(IndexError):
        steps[5]
    back = pickle.loads(pickle.dumps(report))
    assert back == report and back.to_dict() == report.to_dict()
    data = report.to_dict()
    assert data["steps_in_detail"] == "representative"
    assert [s["index"] for s in data["steps"]] == sorted(steps.detailed)
    assert data["step_table"]["index"] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("writer", ["perfetto", "chrome"])
def test_files_read_as_columns_give_the_report_of_events_in_memory(tmp_path, writer):
    events = simulate(4, 8, one_f_one_b_order, steps=4, schedule="Schedule1F1B")
    write = traceio.write_perfetto if writer == "perfetto" else traceio.write_chrome
    suffix = ".perfetto-trace" if writer == "perfetto" else ".json"
    for rank in range(4):
        mine = [e for e in events if e.rank.pp_rank == rank]
        write(mine, tmp_path / f"rank{rank}{suffix}", {("host", 1000 + rank): 17 * rank})
    expected = pipeline_report(load_events([tmp_path]), skip_steps=1)
    with open_traces([tmp_path]) as traces:
        assert pipeline_report(traces, skip_steps=1) == expected


def test_a_lane_whose_stages_fall_in_no_step_is_no_trouble():
    events = simulate(2, 4, gpipe_order, steps=2)
    stray = [stage_event("pp_forward", -50 * MS, -40 * MS, 3, microbatch=0)]  # before every window
    report = pipeline_report(events + stray)
    assert report.ranks == pipeline_report(events).ranks and len(report.steps) == 2


def test_the_same_run_in_two_formats_counts_once(tmp_path):
    events = simulate(3, 4, gpipe_order, steps=3)
    for rank in range(3):
        mine = [e for e in events if e.rank.pp_rank == rank]
        traceio.write_perfetto(mine, tmp_path / f"rank{rank}.perfetto-trace", {("host", 1000 + rank): 0})
        traceio.write_chrome(mine, tmp_path / f"rank{rank}.json", {("host", 1000 + rank): 0})
    with open_traces([tmp_path]) as traces:
        assert traces.duplicates == len(events) and traces.store.count == len(events)
        assert traces.shared_processes == {("host", 1000 + rank) for rank in range(3)}
        assert pipeline_report(traces) == pipeline_report(events)
