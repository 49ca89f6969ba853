"""sched-trace-otel against the naive OpenTelemetry SDK way, in the same run.

1. Scheduler-thread time per batch (thread CPU clock) at batch sizes 1, 64, 256,
   1024: a ``@batch`` step naming its requests with one ``run_batch_cpu`` stage,
   exported by the otel plugin (exporter process, OTLP-JSON file, per-request
   spans) against one SDK span per request per batch with a BatchSpanProcessor
   whose exporter OTLP-encodes in the background.
2. Exporter throughput: spans built and encoded per second by the exporter
   (decode the frame, assemble, encode) against the SDK path (start/end
   span, then OTLP protobuf encode), for the file output and the OTLP output.

Run: ``python -m benchmarks.bench_otel [--quick]``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import sched_trace

from .harness import CPU, interleave, median, paired_ratio, row
from .workload import Batch

SIZES = (1, 64, 256, 1024)
GROUP = "otel"


@sched_trace.stage("otel_run_batch_cpu", level=4, microbatch="mb_id", batch_size="len(batch.reqs)")
def _run_batch(batch: Batch, mb_id: int) -> int:
    return mb_id


@sched_trace.batch("otel_decode_step", level=1, batch_size="len(batch.reqs)", requests="batch.reqs")
def _step(batch: Batch, mb_id: int) -> int:
    return _run_batch(batch, mb_id)


def _sdk_tracer() -> tuple[Any, Any]:
    """The naive way: a TracerProvider with a BatchSpanProcessor that OTLP-encodes."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class EncodingExporter(SpanExporter):
        def export(self, spans: Any) -> Any:
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(EncodingExporter(), max_queue_size=65536))
    return provider, provider.get_tracer("bench")


def _naive_case(tracer: Any, batch: Batch) -> Callable[[int], None]:
    def case(n: int) -> None:
        for mb_id in range(n):
            for request in batch.reqs:
                span = tracer.start_span("run_batch_cpu", attributes={
                    "rid": request.rid, "pp_mb_id": mb_id, "batch_size": len(batch.reqs)})
                span.end()
    return case


def _plugin_case(batch: Batch, more: int) -> Callable[[int], None]:
    def case(n: int) -> None:
        for mb_id in range(n * more):
            _step(batch, mb_id)
    return case


