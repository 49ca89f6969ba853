"""Request latency histograms and per-rank bubble ratio, scraped from the plugin's endpoint."""

from __future__ import annotations

import pickle

import pytest

import sched_trace
from sched_trace._events import BatchEvent, RankInfo, RequestEvent, StageEvent
from sched_trace._events import NO_ATTRS
from sched_trace_prometheus import StageMetrics, parse_settings

from .conftest import scrape, value

MS = 1_000_000
RANK0 = RankInfo("host", 1, 11, "Scheduler", tp_rank=0, pp_rank=0, dp_rank=0)
RANK1 = RankInfo("host", 1, 12, "Scheduler", tp_rank=0, pp_rank=1, dp_rank=0)


def request(phase, ts_ms, rid, rank=RANK0, prompt=None, output=None, batch_id=None):
    return RequestEvent(phase, int(ts_ms * MS), rid, rank, prompt, output, batch_id, NO_ATTRS)


def lifecycle(rid, arrived, scheduled, first_token, end, output, rank=RANK0, phase="finished"):
    """One request's events; times in ms."""
    return [request("arrived", arrived, rid, rank, prompt=7),
            request("scheduled", scheduled, rid, rank),
            request("first_token", first_token, rid, rank),
            request(phase, end, rid, rank, output=output)]


def test_request_histograms_match_the_phases_fed(start_prometheus):
    plugin = start_prometheus(request_owner={})  # no rule: every rank counts the requests it sees
    events = (lifecycle("a", 0, 10, 30, 130, output=11)
              + lifecycle("b", 5, 7, 8, 8 + 300, output=4, rank=RANK1)
              + [request("scheduled", 150, "a")])  # a late phase of an ended request is ignored
    for event in events:
        plugin.sched_trace_request(event)
    samples = scrape(plugin.serve(0))
    pp0, pp1 = {"pp_rank": "0"}, {"pp_rank": "1"}
    assert value(samples, "sched_trace_request_queue_time_seconds_sum", **pp0) == pytest.approx(0.010)
    assert value(samples, "sched_trace_request_time_to_first_token_seconds_sum", **pp0) == pytest.approx(0.030)
    assert value(samples, "sched_trace_request_e2e_latency_seconds_sum", **pp0) == pytest.approx(0.130)
    # tpot = (end - first token) / (output tokens - 1) = 100 ms / 10
    assert value(samples, "sched_trace_request_time_per_output_token_seconds_sum", **pp0) == pytest.approx(0.010)
    assert value(samples, "sched_trace_request_time_per_output_token_seconds_sum", **pp1) == pytest.approx(0.100)
    assert value(samples, "sched_trace_request_queue_time_seconds_count", **pp0) == 1
    # 10 ms lands in the 0.01 bucket, not below it
    assert value(samples, "sched_trace_request_queue_time_seconds_bucket", le="0.01", **pp0) == 1
    assert value(samples, "sched_trace_request_queue_time_seconds_bucket", le="0.005", **pp0) == 0
    assert value(samples, "sched_trace_requests_total", outcome="finished", **pp1) == 1
    assert value(samples, "sched_trace_request_prompt_tokens_total", **pp0) == 7
    assert value(samples, "sched_trace_request_output_tokens_total", **pp1) == 4
    for name, series in samples.items():
        if name.startswith("sched_trace_request"):
            assert all("rid" not in labels and "request_id" not in labels for labels, _ in series), name
    assert sched_trace.stats()["plugins"]["prometheus"]["live_requests"] == 0


def test_aborted_and_incomplete_requests(start_prometheus):
    plugin = start_prometheus()
    for event in [request("queued", 0, "x"), request("aborted", 40, "x"),       # never scheduled
                  request("arrived", 0, "y"), request("scheduled", 1, "y"),    # still running
                  request("finished", 9, "ghost")]:                             # start never seen
        plugin.sched_trace_request(event)
    samples = scrape(plugin.serve(0))
    assert value(samples, "sched_trace_requests_total", outcome="aborted") == 1
    assert value(samples, "sched_trace_requests_total", outcome="finished") == 1  # the ghost, counted
    assert value(samples, "sched_trace_request_e2e_latency_seconds_count") == 1   # only x: 40 ms
    assert value(samples, "sched_trace_request_e2e_latency_seconds_sum") == pytest.approx(0.040)
    assert value(samples, "sched_trace_request_queue_time_seconds_count") == 1     # only y
    assert "sched_trace_request_time_to_first_token_seconds_count" not in samples or not any(
        v for _, v in samples["sched_trace_request_time_to_first_token_seconds_count"])
    stats = sched_trace.stats()["plugins"]["prometheus"]
    assert (stats["live_requests"], stats["unknown_request_ends"]) == (1, 1)


def test_request_event_emitter_reaches_the_histograms(start_prometheus):
    plugin = start_prometheus(request_owner={"pp_rank": 3})
    sched_trace.set_thread_info("Scheduler", pp_rank=3)
    sched_trace.request_event("arrived", "r1", prompt_tokens=5)
    sched_trace.request_event("scheduled", "r1")
    sched_trace.request_event("first_token", "r1")
    sched_trace.request_event("finished", "r1", output_tokens=3)
    samples = scrape(plugin.serve(0))
    assert value(samples, "sched_trace_request_e2e_latency_seconds_count", pp_rank="3") == 1
    assert value(samples, "sched_trace_requests_total", outcome="finished", pp_rank="3") == 1


