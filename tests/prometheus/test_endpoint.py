"""Scrape the real HTTP endpoint after running stages: counts, labels, errors, health."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

import sched_trace
from sched_trace import _level_file

from .conftest import scrape, value

RANKS = {"thread_label": "Scheduler", "pp_rank": "1", "tp_rank": "0", "dp_rank": "2"}


@sched_trace.stage("prom_forward", level=2, microbatch="microbatch", batch_size="len(batch)")
def forward(batch: list, microbatch: int) -> int:
    return len(batch)


@sched_trace.stage("prom_send", level=2)
def send(fail: bool) -> None:
    if fail:
        raise ConnectionError("peer went away")


@sched_trace.batch("prom_step", batch_size="len(requests)")
def step(requests: list) -> None:
    for microbatch in range(3):
        forward(requests, microbatch)


def on_scheduler_thread(work: Callable[[], Any]) -> None:
    """Run ``work`` on a thread that names itself like a pipeline rank's scheduler."""
    errors: list[BaseException] = []

    def run() -> None:
        sched_trace.set_thread_info("Scheduler", tp_rank=0, pp_rank=1, dp_rank=2)
        try:
            work()
        except BaseException as exc:  # surface in the test, not in a thread's stderr
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not errors, errors


def test_stage_histogram_counts_each_execution_under_rank_labels(start_prometheus):
    plugin = start_prometheus()
    on_scheduler_thread(lambda: [step(list(range(8))), step(list(range(5)))])
    samples = scrape(plugin.serve(0))

    assert value(samples, "sched_trace_stage_duration_seconds_count", stage="prom_forward", **RANKS) == 6
    assert value(samples, "sched_trace_stage_duration_seconds_bucket", stage="prom_forward", le="+Inf",
                 **RANKS) == 6
    assert value(samples, "sched_trace_stage_duration_seconds_sum", stage="prom_forward", **RANKS) > 0
    # Micro-batch ids and batch ids never become labels: one series for all six calls.
    labels = {frozenset(got) for got, _ in samples["sched_trace_stage_duration_seconds_count"]}
    assert labels == {frozenset({"stage", *RANKS})}


def test_batches_are_counted_and_their_sizes_histogrammed(start_prometheus):
    plugin = start_prometheus()
    on_scheduler_thread(lambda: [step(list(range(8))), step(list(range(5)))])
    samples = scrape(plugin.serve(0))

    assert value(samples, "sched_trace_batches_total", batch="prom_step", **RANKS) == 2
    assert value(samples, "sched_trace_batch_duration_seconds_count", batch="prom_step", **RANKS) == 2
    assert value(samples, "sched_trace_batch_size_count", batch="prom_step", **RANKS) == 2
    assert value(samples, "sched_trace_batch_size_sum", batch="prom_step", **RANKS) == 13
    assert value(samples, "sched_trace_batch_size_bucket", batch="prom_step", le="4.0", **RANKS) == 0
    assert value(samples, "sched_trace_batch_size_bucket", batch="prom_step", le="8.0", **RANKS) == 2
    # Stages that declare batch_size get their own size histogram.
    assert value(samples, "sched_trace_stage_batch_size_sum", stage="prom_forward", **RANKS) == 3 * 13


def test_a_stage_that_raises_increments_its_error_counter(start_prometheus):
    plugin = start_prometheus()

    def work() -> None:
        send(False)
        with pytest.raises(ConnectionError):
            send(True)

    on_scheduler_thread(work)
    samples = scrape(plugin.serve(0))
    assert value(samples, "sched_trace_stage_errors_total", stage="prom_send",
                 error_type="ConnectionError", **RANKS) == 1
    # The failed call's latency is observed too.
    assert value(samples, "sched_trace_stage_duration_seconds_count", stage="prom_send", **RANKS) == 2


def test_per_call_rank_keys_make_separate_series(start_prometheus):
    class PipelineStage:
        def __init__(self, index: int) -> None:
            self.stage_index = index

        @sched_trace.stage("prom_chunk", level=2, rank={"pp_rank": "self.stage_index"})
        def forward_one_chunk(self) -> None:
            pass

    plugin = start_prometheus()
    on_scheduler_thread(lambda: [PipelineStage(i % 2).forward_one_chunk() for i in range(5)])
    samples = scrape(plugin.serve(0))
    ranks = {**RANKS}
    del ranks["pp_rank"]
    assert value(samples, "sched_trace_stage_duration_seconds_count", stage="prom_chunk", pp_rank="0", **ranks) == 3
    assert value(samples, "sched_trace_stage_duration_seconds_count", stage="prom_chunk", pp_rank="1", **ranks) == 2


