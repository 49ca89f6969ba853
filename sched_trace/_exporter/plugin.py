"""A plugin made of one exporter class: hooks in, an :class:`ExportProcessor` behind them.

    plugin = ExporterPlugin(JsonLinesExporter, "jsonl", path="out/events.jsonl")
    sched_trace.configure(plugins=[plugin])

The event hooks are the processor's ``append`` itself (one call and a deque append
on the scheduler thread). The built-in exporter plugins subclass it: they read
their ``[plugins.NAME]`` table in ``sched_trace_configure`` and call
:meth:`ExporterPlugin.reconfigure`; :meth:`ExporterPlugin.exporter_options` says what
each new exporter is built with.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

from .._hookspecs import hookimpl
from .._lifecycle import exit_timeout
from ..recorder import DEFAULT_CAPACITY
from .processor import ExportProcessor


class ExporterPlugin:
    """Feeds ``exporter_class(**options)``, in its own process by default, with every end event.

    ``requests``: also request lifecycle events (``sched_trace_request``). ``capacity``:
    events buffered before dropping (counted, and marked in the output).
    """

    def __init__(self, exporter_class: type, name: str, *, process: bool = True,
                 capacity: int = DEFAULT_CAPACITY, restart_limit: int = 10, requests: bool = True,
                 advice: str = "", **options: Any) -> None:
        self.name = name
        self.exporter_class = exporter_class
        self.options = options
        self.process, self.capacity, self.restart_limit = process, capacity, restart_limit
        self._lock = threading.RLock()
        self._fork_hooked = False
        self.processor = ExportProcessor(name, exporter_class, self.exporter_options, process=process,
                                         capacity=capacity, restart_limit=restart_limit,
                                         advice=advice or f"raise {name}'s capacity (now {capacity:,})")
        self.sched_trace_stage_end = self.processor.append
        self.sched_trace_batch_end = self.processor.append
        if requests:
            self.sched_trace_request = self.processor.append

    def exporter_options(self) -> Mapping[str, Any]:
        """The keyword arguments of each exporter built (at each exporter-process start, and after a fork)."""
        self._hook_fork_exit()
        return self.options

    def reconfigure(self, exporter_class: Any = None, *, process: Any = None, capacity: Any = None,
                    restart_limit: Any = None, advice: str = "", **options: Any) -> None:
        """Change what is exported and how; the exporter behind the buffer is replaced only if needed."""
        with self._lock:
            wanted = (exporter_class or self.exporter_class, self.process if process is None else process,
                      self.capacity if capacity is None else capacity,
                      self.restart_limit if restart_limit is None else restart_limit, options or self.options)
            if wanted == (self.exporter_class, self.process, self.capacity, self.restart_limit, self.options):
                return
            self.exporter_class, self.process, self.capacity, self.restart_limit, self.options = wanted
            if advice:
                self.processor.advice = advice
            self.processor.configure(self.exporter_class, self.exporter_options, process=self.process,
                                     capacity=self.capacity, restart_limit=self.restart_limit)

    def _hook_fork_exit(self) -> None:
        """multiprocessing's fork children leave by os._exit (no atexit): stop through its finalizers."""
        if not self._fork_hooked:
            import multiprocessing.util

            multiprocessing.util.register_after_fork(self, ExporterPlugin._stop_at_fork_child_exit)
            self._fork_hooked = True

    def _stop_at_fork_child_exit(self) -> None:
        import multiprocessing.util

        multiprocessing.util.Finalize(None, self._stop_at_exit, exitpriority=10)

    def _stop_at_exit(self) -> None:
        # The deadline every exit path has (atexit, SIGTERM): SCHED_TRACE_EXIT_TIMEOUT, read now.
        self.stop(exit_timeout())

    @hookimpl
    def sched_trace_flush(self, timeout: float) -> None:
        self.processor.flush(timeout)

    @hookimpl
    def sched_trace_shutdown(self, timeout: float) -> None:
        self.stop(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Export what is buffered, then stop the exporter, within ``timeout``; losses are counted and
        said in one warning line. Events recorded later start it again."""
        with self._lock:
            self.processor.shutdown(timeout)

    @hookimpl
    def sched_trace_collect_stats(self) -> Mapping[str, Any]:
        return self.processor.stats()
