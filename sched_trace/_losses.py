"""Events lost, made visible: the drop markers a full buffer leaves per rank, and the one
warning line per plugin at shutdown (how many of how many, and what to change)."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Optional

from ._events import StageEvent

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
