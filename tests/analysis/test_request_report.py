"""request_report: per-request phases and latency percentiles from request events."""

from __future__ import annotations

import pickle

import pytest

import sched_trace
from sched_trace.analysis import RequestTimeline, request_report
from sched_trace._events import NO_ATTRS, RankInfo, RequestEvent, StageEvent

MS = 1_000_000
RANK = RankInfo("h", 1, 1, "Scheduler", pp_rank=0)


def ev(phase, ts_ms, rid, prompt=None, output=None, batch_id=None):
    return RequestEvent(phase, ts_ms * MS, rid, RANK, prompt, output, batch_id, NO_ATTRS)


def test_durations_follow_first_and_last_rules():
    timeline = RequestTimeline("r")
    for event in [ev("queued", 5, "r"), ev("arrived", 0, "r"), ev("scheduled", 10, "r"),
                  ev("first_token", 25, "r"), ev("scheduled", 40, "r"), ev("first_token", 45, "r"),
                  ev("finished", 80, "r", output=5), ev("finished", 125, "r", output=10)]:
        timeline.add(event.phase, event.ts_ns, event.prompt_tokens, event.output_tokens)
    latency = timeline.latency()
    assert (latency.queue_ns, latency.prefill_ns, latency.ttft_ns) == (10 * MS, 15 * MS, 25 * MS)
    assert (latency.decode_ns, latency.e2e_ns) == (100 * MS, 125 * MS)  # the last finished
    assert latency.tpot_ns == pytest.approx(100 * MS / 9)
    assert latency.outcome == "finished" and latency.output_tokens == 10


def test_missing_phases_leave_durations_unknown():
    timeline = RequestTimeline("r")
    timeline.add("arrived", 0)
    timeline.add("finished", 7 * MS, output_tokens=1)
    latency = timeline.latency()
    assert latency.e2e_ns == 7 * MS
    assert latency.queue_ns is latency.ttft_ns is latency.tpot_ns is latency.decode_ns is None


def test_percentiles_over_many_requests():
    events = [StageEvent("forward", 2, 0, 1, RANK, None, None, None, NO_ATTRS, None, 1, 0)]  # skipped
    for i in range(100):  # request i: queue i ms, ttft 2i ms, e2e 3i+10 ms, 11 tokens
        events += [ev("arrived", 1000 * i, f"r{i}", prompt=8), ev("scheduled", 1000 * i + i, f"r{i}"),
                   ev("first_token", 1000 * i + 2 * i, f"r{i}"),
                   ev("finished", 1000 * i + 3 * i + 10, f"r{i}", output=11)]
    events += [ev("arrived", 999_000, "gone"), ev("aborted", 999_004, "gone"), ev("arrived", 999_500, "open")]
    report = request_report(events)
    assert (report.finished, report.aborted, report.unfinished) == (100, 1, 1)
    assert [r.request_id for r in report.requests[:3]] == ["r0", "r1", "r2"]
    queue = report.metric("queue")
    assert queue.count == 100
    # linear interpolation over 0..99 ms: p50 = 49.5, p90 = 89.1, p99 = 98.01
    assert (queue.p50_ns, queue.p90_ns, queue.p99_ns, queue.max_ns) == pytest.approx(
        (49.5 * MS, 89.1 * MS, 98.01 * MS, 99 * MS))
    assert report.metric("ttft").p50_ns == pytest.approx(99 * MS)
    e2e = report.metric("e2e")
    assert e2e.count == 101 and e2e.max_ns == 307 * MS
    # tpot = (e2e - ttft) / 10 = (i + 10) ms / 10
    assert report.metric("tpot").p50_ns == pytest.approx((49.5 + 10) / 10 * MS)
    assert pickle.loads(pickle.dumps(report)) == report
    with pytest.raises(ValueError, match="ttft"):
        report.metric("latency")


def test_recorded_requests_from_the_public_emitter():
    recorder = sched_trace.MemoryRecorder()
    sched_trace.configure(level=4, plugins=[recorder], autoload=False)
    try:
        sched_trace.request_event("arrived", "x", prompt_tokens=3)
        sched_trace.request_event("scheduled", "x")
        sched_trace.request_event("first_token", "x")
        sched_trace.request_event("finished", "x", output_tokens=2)
        events = recorder.request_events
    finally:
        sched_trace.shutdown()
        sched_trace.unregister(recorder)
    report = request_report(events)
    (latency,) = report.requests
    assert latency.prompt_tokens == 3 and latency.output_tokens == 2
    assert 0 <= latency.queue_ns <= latency.ttft_ns <= latency.e2e_ns
    assert latency.tpot_ns == latency.decode_ns  # two tokens: one interval
