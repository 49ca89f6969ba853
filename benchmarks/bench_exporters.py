"""Exporters keeping up: events per second through each exporter plugin, and the overload run.

1. Throughput: the scheduler thread records N stage events as fast as it can into a
   buffer large enough to drop nothing, then ``flush()`` waits until the exporter
   wrote them all; events/s = N / (first record .. flush returned). That is the rate
   each plugin sustains with nothing dropped: a scheduler recording slower than it
   loses nothing, and bursts up to the buffer's capacity are absorbed. Also the
   scheduler process's CPU per event (every thread of it: the hook, the exporter
   thread's encoding) against the same calls with no plugin.
2. Overload: 100,000 steps of 5 events recorded as fast as one rank can with the
   default capacity (issue 18's run): how many of how many each plugin dropped.

Run: ``python -m benchmarks --only exporters`` (or ``python -m benchmarks.bench_exporters``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import sched_trace

GROUP = "exporters"


@sched_trace.stage("bench_stage", level=4, microbatch="mb", batch_size="size", attrs={"queue_depth": "depth"})
def _stage(mb: int, size: int, depth: int) -> int:
    return mb


@sched_trace.batch("bench_step", level=1, batch_size="size")
def _step(mb: int, size: int) -> None:
    for index in range(4):
        _stage(mb * 4 + index, size, index)


def _plugins(directory: str, capacity: int) -> dict[str, Callable[[], Any]]:
    from sched_trace_otel import OtelPlugin
    from sched_trace_perfetto import PerfettoPlugin
    from sched_trace_prometheus import PrometheusPlugin, parse_settings

    return {
        "perfetto": lambda: PerfettoPlugin(directory=os.path.join(directory, "perfetto"), capacity=capacity),
        "otel (OTLP-JSON file)": lambda: OtelPlugin(directory=os.path.join(directory, "otel"), capacity=capacity,
                                                    requests="off"),
        "prometheus": lambda: PrometheusPlugin(parse_settings({"capacity": capacity})),
    }


def _record(steps: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for mb in range(steps):
        _step(mb, 8)
    return time.perf_counter() - wall, time.process_time() - cpu


def _run(plugin: Any, steps: int) -> dict[str, Any]:
    # The Prometheus plugin takes its settings from the configuration at configure(): say its capacity there.
    capacity = getattr(getattr(plugin, "settings", None), "capacity", None)
    config = {"plugins": {"prometheus": {"capacity": capacity}}} if capacity and hasattr(plugin, "registry") else None
    sched_trace.configure(level=9, plugins=[plugin] if plugin is not None else [], autoload=False, config=config)
    sched_trace.set_thread_info("Scheduler", pp_rank=0, tp_rank=0, dp_rank=0)
    _record(50)  # the exporter process is up, tracks described
    sched_trace.flush(timeout=120.0)
    before = dict(plugin.sched_trace_collect_stats()) if plugin is not None else {}
    wall, cpu = time.perf_counter(), time.process_time()
    recorded, _ = _record(steps)
    sched_trace.flush(timeout=600.0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = dict(plugin.sched_trace_collect_stats()) if plugin is not None else {}
    for key in ("exporter_cpu_s", "thread_cpu_s"):  # this run's share, start-up left out
        if key in stats:
            stats[key] -= before.get(key, 0)
    sched_trace.shutdown(timeout=60.0)
    if plugin is not None:
        sched_trace.unregister(plugin)
    return {"wall": wall, "cpu": cpu, "record": recorded, "stats": stats}


def run(quick: bool) -> list[dict[str, Any]]:
    steps = 4_000 if quick else 40_000
    events = steps * 5
    rows: list[dict[str, Any]] = []
    directory = tempfile.mkdtemp(prefix="sched-trace-bench-exporters-")
    try:
        bare = _run(None, steps)
        for name, make in _plugins(directory, 1 << 22).items():
            result = _run(make(), steps)
            dropped = result["stats"].get("dropped", 0)
            rows.append(_row(f"{name}: events/s written, nothing dropped ({events:,} events, flush included)",
                             events / result["wall"], "events/s", note=f"dropped {dropped}"))
            rows.append(_row(f"{name}: scheduler-process CPU per event (all its threads)",
                             result["cpu"] / events * 1e6, "us", baseline=bare["cpu"] / events * 1e6))
            stats = result["stats"]
            if stats.get("exporter_cpu_s"):
                rows.append(_row(f"{name}: exporter-process CPU per event (events/s one core sustains: "
                                 f"{events / stats['exporter_cpu_s']:,.0f})",
                                 stats["exporter_cpu_s"] / events * 1e6, "us"))
        for name, make in _plugins(directory, 0).items():
            overload = 20_000 if quick else 100_000
            result = _run(make_default(name, directory), overload)
            stats = result["stats"]
            rows.append(_row(f"{name}: overload, {overload * 5:,} events as fast as one rank records "
                             f"({overload * 5 / result['record']:,.0f}/s), default capacity: dropped",
                             stats.get("dropped", 0), "events", note=f"of {stats.get('received', 0):,}"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def make_default(name: str, directory: str) -> Any:
    from sched_trace_otel import OtelPlugin
    from sched_trace_perfetto import PerfettoPlugin
    from sched_trace_prometheus import PrometheusPlugin

    if name == "perfetto":
        return PerfettoPlugin(directory=os.path.join(directory, "perfetto-overload"))
    if name.startswith("otel"):
        return OtelPlugin(directory=os.path.join(directory, "otel-overload"), requests="off")
    return PrometheusPlugin()


def _row(figure: str, value: float, unit: str, baseline: Any = None, note: str = "") -> dict[str, Any]:
    ratio = value / baseline if baseline else None
    return {"figure": figure, "value": value, "baseline": baseline, "ratio": ratio, "unit": unit, "note": note,
            "group": GROUP}


def main() -> int:
    quick = "--quick" in sys.argv
    for row in run(quick):
        print(f"{row['figure'][:100]:100} {row['value']:>14,.2f} {row['unit']:8} "
              f"{'' if row['baseline'] is None else format(row['baseline'], ',.2f'):>10} {row['note']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
