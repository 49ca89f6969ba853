"""Hand-off from the scheduler thread to exporters: bounded buffers, drops counted.

Event hooks run on the scheduler thread and must return at once. A plugin
appends each event to an :class:`EventBuffer` (O(1), never blocks); a
:class:`BackgroundExporter` thread drains the buffer in batches and calls the
plugin's export function off the hot path. When the buffer is full the event is
dropped and counted, never waited for; with ``drop_markers`` the exporter is also
handed, per rank, a ``sched_trace.dropped`` stage event spanning the drops and
saying how many (so a timeline shows the hole). Buffers survive ``fork`` (the child
starts empty, with its own thread). At shutdown, an exporter that lost events says
so in one warning line.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
import time
import weakref
from collections import deque
from itertools import repeat
from typing import Any, Callable, Iterable, Optional, Sequence

from . import _native, _step_end
from ._losses import DROPPED as DROPPED, DropLog, loss_warning

log = logging.getLogger("sched_trace")
_call: Callable[[Callable[[], Any]], Any] = getattr(operator, "call", lambda function: function())  # 3.10: no operator.call

#: Default bound on buffered events per exporter. An event with its RankInfo shared
#: and a request list costs about 500 bytes: 131072 events measured 62.8 MiB of RSS
#: with the exporter stalled (benchmarks/bench_memory.py), inside the 64 MiB budget.
DEFAULT_CAPACITY = 131072


class EventBuffer:
    """A bounded FIFO that counts what it had to drop."""

    __slots__ = ("capacity", "dropped", "_items", "__weakref__")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"buffer capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.dropped = 0
        self._items: deque = deque()

    def append(self, event: Any) -> bool:
        if len(self._items) >= self.capacity:
            self.dropped += 1
            return False
        self._items.append(event)
        return True

    def take(self, limit: int) -> Sequence[Any]:
        """:meth:`drain`, or where the items are a Ring (the C form) a batch moved out of it as
        it is (``_speedups.Taken``: a sequence whose events are made as they are read; the C
        frame encoder reads its records without making them)."""
        take = getattr(self._items, "take", None)
        return take(min(limit, len(self._items))) if take is not None else self.drain(limit)

    def drain(self, limit: int) -> list:
        # A C-level loop: the exporter thread holds the GIL for as short a time as it can.
        # popleft one by one (never copy-then-clear) so a concurrent append is never lost.
        return list(map(_call, repeat(self._items.popleft, min(limit, len(self._items)))))

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


# How often the exporter thread wakes to send what the scheduler recorded. A frame's cost
# on the scheduler's process is mostly fixed (the thread meets its own code and data
# cold after each engine step: about 240 us a frame in a script that evicts the caches
# between steps), so fewer, larger frames cost less: 0.5 s against 0.2 s cut the thread's
# CPU per step by 45 % there, and by a third to a half on the engines
# (docs/performance.md). What a SIGKILL can lose grows with it (docs/reliability.md);
# OpenTelemetry's batch span processor waits 5 s by default.
DRAIN_INTERVAL = 0.5
#: While the scheduler's own threads send the frames (``_step_end``), the exporter
#: thread wakes this many intervals apart only to see whether they still do (each wake
#: takes the GIL from them): an engine that stops stepping has what it recorded after its
#: last frame sent by the thread within this many intervals.
BACKSTOP = 2


class BackgroundExporter:
    """Drains an EventBuffer on a daemon thread and passes batches to ``export``.

    ``export(batch)`` runs off the scheduler thread. If it raises, the batch is
    counted in ``failed`` and the thread carries on. ``flush`` waits until
    everything appended so far went through ``export``. ``drop_markers``: see the
    module; ``warn``: log :func:`loss_warning` at shutdown (off when the owner
    reports losses of its own too, as :class:`~sched_trace.export.ExportProcessor` does);
    ``taken``: ``export`` takes any sequence (:meth:`EventBuffer.take`), not only a list,
    as ExportProcessor's encoder does (it reads a Ring's records as they are).

    ``export_now`` and ``ready_now``: an export that never waits (an exporter process's
    frame, written where its pipe has room and otherwise left to this thread) and whether
    it can take a batch now. With them, and the C form built, the frames are sent at the
    end of the scheduler's own spans (:mod:`._step_end`): when a span with no span
    around it ends on a thread and the interval has passed, that thread sends one batch
    itself, so that the exporter thread does not take the GIL from it. ``on_wake``: what
    the thread does first at each wake (finish a frame ``export_now`` left half written).
    """

    def __init__(  # long: one line a setting and a counter, each with what it means
        self,
        export: Callable[[Sequence[Any]], None],
        *,
        name: str = "exporter",
        capacity: int = DEFAULT_CAPACITY,
        max_batch: int = 256,
        interval: float = DRAIN_INTERVAL,
        drop_markers: bool = False,
        warn: bool = True,
        advice: str = "",
        taken: bool = False,
        export_now: Optional[Callable[[Sequence[Any]], None]] = None,
        ready_now: Optional[Callable[[], bool]] = None,
        on_wake: Optional[Callable[[], None]] = None,
    ) -> None:
        self.name = name
        self.advice = advice  # what to raise when the buffer was full, in the shutdown warning
        self.drops: Optional[DropLog] = DropLog() if drop_markers else None
        self.warn = warn
        self.taken = taken  # export() takes what EventBuffer.take gives: any sequence, not only a list
        self.buffer = EventBuffer(capacity)
        self.export_batch = export
        self.max_batch = max_batch
        self.interval = interval
        self.exported = 0
        self.failed = 0
        self.abandoned = 0  # left in the buffer when shutdown's deadline passed
        self.in_flight = 0  # taken from the buffer, in export() now: neither exported nor failed yet
        self.markers = 0  # drop markers handed over with a batch whose export() returned (not received events)
        self.thread_cpu_s = 0.0  # CPU this thread spent in export(); all of it: stats()["threads_cpu_s"]
        self.export_now, self.ready_now, self.on_wake = export_now, ready_now, on_wake
        # SCHED_TRACE_DRAIN read (and a wrong value refused) here, when the exporter is made
        self._at_step_end = export_now is not None and _step_end.enabled()
        self.step_end_frames = 0  # batches the scheduler's threads sent at a span's end
        self.step_end_ns = 0  # and the wall clock it took them (perf_counter_ns), on those threads
        self._step_end_at = 0.0  # time.monotonic() of the last of them
        self._drain = threading.Lock()  # one drainer at a time: frames leave in the order taken
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._flushing = 0  # flush() calls waiting
        self._stopped = False
        self._thread: Optional[threading.Thread] = None
        self._appender: Any = None
        if _native.speedups is not None:
            # The buffer in C (sched_trace/_ring.c): a probe's event whose only listeners
            # are such buffers is held as a record: no event object on the scheduler thread.
            # With ``taken`` the export reads the records as they are (the frame encoder);
            # else each is made into its event here, on this thread, when drained.
            self.buffer._items = _native.speedups.Ring()
            # The hot path in C (sched_trace/_speedups.c): what the plugin manager calls
            # when a plugin binds ``append`` as an event hook (:func:`c_form`), this method
            # without its Python frame while the thread runs and the buffer has room; the
            # method takes the rest.
            self._appender = _native.speedups.Appender(self.buffer, self.append)
        _live.add(self)

    # The hot path: one bound-method call and a deque append (in C where it is built).
    def append(self, event: Any) -> None:
        # EventBuffer.append inlined: this runs on the scheduler thread for every event.
        buffer = self.buffer
        items = buffer._items
        if len(items) >= buffer.capacity:
            buffer.dropped += 1
            if self.drops is not None:
                self.drops.note(event)
            return
        items.append(event)
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._idle:
            if self._thread is not None:
                return
            self._stopped = False
            self._thread = threading.Thread(target=self._run, name=f"sched-trace-{self.name}", daemon=True)
            self._thread.start()
            self._running(True)
            _live.add(self)  # again after a shutdown: a fork child must reset it too
            if self._at_step_end:
                _step_end.running.add(self)
                _step_end.arm()

    def _running(self, running: bool) -> None:
        """Keep the C append in step with the thread: it takes events only while one runs."""
        if self._appender is not None:
            self._appender.started = running

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its events are the parent's to export.
        self.buffer.clear()
        self._drain = threading.Lock()
        self._step_end_at = 0.0
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._flushing = 0
        self._thread = None
        self._running(False)

    def _run(self) -> None:
        while True:
            # While the scheduler's threads send the frames, wake only now and then to see
            # that they still do (each wake takes the GIL from them); else every interval.
            sending = self._step_end_at and time.monotonic() - self._step_end_at < 2 * self.interval
            woken = self._wake.wait(self.interval * BACKSTOP if sending else self.interval)
            self._wake.clear()
            if not woken and time.monotonic() - self._step_end_at < self.interval:
                continue  # a scheduler thread sent a frame less than an interval ago
            if self.on_wake is not None:
                self._guarded(self.on_wake)
            self._drain_all()
            if self._stopped:
                return

    def _guarded(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:  # the thread carries on; what was lost is counted where it was
            log.warning("sched-trace %s: %s", self.name, exc)

    def _drain_all(self) -> None:
        while True:
            with self._drain:
                batch, markers = self._take()
                if not self._busy:
                    with self._idle:
                        self._idle.notify_all()
                    return
                started = time.thread_time()
                try:
                    self._export(self.export_batch, batch, markers)
                finally:
                    self.thread_cpu_s += time.thread_time() - started
            if len(batch) < self.max_batch and not self._flushing:
                # Caught up: what the scheduler appended meanwhile waits for the next
                # interval. Draining it now would chase the scheduler thread with a small
                # frame per GIL hand-over (a frame's cost is mostly fixed), each one a
                # forced GIL switch for the scheduler: one frame per interval instead.
                with self._idle:
                    self._idle.notify_all()
                return
            # Hand the GIL back between batches: an encoder in C (pickle, protobuf)
            # holds it for the whole call, and the scheduler thread is waiting.
            time.sleep(0)

    def _take(self) -> tuple[Sequence[Any], list]:
        """The next batch and the drop markers to send with it (the drain lock held)."""
        with self._idle:
            batch = self.buffer.take(self.max_batch) if self.taken else self.buffer.drain(self.max_batch)
            markers = self.drops.markers(len(batch) < self.max_batch) if self.drops is not None else []
            self._busy = bool(batch or markers)
            self.in_flight = len(batch)
        return batch, markers

    def _export(self, export: Callable[[Sequence[Any]], None], batch: Sequence[Any], markers: list) -> None:
        try:
            export(batch + markers if markers else batch)
            self.exported += len(batch)
            self.markers += len(markers)
        except Exception as exc:
            self.failed += len(batch)
            log.warning("sched-trace %s export failed (%d events counted as failed): %s",
                        self.name, len(batch), exc)
        finally:
            with self._idle:
                self._busy = False
                self.in_flight = 0

    def drain_at_step_end(self) -> None:
        """On a scheduler thread, at the end of one of its spans (:mod:`._step_end`): one
        batch sent with ``export_now``, which never waits, if nothing else is sending; a
        longer backlog is left to the exporter thread, woken for it."""
        if self._thread is None or self._stopped or self._flushing or not self._drain.acquire(False):
            return
        try:
            if not self.buffer or not self.ready_now():
                return
            started = time.perf_counter_ns()
            batch, markers = self._take()
            if self._busy:
                self._export(self.export_now, batch, markers)
            self.step_end_frames += 1
            self.step_end_ns += time.perf_counter_ns() - started
            self._step_end_at = time.monotonic()
        finally:
            self._drain.release()
        if len(self.buffer) >= self.max_batch or not self.ready_now():
            self._wake.set()  # a backlog, or a frame left half written: the thread's

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until the buffer is empty and exported; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            self._drain_all()
            return len(self.buffer) == 0
        with self._idle:
            self._flushing += 1  # until it returns, the thread drains to the end, not one batch per interval
            try:
                self._wake.set()
                return self._idle.wait_for(lambda: not self._busy and len(self.buffer) == 0, timeout)
            finally:
                self._flushing -= 1

    def shutdown(self, timeout: float = 5.0) -> None:
        """Export what is buffered and stop the thread, all within ``timeout``.

        What is still buffered at the deadline (the export is stuck) is counted in
        ``abandoned`` and let go, so every appended event is counted exactly once.
        """
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._idle:
            left = self.buffer.drain(len(self.buffer))
        self.abandoned += len(left)
        self._thread = None
        self._running(False)
        _live.discard(self)
        _step_end.running.discard(self)
        warning = loss_warning(self.name, self.stats(), self.advice) if self.warn else None
        if warning:
            log.warning(warning)

    def stats(self) -> dict[str, int]:
        buffered, dropped = len(self.buffer), self.buffer.dropped
        stats = {
            "received": self.exported + self.failed + self.abandoned + self.in_flight + buffered + dropped,
            "buffered": buffered,
            "exported": self.exported,
            "dropped": dropped,
            "failed": self.failed,
            "abandoned": self.abandoned,
            "in_flight": self.in_flight,
            "thread_cpu_s": self.thread_cpu_s,
        }
        if self.drops is not None:
            stats["drop_markers"] = self.markers
        if self.export_now is not None:
            stats["step_end_frames"] = self.step_end_frames
            stats["step_end_s"] = self.step_end_ns / 1e9
        return stats


def never_blocks(hook: Callable[[Any], None]) -> bool:
    """A :class:`BackgroundExporter`'s ``append`` bound as an event hook: a capacity check and
    a deque append (a drop when full; its first call starts the thread). The hook watchdog
    leaves it out: sampling every thread's stack ten times a second (a GIL hand-over each)
    to guard a hook that cannot block cost the scheduler's process more than its exporter."""
    return getattr(hook, "__func__", None) is BackgroundExporter.append


def c_form(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """What to call for ``hook``: the C form of a :class:`BackgroundExporter`'s ``append``
    bound as a plugin's event hook (pluggy registers the Python method; the plugin
    manager calls this), ``hook`` itself otherwise."""
    if never_blocks(hook):
        return hook.__self__._appender or hook  # type: ignore[attr-defined]
    return hook


_live: "weakref.WeakSet[BackgroundExporter]" = weakref.WeakSet()
def _reset_after_fork() -> None:
    for exporter in list(_live):
        exporter._after_fork_in_child()
    _step_end.reset()


os.register_at_fork(after_in_child=_reset_after_fork)


def shutdown_all(timeout: float = 5.0, exporters: Optional[Iterable[BackgroundExporter]] = None) -> None:
    """Shut every live exporter down, all of them within one ``timeout``."""
    deadline = time.monotonic() + timeout
    for exporter in list(exporters if exporters is not None else _live):
        exporter.shutdown(max(0.0, deadline - time.monotonic()))
