"""One clock for every event: monotonic nanoseconds shifted onto the Unix epoch.

The offset is read once per process (again after fork) and written into trace
files, so per-rank files can be aligned when they are merged.
"""

from __future__ import annotations

import os
import time

from ._native import built as _speedups

_offset_ns = 0


def _calibrate() -> None:
    global _offset_ns
    # Take the tightest of a few samples so the offset error stays sub-microsecond.
    best = None
    for _ in range(5):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, wall - (before + after) // 2)
    _offset_ns = best[1]
    if _speedups is not None:  # the C hot path reads the same clock and adds the same offset
        _speedups.set_clock_offset(_offset_ns)


def wall_offset_ns() -> int:
    """Wall-clock minus monotonic clock, in nanoseconds, for this process."""
    return _offset_ns


def now_ns() -> int:
    """Epoch nanoseconds, monotonic within the process."""
    return time.monotonic_ns() + _offset_ns


_calibrate()
os.register_at_fork(after_in_child=_calibrate)
