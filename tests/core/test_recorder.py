"""Recorder: bounded buffers count drops; exporters run off the scheduler thread; flush."""

from __future__ import annotations

import os
import threading

import pytest

import sched_trace
from sched_trace.recorder import BackgroundExporter, EventBuffer


def test_full_buffer_drops_and_counts():
    buffer = EventBuffer(capacity=3)
    accepted = [buffer.append(i) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert buffer.dropped == 2 and buffer.drain(10) == [0, 1, 2]


def test_background_exporter_exports_off_the_scheduler_thread_and_flushes():
    exported, threads = [], set()

    def export(batch):
        threads.add(threading.get_ident())
        exported.extend(batch)

    exporter = BackgroundExporter(export, name="test", capacity=1000, interval=5.0)
    for i in range(100):
        exporter.append(i)
    assert exporter.flush(timeout=5)
    assert exported == list(range(100))
    assert threading.get_ident() not in threads
    exporter.shutdown()
    stats = exporter.stats()
    assert stats.pop("thread_cpu_s") >= 0  # what the exporter thread cost its process
    assert stats == {"received": 100, "buffered": 0, "exported": 100, "dropped": 0, "failed": 0, "abandoned": 0,
                     "in_flight": 0}


def test_a_caught_up_exporter_thread_waits_for_the_next_interval_and_flush_drains_to_the_end():
    """What the scheduler appends while a batch is exported waits for the next interval
    (one frame per interval, not one per GIL hand-over), unless a flush is waiting."""
    batches, entered, release = [], threading.Event(), threading.Event()

    def export(batch):
        batches.append(list(batch))
        entered.set()
        release.wait(10)

    exporter = BackgroundExporter(export, name="test", capacity=10000, interval=3600.0)
    for i in range(10):
        exporter.append(i)
    exporter._wake.set()  # the interval's wake-up, now
    assert entered.wait(10)
    for i in range(10, 15):  # appended while the first batch is being exported
        exporter.append(i)
    release.set()
    deadline = threading.Event()
    for _ in range(100):  # until the thread is idle again, waiting for its interval
        if not exporter.stats()["in_flight"]:
            break
        deadline.wait(0.05)
    deadline.wait(0.2)
    assert batches == [list(range(10))] and exporter.stats()["buffered"] == 5

    def producer():  # a flush drains everything, also what arrives while it waits
        for i in range(15, 2015):
            exporter.append(i)

    thread = threading.Thread(target=producer)
    thread.start()
    assert exporter.flush(timeout=10)
    thread.join()
    assert exporter.flush(timeout=10)
    assert [event for batch in batches for event in batch] == list(range(2015))
    exporter.shutdown()


def test_stalled_exporter_never_blocks_the_scheduler_and_counts_drops():
    release = threading.Event()
    exporter = BackgroundExporter(lambda batch: release.wait(10), name="stalled", capacity=10, max_batch=1)
    for i in range(1000):
        exporter.append(i)  # returns at once although export is stuck
    stats = exporter.stats()
    assert stats["dropped"] >= 1000 - 10 - 1
    release.set()
    exporter.shutdown()


def test_failing_export_is_counted_and_the_exporter_carries_on():
    def export(batch):
        raise ConnectionError("endpoint down")

    exporter = BackgroundExporter(export, name="down", capacity=100)
    exporter.append(1)
    exporter.flush(5)
    exporter.append(2)
    exporter.flush(5)
    assert exporter.stats()["failed"] == 2
    exporter.shutdown()


def test_shutdown_flushes_every_plugin(sched_trace_recorder):
    exported = []

    class Exporting:
        def __init__(self):
            self.exporter = BackgroundExporter(exported.extend, name="plugin", interval=60)

        def sched_trace_stage_end(self, event):
            self.exporter.append(event)

        def sched_trace_flush(self, timeout):
            self.exporter.flush(timeout)

    sched_trace.register(Exporting())

    @sched_trace.stage("flushed", level=1)
    def flushed():
        pass

    sched_trace.configure(level=9, autoload=False)
    for _ in range(3):
        flushed()
    sched_trace.shutdown()
    assert [e.name for e in exported] == ["flushed"] * 3


def exported_in_fork_child(tmp_path, exporter, exported):
    """What ``exported`` holds in a fork child after it appends "child" and flushes."""
    pid = os.fork()
    if pid == 0:
        try:
            exporter.append("child")
            exporter.flush(5)
            (tmp_path / "child").write_text(repr(exported))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return (tmp_path / "child").read_text()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_with_an_empty_buffer_and_its_own_thread(tmp_path):
    exported = []
    exporter = BackgroundExporter(exported.extend, name="fork", interval=60)
    exporter.append("parent")
    assert exported_in_fork_child(tmp_path, exporter, exported) == repr(["child"])
    exporter.flush(5)
    assert exported == ["parent"]
    exporter.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_an_exporter_started_again_after_shutdown_is_reset_in_a_fork_child(tmp_path):
    exported = []
    exporter = BackgroundExporter(exported.extend, name="again", interval=60)
    exporter.append("first")
    exporter.shutdown()
    exporter.append("again")  # starts it again; held until a flush (interval 60 s)
    # the parent's "again" is the parent's to export
    assert exported_in_fork_child(tmp_path, exporter, exported) == repr(["first", "child"])
    exporter.flush(5)
    assert exported == ["first", "again"]
    exporter.shutdown()
