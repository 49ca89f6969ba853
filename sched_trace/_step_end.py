"""Frames sent by the scheduler's own thread, at the end of a span with no span around it.

An exporter thread that wakes every interval to send what the scheduler recorded takes the
GIL from the scheduler thread: the engine waits for the frame, then finds its caches cold
(docs/performance.md, "Frames sent at a step's end"). The C hot path instead calls
:func:`_drain_at_step_end` when a root span ends on a thread once the interval has passed
(``_speedups.drain_after``); each running exporter that can send without waiting
(``BackgroundExporter.drain_at_step_end``) sends one batch there and then.
``SCHED_TRACE_DRAIN=thread`` leaves it all to the exporter threads.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

from . import _native

log = logging.getLogger("sched_trace")

#: Running exporters whose batches the scheduler's threads send at a span's end.
running: "weakref.WeakSet[Any]" = weakref.WeakSet()


def enabled() -> bool:
    """Whether the scheduler's threads send the exporters' frames at the end of their spans
    (the C form built, and ``SCHED_TRACE_DRAIN`` unset or ``step``); ``thread``: only the
    exporter threads do, every interval, as before."""
    mode = os.environ.get("SCHED_TRACE_DRAIN", "step").strip().lower() or "step"
    if mode not in ("step", "thread"):
        raise ValueError(f"SCHED_TRACE_DRAIN must be 'step' or 'thread', got {mode!r}")
    return mode == "step" and _native.speedups is not None and hasattr(_native.speedups, "drain_after")


def arm() -> None:
    """Have the next root span to end after the shortest interval call :func:`_drain_at_step_end`."""
    speedups = _native.speedups
    if speedups is None or not hasattr(speedups, "drain_after"):
        return
    intervals = [exporter.interval for exporter in list(running)]
    if intervals:
        speedups.drain_after(_drain_at_step_end, min(intervals))
    else:
        speedups.drain_after(None, 0.0)


def _drain_at_step_end() -> None:
    """Called by the C hot path on the thread whose root span just ended, once due. A
    KeyboardInterrupt arriving meanwhile is the scheduler's: the C caller raises it."""
    try:
        for exporter in list(running):
            try:
                exporter.drain_at_step_end()
            except Exception as exc:  # never into the scheduler: counted where it was lost, and said
                log.warning("sched-trace %s: sending at a span's end failed: %s", exporter.name, exc)
    finally:
        arm()


def reset() -> None:
    """In a fork child: the parent's exporters send nothing here (theirs start again on demand)."""
    running.clear()
    arm()
