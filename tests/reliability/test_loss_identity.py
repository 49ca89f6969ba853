"""Every event and every span is accounted for exactly once: delivered, or in one named loss.

One run meets every loss the otel plugin counts at once: a burst overflows the
scheduler-side buffer (``dropped``, with drop markers in the stream), the receiver
rejects requests (``spans_rejected``), then answers 503 for longer than the retry
list holds (``spans_dropped``), then recovers. After shutdown the counters must
satisfy the identities of docs/reliability.md exactly, and the receiver must hold
exactly ``spans_exported`` spans.
"""

from __future__ import annotations

import pytest

import sched_trace

from .test_exporter_faults import record, record_until_restarted, wait_until


@pytest.mark.parametrize("process", [True, False], ids=["exporter-process", "exporter-thread"])
def test_events_and_spans_made_equal_delivered_plus_each_named_loss(tmp_path, receiver, monkeypatch, process):
    from sched_trace_otel import OtelPlugin

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    plugin = OtelPlugin(exporter="otlp", directory=str(tmp_path / "otel"), capacity=256, retry_capacity=300,
                        process=process)
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    record(0, 50)
    sched_trace.flush(timeout=30)
    receiver.mode = "reject"
    record(50, 5000)  # far faster than the exporter: the 256 places overflow
    sched_trace.flush(timeout=30)
    receiver.mode = "503"
    record(5050, 1000)
    assert wait_until(lambda: plugin.sched_trace_collect_stats().get("spans_dropped", 0) > 0)
    receiver.mode = "ok"
    record(6050, 50)
    sched_trace.shutdown(timeout=60)
    stats = plugin.sched_trace_collect_stats()

    # Each loss really happened, so the identities below are tested, not vacuous.
    assert stats["dropped"] > 0 and stats["drop_markers"] > 0
    assert stats["spans_rejected"] > 0 and stats["spans_dropped"] > 0
    assert stats["received"] == 6100
    assert stats["received"] == (stats["sent"] + stats["dropped"] + stats["abandoned"]
                                 + stats["failed"] - stats["failed_in_exporter"])
    assert stats["sent"] + stats["drop_markers"] == stats["handled"] + stats.get("lost_in_exporter", 0)
    assert stats["spans_built"] == (stats["spans_exported"] + stats["spans_dropped"] + stats["spans_rejected"]
                                    + stats["spans_undelivered"])
    assert stats["spans_exported"] == len(receiver.names())


def test_spans_a_killed_exporter_process_held_for_retry_count_as_undelivered(tmp_path, receiver, monkeypatch):
    import os
    import signal

    from sched_trace_otel import OtelPlugin

    from .test_exporter_faults import dead

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    plugin = OtelPlugin(exporter="otlp", directory=str(tmp_path / "otel"))
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    receiver.mode = "503"
    record(0, 100)
    # The exporter process keeps them for retry and says so in its next report.
    assert wait_until(lambda: plugin.sched_trace_collect_stats().get("spans_waiting", 0) > 0)
    stats = plugin.sched_trace_collect_stats()
    os.kill(stats["exporter_pid"], signal.SIGKILL)
    assert wait_until(lambda: dead(stats["exporter_pid"]))
    receiver.mode = "ok"
    record_until_restarted(plugin, 100, 100, restarts=1)  # the restarted process delivers the rest
    sched_trace.shutdown(timeout=60)
    stats = plugin.sched_trace_collect_stats()

    assert stats["exporter_restarts"] == 1 and stats["spans_undelivered"] > 0
    assert stats["spans_built"] == (stats["spans_exported"] + stats["spans_dropped"] + stats["spans_rejected"]
                                    + stats["spans_undelivered"])
    assert stats["spans_exported"] == len(receiver.names())
