"""The otel exporter: events in, spans out to a file, an OTLP receiver or an SDK exporter.

Runs where the core puts it (``sched_trace.export.ExportProcessor``): in the
exporter process by default, on the plugin's exporter thread with ``process = false``.
It is built from plain options (the settings, what it needs to know of the
scheduler process) and reads the decoded events by field name.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from sched_trace.export import Exporter, RequestOwner

from .assemble import Assembler, RankAttributes
from .request_spans import RequestSpans
from .sampling import Sampler
from .settings import OtelSettings
from .sinks import make_sink


class OtelExporter(Exporter):
    """Scopes into batch and stage spans, requests into their spans; every span to the sink at once."""

    def __init__(self, settings: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        self.settings = OtelSettings(**settings)
        sampler = Sampler(self.settings.batch_ratio, self.settings.batch_every,
                          self.settings.request_ratio, self.settings.request_every)
        ranks = RankAttributes()
        self.requests = RequestSpans(self.settings.sglang_compat, meta["run_id"],
                                     RequestOwner(meta["request_owner"]), sampler, ranks)
        self.assembler = Assembler(self.settings, meta["salt"], self.requests, ranks)
        self.sink = make_sink(self.settings, meta)
        self.events = 0
        self.spans = 0
        self.undelivered = 0

    def export(self, events: Sequence[Any]) -> None:
        self.events += len(events)
        requests = [event for event in events if event.kind == "request"]
        if requests:
            self.requests.add(requests)
            events = [event for event in events if event.kind != "request"]
        spans = self.assembler.feed(events) if events else []
        spans += self.requests.settled()
        self._write(spans)

    def _write(self, spans: list) -> None:
        if spans:
            self.spans += len(spans)
            self.sink.export(spans)

    def flush(self, timeout: float) -> bool:
        self._write(self.requests.settle())  # ended requests still waiting for a (sampled-out) batch span
        return self.sink.flush(timeout)

    def shutdown(self, timeout: float) -> None:
        """Spans of scopes left open and of unfinished requests, then flush and close the sink."""
        self._write(self.assembler.finish() + self.requests.finish())
        self.sink.flush(timeout)
        # Spans still waiting for the receiver now never get there: a counter that outlives this exporter.
        self.undelivered = self.sink.stats().get("spans_waiting", 0)
        self.sink.close()

    def counters(self) -> dict[str, Any]:
        sampler = self.assembler.sampler
        return {
            "events": self.events,
            "spans_built": self.spans,
            "sampled_out_batches": sampler.batches_dropped,
            "sampled_out_requests": sampler.requests_dropped,
            "orphans": self.assembler.orphans,
            "truncated_requests": self.assembler.truncated_requests,
            "spans_undelivered": self.undelivered,
            **self.requests.stats(),
            **self.sink.stats(),
        }
