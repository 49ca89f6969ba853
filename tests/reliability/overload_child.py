"""A rank that records as fast as it can, through otel (OTLP-JSON), perfetto and prometheus.

``python overload_child.py STEPS CAPACITY OUT``: STEPS steps of five events (a batch and
four stages), each plugin's buffer holding CAPACITY events; then shutdown, whose warnings go
to stderr. Prints one JSON line: each plugin's counters and the Prometheus exposition.
"""

from __future__ import annotations

import json
import logging
import sys

import sched_trace


@sched_trace.stage("run_batch_cpu", level=4, microbatch="mb")
def run_batch(mb: int) -> int:
    return mb


@sched_trace.batch("decode_step", level=1, batch_size="size")
def decode_step(step: int, size: int) -> None:
    for mb in range(4):
        run_batch(mb)


def main() -> None:
    steps, capacity, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    from prometheus_client import generate_latest
    from sched_trace_otel import OtelPlugin
    from sched_trace_perfetto import PerfettoPlugin
    from sched_trace_prometheus import PrometheusPlugin

    plugins = {"otel": OtelPlugin(directory=f"{out}/otel", capacity=capacity, requests="off"),
               "perfetto": PerfettoPlugin(directory=f"{out}/perfetto", capacity=capacity),
               "prometheus": PrometheusPlugin()}
    for name, plugin in plugins.items():
        sched_trace.register(plugin, name=name)
    sched_trace.set_thread_info("Scheduler", pp_rank=0, tp_rank=0, dp_rank=0)
    sched_trace.configure(level=9, autoload=False, config={"plugins": {"prometheus": {"capacity": capacity}}})
    for step in range(steps):
        decode_step(step, 8)
    sched_trace.flush(timeout=120)
    exposition = generate_latest(plugins["prometheus"].registry).decode()
    stats = {name: dict(plugin.sched_trace_collect_stats()) for name, plugin in plugins.items()}
    sched_trace.shutdown(timeout=120)
    print(json.dumps({"stats": stats, "metrics": exposition}), flush=True)


if __name__ == "__main__":
    main()
