"""The instrumented call: off, above the level, and on with each kind of plugin.

Baselines in the same run: the bare method call, a plain wrapt passthrough wrapper,
and the OpenTelemetry SDK used directly (``start_span``/``end`` per call and per
request, with a BatchSpanProcessor feeding a no-op exporter).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import sched_trace

from . import workload
from .harness import CPU, compare, interleave, row

LIMIT_OFF = 1.2  # disabled or above the level, against the wrapt passthrough
LIMIT_ON = 10.0  # enabled, scheduler-thread cost against the wrapt passthrough
LIMIT_FLAT = 1.3  # a batch of 1024 requests against a batch of 1
BIG = 1024


def _sizes(quick: bool) -> tuple[int, int]:
    return (4000, 5) if quick else (20000, 11)


def run_off(quick: bool) -> list[dict[str, Any]]:
    n, repeats = _sizes(quick)
    group = "instrumented call, off"
    rows = []
    for prebound, how in ((False, "self.method()"), (True, "pre-bound")):
        def cases(*kinds: str) -> dict[str, Any]:
            return {kind: workload.caller(kind, prebound=prebound) for kind in kinds}

        workload.configure(plugins=())  # no plugin listens: every level is off
        idle = interleave(cases("bare", "wrapt", "traced"), n, repeats)
        recorder = workload.ListPlugin()
        workload.configure(plugins=(recorder,), level=4)
        above = interleave(cases("wrapt", "fine"), n, repeats, between=recorder.events.clear)
        sched_trace.set_level(0)
        level0 = interleave(cases("wrapt", "traced"), n, repeats, between=recorder.events.clear)
        workload.reset()
        rows += [
            compare(idle, f"{how}: wrapt passthrough vs bare call", "wrapt", "bare", group=group),
            compare(idle, f"{how}: traced, no plugin listening vs wrapt", "traced", "wrapt",
                    limit=LIMIT_OFF, group=group),
            compare(above, f"{how}: traced, stage level 8 > configured 4 vs wrapt", "fine", "wrapt",
                    limit=LIMIT_OFF, group=group),
            compare(level0, f"{how}: traced, level 0 (plugin registered) vs wrapt", "traced", "wrapt",
                    limit=LIMIT_OFF, group=group),
        ]
    return rows


def _enabled(label: str, plugins: tuple, flush: Callable[[], None], quick: bool,
             settings: Optional[dict] = None) -> list[dict[str, Any]]:
    n, repeats = _sizes(quick)
    workload.configure(plugins=plugins, level=4, settings=settings)
    samples = interleave({
        "wrapt": workload.caller("wrapt"),
        "traced": workload.caller("traced"),
        "wrapt_bound": workload.caller("wrapt", prebound=True),
        "traced_bound": workload.caller("traced", prebound=True),
    }, n, repeats, between=flush)
    # Fewer calls per sample here: an exporter fans a 1024-request event out into
    # 1024 request spans off the scheduler thread, and each repeat waits for that.
    sizes = interleave({"traced": workload.caller("traced"), "traced_big": workload.caller("traced", BIG)},
                       n // 40, repeats, between=flush)
    group = f"instrumented call, on: {label}"
    rows = [
        compare(samples, f"{label}: self.method(): traced vs wrapt (scheduler-thread CPU)", "traced" + CPU,
                "wrapt" + CPU, limit=LIMIT_ON, group=group),
        compare(samples, f"{label}: self.method(): traced vs wrapt (wall)", "traced", "wrapt", group=group),
        compare(samples, f"{label}: pre-bound: traced vs wrapt (scheduler-thread CPU)", "traced_bound" + CPU,
                "wrapt_bound" + CPU, limit=LIMIT_ON, group=group),
        compare(samples, f"{label}: pre-bound: traced vs wrapt (wall)", "traced_bound", "wrapt_bound",
                group=group),
        compare(sizes, f"{label}: batch of {BIG} requests vs batch of 1 (scheduler-thread CPU)",
                "traced_big" + CPU, "traced" + CPU, limit=LIMIT_FLAT, group=group),
        compare(sizes, f"{label}: batch of {BIG} requests vs batch of 1 (wall)", "traced_big", "traced",
                group=group),
    ]
    workload.reset()
    return rows


def run_list_plugin(quick: bool) -> list[dict[str, Any]]:
    recorder = workload.ListPlugin()
    return _enabled("list-append plugin", (recorder,), recorder.events.clear, quick)


def run_exporter_plugins(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in ("otel", "perfetto"):
        plugin = workload.entry_point_plugin(name)
        if plugin is None:
            rows.append(row(f"{name} plugin: not installed", float("nan"), None, None, "",
                            note="skipped", group=f"instrumented call, on: {name} plugin"))
            continue
        settings = {name: workload.plugin_settings(name, workload.scratch_dir())}
        rows += _enabled(f"{name} plugin", ((plugin, name),), lambda: sched_trace.flush(60.0), quick, settings)
    return rows


def _otel_tracer() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class NullExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    return provider, provider.get_tracer("sched-trace-bench")


def run_otel_direct(quick: bool) -> list[dict[str, Any]]:
    """sched-trace with the list plugin against spans made on the scheduler thread."""
    n, repeats = _sizes(quick)
    provider, tracer = _otel_tracer()
    scheduler, small, big = workload.Scheduler(), workload.Batch(1), workload.Batch(BIG)

    def otel_per_call(count: int) -> None:
        for i in range(count):
            span = tracer.start_span("run_batch", attributes={"pp_mb_id": i, "batch_size": len(small.reqs)})
            scheduler.run_batch(small, i)
            span.end()

    def otel_per_request(count: int) -> None:
        for i in range(count):
            spans = [tracer.start_span("run_batch", attributes={"rid": rid}) for rid in big.rids]
            scheduler.run_batch(big, i)
            for span in spans:
                span.end()

    recorder = workload.ListPlugin()
    workload.configure(plugins=(recorder,), level=4)
    per_call = interleave({"otel": otel_per_call, "traced": workload.caller("traced"),
                           "wrapt": workload.caller("wrapt")}, n, repeats, between=recorder.events.clear)
    batches = 10 if quick else 30
    per_batch = interleave({"otel": otel_per_request, "traced_big": workload.caller("traced", BIG)},
                           batches, repeats, between=recorder.events.clear)
    workload.reset()
    provider.shutdown()
    group = "against the OpenTelemetry SDK used directly"
    return [
        compare(per_call, "OTel SDK span per call vs wrapt", "otel", "wrapt", group=group),
        compare(per_call, "sched-trace (list plugin) vs OTel SDK span per call", "traced", "otel", group=group),
        compare(per_batch, f"sched-trace batch of {BIG} vs OTel SDK span per request",
                "traced_big", "otel", unit="ns/batch", group=group,
                note=f"OTel: {BIG} spans per batch on the scheduler thread"),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    return run_off(quick) + run_list_plugin(quick) + run_exporter_plugins(quick) + run_otel_direct(quick)
