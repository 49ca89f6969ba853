"""The ``perfetto`` plugin: end events into a bounded buffer, encoded and written off-thread.

On the scheduler thread each end hook is one bound-method call and a deque
append (:class:`sched_trace.BackgroundExporter`). The exporter thread encodes
batches (TrackEvent protobuf, or Chrome JSON) and appends them to this process's
file, so a crash loses at most the last interval; ``flush``/``shutdown`` (also
run at exit) write the rest and close the file.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Optional, Sequence

from sched_trace import BackgroundExporter, hookimpl

from . import settings as _settings
from .sink import TraceSink

log = logging.getLogger("sched_trace.perfetto")


class PerfettoPlugin:
    """A Perfetto timeline per process (entry point ``perfetto``).

    Keyword arguments override ``[plugins.perfetto]`` (``directory=``, ``format=`` ...).
    ``paths`` lists the files this plugin wrote in this process.
    """

    def __init__(self, **overrides: Any) -> None:
        self._overrides = overrides
        self.settings: Optional[_settings.PerfettoSettings] = None
        self.paths: list[str] = []
        self._exporter: Optional[BackgroundExporter] = None
        self._sink: Optional[TraceSink] = None
        self._lock = threading.RLock()
        self._finished_slices = 0
        self._append = self._first_event

    # --- hooks on the scheduler thread -------------------------------------------

    @hookimpl
    def sched_trace_stage_end(self, event: Any) -> None:
        self._append(event)

    @hookimpl
    def sched_trace_batch_end(self, event: Any) -> None:
        self._append(event)

    def _first_event(self, event: Any) -> None:
        """Registered without configure(): start with defaults and the environment."""
        with self._lock:
            if self._append == self._first_event:
                self.start(self.settings or _settings.parse(self._overrides, "PerfettoPlugin()"))
        self._append(event)

    # --- lifecycle -----------------------------------------------------------------

    @hookimpl
    def sched_trace_configure(self, config: Any) -> None:
        table = {**config.plugin_settings("perfetto"), **self._overrides}
        chosen = _settings.parse(table, config.source)
        if self._exporter is not None and self.settings == self._absolute(chosen):
            return
        self.stop()  # not under _lock: stopping waits for the exporter thread, which takes it
        self.start(chosen)

    @staticmethod
    def _absolute(settings: _settings.PerfettoSettings) -> _settings.PerfettoSettings:
        # A later chdir in the program must not scatter one run's files.
        from dataclasses import replace

        return replace(settings, directory=os.path.abspath(settings.directory))

    def start(self, settings: _settings.PerfettoSettings) -> None:
        with self._lock:
            self.settings = self._absolute(settings)
            self._sink = None
            self._exporter = BackgroundExporter(self._export, name="perfetto", capacity=settings.capacity)
            self._append = self._exporter.append

    def stop(self, timeout: float = 5.0) -> None:
        """Write everything buffered, then close the file.

        The exporter thread takes ``_lock`` to write, so the wait happens outside it.
        It lasts while the thread makes progress (at exit, late beats lost) and gives
        up only when a whole ``timeout`` passes with nothing written.
        """
        with self._lock:
            exporter = self._exporter
            self._append = self._first_event
        if exporter is not None:
            progress = None
            while not exporter.flush(timeout):
                if exporter.stats() == progress:
                    log.warning("sched-trace perfetto: exporter stuck; %d events not written",
                                len(exporter.buffer))
                    break
                progress = exporter.stats()
            exporter.shutdown(timeout)
        with self._lock:
            self._close_sink()

    def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        if sink.pid != os.getpid():  # inherited over fork: the parent still owns that file
            if sink._fd is not None:
                os.close(sink._fd)
            return
        sink.close()
        self._finished_slices += sink.slices

    # --- the exporter thread -----------------------------------------------------------

    def _export(self, batch: Sequence[Any]) -> None:
        with self._lock:
            sink = self._sink
            if sink is None or sink.pid != os.getpid():
                if sink is not None and sink.pid != os.getpid():
                    self.paths, self._finished_slices = [], 0  # forked: the parent's files are not ours
                self._close_sink()
                assert self.settings is not None
                sink = self._sink = TraceSink(self.settings)
            opened = sink.path is None
            sink.write(batch)
            if opened and sink.path is not None:
                self.paths.append(sink.path)

    @hookimpl
    def sched_trace_flush(self, timeout: float) -> None:
        if self._exporter is not None:
            self._exporter.flush(timeout)

    @hookimpl
    def sched_trace_shutdown(self) -> None:
        self.stop()

    @hookimpl
    def sched_trace_collect_stats(self) -> dict[str, int]:
        counters = self._exporter.stats() if self._exporter is not None else {}
        sink = self._sink
        written = self._finished_slices + (sink.slices if sink is not None and sink.pid == os.getpid() else 0)
        return {**counters, "slices_written": written, "files": len(self.paths)}
