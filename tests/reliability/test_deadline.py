"""flush(timeout=T) and shutdown(timeout=T) keep one deadline, whatever the exporters do.

The otel plugin sends OTLP/HTTP to a real receiver that refuses (stopped),
hangs, or answers 503, or its exporter process is stopped (SIGSTOP); the
perfetto plugin writes through its own exporter process. Each call must return
within T plus a slack that only guards against a hang (the calls are not
timed for speed), and every event must be counted: delivered, or in a counter
that says why not.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import sched_trace

T = 2.0
SLACK = 2.0   # a hang guard: the bound is T plus a fraction of a second
STAGES = 3000


@sched_trace.stage("run_batch_cpu", level=4, microbatch="mb_id")
def run_batch(mb_id: int) -> None:
    pass


def record(first: int, count: int) -> None:
    for mb_id in range(first, first + count):
        run_batch(mb_id)


def configure(tmp_path, endpoint: str, monkeypatch):
    from sched_trace_otel import OtelPlugin
    from sched_trace_perfetto import PerfettoPlugin

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
    otel = OtelPlugin(exporter="otlp", directory=str(tmp_path / "otel"))
    perfetto = PerfettoPlugin(directory=str(tmp_path / "perfetto"))
    sched_trace.configure(level=9, plugins=[otel, perfetto], autoload=False)
    return otel, perfetto


def timed(call, *args, **kwargs) -> float:
    started = time.monotonic()
    call(*args, **kwargs)
    return time.monotonic() - started


def wait_until(condition, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def assert_otel_counted(stats: dict, recorded: int) -> None:
    """Every event is sent to the exporter process or counted, and every event it was sent is."""
    assert stats["received"] == recorded
    assert stats["sent"] + stats["failed"] + stats["abandoned"] + stats["dropped"] == recorded
    # A child that never reported (stuck in its first send) has no counters at all.
    assert stats.get("handled", 0) + stats["lost_in_exporter"] == stats["sent"]


@pytest.mark.parametrize("fault", ["refusing", "hanging", "503", "exporter_stopped"])
def test_flush_and_shutdown_return_by_the_deadline(tmp_path, receiver, monkeypatch, fault):
    otel, perfetto = configure(tmp_path, receiver.endpoint, monkeypatch)
    record(0, 10)
    wait_until(lambda: len(receiver.microbatches()) == 10)  # both exporter processes are up
    stopped_pid = None
    if fault == "refusing":
        receiver.stop()
    elif fault in ("hanging", "503"):
        receiver.mode = {"hanging": "hang", "503": "503"}[fault]
    else:
        stopped_pid = otel.processor.process.pid
        os.kill(stopped_pid, signal.SIGSTOP)
    try:
        record(10, STAGES)
        assert timed(sched_trace.flush, timeout=T) < T + SLACK
        record(10 + STAGES, STAGES)
        assert timed(sched_trace.shutdown, timeout=T) < T + SLACK
    finally:
        if stopped_pid is not None:  # unless shutdown had to kill it (its pipe was full)
            try:
                os.kill(stopped_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    recorded = 10 + 2 * STAGES
    # A batch stuck in a write to the stopped process fails once shutdown killed it.
    wait_until(lambda: otel.sched_trace_collect_stats()["in_flight"] == 0)
    assert_otel_counted(otel.sched_trace_collect_stats(), recorded)
    written = perfetto.sched_trace_collect_stats()
    assert written["sent"] + written["abandoned"] + written["failed"] == recorded
    assert written["slices_written"] + written["lost_in_exporter"] == written["sent"]
    # A perfetto exporter process past the deadline finishes its file on its own.
    wait_until(lambda: perfetto_slices(tmp_path) == written["sent"], limit=30.0)
    assert perfetto_slices(tmp_path) == written["sent"]


def perfetto_slices(tmp_path) -> int:
    from sched_trace import traceio

    try:
        return sum(len(traceio.read_trace(path).events) for path in (tmp_path / "perfetto").iterdir())
    except Exception:  # still being written
        return -1


def test_shutdown_counts_spans_the_refusing_receiver_never_got(tmp_path, receiver, monkeypatch):
    otel, _ = configure(tmp_path, receiver.endpoint, monkeypatch)
    receiver.stop()
    record(0, STAGES)
    # The exporter process is up and holds every record (on a busy machine it may take
    # longer than T just to start, and then it could not report its counters in time).
    wait_until(lambda: otel.sched_trace_collect_stats().get("handled", 0) == STAGES, limit=60.0)
    assert timed(sched_trace.shutdown, timeout=T) < T + SLACK
    stats = otel.sched_trace_collect_stats()
    assert_otel_counted(stats, STAGES)
    assert stats["spans_exported"] == 0
    assert stats.get("spans_undelivered", 0) + stats["spans_dropped"] == stats.get("spans_built", 0) > 0


def test_a_plugin_that_overruns_its_deadline_is_counted_late():
    class Stubborn:
        def sched_trace_flush(self, timeout):
            time.sleep(timeout + 1.0)

    sched_trace.register(Stubborn(), name="stubborn")
    sched_trace.flush(timeout=0.1)
    assert sched_trace.stats()["plugin_late"] == {"stubborn": 1}
