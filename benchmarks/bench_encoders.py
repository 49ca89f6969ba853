"""Encoding alone: the hand-written encoders against the generated protobuf classes, on the same input.

A hand-written encoder is kept only where this shows the gain (issue 17):

1. OTLP protobuf: the otel plugin's ``ProtoEncoder`` (bytes joined from cached
   fragments, ``sched_trace.export.protowire``) against opentelemetry-proto's generated
   ``ExportTraceServiceRequest`` filled field by field and ``SerializeToString``, for the
   spans one decode step makes (a thread span, a batch span, four stage spans);
2. OTLP-JSON: the plugin's line writer against ``json.dumps`` of the same document;
3. Perfetto: ``PerfettoEncoder.encode`` (hand-written slices and counters) against
   ``encode_messages`` (the same packets as perfetto's generated messages); the
   output of each pair is checked equal (1, 3) or equivalent (2) first.

Microseconds per span (per event for Perfetto), CPU time of this thread, median of
interleaved repeats. Run: ``python -m benchmarks --only encoders``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from .harness import CPU, interleave, median, paired_ratio

GROUP = "encoders"


def _events(steps: int) -> list[Any]:
    from sched_trace._events import NO_ATTRS, BatchEvent, RankInfo, StageEvent
    from sched_trace.export import EventEncoder, decode_events

    rank = RankInfo("bench-host", 4242, 7, "Scheduler", tp_rank=0, pp_rank=1, dp_rank=0)
    events, span_id = [], 1
    for step in range(steps):
        start, top = 1_795_891_879_262_931_434 + step * 100_000, span_id
        span_id += 1
        for mb in range(4):
            events.append(StageEvent("run_batch_cpu", 4, start + mb * 1000, start + mb * 1000 + 800, rank, mb, step,
                                     8, {"queue_depth": mb, "forward_mode": "DECODE"}, None, span_id, top))
            span_id += 1
        events.append(BatchEvent("decode_step", 1, start, start + 9000, rank, None, step, 8, NO_ATTRS, None, top, 0))
    return decode_events(EventEncoder().encode(events))  # as an exporter process receives them


def _otlp_spans(events: list[Any]) -> list[Any]:
    import dataclasses
    import os

    from sched_trace.export import RequestOwner
    from sched_trace_otel.assemble import Assembler, RankAttributes
    from sched_trace_otel.request_spans import RequestSpans
    from sched_trace_otel.sampling import Sampler
    from sched_trace_otel.settings import OtelSettings

    settings = OtelSettings(requests="off")
    ranks = RankAttributes()
    requests = RequestSpans(False, "bench", RequestOwner(), Sampler(), ranks)
    spans = Assembler(dataclasses.replace(settings), os.getpid(), requests, ranks).feed(events)
    return spans


def _generated_request(resource: dict, spans: list[Any]) -> bytes:
    """The same request through opentelemetry-proto's generated classes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from sched_trace_otel.otlp_value import otlp_value
    from sched_trace_otel.spans import span_parts

    def set_value(target: Any, value: Any) -> None:
        if isinstance(value, bool):
            target.bool_value = value
        elif isinstance(value, int):
            target.int_value = value
        elif isinstance(value, float):
            target.double_value = value
        elif isinstance(value, list):
            for item in value:
                set_value(target.array_value.values.add(), item)
        else:
            target.string_value = value

    def fill(target: Any, attributes: Any) -> None:
        for key, value in attributes.items():
            set_value(target.add(key=key).value, otlp_value(value))

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    fill(resource_spans.resource.attributes, resource)
    scope = resource_spans.scope_spans.add()
    scope.scope.name, scope.scope.version = "sched_trace", "0.1.0"
    for span in spans:
        name, start, end, attributes, events, status_code, status_message = span_parts(span)
        message = scope.spans.add(trace_id=span.trace_id.to_bytes(16, "big"), span_id=span.span_id.to_bytes(8, "big"),
                                  name=name, kind=1, start_time_unix_nano=start, end_time_unix_nano=end)
        if span.parent_span_id:
            message.parent_span_id = span.parent_span_id.to_bytes(8, "big")
        fill(message.attributes, attributes)
        for trace_id, span_id, link_attributes in span.links:
            link = message.links.add(trace_id=trace_id.to_bytes(16, "big"), span_id=span_id.to_bytes(8, "big"))
            fill(link.attributes, link_attributes)
        if status_code:
            message.status.code, message.status.message = status_code, status_message
    return request.SerializeToString()


