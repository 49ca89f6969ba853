"""The ``perfetto`` plugin: end events into a bounded buffer, encoded and written elsewhere.

On the scheduler thread each end hook is one bound-method call and a deque
append (:class:`sched_trace.BackgroundExporter`). By default (``process = true``)
the exporter thread only turns batches into compact records and pipes them to an
exporter process, which encodes them (TrackEvent protobuf, or Chrome JSON) and
appends them to this process's file: encoding costs the scheduler process no
CPU and no GIL. With ``process = false`` the exporter thread encodes and writes
itself. Either way the file grows as the program runs, so a crash loses at most
the last interval; ``flush``/``shutdown`` (also run at exit) write the rest,
wait for it to be on disk and close the file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Optional, Sequence

from sched_trace import BackgroundExporter, hookimpl
from sched_trace.export import wall_offset_ns

from . import settings as _settings
from .process import ExporterProcess
from .sink import TraceSink
from .wire import pack_events

log = logging.getLogger("sched_trace.perfetto")


class PerfettoPlugin:
    """A Perfetto timeline per process (entry point ``perfetto``).

    Keyword arguments override ``[plugins.perfetto]`` (``directory=``, ``format=`` ...).
    ``paths`` lists the files this plugin wrote in this process.
    """

    def __init__(self, **overrides: Any) -> None:
        self._overrides = overrides
        self.settings: Optional[_settings.PerfettoSettings] = None
        self._paths: list[str] = []
        self._exporter: Optional[BackgroundExporter] = None
        self._sink: Optional[TraceSink] = None
        self._process: Optional[ExporterProcess] = None
        self._fork_hooked = False
        self._send_pid = os.getpid()
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

    @property
    def paths(self) -> list[str]:
        """The files this plugin wrote in this process, oldest first."""
        process = self._process
        return self._paths + (process.paths if process is not None else [])

    def start(self, settings: _settings.PerfettoSettings) -> None:
        with self._lock:
            self.settings = self._absolute(settings)
            self._sink = None
            export = self._export
            if self.settings.process:
                if self._process is not None:  # an earlier run's files and counters stay listed
                    self._paths += self._process.paths
                    self._finished_slices += self._process.stats()["slices_written"]
                self._process, export = ExporterProcess(self.settings, wall_offset_ns), self._send
            self._exporter = BackgroundExporter(export, name="perfetto", capacity=settings.capacity)
            self._append = self._exporter.append
        if not self._fork_hooked:
            import multiprocessing.util

            multiprocessing.util.register_after_fork(self, PerfettoPlugin._stop_at_fork_child_exit)
            self._fork_hooked = True

    def _stop_at_fork_child_exit(self) -> None:
        """multiprocessing's fork children leave by os._exit (no atexit): stop through its finalizers."""
        import multiprocessing.util

        multiprocessing.util.Finalize(None, self.stop, exitpriority=10)

    def stop(self, timeout: float = 5.0) -> None:
        """Write everything buffered, then close the file, all within ``timeout``.

        The exporter thread takes ``_lock`` to write, so the wait happens outside it.
        Events still buffered at the deadline are counted as abandoned; an exporter
        process still writing is left to finish its file on its own.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            exporter = self._exporter
            self._append = self._first_event
        if exporter is not None:
            exporter.shutdown(timeout)
        if self._process is not None:
            self._process.close(max(0.0, deadline - time.monotonic()))
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
                    self._paths, self._finished_slices = [], 0  # forked: the parent's files are not ours
                self._close_sink()
                assert self.settings is not None
                sink = self._sink = TraceSink(self.settings)
            opened = sink.path is None
            sink.write(batch)
            if opened and sink.path is not None:
                self._paths.append(sink.path)

    def _send(self, batch: Sequence[Any]) -> None:
        """On the exporter thread (process = true): records to the exporter process."""
        assert self._process is not None
        if self._send_pid != os.getpid():  # forked: the parent's files and counts are not ours
            self._paths, self._finished_slices, self._send_pid = [], 0, os.getpid()
        if not self._process.send(pack_events(batch), len(batch)):
            raise RuntimeError("no exporter process to take the events")

    @hookimpl
    def sched_trace_flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self._exporter is not None:
            self._exporter.flush(timeout)
            if self._process is not None:
                self._process.flush(max(0.0, deadline - time.monotonic()))

    @hookimpl
    def sched_trace_shutdown(self, timeout: float) -> None:
        self.stop(timeout)

    @hookimpl
    def sched_trace_collect_stats(self) -> dict[str, int]:
        counters = self._exporter.stats() if self._exporter is not None else {}
        sink = self._sink
        written = self._finished_slices + (sink.slices if sink is not None and sink.pid == os.getpid() else 0)
        process = {}
        if self._process is not None:
            process = self._process.stats()
            written += process.pop("slices_written")
        return {**counters, **process, "slices_written": written, "files": len(self.paths)}
