"""Acceptance: real torch.distributed.pipelining ranks (gloo, CPU), measured against theory.

Four spawned ranks run GPipe and 1F1B for several (p, m) with balanced sleeping
stages (20 ms forward, 40 ms backward), traced by the ``torch-pipelining``
profile with no edit to the training code. The measured bubble ratio must sit
within 0.05 of (p-1)/(m+p-1), and each rank's forward/backward order in the
trace must be the order the schedule called them in.

Real runs sit above theory: every P2P hop on the critical path costs about a
millisecond, and a stage slowed by a neighbour on a shared 2-core machine
delays every rank after it (measured: +0.01 to +0.04 at load 6). One step can
be stretched by such a neighbour, so the measurement is the median of three.
"""

from __future__ import annotations

import statistics

import pytest

pytest.importorskip("torch")

from sched_trace.analysis import gpipe_bubble_fraction, pipeline_report  # noqa: E402

from .pipeline_worker import run_ranks  # noqa: E402

CONFIGS = [("gpipe", 2, 4), ("1f1b", 2, 4), ("gpipe", 4, 4), ("1f1b", 4, 4), ("gpipe", 4, 8), ("1f1b", 4, 8)]
STEPS = 4
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    return run_ranks(4, CONFIGS, dict(forward_ms=20, backward_ms=40, steps=STEPS), str(out))


@pytest.mark.parametrize("kind,p,m", CONFIGS)
def test_measured_bubble_ratio_is_theory(runs, kind, p, m):
    # The first step of a schedule also infers shapes and sets up P2P: leave it out.
    report = pipeline_report(runs[(kind, p, m)]["events"], skip_steps=1)
    theory = gpipe_bubble_fraction(p, m)
    assert len(report.steps) == STEPS - 1
    assert [r.lane.pp_rank for r in report.ranks] == list(range(p))
    (schedule,) = report.schedules
    assert schedule.theory_bubble_ratio == pytest.approx(theory)
    measured = statistics.median(step.bubble_ratio for step in report.steps)
    print(f"{kind} p={p} m={m}: measured {measured:.3f} (steps {[round(s.bubble_ratio, 3) for s in report.steps]}),"
          f" theory {theory:.3f}, per rank {[round(r.bubble_ratio, 3) for r in report.ranks]}")
    # Overheads (P2P, Python between stages) can only add idle time.
    assert theory - 0.02 <= measured <= theory + TOLERANCE
    for rank in report.ranks:
        assert rank.comm_ns > 0  # the P2P waits were traced, and counted as idle
        assert rank.comm_ns <= rank.idle_ns + rank.step_ns * 0.01


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
