"""Records in, spans out: the assembler and the sink, wherever they run.

The same pipeline runs in the exporter process (default) or on the plugin's
exporter thread (``process = false``).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping

from sched_trace.export import host_id, wall_offset_ns

from .assemble import Assembler
from .otel_env import resource_attributes
from .requests import RequestSpans, split_requests
from .settings import OtelSettings
from .sinks import make_sink


def process_meta(settings: OtelSettings, pid: int, salt: int) -> dict[str, Any]:
    """What the exporter needs to know about the scheduler process it exports for."""
    host = host_id()
    return {
        "pid": pid,
        "host": host.replace("/", "_"),
        "salt": salt,
        "resource": {
            # OTEL_RESOURCE_ATTRIBUTES first: what sched-trace knows of this process wins over it.
            **resource_attributes(os.environ),
            "service.name": settings.resolved_service_name,
            "host.name": socket.gethostname(),
            "host.id": host,
            "process.pid": pid,
            "telemetry.sdk.name": "sched-trace",
            "telemetry.sdk.language": "python",
            # Monotonic-to-epoch offset of the scheduler process, for aligning merged files.
            "sched_trace.clock.wall_offset_ns": wall_offset_ns(),
        },
    }


class ExportPipeline:
    def __init__(self, settings: OtelSettings, meta: Mapping[str, Any]) -> None:
        self.settings = settings
        self.assembler = Assembler(settings, meta["salt"])
        self.requests = RequestSpans(self.assembler.ranks, self.assembler.sampler)
        self.sink = make_sink(settings, meta)
        self.records = 0
        self.spans = 0

    def handle(self, ranks: list, records: list) -> None:
        if ranks:
            self.assembler.add_ranks(ranks)
        if records:
            self.records += len(records)
            records, request_records = split_requests(records)
            self.requests.add(request_records)
            spans = self.assembler.feed(records) if records else []
            spans += self.requests.spans(spans)  # request spans link to the batch spans just built
            if spans:
                self.spans += len(spans)
                self.sink.export(spans)

    def flush(self, timeout: float) -> bool:
        spans = self.requests.settle()  # ended requests still waiting for a (sampled-out) batch span
        if spans:
            self.spans += len(spans)
            self.sink.export(spans)
        return self.sink.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Emit scopes left open, flush, close the sink."""
        spans = self.assembler.finish()
        spans += self.requests.finish(spans)
        if spans:
            self.spans += len(spans)
            self.sink.export(spans)
        self.sink.flush(timeout)
        self.sink.close()

    def stats(self) -> dict[str, int]:
        sampler = self.assembler.sampler
        return {
            "records": self.records,
            "spans_built": self.spans,
            "sampled_out_batches": sampler.batches_dropped,
            "sampled_out_requests": sampler.requests_dropped,
            "orphans": self.assembler.orphans,
            **self.requests.stats(),
            **self.sink.stats(),
        }
