"""Scheduler-thread side: record CUDA events at stage start and end, hand pairs over.

Recording an event is asynchronous (``cudaEventRecord``): the scheduler thread
never waits for the GPU. Events are reused from a per-device pool once the
resolver is done with them. The resolver thread polls ``query()`` and emits the
GPU events; it never calls ``synchronize``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Optional, Sequence

from sched_trace import StageEvent
from sched_trace.export import EventBuffer

from .resolver import PendingStage, Resolver
from .settings import Settings


class GpuStageHooks:
    """The event hooks, registered only while CUDA is usable in this process."""

    def __init__(self, torch: Any, settings: Settings, handoff: EventBuffer) -> None:
        cuda = torch.cuda
        self._new_event = lambda: cuda.Event(enable_timing=True)
        self._capturing = cuda.is_current_stream_capturing
        self._current_device = cuda.current_device
        self._stages = frozenset(settings.stages) or None
        self._max_open = settings.max_pending
        self._open: dict[int, tuple[Any, int]] = {}
        self._pools: dict[int, deque] = {}
        self.handoff = handoff
        self.recorded = 0
        self.capture_skipped = 0
        self.open_overflow = 0
        self.device_switched = 0

    def sched_trace_stage_start(self, event: StageEvent) -> None:
        if self._stages is not None and event.name not in self._stages:
            return
        if self._capturing():  # a timing event cannot be recorded into a CUDA graph capture
            self.capture_skipped += 1
            return
        if len(self._open) >= self._max_open:  # stages that never end (abandoned generators)
            self.open_overflow += 1
            return
        device = self._current_device()
        start = self._take(device)
        start.record()
        self._open[event.span_id] = (start, device)

    def sched_trace_stage_end(self, event: StageEvent) -> None:
        opened = self._open.pop(event.span_id, None)
        if opened is None:  # not timed (filtered, or one of our own GPU events)
            return
        start, device = opened
        if self._capturing():
            self.capture_skipped += 1
            self.recycle(start, device)
            return
        if self._current_device() != device:  # elapsed_time needs both events on one device
            self.device_switched += 1
            self.recycle(start, device)
            return
        end = self._take(device)
        end.record()
        self.recorded += 1
        self.handoff.append(PendingStage(event, start, end, device, time.monotonic_ns()))

    def _take(self, device: int) -> Any:
        pool = self._pools.get(device)
        if pool:
            try:
                return pool.pop()
            except IndexError:  # the resolver thread raced us to it; make a new one
                pass
        return self._new_event()

    def recycle(self, event: Any, device: int) -> None:
        pool = self._pools.get(device)
        if pool is None:
            pool = self._pools.setdefault(device, deque())
        pool.append(event)


class ResolverThread:
    """Moves pairs from the hand-off buffer into the resolver and emits what resolved."""

    def __init__(self, resolver: Resolver, handoff: EventBuffer,
                 emit: Callable[[Sequence[StageEvent]], None], poll_interval: float) -> None:
        self.resolver = resolver
        self.handoff = handoff
        self.emit = emit
        self.poll_interval = poll_interval
        self.emitted = 0
        self.capture_depth = 0  # CUDA graph captures in progress: do not touch CUDA now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sched-trace-cuda", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            self.step()

    def step(self) -> int:
        """One round: take new pairs, resolve completed ones, emit them. Returns how many."""
        with self._lock:
            self.resolver.add(self.handoff.drain(len(self.handoff)))
            if self.capture_depth:
                return 0
            events = self.resolver.poll(time.monotonic_ns())
        if events:
            self.emit(events)
            self.emitted += len(events)
        return len(events)

    def idle(self) -> bool:
        return not self.handoff and not self.resolver.pending

    def flush(self, timeout: float) -> bool:
        """Poll until every recorded pair is resolved; False when ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        while True:
            self.step()
            if self.idle():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self.poll_interval, 0.01))

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def capture_began(self) -> None:
        # Taking the lock waits out a poll in progress, so no query() overlaps the capture.
        with self._lock:
            self.capture_depth += 1

    def capture_ended(self) -> None:
        with self._lock:
            self.capture_depth = max(0, self.capture_depth - 1)


def pause_during_graph_capture(graph_class: Any, thread: ResolverThread) -> Callable[[], None]:
    """Wrap ``capture_begin``/``capture_end`` of ``torch.cuda.CUDAGraph``; returns the undo.

    In the default (global) capture mode, CUDA forbids ``cudaEventQuery`` on any
    thread while a graph is being captured, and such a call would invalidate the
    user's capture. The resolver therefore stops polling for the duration.
    """
    own = {name: graph_class.__dict__[name] for name in ("capture_begin", "capture_end")
           if name in graph_class.__dict__}
    original_begin, original_end = graph_class.capture_begin, graph_class.capture_end

    def capture_begin(graph: Any, *args: Any, **kwargs: Any) -> Any:
        thread.capture_began()
        try:
            return original_begin(graph, *args, **kwargs)
        except BaseException:
            thread.capture_ended()
            raise

    def capture_end(graph: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original_end(graph, *args, **kwargs)
        finally:
            thread.capture_ended()

    capture_begin.__wrapped__ = original_begin  # type: ignore[attr-defined]
    capture_end.__wrapped__ = original_end  # type: ignore[attr-defined]
    graph_class.capture_begin = capture_begin
    graph_class.capture_end = capture_end

    def undo() -> None:
        # Only put back what is still ours: someone may have wrapped on top since.
        for name, wrapper in (("capture_begin", capture_begin), ("capture_end", capture_end)):
            if graph_class.__dict__.get(name) is wrapper:
                if name in own:
                    setattr(graph_class, name, own[name])
                else:
                    delattr(graph_class, name)

    return undo