def test_health_counters_come_from_sched_trace_stats_at_scrape_time(start_prometheus):
    class Broken:
        def sched_trace_stage_end(self, event: Any) -> None:
            raise RuntimeError("exporter bug")

    @sched_trace.stage("prom_missing", level=2, microbatch="batch.mb_id")
    def missing(batch: object) -> None:
        pass

    plugin = start_prometheus()
    sched_trace.register(Broken(), name="broken")
    on_scheduler_thread(lambda: [missing(object()), missing(object())])
    samples = scrape(plugin.serve(0))

    assert value(samples, "sched_trace_plugin_errors_total", plugin="broken") == 2
    assert value(samples, "sched_trace_extract_missing_total", extractor="microbatch='batch.mb_id'") == 2
    assert value(samples, "sched_trace_level") == 9
    assert value(samples, "sched_trace_events_dropped_total", plugin="prometheus") == 0
    assert value(samples, "sched_trace_plugin_stat", plugin="prometheus", stat="observed") == 2
    # The exporter's own counters are read fresh: one more scrape sees the same totals.
    assert value(scrape(plugin.port), "sched_trace_plugin_errors_total", plugin="broken") == 2


def test_a_level_set_from_a_level_file_and_its_refused_contents_are_scraped(start_prometheus, tmp_path):
    plugin = start_prometheus()
    path = tmp_path / "level"
    path.write_text("3")
    sched_trace.configure(level=9, config={"level_file": str(path)}, autoload=False)
    samples = scrape(plugin.serve(0))
    assert value(samples, "sched_trace_level") == 3
    assert value(samples, "sched_trace_level_file_refused_total") == 0
    path.write_text("three")
    _level_file._follower.poll()  # what the follower's thread does within a second
    samples = scrape(plugin.port)
    assert value(samples, "sched_trace_level") == 3  # kept
    assert value(samples, "sched_trace_level_file_refused_total") == 1


def test_calls_a_keep_if_stage_drops_are_an_idle_calls_counter_per_stage(start_prometheus):
    @sched_trace.stage("prom_poll", level=2, keep_if="result is not None")
    def get_next_batch(queue: list) -> object:
        return queue.pop() if queue else None

    plugin = start_prometheus()
    # Three idle polls, two that found work: 3 dropped, 2 spans.
    on_scheduler_thread(lambda: [get_next_batch(queue) for queue in ([], [1], [], [2], [])])
    samples = scrape(plugin.serve(0))

    assert value(samples, "sched_trace_idle_calls_total", stage="prom_poll") == 3
    assert value(samples, "sched_trace_stage_duration_seconds_count", stage="prom_poll") == 2
    # Read at scrape time: two more idle polls show on the next scrape, no flush needed.
    on_scheduler_thread(lambda: [get_next_batch([]), get_next_batch([])])
    assert value(scrape(plugin.port), "sched_trace_idle_calls_total", stage="prom_poll") == 5


def test_what_sched_traces_own_threads_cost_is_a_counter_per_thread(start_prometheus):
    plugin = start_prometheus()
    on_scheduler_thread(lambda: [send(False) for _ in range(50)])
    sched_trace.flush(10)
    threads = {thread.name: thread for thread in threading.enumerate() if thread.name.startswith("sched-trace-")}
    assert "sched-trace-prometheus" in threads  # the plugin's exporter thread, which observed the events
    samples = scrape(plugin.serve(0))
    for name, thread in threads.items():
        clock = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))  # the thread's own, read after
        assert 0 <= value(samples, "sched_trace_thread_cpu_seconds_total", thread=name) <= clock
    assert value(samples, "sched_trace_thread_cpu_seconds_total", thread="sched-trace-prometheus") > 0


def test_label_sets_are_capped_and_the_overflow_counted(start_prometheus):
    plugin = start_prometheus(max_label_sets=2)
    for label in ("A", "B", "C", "D"):
        thread = threading.Thread(target=lambda: [sched_trace.set_thread_info(label), send(False)])
        thread.start()
        thread.join()
    samples = scrape(plugin.serve(0))
    assert len(samples["sched_trace_stage_duration_seconds_count"]) == 2
    assert value(samples, "sched_trace_prometheus_label_overflow_total") == 2


def test_settings_port_starts_the_exporter_and_shutdown_stops_it(start_prometheus, free_port):
    plugin = start_prometheus(port=free_port, addr="127.0.0.1", buckets=[0.001, 1.0])
    assert plugin.port == free_port
    on_scheduler_thread(lambda: send(False))
    samples = scrape(free_port)
    les = {got["le"] for got, _ in samples["sched_trace_stage_duration_seconds_bucket"]}
    assert les == {"0.001", "1.0", "+Inf"}
    sched_trace.shutdown()
    assert plugin.port == 0
    with pytest.raises(OSError):
        scrape(free_port)


def test_default_registry_exposes_the_same_metrics(start_prometheus):
    import prometheus_client

    start_prometheus(default_registry=True)
    on_scheduler_thread(lambda: send(False))
    text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert 'sched_trace_stage_duration_seconds_count{' in text and 'stage="prom_send"' in text
    sched_trace.shutdown()
    text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "sched_trace_stage_duration_seconds" not in text


def test_the_scheduler_thread_only_appends_to_a_buffer(start_prometheus):
    plugin = start_prometheus()
    from sched_trace._manager import get_manager

    hooks = {owner: function for function, owner in get_manager().stage_end}
    # the buffer's append itself, in C where the hot path is built
    assert hooks["prometheus"] in (plugin._exporter.append, plugin._exporter._appender)
