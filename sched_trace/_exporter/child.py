"""The exporter process: ``python -m sched_trace._exporter.child``, one per plugin and scheduler process.

It reads an ``init`` frame (the exporter class, its options), builds the exporter,
then serves frames in order: events go to ``export()`` as they arrive; ``flush`` is
answered with an ``ack`` once ``flush()`` returned (so everything sent before it
was exported); ``stop``, or the end of stdin (the scheduler process exited or let
go), shuts the exporter down and ends the process. Counters go back now and then.

There is no queue here: a frame is read only when the previous one was exported,
so a slow exporter fills the pipe, the scheduler process's exporter thread waits on
it, and events are dropped (and counted) only in the scheduler process's bounded
buffer. That is the one back-pressure policy (docs/reliability.md).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

from .codec import decode_events
from .exporter import load
from .frames import CONTROL, EVENTS, FrameReader, reply

#: Seconds between the counters this process sends back unasked (a flush's ack carries them
#: too). Each one wakes a reader thread in the scheduler's process, which takes the GIL from
#: the scheduler thread for it (docs/performance.md, "What an exporter frame costs the
#: engine"); a child killed mid-traffic has its loss counted from the last of them.
STATS_INTERVAL = 2.0
STOP_TIMEOUT = 5.0   # shutdown time when the parent just went away
#: Seconds between looks at the pipe while it is empty (frames.FrameReader's ``nap``): the
#: exporter thread's write, the GIL held, then never has to wake this process. A frame, a
#: flush and the end of the stream wait up to this long to be seen.
NAP = 0.02
log = logging.getLogger("sched_trace")


def step_back() -> None:
    """Let this process yield the CPU to the schedulers it serves.

    Exporter processes work in bulk and can catch up later; scheduler ranks cannot.
    On a machine whose cores the ranks keep busy, an exporter at their priority takes
    its CPU straight out of their throughput. ``SCHED_TRACE_EXPORTER_NICE`` (default
    10, 0 to keep the priority) sets how far it steps back.
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


class Served:
    """The exporter and the counters of what it was handed."""

    def __init__(self, exporter: Any, label: str) -> None:
        self.exporter = exporter
        self.label = label
        self.handled = 0      # events whose export() returned or raised
        self.failed = 0       # of those, events in a batch whose export() raised
        self._logged: set[str] = set()

    def export(self, payload: bytes) -> None:
        events = decode_events(payload)
        try:
            self.exporter.export(events)
        except Exception as exc:  # the next batch still comes; the count says what failed
            self.failed += len(events)
            if type(exc).__name__ not in self._logged:
                self._logged.add(type(exc).__name__)
                log.warning("sched-trace %s exporter: export failed (%d events): %r", self.label, len(events), exc)
        self.handled += len(events)

    def counters(self) -> dict[str, Any]:
        try:
            own = dict(self.exporter.counters())
        except Exception:  # counters are reporting, never a reason to stop
            own = {}
        # exporter_cpu_s: this process's CPU time, so a user sees what exporting costs
        return {**own, "handled": self.handled, "failed": self.failed, "exporter_cpu_s": time.process_time()}


def serve(reader: FrameReader, out: int) -> int:
    first = reader.read()
    if first is None or first[0] != CONTROL or first[1][0] != "init":
        return 2
    _, target, options, label = first[1]
    served = Served(load(target)(**options), label)
    reply(out, ("stats", served.counters()))  # alive, with the exporter's first counters (a file name)
    last_stats, stop_timeout = time.monotonic(), STOP_TIMEOUT
    while True:
        frame = reader.read(STATS_INTERVAL)
        if frame is not None:
            kind, body = frame
            if kind == EVENTS:
                served.export(body)
            elif body[0] == "flush":
                served.exporter.flush(body[2])
                reply(out, ("ack", body[1], served.counters()))
            elif body[0] == "stop":
                stop_timeout = body[1]
                break
        elif reader.closed:
            break
        if time.monotonic() - last_stats >= STATS_INTERVAL:
            last_stats = time.monotonic()
            reply(out, ("stats", served.counters()))
    served.exporter.shutdown(stop_timeout)
    reply(out, ("ack", -1, served.counters()))
    return 0


def main() -> None:
    """Run :func:`serve` on stdin and the real stdout, then leave by ``os._exit``."""
    step_back()
    # Ctrl-C and a group SIGTERM (Slurm, `kill -TERM -PGID`) reach this process too: it ignores
    # both and stops at the end of stdin, after exporting what it was handed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = os.dup(1)
    os.dup2(2, 1)  # the protocol owns the real stdout; anything printed goes to stderr
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    code = 1
    try:
        code = serve(FrameReader(0, nap=NAP), out)
    except BaseException as exc:  # report, then still skip finalization below
        sys.stderr.write(f"sched-trace exporter process: {exc!r}\n")
    finally:
        try:
            sys.stderr.flush()
        except OSError:
            pass
        # Threads of the exporter (an HTTP pool) must not hold the scheduler's exit up.
        os._exit(code)


if __name__ == "__main__":
    main()
