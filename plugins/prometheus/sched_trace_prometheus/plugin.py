"""The ``prometheus`` plugin: buffers end events, observes them off the scheduler thread.

The event hooks are the exporter's bound ``append`` (a deque append); histogram
and counter updates, label lookups and the HTTP server all run on other threads.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry

import sched_trace
from sched_trace.export import BackgroundExporter

from .collector import SchedTraceCollector
from .metrics import StageMetrics
from .settings import Settings, parse_settings

log = logging.getLogger("sched_trace.prometheus")


class PrometheusPlugin:
    """Stage latency histograms, batch counters and health counters for Prometheus.

    ``registry`` is a dedicated :class:`~prometheus_client.CollectorRegistry`;
    ``collector`` can be registered in any other registry as well (the default
    one, for an application that already serves ``/metrics``).
    """

    def __init__(self, settings: Optional[Settings] = None) -> None:
        self.settings = settings or Settings()
        self.metrics = StageMetrics(self.settings)
        self.registry = CollectorRegistry()
        self.collector = SchedTraceCollector(lambda: self.metrics, self._flush_for_scrape)
        self.registry.register(self.collector)
        self._exporter = BackgroundExporter(self._observe, name="prometheus", capacity=self.settings.capacity,
                                            advice=_advice(self.settings.capacity))
        # The hot path: the hooks are the buffer's append itself, no extra frame.
        self.sched_trace_stage_end = self._exporter.append
        self.sched_trace_batch_end = self._exporter.append
        self.sched_trace_request = self._exporter.append
        self._server: Any = None
        self._server_thread: Optional[threading.Thread] = None
        self._in_default_registry = False
        self._lock = threading.RLock()

    # --- hooks ------------------------------------------------------------------

    @sched_trace.hookimpl
    def sched_trace_configure(self, config: sched_trace.Config) -> None:
        settings = parse_settings(config.plugin_settings("prometheus"), config.source)
        with self._lock:
            self._apply(settings, config.source)

    @sched_trace.hookimpl
    def sched_trace_flush(self, timeout: float) -> None:
        self._exporter.flush(timeout)

    @sched_trace.hookimpl
    def sched_trace_shutdown(self) -> None:
        with self._lock:
            self._exporter.shutdown()
            self.stop_server()
            self._use_default_registry(False)

    @sched_trace.hookimpl
    def sched_trace_collect_stats(self) -> dict[str, int]:
        stats = self._exporter.stats()
        requests = self.metrics.requests
        stats.update(observed=self.metrics.observed, label_overflow=self.metrics.overflow, port=self.port,
                     live_requests=requests.live, evicted_requests=requests.evicted,
                     unknown_request_ends=requests.unknown_end, requests_not_owned=requests.not_owned)
        return stats

    # --- HTTP endpoint ------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the HTTP exporter listens on, 0 when none runs."""
        return self._server.server_address[1] if self._server is not None else 0

    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` (0: any free port); returns the port bound."""
        with self._lock:
            self.stop_server()
            self._server, self._server_thread = prometheus_client.start_http_server(
                port, addr=addr, registry=self.registry)
            return self.port

    def stop_server(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                if self._server_thread is not None:
                    self._server_thread.join(5.0)
            self._server = self._server_thread = None

    # --- internals ------------------------------------------------------------------

    def _apply(self, settings: Settings, source: str) -> None:
        old = self.settings
        if (settings.buckets, settings.batch_size_buckets, settings.request_buckets, settings.rank_labels,
                settings.request_owner) != (old.buckets, old.batch_size_buckets, old.request_buckets, old.rank_labels,
                                            old.request_owner):
            self._exporter.flush(5.0)
            self.metrics = StageMetrics(settings)  # new label names or buckets: new series
        self.metrics.settings = settings
        self._exporter.buffer.capacity = settings.capacity
        self._exporter.advice = _advice(settings.capacity)
        self.settings = settings
        try:
            self._use_default_registry(settings.default_registry)
        except ValueError as exc:  # prometheus_client refuses duplicated metric names
            raise sched_trace.ConfigError(
                f"default_registry = true: the default registry already has these metrics ({exc})",
                source=source, key="plugins.prometheus.default_registry") from None
        if settings.port == 0:
            if old.port != 0:
                self.stop_server()
        elif self._server is None or (self.port, old.addr) != (settings.port, settings.addr):
            try:
                self.serve(settings.port, settings.addr)
            except OSError as exc:
                raise sched_trace.ConfigError(
                    f"port = {settings.port!r}, addr = {settings.addr!r}: cannot listen ({exc})",
                    source=source, key="plugins.prometheus.port") from None
            log.info("sched-trace metrics on http://%s:%d/metrics", settings.addr, self.port)

    def _use_default_registry(self, wanted: bool) -> None:
        if wanted and not self._in_default_registry:
            prometheus_client.REGISTRY.register(self.collector)
        elif not wanted and self._in_default_registry:
            prometheus_client.REGISTRY.unregister(self.collector)
        self._in_default_registry = wanted

    def _observe(self, events: Sequence[Any]) -> None:
        self.metrics.observe_batch(events)

    def _flush_for_scrape(self) -> None:
        if self.settings.scrape_flush_timeout > 0:
            self._exporter.flush(self.settings.scrape_flush_timeout)


def _advice(capacity: int) -> str:
    return f"raise [plugins.prometheus] capacity (now {capacity:,})"
