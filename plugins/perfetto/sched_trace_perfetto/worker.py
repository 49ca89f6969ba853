"""The exporter process: reads record frames on stdin, encodes them, appends them to the file.

Started by :class:`sched_trace_perfetto.process.ExporterProcess` as
``python -m sched_trace_perfetto.worker``. Frames are handled in order, so a
``flush`` is answered (``ack`` with counters) only after every batch sent before
it is in the file. If this process falls behind, the pipe fills and the
scheduler process's exporter thread waits on it; its bounded buffer then drops
and counts, and the scheduler thread itself never waits. End of stdin (the
scheduler process exited or let go of us) means: close the file, exit.
"""

from __future__ import annotations

import logging
import time
from typing import Any, BinaryIO

from sched_trace.export import read_frame, reply, worker_main

from .settings import PerfettoSettings
from .sink import TraceSink
from .wire import unpack_events

STATS_INTERVAL = 0.5
log = logging.getLogger("sched_trace.perfetto")


class Writer:
    """This exporter process's one file and its counters."""

    def __init__(self, settings: PerfettoSettings, pid: int, wall_offset_ns: int) -> None:
        self.sink = TraceSink(settings, pid=pid, wall_offset_ns=wall_offset_ns)
        self.received = 0
        self.write_failed = 0

    def handle(self, frame: tuple) -> None:
        events = unpack_events(frame)
        self.received += len(events)
        try:
            self.sink.write(events)
        except Exception as exc:  # a full disk must not end the process; the count shows it
            self.write_failed += len(events)
            log.warning("sched-trace perfetto exporter: %d events not written: %r", len(events), exc)

    def counters(self) -> dict[str, Any]:
        return {"received": self.received, "slices_written": self.sink.slices,
                "write_failed": self.write_failed, "path": self.sink.path}


def serve(stdin: BinaryIO, stdout: int) -> int:
    init = read_frame(stdin)
    if init is None or init[0] != "init":
        return 2
    _, settings, pid, wall_offset_ns = init
    writer = Writer(PerfettoSettings(**settings), pid, wall_offset_ns)

    last_stats = time.monotonic()
    try:
        while True:
            frame = read_frame(stdin)
            if frame is None or frame[0] == "stop":
                break
            if frame[0] == "events":
                opened = writer.sink.path is None
                writer.handle(frame)
                # The new file's name at once (the plugin lists it), then counters now and then.
                if (opened and writer.sink.path is not None) or time.monotonic() - last_stats >= STATS_INTERVAL:
                    last_stats = time.monotonic()
                    reply(stdout, ("stats", writer.counters()))
            elif frame[0] == "flush":
                reply(stdout, ("ack", frame[1], writer.counters()))
    except Exception as exc:  # a torn frame: the writer died mid-write; keep what is whole
        log.warning("sched-trace perfetto exporter: bad frame: %r", exc)
    writer.sink.close()
    reply(stdout, ("ack", -1, writer.counters()))
    return 0


def main() -> None:
    worker_main(serve, "perfetto")


if __name__ == "__main__":
    main()
