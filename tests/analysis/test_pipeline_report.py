"""pipeline_report on exact synthetic timelines: the definitions, checked against theory."""

from __future__ import annotations

import json

import pytest

from sched_trace.analysis import gpipe_bubble_fraction, pipeline_report, stage_role
from sched_trace.analysis.paths import percentile

from .synthetic import MS, batch_event, gpipe_order, one_f_one_b_order, simulate, stage_event

SHAPES = [(2, 1), (2, 4), (3, 6), (4, 4), (4, 8), (8, 16)]


@pytest.mark.parametrize("p,m", SHAPES)
def test_gpipe_bubble_ratio_is_theory_on_every_rank_and_step(p, m):
    report = pipeline_report(simulate(p, m, gpipe_order, steps=3))
    expected = (p - 1) / (m + p - 1)
    assert len(report.steps) == 3
    for step in report.steps:
        assert step.theory_bubble_ratio == pytest.approx(expected)
        for rank in step.ranks:
            assert rank.bubble_ratio == pytest.approx(expected)
    assert report.bubble_ratio == pytest.approx(expected)


@pytest.mark.parametrize("p,m", [(2, 2), (2, 4), (4, 4), (4, 8)])
def test_1f1b_bubble_ratio_is_theory(p, m):
    report = pipeline_report(simulate(p, m, one_f_one_b_order, steps=2, schedule="Schedule1F1B"))
    assert [s.schedule for s in report.steps] == ["Schedule1F1B"] * 2
    for rank in report.ranks:
        assert rank.bubble_ratio == pytest.approx(gpipe_bubble_fraction(p, m))


def test_step_windows_tile_the_timeline_when_last_ranks_enter_the_next_step_early():
    # In steady state the last rank starts step k+1 long before rank 0 finishes step k.
    events = simulate(4, 8, gpipe_order, steps=3, forward_ms=10, backward_ms=20)
    early = [e for e in events if e.kind == "batch" and e.rank.pp_rank == 3 and e.batch_id == 2][0]
    late = [e for e in events if e.kind == "batch" and e.rank.pp_rank == 0 and e.batch_id == 1][0]
    assert early.start_ns < late.end_ns
    report = pipeline_report(events)
    for before, after in zip(report.steps, report.steps[1:]):
        assert before.end_ns <= after.start_ns
    assert [s.duration_ns for s in report.steps] == [(8 + 3) * 30 * MS] * 3


def test_host_time_between_steps_is_a_bubble_for_every_rank():
    p, m, gap = 2, 4, 15
    report = pipeline_report(simulate(p, m, gpipe_order, steps=3, gap_ms=gap))
    step_ns = (m + p - 1) * 30 * MS + gap * MS
    for step in report.steps[1:]:
        assert step.duration_ns == step_ns
        for rank in step.ranks:
            assert rank.busy_ns == m * 30 * MS
            assert rank.bubble_ratio == pytest.approx(1 - m * 30 * MS / step_ns)


def test_communication_waits_are_idle_and_reported_on_their_own():
    events = simulate(2, 2, gpipe_order)
    clean = pipeline_report(events)
    rank1 = clean.steps[0].ranks[1]
    first_forward = min(e.start_ns for e in events if e.name == "pp_forward" and e.rank.pp_rank == 1)
    wait = stage_event("pp_p2p_wait", rank1.start_ns, first_forward, 1, batch_id=1)
    waited = pipeline_report(events + [wait]).steps[0].ranks[1]
    assert waited.busy_ns == rank1.busy_ns
    assert waited.idle_ns == rank1.idle_ns
    assert waited.comm_ns == first_forward - rank1.start_ns > 0
    assert waited.other_idle_ns == waited.idle_ns - waited.comm_ns
    assert rank1.comm_ns == 0 and rank1.other_idle_ns == rank1.idle_ns


def test_nested_stages_are_counted_once():
    outer = stage_event("run_batch", 0, 10 * MS, 0, batch_id=1)
    inner = stage_event("forward_kernel", 2 * MS, 6 * MS, 0, batch_id=1, parent_id=outer.span_id)
    step = batch_event("decode_step", 0, 20 * MS, 0, batch_id=1)
    rank = pipeline_report([step, outer, inner]).ranks[0]
    assert (rank.busy_ns, rank.idle_ns, rank.bubble_ratio) == (10 * MS, 10 * MS, 0.5)


def test_without_batch_events_the_whole_trace_is_one_step():
    events = [e for e in simulate(2, 4, gpipe_order) if e.kind == "stage"]
    report = pipeline_report(events)
    assert report.step_name is None and len(report.steps) == 1
    assert report.bubble_ratio == pytest.approx(gpipe_bubble_fraction(2, 4))


@pytest.mark.parametrize("p,m", [(4, 8), (3, 3)])
def test_1f1b_phases_warm_up_with_p_minus_rank_forwards(p, m):
    report = pipeline_report(simulate(p, m, one_f_one_b_order, schedule="Schedule1F1B"))
    for rank in report.steps[0].ranks:
        r = rank.lane.pp_rank
        warmup, steady, cooldown = (rank.phase(n) for n in ("warmup", "steady", "cooldown"))
        assert (warmup.forwards, warmup.backwards) == (min(m, p - r), 0)
        assert sum(ph.forwards for ph in rank.phases) == m
        assert sum(ph.backwards for ph in rank.phases) == m
        assert cooldown.forwards == 0
        assert warmup.start_ns == rank.start_ns and cooldown.end_ns == rank.end_ns
        assert steady.busy_ns == steady.duration_ns  # steady state has no bubble


