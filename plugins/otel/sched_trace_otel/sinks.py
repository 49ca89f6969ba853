"""Where spans go: an OTLP-JSON lines file, an OTLP receiver, an SDK exporter (``console``), or nowhere.

Every sink writes through: the file sink writes each batch of spans to the file
descriptor before it returns (no user-space buffer, so a SIGKILL loses nothing it
counted), and ``spans_exported`` counts only spans that reached the file or that
the receiver accepted. The OTLP sink keeps spans that failed to send (receiver
down) in a bounded retry list and tries again with backoff; what does not fit is
dropped and counted.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .otel_env import PROTOCOLS, OtlpTarget, otlp_target
from .otlp_json import traces_json_line
from .otlp_proto import ProtoEncoder
from .sdk_spans import SdkSpanBuilder
from .transport import SendResult, make_transport

log = logging.getLogger("sched_trace.otel")
LINE_SPANS = 2048   # spans per JSON line, as the Collector batches them
SEND_SPANS = 512    # spans per OTLP request


class NullSink:
    def __init__(self) -> None:
        self.exported = 0
        self.dropped = 0
        self.failures = 0

    def export(self, spans: Sequence[Any]) -> None:
        self.exported += len(spans)

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"spans_exported": self.exported, "spans_dropped": self.dropped, "export_failures": self.failures}


class FileSink(NullSink):
    """Appends OTLP-JSON lines (the Collector file exporter's format) to one file per process.

    Each line goes to the descriptor whole (``O_APPEND``, no user-space buffer) before
    its spans count as exported.
    """

    def __init__(self, path: "str | Path", resource: Mapping[str, Any]) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.resource = dict(resource)
        self._fd: Optional[int] = None  # opened on the first span: no empty file per idle process

    def export(self, spans: Sequence[Any]) -> None:
        if spans and self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for begin in range(0, len(spans), LINE_SPANS):
            chunk = spans[begin:begin + LINE_SPANS]
            view = memoryview((traces_json_line(self.resource, chunk) + "\n").encode())
            while view:
                view = view[os.write(self._fd, view):]
            self.exported += len(chunk)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class OtlpSink(NullSink):
    """Encodes spans once and sends the bytes (:mod:`.transport`); keeps failed spans for retry, bounded.

    A retryable failure (receiver down, 429/503, gRPC UNAVAILABLE) keeps the spans
    and backs off; a refusal (400, 401, gRPC INVALID_ARGUMENT) drops them, counted
    in ``spans_rejected``, as the OTLP specification says.
    """

    def __init__(self, target: OtlpTarget, resource: Mapping[str, Any],
                 retry_capacity: int = 65536, transport: Any = None) -> None:
        super().__init__()
        self.target = target
        self.resource = dict(resource)
        self.encoder = ProtoEncoder(resource)
        self.transport = transport if transport is not None else make_transport(target)
        self.retry_capacity = retry_capacity
        self.rejected = 0
        self._waiting: deque = deque()
        self._backoff = 0.0
        self._next_try = 0.0
        self._logged: set = set()

    def export(self, spans: Sequence[Any]) -> None:
        self._waiting.extend(spans)
        overflow = len(self._waiting) - self.retry_capacity
        if overflow > 0:  # the oldest go first: the newest say more about "now"
            for _ in range(overflow):
                self._waiting.popleft()
            self.dropped += overflow
        if time.monotonic() >= self._next_try:
            self._send()

    def _encode(self, chunk: list) -> bytes:
        if self.target.protocol == "http/json":
            return traces_json_line(self.resource, chunk).encode()
        return self.encoder.request(chunk)

    def _send(self, deadline: Optional[float] = None) -> bool:
        """Send what waits, oldest first; with a ``deadline`` (monotonic), no request outlasts it."""
        while self._waiting:
            timeout = self.target.timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0.01:
                    return False
            count = min(SEND_SPANS, len(self._waiting))
            chunk = [self._waiting[i] for i in range(count)]
            try:
                result = self.transport.send(self._encode(chunk), timeout)
            except Exception as exc:  # a transport bug must not kill the exporter process
                result = SendResult(False, False, reason=f"{type(exc).__name__}: {exc}")
            if not result.ok and result.retryable:
                self.failures += 1
                self._log_once(result.reason, "will retry")
                self._backoff = min(max(self._backoff * 2, 0.5), 5.0)
                self._next_try = time.monotonic() + self._backoff
                return False
            for _ in range(count):
                self._waiting.popleft()
            if result.ok:
                self.exported += count - result.rejected
                self.rejected += result.rejected
            else:
                self.failures += 1
                self.rejected += count
                self._log_once(result.reason, f"dropped {count} spans")
            self._backoff = 0.0
        return True

    def _log_once(self, reason: str, outcome: str) -> None:
        """One line per kind of failure; never a header value (redacted, whatever the reason says)."""
        if reason in self._logged or len(self._logged) > 32:
            return
        self._logged.add(reason)
        log.warning("sched-trace otel: OTLP export to %s failed (%s); %s",
                    self.target.redact(self.target.endpoint), self.target.redact(reason), outcome)

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._waiting and time.monotonic() < deadline:
            if self._send(deadline):
                break
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return not self._waiting

    def close(self) -> None:
        self.transport.close()

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "spans_waiting": len(self._waiting), "spans_rejected": self.rejected}


class SdkExporterSink(NullSink):
    """Any OpenTelemetry SDK span exporter (``console``, or one from the ``opentelemetry_traces_exporter``
    entry points), fed SDK ``ReadableSpan`` objects through its public ``export()``."""

    def __init__(self, name: str, resource: Mapping[str, Any], exporter: Any = None) -> None:
        super().__init__()
        self.name = name
        self.builder = SdkSpanBuilder(resource)
        self.exporter = exporter if exporter is not None else load_sdk_exporter(name)()

    def export(self, spans: Sequence[Any]) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            ok = self.exporter.export([self.builder.build(span) for span in spans]) == SpanExportResult.SUCCESS
        except Exception as exc:  # an exporter bug must not kill the exporter process
            log.warning("sched-trace otel: %s exporter raised: %s", self.name, type(exc).__name__)
            ok = False
        if ok:
            self.exported += len(spans)
        else:
            self.failures += 1
            self.dropped += len(spans)

    def flush(self, timeout: float) -> bool:
        return bool(self.exporter.force_flush(int(timeout * 1000)))

    def close(self) -> None:
        self.exporter.shutdown()


def load_sdk_exporter(name: str) -> Any:
    """The ``SpanExporter`` class the SDK's autoconfiguration would load for ``name``."""
    from importlib.metadata import entry_points

    for entry_point in entry_points(group="opentelemetry_traces_exporter", name=name):
        return entry_point.load()
    raise LookupError(name)


class FanoutSink(NullSink):
    """Several sinks (``OTEL_TRACES_EXPORTER=otlp,console``): each gets every span."""

    def __init__(self, sinks: Sequence[NullSink], names: Sequence[str]) -> None:
        super().__init__()
        self.sinks = list(sinks)
        self.names = list(names)

    def export(self, spans: Sequence[Any]) -> None:
        for sink in self.sinks:
            sink.export(spans)

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all([sink.flush(max(0.0, deadline - time.monotonic())) for sink in self.sinks])

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        exported = []
        for name, sink in zip(self.names, self.sinks):
            for key, value in sink.stats().items():
                total[f"{name}.{key}"] = value
                if key == "spans_exported":
                    exported.append(value)
                else:
                    total[key] = total.get(key, 0) + value
        total["spans_exported"] = min(exported)  # what reached every destination
        return total


def make_sink(settings: Any, meta: Mapping[str, Any]) -> NullSink:
    """The sink (or sinks) ``settings.exporters`` names; OTLP details from the OTEL_* variables."""
    resource = meta["resource"]
    sinks, names = [], []
    for name in settings.exporters:
        if name == "none":
            continue
        if name == "file":
            sink: NullSink = FileSink(os.path.join(settings.directory, f"traces-{meta['host']}-{meta['pid']}.jsonl"),
                                      resource)
        elif name in PROTOCOLS:
            sink = OtlpSink(otlp_target(name, settings.endpoint), resource, settings.retry_capacity)
        else:
            sink = SdkExporterSink(name, resource)
        sinks.append(sink)
        names.append(name)
    if not sinks:
        return NullSink()
    return sinks[0] if len(sinks) == 1 else FanoutSink(sinks, names)
