"""Hand-off from the scheduler thread to exporters: bounded buffers, drops counted.

Event hooks run on the scheduler thread and must return at once. A plugin
appends each event to an :class:`EventBuffer` (O(1), never blocks); a
:class:`BackgroundExporter` thread drains the buffer in batches and calls the
plugin's export function off the hot path. When the buffer is full the event is
dropped and counted, never waited for. Buffers survive ``fork`` (the child
starts empty, with its own thread).
"""

from __future__ import annotations

import atexit
import logging
import operator
import os
import threading
import time
import weakref
from collections import deque
from itertools import repeat
from typing import Any, Callable, Iterable, Optional, Sequence


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

    def drain(self, limit: int) -> list:
        # A C-level loop: the exporter thread holds the GIL for as short a time as it can.
        # popleft one by one (never copy-then-clear) so a concurrent append is never lost.
        return list(map(_call, repeat(self._items.popleft, min(limit, len(self._items)))))

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class BackgroundExporter:
    """Drains an EventBuffer on a daemon thread and passes batches to ``export``.

    ``export(batch)`` runs off the scheduler thread. If it raises, the batch is
    counted in ``failed`` and the thread carries on. ``flush`` waits until
    everything appended so far went through ``export``.
    """

    def __init__(
        self,
        export: Callable[[Sequence[Any]], None],
        *,
        name: str = "exporter",
        capacity: int = DEFAULT_CAPACITY,
        max_batch: int = 256,
        interval: float = 0.2,
    ) -> None:
        self.name = name
        self.buffer = EventBuffer(capacity)
        self.export_batch = export
        self.max_batch = max_batch
        self.interval = interval
        self.exported = 0
        self.failed = 0
        self.abandoned = 0  # left in the buffer when shutdown's deadline passed
        self.in_flight = 0  # taken from the buffer, in export() now: neither exported nor failed yet
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._stopped = False
        self._thread: Optional[threading.Thread] = None
        _live.add(self)

    # The hot path: one bound-method call and a deque append.
    def append(self, event: Any) -> None:
        # EventBuffer.append inlined: this runs on the scheduler thread for every event.
        buffer = self.buffer
        items = buffer._items
        if len(items) >= buffer.capacity:
            buffer.dropped += 1
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

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its events are the parent's to export.
        self.buffer.clear()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._thread = None

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
                batch = self.buffer.drain(self.max_batch)
                self._busy = bool(batch)
                self.in_flight = len(batch)
            if not batch:
                with self._idle:
                    self._idle.notify_all()
                return
            try:
                self.export_batch(batch)
                self.exported += len(batch)
            except Exception as exc:
                self.failed += len(batch)
                log.warning("sched-trace %s export failed (%d events counted as failed): %s",
                            self.name, len(batch), exc)
            finally:
                with self._idle:
                    self._busy = False
                    self.in_flight = 0
            # Hand the GIL back between batches: an encoder in C (pickle, protobuf)
            # holds it for the whole call, and the scheduler thread is waiting.
            time.sleep(0)

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until the buffer is empty and exported; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            self._drain_all()
            return len(self.buffer) == 0
        self._wake.set()
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy and len(self.buffer) == 0, timeout)

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
        if left:
            log.warning("sched-trace %s: %d events not exported by the shutdown deadline (counted as abandoned)",
                        self.name, len(left))
        self._thread = None
        _live.discard(self)

    def stats(self) -> dict[str, int]:
        return {
            "buffered": len(self.buffer),
            "exported": self.exported,
            "dropped": self.buffer.dropped,
            "failed": self.failed,
            "abandoned": self.abandoned,
            "in_flight": self.in_flight,
        }


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


@atexit.register
def _flush_at_exit() -> None:
    from . import api, lifecycle  # late: api imports this module

    api.shutdown(timeout=lifecycle.exit_timeout())


def deprioritize_exporter_process() -> None:
    """Let an exporter subprocess yield the CPU to the schedulers it serves.

    Exporter processes encode and send in bulk and can catch up later (their
    queues are bounded and count drops); scheduler ranks cannot. On a machine whose
    cores the ranks keep busy, an exporter at the ranks' priority takes its CPU
    straight out of their throughput. ``SCHED_TRACE_EXPORTER_NICE`` (default 10,
    0 to keep the priority) sets how much the exporter steps back.
    """
    try:
        step = int(os.environ.get("SCHED_TRACE_EXPORTER_NICE", "10"))
    except ValueError:
        step = 10
    if step > 0 and hasattr(os, "nice"):
        try:
            os.nice(step)
        except OSError:  # not permitted here: run at the inherited priority
            pass
