"""Bound what a blocking plugin costs the scheduler: sample the threads, quarantine the blocker.

An event hook runs on the scheduler thread and is meant to append and return
(microseconds). One that blocks (a network call, a lock held elsewhere) stalls
the scheduler for as long as it blocks, on every event. Timing every hook call
would tax the hot path, so a daemon thread instead samples every thread's
stack a few times per budget: a hook frame seen running for longer than
``SCHED_TRACE_HOOK_BUDGET`` seconds (default 0.5; 0 turns this off) gets its
plugin quarantined: its event hooks are taken out of dispatch, it is counted
in ``sched_trace.stats()["plugins_quarantined"]`` and logged once. The cost of
a blocking plugin is therefore bounded by the calls already running when it is
caught (one per scheduler thread), not by the number of events. Its flush and
shutdown hooks still run (those have their deadline); registering it again
lifts the quarantine.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Optional

DEFAULT_BUDGET_S = 0.5
#: Samples that must see the same call: a thread merely waiting for the GIL is seen
#: twice (before and after the wait), a blocked one at every sample.
MIN_SAMPLES = 5

#: code object of a hook implementation -> [(plugin object, plugin name)]
CodeMap = dict[Any, list[tuple[object, str]]]


def budget_from_env() -> float:
    raw = os.environ.get("SCHED_TRACE_HOOK_BUDGET", "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_BUDGET_S
    except ValueError:
        return DEFAULT_BUDGET_S


def code_of(function: Callable[..., Any]) -> Optional[Any]:
    """The code object a call of ``function`` runs first (functions, methods, callables)."""
    target = getattr(function, "__func__", function)
    code = getattr(target, "__code__", None)
    if code is None:
        code = getattr(getattr(type(target), "__call__", None), "__code__", None)
    return code


class HookWatchdog:
    """Samples thread stacks while event hooks are registered; reports blocked hooks."""

    def __init__(self, quarantine: Callable[[str, float], None], budget_s: float) -> None:
        self.budget_s = budget_s
        self.interval_s = max(0.005, budget_s / 5)
        self._quarantine = quarantine
        self._codes: CodeMap = {}
        self._seen: dict[int, tuple[Any, float, int]] = {}
        self._thread: Optional[threading.Thread] = None
        self._wake = threading.Event()
        self._pid = os.getpid()
        _live.add(self)

    def watch(self, codes: CodeMap) -> None:
        """Watch these hook implementations (none: let the thread end)."""
        self._codes = codes
        if self._pid != os.getpid():  # forked: the parent's thread is not here
            self._pid, self._thread = os.getpid(), None
        if codes and self.budget_s > 0 and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._run, name="sched-trace-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        me = threading.get_ident()
        while self._codes:
            self._wake.wait(self.interval_s)
            self._sample(me)

    def _sample(self, me: int) -> None:
        # Frames are kept (not their ids): a live reference means a new call can never
        # pass for the old one, so only one call running past the budget counts.
        codes, now, seen = self._codes, time.monotonic(), {}
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            while frame is not None:  # the innermost hook frame on this thread's stack
                owners = codes.get(frame.f_code)
                if owners is not None:
                    previous = self._seen.get(ident)
                    first, samples = (previous[1], previous[2] + 1) if previous and previous[0] is frame else (now, 1)
                    if now - first >= self.budget_s and samples >= MIN_SAMPLES:
                        self._quarantine(_owner(owners, frame), now - first)
                    else:
                        seen[ident] = (frame, first, samples)
                    break
                frame = frame.f_back
        self._seen = seen


def _owner(owners: list[tuple[object, str]], frame: Any) -> str:
    """Which plugin a hook frame belongs to (instances of one class share the code)."""
    if len(owners) > 1:
        instance = frame.f_locals.get("self")
        for plugin, name in owners:
            if plugin is instance:
                return name
    return owners[0][1]


_live: "weakref.WeakSet[HookWatchdog]" = weakref.WeakSet()


def _restart_after_fork() -> None:
    # The parent's sampling thread does not exist in a fork child: start the child's own.
    for watchdog in list(_live):
        watchdog._seen = {}
        watchdog.watch(watchdog._codes)


os.register_at_fork(after_in_child=_restart_after_fork)
