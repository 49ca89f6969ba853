"""The exporter process: reads record frames on stdin, builds and exports spans.

Started by :class:`sched_trace_otel.process.ExporterProcess` as
``python -m sched_trace_otel.worker``. A reader thread moves frames into a
bounded queue (records beyond ``queue_capacity`` are dropped and counted) so the
scheduler process's writes never wait on a slow receiver; the main thread runs
the pipeline and answers ``flush`` with an ``ack`` carrying its counters.
End of stdin (the scheduler process exited or closed us) means: finish, flush, exit.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, BinaryIO

from sched_trace.export import read_frame, reply, worker_main

from .settings import OtelSettings

STATS_INTERVAL = 0.5


class FrameQueue:
    """Frames from the scheduler process, bounded by the number of records they hold."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self.received = 0
        self.dropped = 0
        self._frames: deque = deque()
        self._ready = threading.Condition()

    def put(self, frame: Any) -> None:
        with self._ready:
            if frame[0] == "events":
                records = frame[2]
                self.received += len(records)
                if self.size + len(records) > self.capacity:
                    self.dropped += len(records)
                    frame = ("events", frame[1], [])  # keep the ranks, they are tiny
                self.size += len(frame[2])
            self._frames.append(frame)
            self._ready.notify()

    def get(self, timeout: float) -> Any:
        with self._ready:
            if not self._frames:
                self._ready.wait(timeout)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            if frame[0] == "events":
                self.size -= len(frame[2])
            return frame


def _reader(stream: BinaryIO, queue: FrameQueue) -> None:
    try:
        while True:
            frame = read_frame(stream)
            if frame is None:
                break
            queue.put(frame)
    except Exception:  # a torn frame means the writer died mid-write
        pass
    queue.put(("stop", 5.0))


def serve(stdin: BinaryIO, stdout: int) -> int:
    init = read_frame(stdin)
    if init is None or init[0] != "init":
        return 2
    settings = OtelSettings(**init[1])
    queue = FrameQueue(settings.queue_capacity)
    # Take frames off the pipe before the OpenTelemetry imports (a second or so): what is
    # in this process survives the scheduler's SIGKILL, what waits in its buffer does not.
    threading.Thread(target=_reader, args=(stdin, queue), name="sched-trace-otel-reader", daemon=True).start()
    from .pipeline import ExportPipeline

    pipeline = ExportPipeline(settings, init[2])

    def counters() -> dict[str, int]:
        return {**pipeline.stats(), "received": queue.received, "queue_dropped": queue.dropped,
                "queued": queue.size}

    last_stats = time.monotonic()
    while True:
        frame = queue.get(STATS_INTERVAL)
        if frame is not None:
            kind = frame[0]
            if kind == "events":
                pipeline.handle(frame[1], frame[2])
            elif kind == "flush":
                pipeline.flush(frame[2])
                reply(stdout, ("ack", frame[1], counters()))
            elif kind == "stop":
                pipeline.close(frame[1])
                final = counters()
                # Spans still waiting for the receiver now never get there: say so in a
                # counter that outlives this process (spans_waiting is a gauge).
                final["spans_undelivered"] = final.get("spans_waiting", 0)
                reply(stdout, ("ack", -1, final))
                return 0
        if time.monotonic() - last_stats >= STATS_INTERVAL:
            last_stats = time.monotonic()
            reply(stdout, ("stats", counters()))


def main() -> None:
    worker_main(serve, "otel")


if __name__ == "__main__":
    main()
