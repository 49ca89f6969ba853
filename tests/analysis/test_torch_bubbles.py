"""Acceptance: real torch.distributed.pipelining ranks (gloo, CPU), checked against witnesses.

Four spawned ranks run GPipe and 1F1B for several (p, m) with balanced sleeping
stages (20 ms forward, 40 ms backward), traced by the ``torch-pipelining``
profile with no edit to the training code. Their events reach this process via
``gather_object`` (pickled as they are).

The reported busy and idle time are compared with an oracle's own clock readings
of the same run (wrapt wrappers beneath sched-trace's, timing every forward,
backward and step), not with theory: a busy machine stretches the run, and both
see the same stretched run. How close the measured ratio comes to
(p-1)/(m+p-1) is a benchmark figure (``benchmarks/bench_bubbles.py``).
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from sched_trace.analysis import gpipe_bubble_fraction, pipeline_report  # noqa: E402

from .pipeline_worker import run_ranks  # noqa: E402

CONFIGS = [("gpipe", 2, 4), ("1f1b", 2, 4), ("gpipe", 4, 4), ("1f1b", 4, 4), ("gpipe", 4, 8), ("1f1b", 4, 8)]
STEPS = 4
ROUNDING_NS = 1_000  # the per-process epoch offsets of two ranks differ by well under a microsecond
STAGE_OF = {"F": "pp_forward", "B": "pp_backward", "step": "pp_step"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    return run_ranks(4, CONFIGS, dict(forward_ms=20, backward_ms=40, steps=STEPS), str(out))


def matched_calls(entry, rank):
    """(oracle reading, sched-trace event) per call on ``rank``, paired in call order."""
    events = [e for e in entry["events"] if e.rank.pp_rank == rank]
    pairs = []
    for kind, stage in STAGE_OF.items():
        readings = sorted((r for r in entry["oracle"][rank] if r[0] == kind), key=lambda r: r[2])
        traced = sorted((e for e in events if e.name == stage), key=lambda e: e.start_ns)
        assert len(readings) == len(traced), (kind, rank)
        pairs.extend(zip(readings, traced))
    return pairs


def excess(pair):
    """How much longer sched-trace saw the call than the oracle beneath it did."""
    reading, event = pair
    return (event.end_ns - event.start_ns) - (reading[3] - reading[2])


def clipped(intervals, low, high):
    return sum(max(0, min(end, high) - max(start, low)) for start, end in intervals)


@pytest.mark.parametrize("kind,p,m", CONFIGS)
def test_every_traced_call_encloses_the_oracles_reading_of_it(runs, kind, p, m):
    entry = runs[(kind, p, m)]
    for rank in range(p):
        pairs = matched_calls(entry, rank)
        for (what, chunk, start, end), event in pairs:
            assert event.start_ns - ROUNDING_NS <= start <= end <= event.end_ns + ROUNDING_NS, (what, chunk)
            if what != "step":
                assert event.microbatch == chunk
        # The oracle sits right beneath: sched-trace's own share is a sliver of the calls.
        assert sum(excess(pair) for pair in pairs) <= 0.05 * sum(r[3] - r[2] for r, _ in pairs)


@pytest.mark.parametrize("kind,p,m", CONFIGS)
def test_reported_busy_and_idle_are_the_oracles(runs, kind, p, m):
    entry = runs[(kind, p, m)]
    report = pipeline_report(entry["events"], skip_steps=1)
    assert len(report.steps) == STEPS - 1 and report.skipped_steps == (0,)
    assert [r.lane.pp_rank for r in report.ranks] == list(range(p))
    (schedule,) = report.schedules
    assert schedule.theory_bubble_ratio == pytest.approx(gpipe_bubble_fraction(p, m))
    pairs = {rank: matched_calls(entry, rank) for rank in range(p)}
    step_calls = {rank: [pair for pair in pairs[rank] if pair[0][0] == "step"] for rank in range(p)}
    steps = {rank: [reading for reading, _ in step_calls[rank]] for rank in range(p)}
    for step in report.steps:
        k = step.index
        # The oracle's window, by the documented definition, from its own readings.
        low = min(steps[r][k][2] for r in range(p))
        if k:
            low = max(low, max(steps[r][k - 1][3] for r in range(p)))
        high = max(steps[r][k][3] for r in range(p))
        # What sched-trace's readings of the step calls may differ by: their measured excess.
        edge = ROUNDING_NS + sum(excess(step_calls[r][j]) for r in range(p) for j in {k, max(k - 1, 0)})
        assert abs(step.start_ns - low) <= edge and abs(step.end_ns - high) <= edge
        for rank_step in step.ranks:
            rank = rank_step.lane.pp_rank
            own = steps[rank][k]
            calls = [pair for pair in pairs[rank] if pair[0][0] != "step" and own[2] <= pair[0][2] < own[3]]
            oracle_busy = clipped([(r[2], r[3]) for r, _ in calls], low, high)
            slack = sum(excess(pair) for pair in calls) + edge
            assert abs(rank_step.busy_ns - oracle_busy) <= slack, (rank, k)
            assert abs(rank_step.idle_ns - (high - low - oracle_busy)) <= slack + edge, (rank, k)
            assert rank_step.comm_ns > 0  # the P2P waits were traced
            assert rank_step.comm_ns <= rank_step.idle_ns  # and are part of the idle time, never of busy


def test_events_arrive_through_gather_object_unchanged(runs):
    for entry in runs.values():
        for rank, (before, after) in entry["digests"].items():
            assert before == after, rank


@pytest.mark.parametrize("kind,p,m", CONFIGS)
def test_trace_order_is_the_order_the_schedule_ran(runs, kind, p, m):
    entry = runs[(kind, p, m)]
    report = pipeline_report(entry["events"])
    assert len(report.steps) == STEPS
    per_step = 2 * m
    for step in report.steps:
        assert sorted(r.lane.pp_rank for r in step.ranks) == list(range(p))
        for rank in step.ranks:
            executed = entry["executed"][rank.lane.pp_rank][step.index * per_step:(step.index + 1) * per_step]
            assert list(rank.order) == executed
            assert sorted(rank.order) == sorted([("B", i) for i in range(m)] + [("F", i) for i in range(m)])


@pytest.mark.parametrize("kind,p,m", [c for c in CONFIGS if c[0] == "gpipe"])
def test_gpipe_plan_matches_what_ran(runs, kind, p, m):
    entry = runs[(kind, p, m)]
    for rank, planned in entry["planned"].items():
        assert planned == entry["executed"][rank][:2 * m]


@pytest.mark.parametrize("kind,p,m", [c for c in CONFIGS if c[0] == "1f1b"])
def test_1f1b_warm_up_phase_has_p_minus_rank_forwards(runs, kind, p, m):
    report = pipeline_report(runs[(kind, p, m)]["events"], skip_steps=1)
    for step in report.steps:
        for rank in step.ranks:
            warmup = rank.phase("warmup")
            assert (warmup.forwards, warmup.backwards) == (min(m, p - rank.lane.pp_rank), 0)
            assert rank.phase("cooldown").forwards == 0