def _json_document(resource: dict, spans: list[Any]) -> str:
    """The same OTLP-JSON line as plain ``json.dumps`` of a dict document."""
    from sched_trace_otel.otlp_json import any_value
    from sched_trace_otel.otlp_value import otlp_value
    from sched_trace_otel.spans import span_parts

    def kvs(attributes: Any) -> list:
        return [{"key": k, "value": any_value(otlp_value(v))} for k, v in attributes.items()]

    documents = []
    for span in spans:
        name, start, end, attributes, _, status_code, status_message = span_parts(span)
        document = {"traceId": f"{span.trace_id:032x}", "spanId": f"{span.span_id:016x}", "name": name, "kind": 1,
                    "startTimeUnixNano": str(start), "endTimeUnixNano": str(end), "attributes": kvs(attributes),
                    "links": [{"traceId": f"{t:032x}", "spanId": f"{s:016x}", "attributes": kvs(a)}
                              for t, s, a in span.links],
                    "status": {"code": status_code, "message": status_message} if status_code else {}}
        if span.parent_span_id:
            document["parentSpanId"] = f"{span.parent_span_id:016x}"
        documents.append(document)
    return json.dumps({"resourceSpans": [{"resource": {"attributes": kvs(resource)}, "scopeSpans": [
        {"scope": {"name": "sched_trace", "version": "0.1.0"}, "spans": documents}]}]}, separators=(",", ":"))


def _case(encode: Callable[[], Any]) -> Callable[[int], None]:
    def case(n: int) -> None:
        for _ in range(n):
            encode()
    return case


def _pair(figure: str, ours: Callable[[], Any], generated: Callable[[], Any], per: int, repeats: int,
          baseline_name: str) -> list[dict[str, Any]]:
    samples = interleave({"ours": _case(ours), "generated": _case(generated)}, 20, repeats)
    value, baseline = median(samples["ours" + CPU]) / 1e3 / per, median(samples["generated" + CPU]) / 1e3 / per
    ratio = paired_ratio({k: samples[k + CPU] for k in ("ours", "generated")}, "ours", "generated")
    return [{"figure": figure, "value": value, "baseline": baseline, "ratio": ratio, "unit": "us",
             "note": f"baseline: {baseline_name}", "group": GROUP}]


def run(quick: bool) -> list[dict[str, Any]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from sched_trace.traceio import PerfettoEncoder
    from sched_trace_otel.otlp_json import traces_json_line
    from sched_trace_otel.otlp_proto import ProtoEncoder

    repeats = 5 if quick else 15
    events = _events(50)
    spans = _otlp_spans(events)
    resource = {"service.name": "bench", "host.name": "bench-host", "process.pid": 4242}
    encoder = ProtoEncoder(resource)
    assert ExportTraceServiceRequest.FromString(encoder.request(spans)) == \
        ExportTraceServiceRequest.FromString(_generated_request(resource, spans))
    assert json.loads(traces_json_line(resource, spans))["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["name"] \
        == json.loads(_json_document(resource, spans))["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["name"]
    rows = _pair("OTLP protobuf, hand-written (otlp_proto) vs opentelemetry-proto classes: per span",
                 lambda: encoder.request(spans), lambda: _generated_request(resource, spans), len(spans), repeats,
                 "ExportTraceServiceRequest built and serialized")
    rows += _pair("OTLP-JSON line, hand-written (otlp_json) vs json.dumps of the document: per span",
                  lambda: traces_json_line(resource, spans), lambda: _json_document(resource, spans), len(spans),
                  repeats, "json.dumps")

    def perfetto(method: str) -> Callable[[], bytes]:
        def encode() -> bytes:
            writer = PerfettoEncoder(77)
            writer.encode(events[:5])  # descriptors out of the way, as in a running exporter
            return getattr(writer, method)(events)
        return encode

    assert perfetto("encode")() == perfetto("encode_messages")()
    rows += _pair("Perfetto TrackEvent, hand-written (traceio._protowire) vs perfetto's message classes: per event",
                  perfetto("encode"), perfetto("encode_messages"), len(events), repeats, "perfetto_trace_pb2")
    return rows


def main() -> int:
    import sys

    for row in run("--quick" in sys.argv):
        print(f"{row['figure'][:100]:100} {row['value']:8.2f} us  vs {row['baseline']:8.2f} us  "
              f"({row['ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