def test_gpipe_has_no_steady_phase():
    report = pipeline_report(simulate(4, 8, gpipe_order))
    for rank in report.steps[0].ranks:
        assert rank.phase("steady").duration_ns == 0
        assert rank.phase("warmup").forwards == 8 and rank.phase("cooldown").backwards == 8


@pytest.mark.parametrize("order", [gpipe_order, one_f_one_b_order])
def test_order_is_what_each_rank_ran(order):
    report = pipeline_report(simulate(4, 6, order))
    for rank in report.steps[0].ranks:
        assert list(rank.order) == order(4, 6, rank.lane.pp_rank)


def test_critical_path_of_a_balanced_pipeline_spans_the_step_without_waiting():
    report = pipeline_report(simulate(4, 4, gpipe_order))
    step = report.steps[0]
    path = step.critical_path
    assert path.length_ns == step.duration_ns == path.compute_ns
    assert path.wait_ns == 0
    first, last = path.segments[0], path.segments[-1]
    assert (first.lane.pp_rank, first.stage, first.microbatch) == (0, "pp_forward", 0)
    assert (last.lane.pp_rank, last.stage, last.microbatch) == (0, "pp_backward", 3)


def test_critical_path_runs_through_the_slow_stage():
    report = pipeline_report(simulate(4, 8, gpipe_order, slow={2: 3.0}))
    path = report.steps[0].critical_path
    on_slow = [s for s in path.segments if s.lane.pp_rank == 2]
    assert len(on_slow) == 16  # every forward and backward of the bottleneck
    assert report.rank(2).bubble_ratio < report.rank(0).bubble_ratio


def test_latency_percentiles_by_stage_rank_and_microbatch():
    events = [stage_event("run_batch", i * 200 * MS, (i * 200 + d) * MS, i % 2, microbatch=i % 4)
              for i, d in enumerate(range(1, 101))]
    report = pipeline_report(events)
    overall = report.latency("run_batch")
    assert overall.count == 100
    assert overall.p50_ns == pytest.approx(50.5 * MS)
    assert overall.p90_ns == pytest.approx(90.1 * MS)
    assert overall.p99_ns == pytest.approx(99.01 * MS)
    assert overall.max_ns == 100 * MS
    assert report.latency("run_batch", "rank", 1).count == 50
    assert report.latency("run_batch", "microbatch", 3).count == 25
    assert percentile([5], 99) == 5


def test_skip_steps_drops_the_first_steps_of_each_schedule():
    gpipe = simulate(2, 4, gpipe_order, steps=3)
    end = max(e.end_ns for e in gpipe)
    one_f = simulate(2, 4, one_f_one_b_order, steps=3, schedule="Schedule1F1B", start_ns=end)
    report = pipeline_report(gpipe + one_f, skip_steps=1)
    assert [s.index for s in report.steps] == [1, 2, 4, 5]
    assert [(s.schedule, s.steps) for s in report.schedules] == [("ScheduleGPipe m=4", 2), ("Schedule1F1B m=4", 2)]
    for schedule in report.schedules:
        assert schedule.bubble_ratio == pytest.approx(schedule.theory_bubble_ratio)


def test_report_is_json_ready_and_reads_well():
    report = pipeline_report(simulate(2, 4, one_f_one_b_order, schedule="Schedule1F1B"))
    data = json.loads(json.dumps(report.to_dict(), default=str))
    assert data["bubble_ratio"] == pytest.approx(0.2)
    assert data["ranks"][0]["lane"]["pp_rank"] == 0
    assert "\n" not in repr(report) and "bubble_ratio=0.200" in repr(report)
    text = str(report)
    assert "PP0" in text and "PP1" in text and "theory 20.0%" in text


def test_stage_roles_from_names_and_overrides():
    assert [stage_role(n) for n in ("pp_forward", "pp_backward", "pp_backward_weight", "pp_p2p_wait",
                                    "pp_p2p_post", "run_batch")] == [
        "forward", "backward", "weight", "comm", "comm", "compute"]
    assert stage_role("allgather", {"allgather": "comm"}) == "comm"
    events = simulate(2, 2, gpipe_order)
    as_comm = pipeline_report(events, roles={"pp_backward": "comm"})
    assert as_comm.ranks[0].busy_ns == 2 * 10 * MS
    assert as_comm.roles == {"pp_backward": "comm", "pp_forward": "forward", "pp_step": "compute"}
    with pytest.raises(ValueError, match="roles"):
        pipeline_report(events, roles={"pp_backward": "network"})


def test_gpipe_bubble_fraction():
    assert gpipe_bubble_fraction(4, 8) == pytest.approx(3 / 11)
    assert gpipe_bubble_fraction(1, 5) == 0
    with pytest.raises(ValueError, match="microbatches"):
        gpipe_bubble_fraction(4, 0)


def test_unfinished_and_empty_input():
    start_only = stage_event("pp_forward", 0, None, 0)
    report = pipeline_report([start_only])
    assert report.ranks == () and report.steps == () and report.bubble_ratio == 0.0
