"""The prometheus plugin scraped by a real Prometheus server, queried through its HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import prometheus_client
import pytest

import sched_trace
from sched_trace_prometheus import PrometheusPlugin, serve_multiprocess

from . import metrics_workload as workload
from .prometheus_server import PrometheusServer
from tests.prometheus.test_grafana_dashboard import METRIC_NAME, dashboard_expressions

HERE = Path(__file__).parent
RANK = {"pp_rank": "0", "tp_rank": "0", "dp_rank": "0", "thread_label": "Scheduler"}


class FaultyPlugin:
    """Raises in every stage_end: the health counters must show it."""

    @sched_trace.hookimpl
    def sched_trace_stage_end(self, event: Any) -> None:
        raise RuntimeError("a broken plugin")


def run_health_cases() -> None:
    """A batch that raises, and an extractor that reads nothing: the error and health families get series.

    On a thread of its own (label "Health"), so the scheduler rank's bubble ratio stays the workload's.
    """
    thread = threading.Thread(target=_health_cases)
    thread.start()
    thread.join(60)


def _health_cases() -> None:
    sched_trace.set_thread_info("Health", pp_rank=0, tp_rank=0, dp_rank=0)

    @sched_trace.batch("bad_step", level=1)
    def bad_step() -> None:
        raise RuntimeError("the step failed")

    @sched_trace.stage("lookup", level=2, batch_size="batch.size")
    def lookup(batch: Any) -> None:
        pass

    with pytest.raises(RuntimeError):
        bad_step()
    lookup(object())


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: Any) -> Iterator[tuple[PrometheusServer, Any]]:
    """The workload run once in this process; its registry served; a real server scraping it."""
    plugin, recorder, faulty = PrometheusPlugin(), sched_trace.MemoryRecorder(), FaultyPlugin()
    sched_trace.configure(level=9, plugins=[plugin, recorder], autoload=False)
    sched_trace.set_thread_info("Scheduler", pp_rank=0, tp_rank=0, dp_rank=0)
    # Served apart from the plugin (its own server stops at shutdown), like an app's /metrics.
    http, _ = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=plugin.registry)
    server = None
    try:
        workload.run()
        report = sched_trace.analysis.pipeline_report(recorder.events)
        sched_trace.register(faulty, name="faulty")
        run_health_cases()
        sched_trace.flush()
        server = PrometheusServer(tmp_path_factory.mktemp("prometheus"),
                                  {"sched_trace": [f"127.0.0.1:{http.server_address[1]}"]})
        # three scrapes while the plugins are live, so rate() has samples of every family
        server.wait_for('count_over_time(up{job="sched_trace"}[5m])', lambda r: r and r[0]["value"] >= 3)
        sched_trace.shutdown()
        for each in (plugin, recorder, faulty):
            sched_trace.unregister(each)
        yield server, report
    finally:
        if server is not None:
            server.stop()
        http.shutdown()
        http.server_close()


def only(result: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(result) == 1, result
    return result[0]


def test_grafana_dashboard_queries_run_on_the_real_server(scraped: Any) -> None:
    """Every PromQL expression in docs/grafana/sched-trace.json parses and returns series here."""
    server, _ = scraped
    names = server.metric_names()
    for panel, expr in dashboard_expressions():
        used = set(METRIC_NAME.findall(expr))
        assert used <= names, f"panel {panel!r} uses {sorted(used - names)}, which the server never scraped"
        concrete = expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$pp_rank", ".*")
        assert server.query(concrete), f"panel {panel!r}: {concrete} returned no series"


def test_stage_histograms_and_counters_with_rank_labels(scraped: Any) -> None:
    server, _ = scraped
    forward = only(server.query('sched_trace_stage_duration_seconds_count{stage="forward"}'))
    assert forward["value"] == workload.STEPS * workload.MICROBATCHES
    assert forward["metric"] | RANK == forward["metric"] and forward["metric"]["job"] == "sched_trace"
    assert "pp_mb_id" not in forward["metric"] and "microbatch" not in forward["metric"]
    errors = only(server.query('sched_trace_stage_errors_total{stage="forward"}'))
    assert (errors["value"], errors["metric"]["error_type"]) == (workload.FAILING, "ValueError")
    assert only(server.query('sched_trace_batches_total{batch="engine_step"}'))["value"] == workload.STEPS
    # the histogram's buckets are there for histogram_quantile, ending at +Inf = count
    buckets = server.query('sched_trace_stage_duration_seconds_bucket{stage="send_activations"}')
    assert {r["metric"]["le"] for r in buckets} >= {"0.001", "+Inf"}
    assert max(r["value"] for r in buckets) == workload.STEPS * workload.MICROBATCHES
    p99 = only(server.query(
        'histogram_quantile(0.99, sched_trace_batch_duration_seconds_bucket{batch="engine_step"})'))
    assert 0 < p99["value"] <= 10


def test_request_histograms(scraped: Any) -> None:
    server, _ = scraped
    finished, aborted = workload.REQUESTS, workload.ABORTED
    counts = {name: only(server.query(f"sched_trace_request_{name}_count"))["value"] for name in (
        "time_to_first_token_seconds", "time_per_output_token_seconds", "queue_time_seconds", "e2e_latency_seconds")}
    assert counts == {"time_to_first_token_seconds": finished, "time_per_output_token_seconds": finished,
                      "queue_time_seconds": finished, "e2e_latency_seconds": finished + aborted}
    by_outcome = {r["metric"]["outcome"]: r["value"] for r in server.query("sched_trace_requests_total")}
    assert by_outcome == {"finished": finished, "aborted": aborted}
    assert only(server.query("sched_trace_request_output_tokens_total"))["value"] == finished * workload.OUTPUT_TOKENS
    assert only(server.query("sched_trace_request_prompt_tokens_total"))["value"] == (finished + aborted) * 16
    ttft = only(server.query("sched_trace_request_time_to_first_token_seconds_count"))["metric"]
    assert ttft | RANK == ttft and not {"rid", "request_id"} & set(ttft)


def test_bubble_ratio_gauge_agrees_with_pipeline_report(scraped: Any) -> None:
    server, report = scraped
    (rank,) = report.ranks
    gauge = only(server.query('sched_trace_rank_bubble_ratio{thread_label="Scheduler"}'))
    assert gauge["metric"] | RANK == gauge["metric"]
    assert gauge["value"] == pytest.approx(rank.bubble_ratio, abs=1e-9)
    # and PromQL over the two counters gives the same ratio
    derived = only(server.query('1 - sched_trace_rank_busy_seconds_total{thread_label="Scheduler"}'
                                ' / sched_trace_rank_window_seconds_total'))
    assert derived["value"] == pytest.approx(rank.bubble_ratio, abs=1e-9)


def test_health_counters_are_scraped(scraped: Any) -> None:
    server, _ = scraped
    errors = server.query('max_over_time(sched_trace_plugin_errors_total{plugin="faulty"}[5m])')
    assert only(errors)["value"] >= 1
    missing = server.query('max_over_time(sched_trace_extract_missing_total[5m])')
    assert any("batch.size" in r["metric"]["extractor"] for r in missing)
    batch_errors = only(server.query('sched_trace_batch_errors_total{batch="bad_step"}'))
    assert (batch_errors["value"], batch_errors["metric"]["error_type"]) == (1, "RuntimeError")


def test_ranks_in_multiprocess_mode_one_endpoint(tmp_path: Path) -> None:
    """Two rank processes write PROMETHEUS_MULTIPROC_DIR; one endpoint serves both; the server sees each rank."""
    shared = tmp_path / "multiproc"
    shared.mkdir()
    # Each rank serves requests of its own here (as data-parallel ranks do): each counts what it sees.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "SCHED_TRACE_REQUEST_OWNER": "any",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")])}
    truths = {}
    for pp_rank in (0, 1):
        done = subprocess.run([sys.executable, str(HERE / "metrics_workload.py")], env={**env, "PP_RANK": str(pp_rank)},
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        truth = json.loads(done.stdout)
        truths[str(truth["pp_rank"])] = truth
    http, _ = serve_multiprocess(0, path=str(shared))
    server = None
    try:
        server = PrometheusServer(tmp_path / "prometheus", {"ranks": [f"127.0.0.1:{http.server_address[1]}"]})
        expr = 'sum by (pp_rank) (sched_trace_stage_duration_seconds_count{stage="forward"})'
        result = server.wait_for(expr, lambda r: len(r) == 2)
        assert {r["metric"]["pp_rank"]: r["value"] for r in result} == {
            "0": workload.STEPS * workload.MICROBATCHES, "1": workload.STEPS * workload.MICROBATCHES}
        requests = server.query('sum by (pp_rank, outcome) (sched_trace_requests_total)')
        assert {(r["metric"]["pp_rank"], r["metric"]["outcome"]): r["value"] for r in requests} == {
            (p, o): n for p in ("0", "1") for o, n in (("finished", workload.REQUESTS), ("aborted", workload.ABORTED))}
        ttft = server.query("sched_trace_request_time_to_first_token_seconds_count")
        assert sorted((r["metric"]["pp_rank"], r["value"]) for r in ttft) == [
            ("0", workload.REQUESTS), ("1", workload.REQUESTS)]
        gauges = server.query("sched_trace_rank_bubble_ratio")
        assert {r["metric"]["pp_rank"]: r["value"] for r in gauges} == pytest.approx(
            {p: t["bubble_ratio"] for p, t in truths.items()}, abs=1e-9)
        assert all("pid" not in r["metric"] for r in gauges)  # mostrecent mode: one series per rank
    finally:
        if server is not None:
            server.stop()
        http.shutdown()
        http.server_close()
