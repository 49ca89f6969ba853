"""Scheduler-side recording and the resolver thread, on CPU.

``torch.cuda`` is replaced by a namespace offering the three calls the hooks use
(``Event``, ``current_device``, ``is_current_stream_capturing``); the events are
the simulated ones from fakes.py. What runs for real: the hooks' pairing,
pooling and capture handling, the hand-off buffer, the resolver thread, and
delivery of GPU events to other plugins through the plugin manager.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

import sched_trace
from sched_trace.export import EventBuffer
from sched_trace_cuda import Resolver, Settings, publish
from sched_trace_cuda.recording import GpuStageHooks, ResolverThread

from .fakes import FakeCuda, FakeEvent


@pytest.fixture
def cuda():
    return FakeCuda()


def make_hooks(cuda, **settings):
    return GpuStageHooks(SimpleNamespace(cuda=cuda), Settings(**settings), EventBuffer(1024))


def run_stage(hooks, name="forward", span_id=1):
    from .fakes import cpu_stage

    stage = cpu_stage(name, span_id=span_id)
    hooks.sched_trace_stage_start(stage._replace(end_ns=None))
    hooks.sched_trace_stage_end(stage)
    return stage


def test_each_stage_records_a_start_and_an_end_event_and_hands_the_pair_over(cuda):
    hooks = make_hooks(cuda)
    stage = run_stage(hooks)
    (pair,) = hooks.handoff.drain(10)
    assert pair.stage is stage and pair.device == 0
    assert (pair.start.recorded, pair.end.recorded) == (1, 1)
    assert hooks.recorded == 1 and not hooks._open


def test_only_the_configured_stages_are_timed(cuda):
    hooks = make_hooks(cuda, stages=("forward",))
    run_stage(hooks, "tokenize", span_id=1)
    run_stage(hooks, "forward", span_id=2)
    assert [pair.stage.name for pair in hooks.handoff.drain(10)] == ["forward"]


def test_stages_inside_a_cuda_graph_capture_are_skipped(cuda):
    hooks = make_hooks(cuda)
    cuda.capturing = True
    run_stage(hooks)
    assert hooks.capture_skipped == 1 and not cuda.created and not hooks.handoff
    # A capture that begins inside a stage: the start event goes back to the pool.
    cuda.capturing = False
    from .fakes import cpu_stage

    hooks.sched_trace_stage_start(cpu_stage(span_id=9))
    cuda.capturing = True
    hooks.sched_trace_stage_end(cpu_stage(span_id=9))
    assert hooks.capture_skipped == 2 and not hooks.handoff and len(hooks._pools[0]) == 1


def test_open_stages_are_bounded(cuda):
    from .fakes import cpu_stage

    hooks = make_hooks(cuda, max_pending=2)
    for span_id in range(5):
        hooks.sched_trace_stage_start(cpu_stage(span_id=span_id))
    assert len(hooks._open) == 2 and hooks.open_overflow == 3


def test_resolved_events_are_reused_instead_of_created(cuda):
    hooks = make_hooks(cuda)
    resolver = Resolver(recycle=hooks.recycle)
    for span_id in range(1, 20):
        run_stage(hooks, span_id=span_id)
        resolver.add(hooks.handoff.drain(10))
        resolver.poll(time.monotonic_ns())
    assert resolver.resolved == 19
    assert len(cuda.created) <= 4  # steady state: a start, an end, and the timeline's anchor


def test_the_resolver_thread_publishes_gpu_events_to_every_plugin(cuda, sched_trace_recorder):
    hooks = make_hooks(cuda)
    thread = ResolverThread(Resolver(recycle=hooks.recycle), hooks.handoff, publish, poll_interval=0.001)
    thread.start()
    try:
        stage = run_stage(hooks, span_id=77)
        assert thread.flush(timeout=10.0)
    finally:
        thread.stop()
    (event,) = sched_trace_recorder.stages("forward/gpu")
    assert event.attrs["gpu.cpu_span_id"] == 77 and event.batch_size == stage.batch_size
    assert thread.emitted == 1


def test_flush_gives_up_after_its_timeout_while_the_gpu_is_busy(cuda):
    hooks = make_hooks(cuda)
    thread = ResolverThread(Resolver(), hooks.handoff, lambda events: None, poll_interval=0.001)
    run_stage(hooks)
    (pair,) = list(hooks.handoff._items)
    pair.end.done = False
    assert thread.flush(timeout=0.05) is False
    pair.end.done = True
    assert thread.flush(timeout=5.0) is True


def test_the_prometheus_plugin_histograms_gpu_time_without_knowing_about_it(cuda):
    from sched_trace_prometheus import PrometheusPlugin

    prometheus = PrometheusPlugin()
    sched_trace.register(prometheus, name="prometheus")
    hooks = make_hooks(cuda)
    thread = ResolverThread(Resolver(), hooks.handoff, publish, poll_interval=0.001)
    run_stage(hooks)
    assert thread.flush(timeout=5.0)
    prometheus.sched_trace_flush(5.0)
    samples = {(s.name, s.labels.get("stage"), s.labels.get("thread_label")): s.value
               for family in prometheus.registry.collect() for s in family.samples}
    assert samples[("sched_trace_stage_duration_seconds_count", "forward/gpu", "Scheduler/cuda:0")] == 1
    prometheus.sched_trace_shutdown()


class Graph:
    """Has the two methods of torch.cuda.CUDAGraph the plugin wraps."""

    def __init__(self, log):
        self.log = log

    def capture_begin(self, pool=None, capture_error_mode="global"):
        self.log.append(("begin", capture_error_mode))

    def capture_end(self):
        self.log.append(("end",))


def test_the_resolver_does_not_query_cuda_while_a_graph_is_captured(cuda):
    from sched_trace_cuda.recording import pause_during_graph_capture

    class CountingEvent(FakeEvent):
        queries = 0

        def query(self):
            CountingEvent.queries += 1
            return False

    log = []
    original_begin, original_end = Graph.capture_begin, Graph.capture_end
    hooks = make_hooks(cuda)
    thread = ResolverThread(Resolver(), hooks.handoff, lambda events: None, poll_interval=0.001)
    undo = pause_during_graph_capture(Graph, thread)
    graph = Graph(log)
    run_stage(hooks)
    (pair,) = list(hooks.handoff._items)
    thread.resolver.add([pair._replace(end=CountingEvent())])
    hooks.handoff.clear()

    thread.step()
    assert CountingEvent.queries == 1
    graph.capture_begin(capture_error_mode="global")
    thread.step()
    assert CountingEvent.queries == 1 and thread.capture_depth == 1
    graph.capture_end()
    thread.step()
    assert CountingEvent.queries == 2 and thread.capture_depth == 0
    assert log == [("begin", "global"), ("end",)]

    undo()
    assert Graph.capture_begin is original_begin and Graph.capture_end is original_end


def test_a_failed_capture_begin_does_not_leave_the_resolver_paused(cuda):
    from sched_trace_cuda.recording import pause_during_graph_capture

    class Failing(Graph):
        def capture_begin(self, pool=None, capture_error_mode="global"):
            raise RuntimeError("capture on the legacy stream")

    thread = ResolverThread(Resolver(), EventBuffer(8), lambda events: None, poll_interval=0.001)
    undo = pause_during_graph_capture(Failing, thread)
    with pytest.raises(RuntimeError):
        Failing([]).capture_begin()
    assert thread.capture_depth == 0
    undo()


def test_a_stage_that_switches_device_is_counted_not_timed(cuda):
    from .fakes import cpu_stage

    hooks = make_hooks(cuda)
    hooks.sched_trace_stage_start(cpu_stage(span_id=3))
    cuda.device = 1
    hooks.sched_trace_stage_end(cpu_stage(span_id=3))
    assert hooks.device_switched == 1 and not hooks.handoff and len(hooks._pools[0]) == 1