def test_each_request_is_counted_once_when_every_pipeline_rank_reports_it(start_prometheus):
    """Under PP every rank's scheduler sees each request: only the owner (pp_rank 0, tp_rank 0) counts it."""
    plugin = start_prometheus()
    for rid in ("a", "b"):
        for event in lifecycle(rid, 0, 10, 30, 130, output=11) + lifecycle(rid, 1, 11, 31, 131, output=11, rank=RANK1):
            plugin.sched_trace_request(event)
    samples = scrape(plugin.serve(0))
    assert value(samples, "sched_trace_requests_total", outcome="finished", pp_rank="0") == 2
    assert value(samples, "sched_trace_request_time_to_first_token_seconds_count", pp_rank="0") == 2
    assert not [labels for labels, _ in samples.get("sched_trace_requests_total", []) if labels["pp_rank"] == "1"]
    assert sched_trace.stats()["plugins"]["prometheus"]["requests_not_owned"] == 8


def test_the_owner_rule_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SCHED_TRACE_REQUEST_OWNER", "pp_rank=1")
    metrics = StageMetrics(parse_settings({}))
    metrics.observe_batch(lifecycle("a", 0, 1, 2, 3, output=2) + lifecycle("a", 0, 1, 2, 3, output=2, rank=RANK1))
    assert metrics.requests.not_owned == 4
    with pytest.raises(sched_trace.ConfigError, match="request_owner.*'first'"):
        parse_settings({"request_owner": {"pp_rank": "first"}})


def test_live_request_table_is_bounded():
    metrics = StageMetrics(parse_settings({"max_live_requests": 2}))
    metrics.observe_batch([request("arrived", i, f"r{i}") for i in range(5)])
    assert (metrics.requests.live, metrics.requests.evicted) == (2, 3)


def test_request_settings_are_validated():
    with pytest.raises(sched_trace.ConfigError, match="request_buckets"):
        parse_settings({"request_buckets": [1.0, 0.5]})
    with pytest.raises(sched_trace.ConfigError, match="max_live_requests"):
        parse_settings({"max_live_requests": 0})


# --- bubble ratio -------------------------------------------------------------------

def stage(name, start, end, rank=RANK0, span_id=0, parent_id=0, batch_id=None):
    return StageEvent(name, 2, start * MS, end * MS, rank, None, batch_id, None, NO_ATTRS, None, span_id, parent_id)


def step(start, end, rank=RANK0, span_id=0):
    return BatchEvent("step", 1, start * MS, end * MS, rank, None, None, None, NO_ATTRS, None, span_id, 0)


def test_bubble_ratio_is_one_minus_compute_union_over_step_time():
    metrics = StageMetrics(parse_settings({}))
    # step 1, 0..100 ms: forward 10..40 with a nested 20..30 (no double count), a send 40..90 (idle),
    # backward 60..80 overlapping it; step 2, 200..300: one forward 200..250.  A stage between the
    # steps (150..160) is outside every window.
    metrics.observe_batch([
        stage("forward", 20, 30, span_id=3, parent_id=2), stage("forward", 10, 40, span_id=2, parent_id=1),
        stage("send_activations", 40, 90, span_id=4, parent_id=1), stage("backward", 60, 80, span_id=5, parent_id=1),
        step(0, 100, span_id=1),
        stage("forward", 150, 160, span_id=6),
        stage("forward", 200, 250, span_id=8, parent_id=7), step(200, 300, span_id=7),
    ])
    families = {f.name: f for f in metrics.collect()}
    labels = {"thread_label": "Scheduler", "pp_rank": "0", "tp_rank": "0", "dp_rank": "0"}

    def sample(family, suffix=""):
        return next(s.value for s in families[family].samples
                    if s.name == family + suffix and s.labels == labels)

    busy_ms, window_ms = 30 + 20 + 50, 100 + 100
    assert sample("sched_trace_rank_busy_seconds", "_total") == pytest.approx(busy_ms / 1000)
    assert sample("sched_trace_rank_window_seconds", "_total") == pytest.approx(window_ms / 1000)
    assert sample("sched_trace_rank_bubble_ratio") == pytest.approx(1 - busy_ms / window_ms)


def test_lane_without_steps_counts_the_gaps_between_stages():
    metrics = StageMetrics(parse_settings({}))
    metrics.observe_batch([stage("forward", 0, 10), stage("forward", 30, 40), stage("p2p_wait", 40, 60)])
    ratio = next(s.value for f in metrics.collect() if f.name == "sched_trace_rank_bubble_ratio" for s in f.samples)
    assert ratio == pytest.approx(1 - 20 / 60)


def test_gauge_agrees_with_pipeline_report_on_a_recorded_run(start_prometheus):
    recorder = sched_trace.MemoryRecorder()
    sched_trace.register(recorder, name="recorder")
    try:
        plugin = start_prometheus()
        sched_trace.set_thread_info("Scheduler", pp_rank=0)

        @sched_trace.stage("forward", level=2)
        def forward():
            sum(range(20000))

        @sched_trace.stage("send", level=2)
        def send():
            sum(range(5000))

        @sched_trace.batch("step")
        def train_step():
            for _ in range(4):
                forward()
                send()

        for _ in range(3):
            train_step()
        samples = scrape(plugin.serve(0))
        report = sched_trace.analysis.pipeline_report(recorder.events)
    finally:
        sched_trace.unregister(recorder)
    (rank,) = report.ranks
    assert value(samples, "sched_trace_rank_bubble_ratio", pp_rank="0") == pytest.approx(rank.bubble_ratio, abs=1e-6)
    assert value(samples, "sched_trace_rank_busy_seconds_total", pp_rank="0") == pytest.approx(rank.busy_ns / 1e9)
    pickle.dumps(report)
