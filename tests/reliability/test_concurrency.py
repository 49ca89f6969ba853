"""Many threads and asyncio tasks record at once; configuration changes race with them.

Ground truth is counted independently: each thread (task) knows how many calls
it made, and a counting plugin (or a MemoryRecorder with start events) says
what was recorded. 10^5 events per thread is the spec; see PER_THREAD.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import sched_trace
from sched_trace import MemoryRecorder
from sched_trace.export import BackgroundExporter

THREADS = 8
PER_THREAD = 100_000


class Counting:
    """Counts stage ends per thread id on the hot path, and through a BackgroundExporter."""

    def __init__(self) -> None:
        self.per_thread: dict[int, int] = {}
        self.per_microbatch: Counter = Counter()
        self.exported = 0
        self.exporter = BackgroundExporter(self._export, name="counting", capacity=THREADS * PER_THREAD)

    def _export(self, batch: list) -> None:
        self.exported += len(batch)

    def sched_trace_stage_end(self, event: Any) -> None:
        tid = event.rank.tid
        self.per_thread[tid] = self.per_thread.get(tid, 0) + 1  # each thread writes only its own key
        self.exporter.append(event)

    def sched_trace_flush(self, timeout: float) -> None:
        self.exporter.flush(timeout)


@sched_trace.stage("run_batch_cpu", level=4, microbatch="mb_id")
def run_batch(mb_id: int) -> int:
    return mb_id + 1


@sched_trace.stage("forward", level=4, microbatch="mb_id")
async def forward(mb_id: int) -> int:
    return mb_id


def test_eight_threads_lose_no_event():
    counting = Counting()
    sched_trace.configure(level=9, plugins=[counting], autoload=False)
    calls: dict[int, int] = {}

    def scheduler() -> None:
        total = 0
        for mb_id in range(PER_THREAD):
            total += run_batch(mb_id & 7)
        calls[threading.get_native_id()] = PER_THREAD if total == sum((m & 7) + 1 for m in range(PER_THREAD)) else -1

    threads = [threading.Thread(target=scheduler) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    sched_trace.flush(timeout=60)
    assert calls == counting.per_thread and len(calls) == THREADS
    assert counting.exported == THREADS * PER_THREAD
    assert counting.exporter.buffer.dropped == 0
    counting.exporter.shutdown(5)


def test_eight_asyncio_tasks_lose_no_event():
    counting = Counting()

    def count_microbatch(event: Any) -> None:
        counting.per_microbatch[event.microbatch] += 1

    counting.sched_trace_stage_end = count_microbatch  # type: ignore[method-assign]
    sched_trace.configure(level=9, plugins=[counting], autoload=False)

    async def task(index: int) -> int:
        total = 0
        for step in range(PER_THREAD):
            total += await forward(index)
            if step % 64 == 0:
                await asyncio.sleep(0)  # interleave the tasks
        return total

    async def main() -> list[int]:
        return await asyncio.gather(*(task(index) for index in range(THREADS)))

    assert asyncio.run(main()) == [index * PER_THREAD for index in range(THREADS)]
    assert counting.per_microbatch == {index: PER_THREAD for index in range(THREADS)}
    counting.exporter.shutdown(5)


def test_configure_and_register_racing_with_recording_lose_nothing():
    """The counting plugin stays registered throughout: it gets one event per call."""
    counting = Counting()
    sched_trace.configure(level=9, plugins=[counting], autoload=False)
    stop = threading.Event()
    errors: list[BaseException] = []
    calls: dict[int, int] = {}

    def scheduler() -> None:
        count = 0
        while not stop.is_set() or count < 20_000:
            run_batch(count & 3)
            count += 1
        calls[threading.get_native_id()] = count

    def reconfigurer() -> None:
        try:
            while not stop.is_set():
                other = MemoryRecorder()
                sched_trace.register(other)
                sched_trace.configure(level=9, config={"level": 9}, autoload=False)
                sched_trace.configure(level=9, autoload=False)
                sched_trace.unregister(other)
        except BaseException as exc:  # noqa: BLE001 (the test reports it)
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(4)] + [threading.Thread(target=reconfigurer)]
    for thread in threads:
        thread.start()
    threading.Event().wait(1.0)
    stop.set()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert calls == counting.per_thread
    counting.exporter.shutdown(5)


def test_instrument_and_uninstrument_racing_with_recording():
    """Every call either ran traced (a start and an end event) or plain; never half, never a crash."""
    from . import racing_target

    recorder = MemoryRecorder(starts=True)
    sched_trace.configure(level=9, plugins=[recorder], autoload=False)
    targets = [f"{racing_target.__name__}:Engine.step", f"{racing_target.__name__}:run_step"]
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = Counter()

    def scheduler() -> None:
        engine = racing_target.Engine()
        try:
            count = 0
            while not stop.is_set():
                assert engine.step(count) == count * 2 + 1
                assert racing_target.run_step(count) == count * 3
                count += 1
            calls[threading.get_native_id()] = count
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def instrumenter() -> None:
        try:
            while not stop.is_set():
                handles = [sched_trace.instrument(target, stage=target.rsplit(".", 1)[-1], level=4)
                           for target in targets]
                threading.Event().wait(0.001)
                for handle in handles:
                    handle.uninstrument()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(4)] + [threading.Thread(target=instrumenter)]
    for thread in threads:
        thread.start()
    threading.Event().wait(1.0)
    stop.set()
    for thread in threads:
        thread.join(120)
    assert errors == []
    starts = Counter(e.span_id for e in recorder.events if e.end_ns is None)
    ends = Counter(e.span_id for e in recorder.events if e.end_ns is not None)
    assert starts == ends  # every traced call that started also ended
    assert 0 < sum(ends.values()) <= 2 * sum(calls.values())
    # Afterwards: instrumented again, every call is one event again.
    recorder.clear()
    handle = sched_trace.instrument(targets[1], stage="run_step", level=4)
    for value in range(100):
        racing_target.run_step(value)
    handle.uninstrument()
    racing_target.run_step(0)
    assert [e.name for e in recorder.events if e.end_ns is not None] == ["run_step"] * 100
