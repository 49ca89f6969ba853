"""Steps: found from markers, inferred without them, and refused when none is left.

An analysis that answers when it cannot (``skip_steps=1`` on a trace of one step
used to return a bubble ratio of 0.0) is worse than one that refuses: these tests
pin what the report says it did.
"""

from __future__ import annotations

import pytest

from sched_trace import SchedTraceError
from sched_trace.analysis import AnalysisError, gpipe_bubble_fraction, pipeline_report

from .synthetic import MS, gpipe_order, one_f_one_b_order, simulate, stage_event


def without_markers(events: list) -> list:
    return [e for e in events if e.kind == "stage"]


@pytest.mark.parametrize("order", [gpipe_order, one_f_one_b_order])
def test_without_markers_steps_are_inferred_and_match_the_marked_steps(order):
    events = simulate(4, 8, order, steps=3)
    marked, inferred = pipeline_report(events), pipeline_report(without_markers(events))
    assert (marked.step_source, inferred.step_source) == ("markers", "inferred")
    assert len(inferred.steps) == len(marked.steps) == 3
    for ours, truth in zip(inferred.steps, marked.steps):
        assert (ours.start_ns, ours.end_ns) == (truth.start_ns, truth.end_ns)
        assert [r.busy_ns for r in ours.ranks] == [r.busy_ns for r in truth.ranks]
        assert ours.bubble_ratio == pytest.approx(gpipe_bubble_fraction(4, 8))
    assert any("micro-batch 0" in note and "PP0" in note for note in inferred.notes)
    assert marked.notes == ()


def test_inferred_steps_leave_out_the_host_time_between_steps():
    # 7 ms of optimizer time after each step on every rank: not part of any step.
    events = without_markers(simulate(2, 4, gpipe_order, steps=3, gap_ms=7))
    report = pipeline_report(events)
    assert len(report.steps) == 3
    for step in report.steps:
        assert step.duration_ns == (4 + 1) * 30 * MS
        assert step.bubble_ratio == pytest.approx(gpipe_bubble_fraction(2, 4))


def test_skip_steps_on_inferred_steps_says_which_were_left_out():
    report = pipeline_report(without_markers(simulate(2, 4, gpipe_order, steps=3)), skip_steps=1)
    assert [s.index for s in report.steps] == [1, 2]
    assert report.skipped_steps == (0,)
    assert any("left out 1 of 3 steps" in note for note in report.notes)
    assert "left out 1 of 3 steps" in str(report)
    assert report.to_dict()["skipped_steps"] == (0,)


def test_skip_steps_with_markers_lists_the_left_out_step_of_each_schedule():
    first = simulate(2, 4, gpipe_order, steps=2, schedule="ScheduleGPipe")
    start = max(e.end_ns for e in first)
    second = simulate(2, 4, one_f_one_b_order, steps=2, schedule="Schedule1F1B", start_ns=start)
    report = pipeline_report(first + second, skip_steps=1)
    assert report.skipped_steps == (0, 2)
    assert [s.index for s in report.steps] == [1, 3]


def test_skip_steps_that_leave_no_step_is_refused_naming_the_setting():
    one_step = without_markers(simulate(2, 4, gpipe_order, steps=1))
    with pytest.raises(AnalysisError, match=r"skip_steps=1 leaves no step.*1 step") as caught:
        pipeline_report(one_step, skip_steps=1)
    assert isinstance(caught.value, SchedTraceError)
    with pytest.raises(AnalysisError, match="skip_steps=2 leaves no step"):
        pipeline_report(simulate(2, 4, gpipe_order, steps=2), skip_steps=2)


def test_a_forward_only_trace_is_one_step_and_the_report_says_so():
    events = [stage_event("pp_forward", (i + r) * 10 * MS, (i + r + 1) * 10 * MS, r, microbatch=i % 4)
              for r in range(2) for i in range(8)]
    report = pipeline_report(events)
    assert report.step_source == "whole-trace" and len(report.steps) == 1
    assert report.steps[0].duration_ns == 90 * MS
    assert any("whole trace is one step" in note for note in report.notes)
    with pytest.raises(AnalysisError, match="whole trace is one step"):
        pipeline_report(events, skip_steps=1)


def test_an_unknown_step_name_or_a_bad_skip_count_is_refused():
    events = simulate(2, 4, gpipe_order)
    with pytest.raises(AnalysisError, match=r"step_name='train_step'.*pp_step"):
        pipeline_report(events, step_name="train_step")
    for bad in (-1, 1.5, True):
        with pytest.raises(AnalysisError, match="skip_steps"):
            pipeline_report(events, skip_steps=bad)


def test_an_empty_trace_is_an_empty_report_not_an_error():
    report = pipeline_report([], skip_steps=1)
    assert report.steps == () and report.skipped_steps == ()


def test_a_step_attribute_that_varies_does_not_start_a_new_schedule():
    # issue 21: a queue depth on each step made every step its own "schedule" (23 left out, not 1)
    events = simulate(2, 4, gpipe_order, steps=6)
    steps = [e for e in events if e.kind == "batch"]
    varied = [e._replace(attrs={**e.attrs, "queue_depth": e.batch_id * 3 + e.rank.pp_rank}) if e in steps else e
              for e in events]
    report = pipeline_report(varied, skip_steps=1)
    assert report.skipped_steps == (0,) and [s.index for s in report.steps] == [1, 2, 3, 4, 5]


def test_a_schedule_is_its_kind_and_its_microbatch_count():
    gpipe = simulate(2, 4, gpipe_order, steps=2)
    one_f = simulate(2, 4, one_f_one_b_order, steps=2, schedule="Schedule1F1B", start_ns=max(e.end_ns for e in gpipe))
    more = simulate(2, 8, one_f_one_b_order, steps=2, schedule="Schedule1F1B", start_ns=max(e.end_ns for e in one_f))
    events = gpipe + [e._replace(batch_id=e.batch_id + 2) for e in one_f] + [e._replace(batch_id=e.batch_id + 4)
                                                                             for e in more]
    report = pipeline_report(events, skip_steps=1)
    assert report.skipped_steps == (0, 2, 4) and [s.index for s in report.steps] == [1, 3, 5]
