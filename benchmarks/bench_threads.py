"""Scheduler threads recording at once: total events per second with 1, 2, 4 and 8 threads;
and what following a level file costs the process (its thread's CPU per second).

Each thread names itself with ``set_thread_info`` and makes the same number of
traced calls; every event goes through a BackgroundExporter (no-op export), as
exporter plugins do. The GIL serialises Python threads, so the best outcome is a
total that stays flat as threads are added: no lock or shared counter of ours
makes it fall.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import threading
import time
from time import perf_counter_ns, thread_time_ns
from typing import Any

import sched_trace
from sched_trace import _level_file
from sched_trace.recorder import BackgroundExporter

from . import workload
from .harness import row

THREADS = (1, 2, 4, 8)


class BufferPlugin:
    """Appends end events to a BackgroundExporter whose export discards them."""

    def __init__(self) -> None:
        self.exporter = BackgroundExporter(lambda batch: None, name="bench-threads", capacity=1 << 22)

    def sched_trace_stage_end(self, event: Any) -> None:
        self.exporter.append(event)

    def sched_trace_flush(self, timeout: float) -> None:
        self.exporter.flush(timeout)

    def sched_trace_shutdown(self) -> None:
        self.exporter.shutdown()


def _measure(threads: int, calls: int) -> tuple[float, float]:
    """(total events/s, scheduler-thread CPU ns per event summed over threads)."""
    barrier = threading.Barrier(threads)
    cpu: list[int] = []
    spans: list[tuple[int, int]] = []

    def scheduler(index: int) -> None:
        sched_trace.set_thread_info(f"Scheduler{index}", tp_rank=index)
        case = workload.caller("traced", 8)
        case(10)
        barrier.wait()
        # Timed inside the threads: the main thread would wait for the GIL to read the clock.
        started, started_cpu = perf_counter_ns(), thread_time_ns()
        case(calls)
        cpu.append(thread_time_ns() - started_cpu)
        spans.append((started, perf_counter_ns()))

    workers = [threading.Thread(target=scheduler, args=(i,)) for i in range(threads)]
    gc.disable()  # as in every other figure: a collection would land on whichever run it hits
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        gc.enable()
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    events = threads * calls
    return events / (elapsed / 1e9), sum(cpu) / events


def run(quick: bool) -> list[dict[str, Any]]:
    calls, repeats = (5000, 3) if quick else (20000, 7)
    plugin = BufferPlugin()
    workload.configure(plugins=(plugin,))
    rates: dict[int, list[float]] = {count: [] for count in THREADS}
    costs: dict[int, list[float]] = {count: [] for count in THREADS}
    for repeat in range(repeats):
        order = THREADS[repeat % len(THREADS):] + THREADS[:repeat % len(THREADS)]
        for count in order:
            rate, cost = _measure(count, calls)
            rates[count].append(rate)
            costs[count].append(cost)
            sched_trace.flush(30.0)
    stats = plugin.exporter.stats()
    workload.reset()
    one_rate, one_cost = statistics.median(rates[1]), statistics.median(costs[1])
    rows = []
    for count in THREADS:
        rate, cost = statistics.median(rates[count]), statistics.median(costs[count])
        rows.append(row(f"{count} scheduler thread(s) recording at once: total events/s vs 1 thread",
                        rate, one_rate, rate / one_rate, "events/s", group="threads",
                        note=f"{calls:,} calls per thread"))
        rows.append(row(f"{count} scheduler thread(s): CPU per event vs 1 thread", cost, one_cost,
                        cost / one_cost, "ns/event", group="threads"))
    rows.append(row("events dropped across the thread runs", float(stats["dropped"]), None, None, "events",
                    group="threads"))
    rows.append(level_file_row(10.0 if quick else 30.0))
    return rows


def _thread_cpu_s(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def level_file_row(seconds: float) -> dict[str, Any]:
    """The level file's thread (``sched-trace-level``, one look a second) against a bare
    thread that does only what any such watcher must: wake once a second and stat the file.
    Both run over the same ``seconds``, the file unchanged; CPU from each thread's clock."""
    previous = sched_trace.get_level()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "level")
        with open(path, "w") as file:
            file.write(f"{previous}\n")
        stop = threading.Event()

        def bare() -> None:
            while not stop.wait(_level_file.POLL_S):
                os.stat(path)

        _level_file.follow(path, previous)
        follower = _level_file._follower
        assert follower is not None and follower._thread is not None
        ours = follower._thread
        baseline = threading.Thread(target=bare, name="bench-stat-watcher", daemon=True)
        baseline.start()
        try:
            start = (_thread_cpu_s(ours), _thread_cpu_s(baseline))
            time.sleep(seconds)
            spent = (_thread_cpu_s(ours) - start[0], _thread_cpu_s(baseline) - start[1])
        finally:
            stop.set()
            _level_file.stop()
            sched_trace.set_level(previous)
    per_second = [value / seconds * 1e6 for value in spent]
    return row("level file followed: its thread's CPU per second vs a bare stat-once-a-second thread",
               per_second[0], per_second[1], per_second[0] / per_second[1] if per_second[1] else None, "us/s",
               group="threads", note=f"{seconds:g} s, the file unchanged; the share of one core is the value / 1e6")
