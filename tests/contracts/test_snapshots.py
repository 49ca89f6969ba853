"""Snapshots: the shape of a trace, written once, compared after, a readable diff when it moves."""

from __future__ import annotations

from pathlib import Path

from sched_trace import snapshots
from sched_trace.contracts import Trace

from .synthetic import lifecycle, pipeline, rank

REPO = Path(__file__).resolve().parents[2]


def test_the_shape_has_names_nesting_counts_ranks_levels_and_keys_but_no_times_or_ids() -> None:
    events = pipeline(ranks=2, steps=2, microbatches=4) + lifecycle("a", where=rank(0)) + lifecycle("b", where=rank(0))
    assert snapshots.shape(Trace(events)) == [
        "pp_step x2 on PP0  [batch, level 1; keys: bid, schedule]",
        "request arrived x2 on PP0  [request; keys: prompt_tokens]",
        "request queued x2 on PP0  [request; keys: prompt_tokens]",
        "request scheduled x2 on PP0  [request; keys: prompt_tokens]",
        "request first_token x2 on PP0  [request; keys: prompt_tokens]",
        "request finished x2 on PP0  [request; keys: prompt_tokens]",
        "pp_step > pp_forward x8 on PP0 stage_index=0  [stage, level 2; keys: bid, pp_mb_id]",
        "pp_step x2 on PP1  [batch, level 1; keys: bid, schedule]",
        "pp_step > pp_forward x8 on PP1 stage_index=1  [stage, level 2; keys: bid, pp_mb_id]",
    ]
    # Another run: other pids, span ids and times, the same shape.
    again = [e._replace(start_ns=e.start_ns + 12345, end_ns=e.end_ns + 99999, rank=e.rank.replace(pid=4242))
             for e in pipeline(ranks=2, steps=2, microbatches=4)]
    assert snapshots.shape(Trace(again)) == snapshots.shape(Trace(pipeline()))
    assert snapshots.shape(Trace(again), counts=False)[0] == "pp_step on PP0  [batch, level 1; keys: bid, schedule]"


def test_the_diff_names_what_changed_and_a_vanished_span_as_x0() -> None:
    recorded = snapshots.shape(Trace(pipeline()))
    lost = snapshots.shape(Trace(pipeline(drop=lambda pp, step, mb: pp == 1)))
    assert snapshots.diff(recorded, lost) == [
        "- pp_step > pp_forward x8 on PP1 stage_index=1  [stage, level 2; keys: bid, pp_mb_id]",
        "+ pp_step > pp_forward x0 on PP1 stage_index=1",
    ]
    fewer = snapshots.shape(Trace(pipeline(drop=lambda pp, step, mb: (pp, mb) == (0, 3))))
    assert snapshots.diff(recorded, fewer) == [
        "- pp_step > pp_forward x8 on PP0 stage_index=0  [stage, level 2; keys: bid, pp_mb_id]",
        "+ pp_step > pp_forward x6 on PP0 stage_index=0  [stage, level 2; keys: bid, pp_mb_id]",
    ]
    assert snapshots.diff(lost, recorded)[0] == "- pp_step > pp_forward x0 on PP1 stage_index=1"
    assert snapshots.diff(recorded, recorded) == []


USER_TEST = '''
import os
import sched_trace
from sched_trace.contracts import Trace


@sched_trace.batch("pp_step")
def step(mbs):
    for mb in range(mbs):
        forward(mb)
        if os.environ.get("LOSE_BACKWARD") != "1":
            backward(mb)


@sched_trace.stage("pp_forward", level=2, microbatch="mb")
def forward(mb):
    pass


@sched_trace.stage("pp_backward", level=2, microbatch="mb")
def backward(mb):
    pass


def test_pipeline(sched_trace_recorder, sched_trace_snapshot):
    sched_trace.set_thread_info("Trainer", pp_rank=1)
    for _ in range(2):
        step(4)
    sched_trace_snapshot.assert_match(sched_trace_recorder)
'''


def test_update_writes_beside_the_test_then_runs_compare_and_fail_with_the_diff(pytester, monkeypatch) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    missing = pytester.runpytest("-p", "no:cacheprovider")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*no sched-trace snapshot at *__snapshots__*test_user*test_pipeline.txt*"
                                  "--sched-trace-snapshot-update*"])

    pytester.runpytest("-p", "no:cacheprovider", "--sched-trace-snapshot-update").assert_outcomes(passed=1)
    written = pytester.path / "__snapshots__" / "test_user" / "test_pipeline.txt"
    assert snapshots.read(written) == [
        "pp_step x2 on PP1  [batch, level 1; keys: bid]",
        "pp_step > pp_backward x8 on PP1  [stage, level 2; keys: bid, pp_mb_id]",
        "pp_step > pp_forward x8 on PP1  [stage, level 2; keys: bid, pp_mb_id]",
    ]
    assert written.read_text().startswith("# sched-trace snapshot of test_user.py::test_pipeline\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)

    monkeypatch.setenv("LOSE_BACKWARD", "1")
    lost = pytester.runpytest("-p", "no:cacheprovider")
    lost.assert_outcomes(failed=1)
    lost.stdout.fnmatch_lines([
        "*the trace no longer has the shape recorded in *test_pipeline.txt (- recorded, + emitted now):",
        "*  - pp_step > pp_backward x8 on PP1  [[]stage, level 2; keys: bid, pp_mb_id[]]",
        "*  + pp_step > pp_backward x0 on PP1",
        "*If the change is intended, rerun with --sched-trace-snapshot-update.",
    ])
