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

import itertools
import logging
import operator
import os
import threading
import time
import weakref
from collections import deque
from itertools import repeat
from typing import Any, Callable, Iterable, Optional, Sequence

from . import _native
from ._events import StageEvent

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


#: The name of the stage event that stands for events a full buffer dropped.
DROPPED = "sched_trace.dropped"
# Span ids of drop markers: from the top of the 63-bit range, apart from the probes' counter.
_next_marker_id = itertools.count((1 << 63) - (1 << 32)).__next__


class DropLog:
    """Per rank: how many events a full buffer dropped, and from when to when."""

    __slots__ = ("_ranks", "_lock", "_since")
    EVERY = 1.0  # seconds: while drops go on, a marker at least this often

    def __init__(self) -> None:
        self._ranks: dict[Any, list] = {}
        self._lock = threading.Lock()
        self._since = 0.0

    def note(self, event: Any) -> None:
        """On the scheduler thread, for a dropped event only: the buffer is full, the run is overloaded."""
        start = getattr(event, "start_ns", None)
        if start is None:
            start = event.ts_ns
        end = getattr(event, "end_ns", None) or start
        with self._lock:
            if not self._ranks:
                self._since = time.monotonic()
            entry = self._ranks.get(event.rank)
            if entry is None:
                self._ranks[event.rank] = [1, start, end]
            else:
                entry[0] += 1
                entry[1] = min(entry[1], start)
                entry[2] = max(entry[2], end)

    def markers(self, caught_up: bool) -> list:
        """A ``sched_trace.dropped`` stage event per rank for the drops since the last markers:
        once the buffer is drained (``caught_up``), or :attr:`EVERY` seconds after the first drop."""
        if not self._ranks or (not caught_up and time.monotonic() - self._since < self.EVERY):
            return []
        with self._lock:
            ranks, self._ranks = self._ranks, {}
        return [StageEvent(DROPPED, 0, start, end, rank, None, None, None, {"dropped_events": count}, None,
                           _next_marker_id(), 0) for rank, (count, start, end) in ranks.items()]


def loss_warning(name: str, stats: dict, advice: str = "") -> Optional[str]:
    """One line saying how many of how many events a plugin lost and what to change; None if none."""
    lost = {reason: stats.get(key, 0) for reason, key in (
        ("dropped (buffer full)", "dropped"), ("abandoned at the shutdown deadline", "abandoned"),
        ("failed to export", "failed"), ("lost with an exporter process", "lost_in_exporter"))}
    # Held by an exporter process still finishing after the deadline: likely written later, not sure.
    unconfirmed = stats.get("unconfirmed_at_shutdown", 0)
    lost["lost with an exporter process"] -= unconfirmed
    lost["not confirmed at the deadline (an exporter process still exporting them)"] = unconfirmed
    total = sum(lost.values())
    if not total:
        return None
    received = stats.get("received", 0)
    parts = ", ".join(f"{count:,} {reason}" for reason, count in lost.items() if count)
    hints = []
    if lost["dropped (buffer full)"]:
        hints.append(advice or "raise the plugin's capacity")
        hints.append("lower the level (SCHED_TRACE_LEVEL) or sample")
    if lost["abandoned at the shutdown deadline"]:
        hints.append("give shutdown more time (SCHED_TRACE_EXIT_TIMEOUT)")
    if lost["failed to export"] or lost["lost with an exporter process"]:
        hints.append("see the exporter's earlier warnings")
    if unconfirmed and not lost["abandoned at the shutdown deadline"]:
        hints.append("give shutdown more time (SCHED_TRACE_EXIT_TIMEOUT)")
    verb = "lost or could not confirm" if unconfirmed else "lost"
    return (f"sched-trace {name}: {verb} {total:,} of {received:,} events: {parts}; "
            f"to keep them: {'; '.join(hints)}")


# How often the exporter thread wakes to send what the scheduler recorded. A frame's cost
# on the scheduler's process is mostly fixed (the thread meets its own code and data
# cold after each engine step: about 240 us a frame in a script that evicts the caches
# between steps), so fewer, larger frames cost less: 0.5 s against 0.2 s cut the thread's
# CPU per step by 45 % there, and by a third to a half on the engines
# (docs/performance.md). What a SIGKILL can lose grows with it (docs/reliability.md);
# OpenTelemetry's batch span processor waits 5 s by default.
DRAIN_INTERVAL = 0.5


class BackgroundExporter:
    """Drains an EventBuffer on a daemon thread and passes batches to ``export``.

    ``export(batch)`` runs off the scheduler thread. If it raises, the batch is
    counted in ``failed`` and the thread carries on. ``flush`` waits until
    everything appended so far went through ``export``. ``drop_markers``: see the
    module; ``warn``: log :func:`loss_warning` at shutdown (off when the owner
    reports losses of its own too, as :class:`~sched_trace.export.ExportProcessor` does);
    ``taken``: ``export`` takes any sequence (:meth:`EventBuffer.take`), not only a list,
    as ExportProcessor's encoder does (it reads a Ring's records as they are).
    """

    def __init__(
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

    def _running(self, running: bool) -> None:
        """Keep the C append in step with the thread: it takes events only while one runs."""
        if self._appender is not None:
            self._appender.started = running

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its events are the parent's to export.
        self.buffer.clear()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._flushing = 0
        self._thread = None
        self._running(False)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._drain_all()
            if self._stopped:
                return

    def _drain_all(self) -> None:
        while True:
            with self._idle:
                batch = self.buffer.take(self.max_batch) if self.taken else self.buffer.drain(self.max_batch)
                markers = self.drops.markers(len(batch) < self.max_batch) if self.drops is not None else []
                self._busy = bool(batch or markers)
                self.in_flight = len(batch)
            if not self._busy:
                with self._idle:
                    self._idle.notify_all()
                return
            started = time.thread_time()
            try:
                self.export_batch(batch + markers if markers else batch)
                self.exported += len(batch)
                self.markers += len(markers)
            except Exception as exc:
                self.failed += len(batch)
                log.warning("sched-trace %s export failed (%d events counted as failed): %s",
                            self.name, len(batch), exc)
            finally:
                self.thread_cpu_s += time.thread_time() - started
                with self._idle:
                    self._busy = False
                    self.in_flight = 0
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


os.register_at_fork(after_in_child=_reset_after_fork)


def shutdown_all(timeout: float = 5.0, exporters: Optional[Iterable[BackgroundExporter]] = None) -> None:
    """Shut every live exporter down, all of them within one ``timeout``."""
    deadline = time.monotonic() + timeout
    for exporter in list(exporters if exporters is not None else _live):
        exporter.shutdown(max(0.0, deadline - time.monotonic()))
