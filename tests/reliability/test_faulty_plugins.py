"""A plugin that raises or blocks never changes what the scheduler computes.

A traced toy scheduler computes a checksum; a MemoryRecorder beside the faulty
plugin is the ground truth of what was recorded. Errors are counted per
plugin and logged once per kind; a plugin whose event hook blocks is caught by
the watchdog and gets no more events, so its cost is bounded by the calls
already running, not by the number of events (counted, not timed).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

import sched_trace
from sched_trace import MemoryRecorder

STEPS = 300


@sched_trace.stage("run_batch_cpu", level=4, microbatch="mb_id", batch_size="len(batch)")
def run_batch(batch: list, mb_id: int) -> int:
    return sum(batch) * (mb_id + 1)


@sched_trace.batch("decode_step", level=1)
def decode_step(step: int) -> int:
    return run_batch([step, step + 1], step % 4)


def schedule(steps: int = STEPS) -> int:
    return sum(decode_step(step) for step in range(steps))


EXPECTED = sum(sum([s, s + 1]) * (s % 4 + 1) for s in range(STEPS))


class Raising:
    """Raises on every ``every``-th stage end (and on every batch end when ``every`` is 1)."""

    def __init__(self, every: int) -> None:
        self.every, self.calls = every, 0

    def sched_trace_stage_end(self, event):
        self.calls += 1
        if self.calls % self.every == 0:
            raise ValueError(f"bad stage {self.calls}")

    def sched_trace_batch_end(self, event):
        if self.every == 1:
            raise KeyError("bad batch")


def sched_trace_errors(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sched_trace" and repr(name) in r.getMessage()]


@pytest.mark.parametrize("every", [1, 100])
def test_a_raising_plugin_is_counted_and_logged_once_per_kind(caplog, every):
    recorder, faulty = MemoryRecorder(), Raising(every)
    sched_trace.configure(level=9, plugins=[recorder], autoload=False)
    sched_trace.register(faulty, name="raising")
    assert schedule() == EXPECTED
    assert len(recorder.stages("run_batch_cpu")) == len(recorder.batches("decode_step")) == STEPS
    expected_errors = STEPS // every + (STEPS if every == 1 else 0)
    assert sched_trace.stats()["plugin_errors"] == {"raising": expected_errors}
    kinds = 2 if every == 1 else 1  # ValueError in stage ends, KeyError in batch ends
    assert len(sched_trace_errors(caplog, "raising")) == kinds


def test_a_plugin_raising_in_every_hook_kind_is_counted_in_each():
    class RaisesEverywhere:
        def sched_trace_stage_start(self, event):
            raise RuntimeError("start")

        def sched_trace_stage_end(self, event):
            raise RuntimeError("end")

        def sched_trace_flush(self, timeout):
            raise RuntimeError("flush")

        def sched_trace_collect_stats(self):
            raise RuntimeError("stats")

    recorder = MemoryRecorder()
    sched_trace.configure(level=9, plugins=[recorder, RaisesEverywhere()], autoload=False)
    assert schedule(10) == sum(sum([s, s + 1]) * (s % 4 + 1) for s in range(10))
    sched_trace.flush(timeout=1.0)
    errors = sched_trace.stats()["plugin_errors"]
    (count,) = errors.values()
    assert count == 10 + 10 + 1 + 1 and len(recorder.stages()) == 10


class Blocking:
    """Blocks for a second in the stage-end hook on each ``every``-th call."""

    def __init__(self, every: int) -> None:
        self.every, self.calls, self.blocked = every, 0, 0

    def sched_trace_stage_end(self, event):
        self.calls += 1
        if self.calls % self.every == 0:
            self.blocked += 1
            time.sleep(1.0)


@pytest.mark.parametrize("every", [1, 100])
def test_a_blocking_plugin_is_quarantined_after_one_blocked_call(every):
    recorder, blocking = MemoryRecorder(), Blocking(every)
    sched_trace.configure(level=9, plugins=[recorder], autoload=False)
    sched_trace.register(blocking, name="blocking")
    assert schedule() == EXPECTED
    assert len(recorder.stages("run_batch_cpu")) == STEPS  # the others still got every event
    # Caught during its first block (a second one only if a starved machine kept the
    # watchdog from sampling for the whole second): a bound, not one block per event.
    assert blocking.blocked <= 2 and blocking.calls <= 2 * every
    stats = sched_trace.stats()
    assert list(stats["plugins_quarantined"]) == ["blocking"]
    assert stats["plugins_quarantined"]["blocking"] >= 0.5
    sched_trace.unregister(blocking)
    assert sched_trace.stats()["plugins_quarantined"] == {}


def test_a_blocking_plugin_on_many_threads_costs_one_call_per_thread():
    recorder, blocking = MemoryRecorder(), Blocking(1)
    sched_trace.configure(level=9, plugins=[recorder], autoload=False)
    sched_trace.register(blocking, name="blocking")
    results = []
    threads = [threading.Thread(target=lambda: results.append(schedule(50))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [sum(sum([s, s + 1]) * (s % 4 + 1) for s in range(50))] * 4
    assert blocking.blocked <= 4 and len(recorder.stages()) == 200


def test_a_fast_plugin_is_never_quarantined():
    recorder = MemoryRecorder()
    sched_trace.configure(level=9, plugins=[recorder], autoload=False)
    deadline = time.monotonic() + 1.5  # many watchdog samples land inside its hooks
    while time.monotonic() < deadline:
        schedule(100)
    assert sched_trace.stats()["plugins_quarantined"] == {}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_watchdog_also_runs_in_a_fork_child():
    blocking = Blocking(1)
    sched_trace.configure(level=9, autoload=False)
    sched_trace.register(blocking, name="blocking")
    pid = os.fork()
    if pid == 0:  # the child: its own watchdog must catch the blocking plugin
        code = 1
        try:
            schedule(20)
            code = 0 if blocking.blocked == 1 and "blocking" in sched_trace.stats()["plugins_quarantined"] else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def watchdog_running() -> bool:
    return any(thread.name == "sched-trace-watchdog" and thread.is_alive() for thread in threading.enumerate())


def test_the_watchdog_samples_only_while_a_hook_that_could_block_is_registered(tmp_path):
    """The built-in buffers' append (a deque append) cannot block: with only exporter
    plugins the watchdog does not sample the scheduler's stacks ten times a second."""
    from examples.jsonl_exporter import JsonLinesExporter
    from sched_trace.export import ExporterPlugin

    exporter = ExporterPlugin(JsonLinesExporter, "jsonl", process=False, path=str(tmp_path / "events.jsonl"))
    sched_trace.configure(level=9, plugins=[exporter], autoload=False)
    try:
        assert schedule(20) == sum(sum([s, s + 1]) * (s % 4 + 1) for s in range(20))
        deadline = time.monotonic() + 5
        while watchdog_running() and time.monotonic() < deadline:  # a thread of an earlier test ends
            time.sleep(0.05)
        assert not watchdog_running()
        recorder = MemoryRecorder()  # a plugin's own Python hook: watched again
        sched_trace.register(recorder, name="recorder")
        assert watchdog_running()
        sched_trace.unregister(recorder)
    finally:
        sched_trace.shutdown()
        sched_trace.unregister(exporter)


def test_stats_says_what_sched_traces_own_threads_cost(tmp_path):
    from examples.jsonl_exporter import JsonLinesExporter
    from sched_trace.export import ExporterPlugin

    exporter = ExporterPlugin(JsonLinesExporter, "jsonl", process=False, path=str(tmp_path / "events.jsonl"))
    sched_trace.configure(level=9, plugins=[exporter], autoload=False)
    try:
        schedule()
        sched_trace.flush(30)
        spent = sched_trace.stats()["threads_cpu_s"]
        thread = next(t for t in threading.enumerate() if t.name == "sched-trace-jsonl")
        own = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))  # the thread's clock, read after
        assert 0 < spent["sched-trace-jsonl"] <= own
        assert all(name.startswith("sched-trace-") for name in spent)
    finally:
        sched_trace.shutdown()
        sched_trace.unregister(exporter)
