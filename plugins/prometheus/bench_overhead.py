"""What the prometheus plugin costs the scheduler thread, and the exporter's throughput.

Run: python plugins/prometheus/bench_overhead.py   (numbers are printed, nothing asserted)

Scheduler-thread CPU (time.thread_time_ns) is the cost the plugin adds to the
scheduler; wall time also includes waiting for the GIL while the exporter thread
observes, which in this tight loop of empty stages is the worst case.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram

import sched_trace
from sched_trace import StageEvent
from sched_trace_prometheus import PrometheusPlugin

CALLS = 200_000


@sched_trace.stage("bench_stage", level=2, microbatch="microbatch", batch_size="size")
def stage(microbatch: int, size: int) -> int:
    return microbatch


def per_stage() -> str:
    wall, cpu = [], []
    for _ in range(5):
        started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        for microbatch in range(CALLS):
            stage(microbatch, 8)
        cpu.append((time.thread_time_ns() - started_cpu) / CALLS)
        wall.append((time.perf_counter_ns() - started) / CALLS)
    return f"scheduler-thread CPU {min(cpu):6.0f} ns/stage, wall {min(wall):6.0f} ns/stage"


class NullExporter:
    def sched_trace_stage_end(self, event: StageEvent) -> None:
        pass


def main() -> None:
    sched_trace.configure(level=9, autoload=False)
    null = NullExporter()
    sched_trace.register(null, name="null")
    print(f"empty stage_end hook:      {per_stage()}")
    sched_trace.unregister(null)
    plugin = PrometheusPlugin()
    sched_trace.register(plugin, name="prometheus")
    sched_trace.configure(level=9, config={"plugins": {"prometheus": {"capacity": 2_000_000}}}, autoload=False)
    print(f"prometheus plugin:         {per_stage()}")
    sched_trace.flush(60)

    histogram = Histogram("inline_seconds", "inline", ["stage", "thread_label", "pp_rank", "tp_rank", "dp_rank"],
                          registry=CollectorRegistry())
    started = time.perf_counter_ns()
    for _ in range(CALLS):
        histogram.labels("bench_stage", "MainThread", "", "", "").observe(1e-4)
    print(f"inline labels().observe(): {(time.perf_counter_ns() - started) / CALLS:6.0f} ns per observation "
          "(what observing on the scheduler thread would cost)")

    event = sched_trace_event()
    batch = [event] * CALLS
    started = time.perf_counter_ns()
    plugin.metrics.observe_batch(batch)
    elapsed = time.perf_counter_ns() - started
    rate = len(batch) / elapsed * 1e9
    print(f"exporter thread:           {rate:,.0f} events/s ({elapsed / len(batch):.0f} ns/event)")
    sched_trace.shutdown()


def sched_trace_event() -> StageEvent:
    from sched_trace.export import current_rank as current

    return StageEvent("bench_stage", 2, 0, 100_000, current(), 1, 1, 8, {}, None, 1, 0)


if __name__ == "__main__":
    main()
