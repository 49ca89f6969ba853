"""The scheduler process's handle on its perfetto exporter process: what the frames hold.

Start, restart, flush, stop and loss counting are :mod:`sched_trace.exporter_process`'s.
The child gets the settings, this process's pid and clock offset, then one
``events`` frame per batch (:func:`.wire.pack_events`). Each child writes its
own file; ``paths`` lists them. A child that falls behind is waited for at
close until the shutdown's deadline, then left to finish the file on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from sched_trace.export import ExporterProcess as _Base

from .settings import PerfettoSettings

RESTART_LIMIT = 10


class ExporterProcess(_Base):
    """One exporter child at a time for this process; ``paths`` lists the files they wrote."""

    worker_module = "sched_trace_perfetto.worker"
    label = "perfetto"
    live_only_keys = frozenset(("path",))
    stats_keys = ("slices_written", "write_failed")

    def __init__(self, settings: PerfettoSettings, wall_offset_ns: Callable[[], int]) -> None:
        self.settings = settings
        self._offset = wall_offset_ns   # read at each start: a fork child has its own
        self.paths: list[str] = []
        super().__init__(RESTART_LIMIT)

    def _init_frames(self) -> list:
        return [("init", dataclasses.asdict(self.settings), self._pid, self._offset())]

    def _on_counters(self, counters: dict[str, Any]) -> None:
        path = counters.get("path")
        if path is not None and path not in self.paths:
            self.paths.append(path)

    def _forked(self) -> None:
        self.paths = []
