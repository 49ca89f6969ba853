"""Frames sent by the scheduler's own thread at the end of its spans (sched_trace._step_end).

The ground truth is the steps the test ran (a counter in the step itself) against the spans
read back from the trace file; the plugin's counters say only what the file cannot (how
many frames left at a step's end, how many a full pipe left to the exporter thread).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest

import sched_trace
from sched_trace import _native, recorder, traceio
from sched_trace_perfetto import PerfettoPlugin

pytestmark = pytest.mark.skipif(_native.speedups is None, reason="frames at a span's end need the C form")


class Engine:
    """A scheduler whose step is a batch span with a stage inside (the root span ends each step)."""

    def __init__(self) -> None:
        self.steps = 0  # ground truth: steps run
        self.threads: set[int] = set()

    @sched_trace.batch("engine_step", batch_size="len(batch)")
    def step(self, batch: list) -> None:
        self.schedule(batch)
        self.steps += 1

    @sched_trace.stage("schedule", level=2)
    def schedule(self, batch: list) -> None:
        pass


def _plugin(tmp_path, interval: float = 0.01) -> PerfettoPlugin:
    plugin = PerfettoPlugin(directory=str(tmp_path))
    sched_trace.configure(level=4, plugins=[plugin], autoload=False)
    plugin.processor._front.interval = interval
    return plugin


def _step_until(engine: Engine, done, limit: float = 60.0, pause: float = 0.0005) -> None:
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, "the condition never came"
        engine.step([1, 2, 3])
        time.sleep(pause)


def _spans(plugin: PerfettoPlugin) -> list:
    return [event for path in plugin.paths for event in traceio.read_trace(path).events]


def test_the_scheduler_thread_sends_frames_at_its_steps_end_and_every_span_arrives(tmp_path):
    plugin = _plugin(tmp_path)
    engine = Engine()
    stats = plugin.sched_trace_collect_stats
    _step_until(engine, lambda: stats()["step_end_frames"] >= 5)
    sent_at_step_end = stats()["step_end_frames"]
    sched_trace.shutdown()
    spans = _spans(plugin)
    assert sum(span.name == "engine_step" for span in spans) == engine.steps
    assert sum(span.name == "schedule" for span in spans) == engine.steps
    final = plugin.sched_trace_collect_stats()
    assert final["received"] == 2 * engine.steps and final["lost_in_exporter"] == 0 and final["dropped"] == 0
    assert final["step_end_frames"] >= sent_at_step_end >= 5


def test_with_sched_trace_drain_thread_only_the_exporter_thread_sends(tmp_path, monkeypatch):
    monkeypatch.setenv("SCHED_TRACE_DRAIN", "thread")
    plugin = _plugin(tmp_path)
    engine = Engine()
    for _ in range(300):
        engine.step([1])
        time.sleep(0.0005)
    sched_trace.shutdown()
    assert plugin.sched_trace_collect_stats()["step_end_frames"] == 0
    assert sum(span.name == "engine_step" for span in _spans(plugin)) == engine.steps == 300


def test_a_wrong_sched_trace_drain_is_refused_when_the_plugin_is_made(monkeypatch):
    monkeypatch.setenv("SCHED_TRACE_DRAIN", "inline")
    with pytest.raises(ValueError, match="SCHED_TRACE_DRAIN must be 'step' or 'thread', got 'inline'"):
        PerfettoPlugin()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_full_pipe_never_holds_the_scheduler_thread(tmp_path):
    # The exporter process stopped: its pipe fills with the frames the steps send; the frame
    # that does not fit is left to the exporter thread, which waits for room, and the steps
    # go on (were a step to wait, the loop would never end); once the buffer is full too,
    # events are dropped and counted. Then the process goes on, and every event is either in
    # the file or counted as dropped.
    plugin = _plugin(tmp_path)
    plugin.processor._front.buffer.capacity = 2_000
    engine = Engine()
    _step_until(engine, lambda: plugin.sched_trace_collect_stats()["step_end_frames"] >= 1)
    sched_trace.flush()
    fcntl = pytest.importorskip("fcntl")
    fcntl.fcntl(plugin.processor.process._proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 65536)
    pid = plugin.sched_trace_collect_stats()["exporter_pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        _step_until(engine, lambda: plugin.sched_trace_collect_stats()["dropped"] > 0, limit=120, pause=0)
        stuck = plugin.sched_trace_collect_stats()
        assert stuck["step_end_left"] >= 1  # a frame the pipe could not take: the thread's
    finally:
        os.kill(pid, signal.SIGCONT)
    sched_trace.shutdown(timeout=60)
    final = plugin.sched_trace_collect_stats()
    spans = [span for span in _spans(plugin) if span.name != recorder.DROPPED]
    assert final["received"] == 2 * engine.steps
    assert len(spans) == final["received"] - final["dropped"]
    assert final["lost_in_exporter"] == final["failed"] == final["abandoned"] == 0
    markers = [span for span in _spans(plugin) if span.name == recorder.DROPPED]
    assert sum(marker.attrs["dropped_events"] for marker in markers) == final["dropped"]


def test_an_export_that_raises_at_a_steps_end_is_counted_and_the_step_goes_on(caplog):
    # The scheduler's thread calls export_now: a failure there is the exporter's, counted
    # as failed with a warning, never raised into the step.
    sent: list = []

    def export_now(batch) -> None:
        raise OSError("endpoint down")

    exporter = recorder.BackgroundExporter(sent.extend, name="failing", interval=0.01, export_now=export_now,
                                           ready_now=lambda: True)

    class Listener:
        @sched_trace.hookimpl
        def sched_trace_batch_end(self, event) -> None:
            exporter.append(event)

    sched_trace.configure(level=4, plugins=[Listener()], autoload=False)
    engine = Engine()
    with caplog.at_level(logging.WARNING, logger="sched_trace"):
        _step_until(engine, lambda: exporter.failed > 0)
    assert exporter.step_end_frames >= 1 and threading.current_thread() is threading.main_thread()
    assert "failing export failed" in caplog.text and "endpoint down" in caplog.text
    exporter.shutdown()
    assert exporter.stats()["received"] == engine.steps
    assert exporter.failed + exporter.exported + exporter.abandoned == engine.steps
    sched_trace.shutdown()


def test_ctrl_c_during_a_send_at_a_steps_end_reaches_the_scheduler():
    # A KeyboardInterrupt raised while the step's thread sends is the scheduler's, as a
    # signal handler's would be at that point: the traced call raises it, and the next
    # steps send again.
    interrupts = [1]

    def export_now(batch) -> None:
        if interrupts:
            interrupts.pop()
            raise KeyboardInterrupt
        sent.extend(batch)

    sent: list = []
    exporter = recorder.BackgroundExporter(sent.extend, name="interrupted", interval=0.01, export_now=export_now,
                                           ready_now=lambda: True)

    class Listener:
        @sched_trace.hookimpl
        def sched_trace_batch_end(self, event) -> None:
            exporter.append(event)

    sched_trace.configure(level=4, plugins=[Listener()], autoload=False)
    engine = Engine()
    with pytest.raises(KeyboardInterrupt):
        _step_until(engine, lambda: False)
    done = exporter.step_end_frames
    _step_until(engine, lambda: exporter.step_end_frames > done)
    exporter.shutdown()
    sched_trace.shutdown()
