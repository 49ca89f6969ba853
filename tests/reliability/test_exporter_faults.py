"""The OTLP receiver fails and comes back; the exporter process is killed. Nothing uncounted.

A real OTLP/HTTP receiver refuses connections (stopped), hangs, or answers 503
while the scheduler keeps recording; then it recovers. Spans that fit in the
retry capacity must all arrive after recovery; beyond it, the oldest are
dropped and the receiver's count plus the counters must equal what was built,
exactly. The exporter process SIGKILLed mid-run is restarted and what it had
not processed is counted. The scheduler thread's cost under these faults is a
benchmark (benchmarks/bench_faults.py), not a test.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import sched_trace

HEALTHY = 20


@sched_trace.stage("run_batch_cpu", level=4, microbatch="mb_id")
def run_batch(mb_id: int) -> None:
    pass


def record(first: int, count: int) -> None:
    for mb_id in range(first, first + count):
        run_batch(mb_id)


def wait_until(condition, limit: float = 30.0) -> bool:
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.fixture
def otlp(tmp_path, receiver, monkeypatch):
    """configure(**settings) -> the OtelPlugin sending to ``receiver``, with HEALTHY stages delivered."""
    from sched_trace_otel import OtelPlugin

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # seconds per request: a hang costs 1 s a try

    def configure(**settings):
        plugin = OtelPlugin(exporter="otlp", directory=str(tmp_path / "otel"), **settings)
        sched_trace.configure(level=9, plugins=[plugin], autoload=False)
        record(0, HEALTHY)
        assert wait_until(lambda: len(receiver.microbatches()) == HEALTHY)
        return plugin

    return configure


def fail(receiver, fault: str) -> None:
    receiver.mode = {"refusing": "refuse", "hanging": "hang", "503": "503"}[fault]


def recover(receiver, fault: str) -> None:
    receiver.mode = "ok"  # a refusing receiver listens on the same port again


def dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def record_until_restarted(plugin, first: int, count: int, restarts: int) -> int:
    """Record ``count`` events at a time from ``first`` until the plugin has restarted its
    exporter process ``restarts`` times; the next id. A killed exporter's death is noticed
    on a later frame: frames written before it was seen are lost, and counted
    (Popen.poll() can answer "running" for a dead child while another thread polls)."""
    for _ in range(20):
        record(first, count)
        first += count
        sched_trace.flush(timeout=30)
        if plugin.sched_trace_collect_stats()["exporter_restarts"] >= restarts:
            break
    return first


def span_counts(stats: dict) -> int:
    """Spans built, less every span counted as not delivered."""
    return (stats["spans_built"] - stats["spans_dropped"] - stats.get("spans_rejected", 0)
            - stats.get("spans_undelivered", 0))


@pytest.mark.parametrize("fault", ["refusing", "hanging", "503"])
def test_spans_within_the_retry_capacity_all_arrive_after_recovery(otlp, receiver, fault):
    plugin = otlp()
    fail(receiver, fault)
    record(HEALTHY, 2000)
    wait_until(lambda: plugin.sched_trace_collect_stats().get("export_failures", 0) >= 1)
    recover(receiver, fault)
    sched_trace.shutdown(timeout=60)  # a hang guard; recovery is what makes it return early
    assert sorted(receiver.microbatches()) == list(range(HEALTHY + 2000))
    stats = plugin.sched_trace_collect_stats()
    assert stats["spans_dropped"] == 0 and stats["dropped"] == 0
    assert stats["spans_exported"] == len(receiver.names()) == span_counts(stats)


def test_beyond_the_retry_capacity_the_oldest_are_dropped_and_counted_exactly(otlp, receiver):
    plugin = otlp(retry_capacity=1000)
    fail(receiver, "refusing")
    record(HEALTHY, 3000)  # 6000 spans (each stage and its thread span) for 1000 places
    assert wait_until(lambda: plugin.sched_trace_collect_stats().get("handled", 0) == HEALTHY + 3000)
    recover(receiver, "refusing")
    sched_trace.shutdown(timeout=60)
    stats = plugin.sched_trace_collect_stats()
    assert stats["spans_dropped"] > 0
    assert len(receiver.names()) == stats["spans_exported"] == span_counts(stats)
    arrived = sorted(receiver.microbatches())
    assert arrived == sorted(set(arrived))  # no span twice
    newest = arrived[HEALTHY:]  # the oldest went first: what arrived from the outage is its end
    assert newest == list(range(HEALTHY + 3000 - len(newest), HEALTHY + 3000))


def test_a_killed_exporter_process_is_restarted_and_its_loss_counted(otlp, receiver):
    plugin = otlp()
    sent = HEALTHY
    # Quiescent kill: the child had reported every record.
    assert wait_until(lambda: plugin.sched_trace_collect_stats().get("handled", 0) == sent)
    pid = plugin.sched_trace_collect_stats()["exporter_pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: dead(pid))  # else a frame may still go into the dying one's pipe
    sent = record_until_restarted(plugin, sent, 1000, restarts=1)
    stats = plugin.sched_trace_collect_stats()
    assert stats["exporter_restarts"] == 1, stats
    assert wait_until(lambda: len(receiver.microbatches()) + plugin.sched_trace_collect_stats()["lost_in_exporter"] == sent)
    # Killed mid-traffic: what arrived is never duplicated, and the loss counted covers the rest.
    record(sent, 3000)
    pid = plugin.sched_trace_collect_stats()["exporter_pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: dead(pid))
    after = record_until_restarted(plugin, sent + 3000, 1000, restarts=2)
    assert plugin.sched_trace_collect_stats()["exporter_restarts"] == 2
    record(after, 1000)
    sched_trace.shutdown(timeout=30)
    stats = plugin.sched_trace_collect_stats()
    arrived = receiver.microbatches()
    recorded = after + 1000
    assert len(arrived) == len(set(arrived)) and set(arrived) <= set(range(recorded))
    assert stats["sent"] + stats["failed"] + stats["abandoned"] + stats["dropped"] == recorded
    assert len(arrived) + stats["lost_in_exporter"] + stats["failed"] >= recorded
    assert set(range(after, recorded)) <= set(arrived)  # the restarted child got all that came after