def run_scheduler(quick: bool) -> list[dict[str, Any]]:
    from sched_trace_otel import OtelPlugin

    directory = tempfile.mkdtemp(prefix="sched-trace-bench-otel-")
    plugin = OtelPlugin(directory=directory)
    sched_trace.configure(level=4, plugins=[plugin], autoload=False)
    provider, tracer = _sdk_tracer()
    rows, per_size = [], {}
    repeats = 3 if quick else 7
    try:
        for size in SIZES:
            n = max(4, (2000 if quick else 6000) // (size + 8))
            # The plugin's batches are cheap: run more of them per sample so timer overhead stays out.
            more = max(1, 100 // n)
            batch = Batch(size)
            samples = interleave({"otel": _plugin_case(batch, more), "naive": _naive_case(tracer, batch)}, n,
                                 repeats, between=lambda: (plugin.sched_trace_flush(10.0), provider.force_flush()))
            for key in ("otel", "otel" + CPU):
                samples[key] = [value / more for value in samples[key]]
            per_size[size] = samples
            otel, naive = median(samples["otel" + CPU]), median(samples["naive" + CPU])
            rows.append(row(f"scheduler-thread CPU per batch of {size}: otel plugin vs naive SDK", otel / 1e3,
                            naive / 1e3, paired_ratio(samples, "naive" + CPU, "otel" + CPU), "us",
                            target=">= 100x" if size == 256 else None,
                            met=(naive / otel >= 100) if size == 256 else None,
                            note=f"wall {median(samples['otel']) / 1e3:.1f} us vs {median(samples['naive']) / 1e3:.1f} us",
                            group=GROUP))
        # Flatness as a paired ratio: both sizes take turns inside each repeat, so drift
        # in machine load between the size loops above cannot pose as a size effect.
        flat_samples = interleave({"b1": _plugin_case(Batch(1), 100), "b1024": _plugin_case(Batch(1024), 100)},
                                  1, repeats * 2, between=lambda: plugin.sched_trace_flush(10.0))
        flat = paired_ratio(flat_samples, "b1024" + CPU, "b1" + CPU)
        rows.append(row("otel scheduler-thread CPU per batch, 1024 vs 1 requests (paired)",
                        median(flat_samples["b1024" + CPU]) / 100 / 1e3,
                        median(flat_samples["b1" + CPU]) / 100 / 1e3, flat, "us",
                        target="<= 1.3x", met=flat <= 1.3, group=GROUP))
        plugin.sched_trace_flush(30.0)
        stats = dict(plugin.sched_trace_collect_stats())
        rows.append(row("otel events dropped / lost during the scheduler runs",
                        stats.get("dropped", 0) + stats.get("queue_dropped", 0) + stats.get("lost_in_exporter", 0),
                        None, None, "events", note=f"{stats.get('spans_exported', 0)} spans written", group=GROUP))
    finally:
        sched_trace.shutdown(timeout=30.0)
        sched_trace.unregister(plugin)
        provider.shutdown()
        shutil.rmtree(directory, ignore_errors=True)
    return rows


# --- exporter throughput -------------------------------------------------------------


class _Capture:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def sched_trace_stage_end(self, event: Any) -> None:
        self.events.append(event)

    def sched_trace_batch_end(self, event: Any) -> None:
        self.events.append(event)


def _frame(batches: int, size: int) -> bytes:
    """The events of ``batches`` steps as one frame of the core's event encoding."""
    from sched_trace.export import EventEncoder

    capture = _Capture()
    sched_trace.configure(level=4, plugins=[capture], autoload=False)
    batch = Batch(size)
    for mb_id in range(batches):
        _step(batch, mb_id)
    sched_trace.unregister(capture)
    return EventEncoder().encode(capture.events)


def _pipeline_case(settings: Any, frame: bytes, sink_factory: Any = None) -> tuple[Callable[[int], None], int]:
    """``case(n)``: the exporter process's work for ``frame``, n times; and spans per frame."""
    import dataclasses

    from sched_trace.export import decode_events
    from sched_trace_otel.exporter import OtelExporter
    from sched_trace_otel.plugin import process_meta

    def once() -> int:
        exporter = OtelExporter(dataclasses.asdict(settings), process_meta(settings, 1))
        if sink_factory is not None:
            exporter.sink = sink_factory()
        exporter.export(decode_events(frame))
        exporter.shutdown(10.0)
        return exporter.spans

    def case(n: int) -> None:
        for _ in range(n):
            once()

    return case, once()


def _sdk_case(spans: int) -> Callable[[int], None]:
    """Start/end a span with the same attributes, then OTLP-encode them, as a BatchSpanProcessor would."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    finished: list = []

    class Collect(SpanExporter):
        def export(self, batch: Any) -> Any:
            finished.extend(batch)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Collect()))
    tracer = provider.get_tracer("bench")
    attributes = {"sched_trace.level": 4, "sched_trace.kind": "stage", "pp_mb_id": 1, "bid": 7,
                  "batch_size": 64, "rid": "req-1"}

    def case(n: int) -> None:
        for _ in range(n):
            for _ in range(spans):
                tracer.start_span("run_batch_cpu", attributes=attributes).end()
            for begin in range(0, spans, 512):
                encode_spans(finished[begin:begin + 512]).SerializeToString()
            finished.clear()

    return case


class _NoSocketTransport:
    """Stands in for the network behind the OTLP sink: takes the encoded bytes, sends nothing."""

    def send(self, payload: bytes, timeout: Any = None) -> Any:
        from sched_trace_otel.transport import SendResult

        return SendResult(True)

    def close(self) -> None:
        pass


def run_exporter(quick: bool) -> list[dict[str, Any]]:
    from sched_trace_otel.settings import OtelSettings
    from sched_trace_otel.otel_env import OtlpTarget
    from sched_trace_otel.sinks import OtlpSink

    frame = _frame(50 if quick else 200, 64)
    directory = tempfile.mkdtemp(prefix="sched-trace-bench-otel-")
    try:
        file_case, spans = _pipeline_case(OtelSettings(directory=directory), frame)
        otlp_case, _ = _pipeline_case(
            OtelSettings(exporter="http/protobuf"), frame,
            lambda: OtlpSink(OtlpTarget("http/protobuf", "http://127.0.0.1:9/v1/traces"), {"service.name": "bench"},
                             1 << 30, transport=_NoSocketTransport()))
        samples = interleave({"file": file_case, "otlp": otlp_case, "sdk": _sdk_case(spans)}, 1, 3 if quick else 7)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    sdk = spans / median(samples["sdk"]) * 1e9
    rows = []
    for name, label, note in (("file", "OTLP-JSON file", f"{spans} spans per run, batches of 64 requests"),
                              ("otlp", "OTLP protobuf", "no socket: decode, assemble, encode")):
        ours = spans / median(samples[name]) * 1e9
        ratio = paired_ratio(samples, "sdk", name)
        rows.append(row(f"exporter spans/s, {label}: otel exporter process vs SDK start/end + OTLP encode",
                        ours, sdk, ratio, "spans/s", target=">= 5x", met=ratio >= 5, note=note, group=GROUP))
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    return run_scheduler(quick) + run_exporter(quick)


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    for result in run(quick):
        ratio = result.get("ratio")
        print(f"{result['figure']:90} {result['value']:>14.4g} {result['unit']:8} "
              f"baseline {'-' if result['baseline'] is None else format(result['baseline'], '.4g'):>10} "
              f"ratio {'-' if ratio is None else format(ratio, '.3g'):>7} {result.get('note', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
