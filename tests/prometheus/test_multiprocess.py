"""prometheus_client multiprocess mode: ranks in several processes, one scrape for all."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.exposition import generate_latest

WORKER = textwrap.dedent("""
    import os
    import sched_trace
    from sched_trace_prometheus import PrometheusPlugin

    sched_trace.register(PrometheusPlugin(), name="prometheus")
    sched_trace.configure(level=4, autoload=False)
    sched_trace.set_thread_info("Scheduler", pp_rank=int(os.environ["PP_RANK"]))

    @sched_trace.stage("forward", level=2)
    def forward():
        pass

    for _ in range(3):
        forward()
    sched_trace.shutdown()  # drains the exporter: the values are in the shared files now
""")


def test_worker_processes_write_and_one_collector_reads_them_all(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for pp_rank in (0, 1):
        subprocess.run([sys.executable, "-c", WORKER], env={**env, "PP_RANK": str(pp_rank)},
                       check=True, timeout=120)

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    counts = {
        sample.labels["pp_rank"]: sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.name == "sched_trace_stage_duration_seconds_count" and sample.labels["stage"] == "forward"
    }
    assert counts == {"0": 3.0, "1": 3.0}
