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


def test_the_serving_command_serves_every_rank(tmp_path):
    """`python -m sched_trace_prometheus.multiprocess` as docs/prometheus.md shows it."""
    import re
    import urllib.request

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for pp_rank in (0, 1):
        subprocess.run([sys.executable, "-c", WORKER], env={**env, "PP_RANK": str(pp_rank)},
                       check=True, timeout=120)
    server = subprocess.Popen([sys.executable, "-m", "sched_trace_prometheus.multiprocess", "--port", "0"],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        port = int(re.search(r":(\d+)/metrics", line).group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            text = response.read().decode()
    finally:
        server.terminate()
        server.wait(30)
    counts = {
        sample.labels["pp_rank"]: sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == "sched_trace_stage_duration_seconds_count"
    }
    assert counts == {"0": 3.0, "1": 3.0}


def test_serving_without_a_directory_says_what_to_set(tmp_path, monkeypatch):
    import pytest

    import sched_trace
    from sched_trace_prometheus import multiprocess_registry

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with pytest.raises(sched_trace.ConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        multiprocess_registry()
    with pytest.raises(sched_trace.ConfigError, match="not a directory"):
        multiprocess_registry(str(tmp_path / "missing"))
