"""The ``perfetto`` plugin: end events into the core's processor; encoded and written elsewhere.

On the scheduler thread each end hook is the processor's ``append`` (a deque
append). By default (``process = true``) the exporter process encodes each batch
(TrackEvent protobuf, or Chrome JSON) and appends it to this process's file;
with ``process = false`` the exporter thread does the same. Either way the file
grows as the program runs, written through at each batch, so a crash loses at most
what was not handed over yet; ``flush``/``shutdown`` (also run at exit) write the
rest and close the file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from sched_trace import hookimpl
from sched_trace.export import ExporterPlugin, wall_offset_ns

from . import settings as _settings

EXPORTER = "sched_trace_perfetto.exporter:PerfettoExporter"


class PerfettoPlugin(ExporterPlugin):
    """A Perfetto timeline per process (entry point ``perfetto``).

    Keyword arguments override ``[plugins.perfetto]`` (``directory=``, ``format=`` ...).
    ``paths`` lists the files this plugin wrote in this process.
    """

    def __init__(self, **overrides: Any) -> None:
        self._overrides = overrides
        self.settings = self._absolute(_settings.parse(overrides, "PerfettoPlugin()"))
        super().__init__(EXPORTER, "perfetto", requests=False, **self._processor_settings(self.settings))

    @staticmethod
    def _absolute(settings: _settings.PerfettoSettings) -> _settings.PerfettoSettings:
        # A later chdir in the program must not scatter one run's files.
        return dataclasses.replace(settings, directory=os.path.abspath(settings.directory))

    @staticmethod
    def _processor_settings(settings: _settings.PerfettoSettings) -> dict[str, Any]:
        return {"process": settings.process, "capacity": settings.capacity,
                "advice": f"raise [plugins.perfetto] capacity (now {settings.capacity:,})"}

    @hookimpl
    def sched_trace_configure(self, config: Any) -> None:
        chosen = _settings.parse({**config.plugin_settings("perfetto"), **self._overrides}, config.source)
        self.settings = self._absolute(chosen)
        self.reconfigure(EXPORTER, settings=dataclasses.asdict(self.settings), **self._processor_settings(chosen))

    def exporter_options(self) -> Mapping[str, Any]:
        """The traced process's pid and clock offset, read at each start: a fork child has its own."""
        super().exporter_options()
        return {"settings": dataclasses.asdict(self.settings), "pid": os.getpid(), "wall_offset_ns": wall_offset_ns()}

    @property
    def paths(self) -> list[str]:
        """The files this plugin wrote in this process, oldest first."""
        return self.processor.seen("path")

    @hookimpl
    def sched_trace_collect_stats(self) -> Mapping[str, Any]:
        stats = self.processor.stats()
        stats.pop("path", None)
        stats.setdefault("slices_written", 0)  # an exporter process that never reported
        return {**stats, "files": len(self.processor.seen("path"))}
