"""Where spans go: an OTLP-JSON lines file, an OTLP receiver (http/protobuf or gRPC), or nowhere.

The OTLP sink keeps spans that failed to send (receiver down) in a bounded
retry list and tries again with backoff; what does not fit is dropped and
counted.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .assemble import SpanRecord
from .encode import SdkSpanBuilder, traces_json_line
from .protowire import WireEncoder

log = logging.getLogger("sched_trace.otel")
LINE_SPANS = 2048   # spans per JSON line, as the Collector batches them
SEND_SPANS = 512    # spans per OTLP request


class NullSink:
    def __init__(self) -> None:
        self.exported = 0
        self.dropped = 0
        self.failures = 0

    def export(self, spans: Sequence[SpanRecord]) -> None:
        self.exported += len(spans)

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"spans_exported": self.exported, "spans_dropped": self.dropped, "export_failures": self.failures}


class FileSink(NullSink):
    """Appends OTLP-JSON lines (the Collector file exporter's format) to one file per process."""

    def __init__(self, path: "str | Path", resource: Mapping[str, Any]) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.resource = dict(resource)
        self._file: Optional[Any] = None  # opened on the first span: no empty file per idle process

    def export(self, spans: Sequence[SpanRecord]) -> None:
        if spans and self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        for begin in range(0, len(spans), LINE_SPANS):
            chunk = spans[begin:begin + LINE_SPANS]
            self._file.write(traces_json_line(self.resource, chunk) + "\n")
            self.exported += len(chunk)

    def flush(self, timeout: float) -> bool:
        if self._file is not None:
            self._file.flush()
        return True

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.flush()
            self._file.close()


def make_otlp_exporter(protocol: str, endpoint: Optional[str]) -> Any:
    """The standard exporter; endpoint, headers, TLS, timeout come from OTEL_EXPORTER_OTLP_*."""
    kwargs = {"endpoint": endpoint} if endpoint else {}
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        if hasattr(OTLPSpanExporter, "_translate_data") and hasattr(OTLPSpanExporter, "_count_data"):
            return _pre_encoded_grpc(OTLPSpanExporter)(**kwargs)
        return OTLPSpanExporter(**kwargs)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(**kwargs)


def _pre_encoded_grpc(base: type) -> type:
    """The standard gRPC exporter, fed ``(bytes, span_count)`` we encoded ourselves."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    class PreEncodedGrpcExporter(base):  # type: ignore[misc, valid-type]
        def _translate_data(self, data: Any) -> Any:
            return ExportTraceServiceRequest.FromString(data[0])

        def _count_data(self, data: Any) -> int:
            return data[1]

    return PreEncodedGrpcExporter


def send_encoded(exporter: Any, payload: bytes, count: int) -> Optional[bool]:
    """Send pre-encoded OTLP bytes through the standard exporter's own transport.

    Returns None when this exporter version offers no way in (then SDK spans are used).
    """
    from opentelemetry.sdk.trace.export import SpanExportResult

    if type(exporter).__name__ == "PreEncodedGrpcExporter":
        return exporter.export((payload, count)) == SpanExportResult.SUCCESS
    client = getattr(exporter, "_client", None)
    if client is not None and callable(getattr(client, "export", None)) and not hasattr(client, "Export"):
        return bool(getattr(client.export(payload), "success", False))
    return None


class OtlpSink(NullSink):
    """Sends through the standard OTLP exporter; keeps failed spans for retry, bounded."""

    def __init__(self, protocol: str, endpoint: Optional[str], resource: Mapping[str, Any],
                 retry_capacity: int = 65536, exporter: Any = None) -> None:
        super().__init__()
        self.builder = SdkSpanBuilder(resource)
        self.wire = WireEncoder(resource)
        self.exporter = exporter if exporter is not None else make_otlp_exporter(protocol, endpoint)
        self.pre_encoded = True  # until the exporter turns out to offer no way in for bytes
        self.retry_capacity = retry_capacity
        self._waiting: deque = deque()
        self._backoff = 0.0
        self._next_try = 0.0

    def export(self, spans: Sequence[SpanRecord]) -> None:
        self._waiting.extend(spans)
        overflow = len(self._waiting) - self.retry_capacity
        if overflow > 0:  # the oldest go first: the newest say more about "now"
            for _ in range(overflow):
                self._waiting.popleft()
            self.dropped += overflow
        if time.monotonic() >= self._next_try:
            self._send()

    def _send(self) -> bool:
        from opentelemetry.sdk.trace.export import SpanExportResult

        while self._waiting:
            count = min(SEND_SPANS, len(self._waiting))
            chunk = [self._waiting[i] for i in range(count)]
            try:
                ok = send_encoded(self.exporter, self.wire.request(chunk), count) if self.pre_encoded else None
                if ok is None:
                    self.pre_encoded = False
                    ok = self.exporter.export([self.builder.build(s) for s in chunk]) == SpanExportResult.SUCCESS
            except Exception as exc:  # an exporter bug must not kill the exporter process
                log.warning("sched-trace otel: OTLP export raised: %s", exc)
                ok = False
            if not ok:
                self.failures += 1
                self._backoff = min(max(self._backoff * 2, 0.5), 5.0)
                self._next_try = time.monotonic() + self._backoff
                return False
            for _ in range(count):
                self._waiting.popleft()
            self.exported += count
            self._backoff = 0.0
        return True

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._waiting and time.monotonic() < deadline:
            if self._send():
                break
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return not self._waiting

    def close(self) -> None:
        self.exporter.shutdown()

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "spans_waiting": len(self._waiting)}


def make_sink(settings: Any, meta: Mapping[str, Any]) -> NullSink:
    resource = meta["resource"]
    protocol = settings.protocol
    if protocol == "file":
        name = f"traces-{meta['host']}-{meta['pid']}.jsonl"
        return FileSink(os.path.join(settings.directory, name), resource)
    if protocol == "none":
        return NullSink()
    return OtlpSink(protocol, settings.endpoint, resource, settings.retry_capacity)
