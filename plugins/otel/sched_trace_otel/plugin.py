"""The ``otel`` plugin: end events into a bounded buffer; everything else elsewhere.

On the scheduler thread each end hook is one bound-method call and a deque
append (:class:`sched_trace.BackgroundExporter`); a full buffer drops and
counts. The exporter thread turns events into compact records (resolving
request ids and trace contexts) and hands them to the exporter process, which
builds the spans and writes or sends them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from typing import Any, Mapping, Optional

from sched_trace import BackgroundExporter, hookimpl

from . import settings as _settings
from .pipeline import ExportPipeline, process_meta
from .process import ExporterProcess
from .wire import RecordEncoder

log = logging.getLogger("sched_trace.otel")


class OtelPlugin:
    """OpenTelemetry spans per rank, batch, stage and request (entry point ``otel``)."""

    def __init__(self, **overrides: Any) -> None:
        self._overrides = overrides          # settings given in code win over the config file
        self.settings: Optional[_settings.OtelSettings] = None
        self._exporter: Optional[BackgroundExporter] = None
        self._process: Optional[ExporterProcess] = None
        self._pipeline: Optional[ExportPipeline] = None
        self._encoder: Optional[RecordEncoder] = None
        self._lock = threading.RLock()
        self._append = self._first_event

    # --- hooks on the scheduler thread -------------------------------------------

    @hookimpl
    def sched_trace_stage_end(self, event: Any) -> None:
        self._append(event)

    @hookimpl
    def sched_trace_batch_end(self, event: Any) -> None:
        self._append(event)

    @hookimpl
    def sched_trace_request(self, event: Any) -> None:
        self._append(event)  # request spans are built with the batch spans, off this thread

    def _first_event(self, event: Any) -> None:
        """Registered without configure(): start with defaults and the environment."""
        with self._lock:
            if self._append == self._first_event:
                self.start(_settings.parse(self._overrides, "OtelPlugin()"))
        self._append(event)

    # --- lifecycle hooks -----------------------------------------------------------

    @hookimpl
    def sched_trace_configure(self, config: Any) -> None:
        table = {**config.plugin_settings("otel"), **self._overrides}
        chosen = _settings.parse(table, config.source)
        with self._lock:
            if self.settings == self._absolute(chosen) and self._exporter is not None:
                return
            self.stop()
            self.start(chosen)

    @staticmethod
    def _absolute(settings: _settings.OtelSettings) -> _settings.OtelSettings:
        # The exporter process may outlive a chdir of the scheduler; pin the directory now.
        return dataclasses.replace(settings, directory=os.path.abspath(settings.directory))

    def start(self, settings: _settings.OtelSettings) -> None:
        settings = self._absolute(settings)
        self.settings = settings
        meta = process_meta(settings, os.getpid(), random.getrandbits(31) | (1 << 31))
        self._encoder = RecordEncoder(settings.max_requests, settings.requests != "off")
        self._process, self._pipeline = None, None
        if settings.process:
            self._process = ExporterProcess(settings, meta)
        else:
            self._pipeline = ExportPipeline(settings, meta)
        self._exporter = BackgroundExporter(self._export, name="otel", capacity=settings.capacity)
        self._append = self._exporter.append
        import multiprocessing.util

        multiprocessing.util.register_after_fork(self, OtelPlugin._flush_at_fork_child_exit)

    def _flush_at_fork_child_exit(self) -> None:
        """multiprocessing's fork children leave by os._exit (no atexit): stop through its finalizers."""
        import multiprocessing.util

        multiprocessing.util.Finalize(None, self.stop, exitpriority=10)

    def _export(self, events: list) -> None:
        """On the exporter thread: records out of events, to the process or the pipeline."""
        encoder = self._encoder
        if self._pid_changed():  # forked: new ids, new file, the child's own exporter
            encoder.forget_ranks()
            if self._pipeline is not None:
                self._pipeline = ExportPipeline(self.settings, process_meta(
                    self.settings, os.getpid(), random.getrandbits(31) | (1 << 31)))
        new_ranks, records = encoder.encode(events)
        if self._process is not None:
            if not self._process.send(new_ranks, records):
                raise RuntimeError("no exporter process to take the events")
        elif self._pipeline is not None:
            self._pipeline.handle(new_ranks, records)

    def _pid_changed(self) -> bool:
        pid = os.getpid()
        if getattr(self, "_export_pid", pid) != pid:
            self._export_pid = pid
            return True
        self._export_pid = pid
        return False

    @hookimpl
    def sched_trace_flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        exporter = self._exporter
        if exporter is None:
            return
        exporter.flush(timeout)
        remaining = max(0.0, deadline - time.monotonic())
        if self._process is not None:
            self._process.flush(remaining)
        elif self._pipeline is not None:
            self._pipeline.flush(remaining)

    @hookimpl
    def sched_trace_shutdown(self, timeout: float) -> None:
        self.stop(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Export everything buffered (open scopes included), then stop the exporter, all
        within ``timeout``; what did not make it is counted (abandoned, unconfirmed)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            exporter, self._exporter = self._exporter, None
            self._append = self._first_event
            if exporter is None:
                return
            exporter.shutdown(timeout)
            self._final = exporter  # its counters still move while a stuck batch fails
            remaining = max(0.0, deadline - time.monotonic())
            if self._process is not None:
                self._process.close(remaining)
            elif self._pipeline is not None:
                self._pipeline.close(remaining)

    # --- counters --------------------------------------------------------------------

    @hookimpl
    def sched_trace_collect_stats(self) -> Mapping[str, Any]:
        exporter = self._exporter
        final = getattr(self, "_final", None)
        events = exporter.stats() if exporter is not None else final.stats() if final is not None else {}
        stats: dict[str, Any] = {
            "buffered": events.get("buffered", 0),
            "events_exported": events.get("exported", 0),
            "dropped": events.get("dropped", 0),
            "failed": events.get("failed", 0),
            "abandoned": events.get("abandoned", 0),
            "in_flight": events.get("in_flight", 0),
            "truncated_requests": self._encoder.truncated_requests if self._encoder else 0,
        }
        if self._process is not None:
            stats.update(self._process.stats())
        elif self._pipeline is not None:
            stats.update(self._pipeline.stats())
        return stats
