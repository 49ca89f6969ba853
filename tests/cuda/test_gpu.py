"""On a CUDA machine: GPU stage time from real CUDA events, never blocking the scheduler.

Skipped where torch has no CUDA device. ``torch.cuda._sleep(cycles)`` keeps the GPU
busy for a known while after the CPU has already returned, which is exactly the
asynchrony the plugin has to handle.
"""

from __future__ import annotations

import pytest

import sched_trace
from sched_trace._manager import get_manager
from sched_trace_cuda import CudaTimingPlugin, is_gpu_event

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SLEEP_CYCLES = 100_000_000  # tens of milliseconds on current GPUs


@sched_trace.stage("gpu_busy", level=2, microbatch="microbatch", batch_size="batch_size")
def gpu_busy(cycles: int, microbatch: int, batch_size: int = 8, oracle: tuple = ()) -> None:
    if oracle:  # the test's own CUDA events, recorded beneath the plugin's
        oracle[0].record()
    torch.cuda._sleep(cycles)
    if oracle:
        oracle[1].record()


@sched_trace.stage("gpu_matmul", level=2)
def gpu_matmul(x: "torch.Tensor") -> "torch.Tensor":
    return x @ x


@pytest.fixture
def gpu(sched_trace_recorder):
    torch.cuda.init()  # the plugin never initialises CUDA itself; the program does
    torch.cuda.synchronize()
    plugin = CudaTimingPlugin()
    sched_trace.register(plugin, name="cuda")
    sched_trace.configure(level=9, autoload=False)
    assert plugin.state == "active", plugin.reason
    yield plugin, sched_trace_recorder
    sched_trace.shutdown()
    get_manager().forget_config()


def test_gpu_time_arrives_as_a_stage_event_after_the_cpu_returned(gpu):
    plugin, recorder = gpu
    oracle = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
    gpu_busy(SLEEP_CYCLES, microbatch=3, oracle=oracle)
    (cpu,) = recorder.stages("gpu_busy")
    sched_trace.flush(timeout=30.0)
    (event,) = recorder.stages("gpu_busy/gpu")
    torch.cuda.synchronize()
    kernel_ns = oracle[0].elapsed_time(oracle[1]) * 1e6

    assert is_gpu_event(event) and event.attrs["gpu.cpu_span_id"] == cpu.span_id
    assert (event.microbatch, event.batch_id, event.batch_size) == (3, cpu.batch_id, 8)
    assert event.rank.thread_label == f"{cpu.rank.thread_label}/cuda:{torch.cuda.current_device()}"
    # The plugin's events enclose the oracle's on the same stream: its GPU time is the
    # kernel's, plus at most the CPU time between the enclosing records (whatever the load).
    assert kernel_ns - 10_000 <= event.duration_ns <= kernel_ns + cpu.duration_ns + 10_000
    assert event.start_ns >= cpu.start_ns and event.end_ns >= cpu.end_ns
    stats = sched_trace.stats()["plugins"]["cuda"]
    assert stats["available"] == 1 and stats["recorded"] == 1 and stats["resolved"] == 1
    assert stats["pending"] == 0 and stats["dropped"] == 0
    assert sched_trace.stats()["plugin_errors"] == {}


def test_queued_stages_are_placed_one_after_another_on_the_gpu_timeline(gpu):
    plugin, recorder = gpu
    for microbatch in range(4):
        gpu_busy(SLEEP_CYCLES // 4, microbatch=microbatch)
    sched_trace.flush(timeout=30.0)
    events = sorted(recorder.stages("gpu_busy/gpu"), key=lambda e: e.microbatch)
    assert [e.microbatch for e in events] == [0, 1, 2, 3]
    for earlier, later in zip(events, events[1:]):
        assert earlier.end_ns <= later.start_ns
    # The queue delay is the wait between the CPU's launch and the GPU's start.
    launches = {e.microbatch: e for e in recorder.stages("gpu_busy")}
    for event in events:
        assert event.attrs["gpu.queue_delay_ns"] == event.start_ns - launches[event.microbatch].start_ns >= 0


def test_stages_on_a_side_stream_are_timed_on_that_stream(gpu):
    plugin, recorder = gpu
    side = torch.cuda.Stream()
    x = torch.randn(512, 512, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        gpu_matmul(x)
    sched_trace.flush(timeout=30.0)
    (event,) = recorder.stages("gpu_matmul/gpu")
    assert event.duration_ns > 0


def test_graph_capture_is_neither_recorded_into_nor_disturbed(gpu):
    plugin, recorder = gpu
    # Keep a pair pending during the capture so the resolver would want to poll.
    gpu_busy(SLEEP_CYCLES, microbatch=0)
    x = torch.randn(256, 256, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        gpu_matmul(x)  # warm-up outside the capture: timed
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # global capture mode, the default
        y = gpu_matmul(x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.allclose(y, x @ x, rtol=1e-3, atol=1e-3)

    sched_trace.flush(timeout=30.0)
    stats = sched_trace.stats()["plugins"]["cuda"]
    assert stats["capture_skipped"] == 1
    assert len(recorder.stages("gpu_matmul")) == 2 and len(recorder.stages("gpu_matmul/gpu")) == 1
    assert len(recorder.stages("gpu_busy/gpu")) == 1
    assert sched_trace.stats()["plugin_errors"] == {}


def test_shutdown_removes_the_hooks_and_the_graph_patch(gpu):
    plugin, recorder = gpu
    original = torch.cuda.CUDAGraph.capture_begin.__wrapped__
    sched_trace.shutdown()
    assert torch.cuda.CUDAGraph.capture_begin is original
    assert get_manager().get_plugin("cuda-events") is None


def test_timing_starts_once_the_program_itself_initialises_cuda():
    import json
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import json
        import sched_trace, sched_trace_cuda
        plugin = sched_trace_cuda.CudaTimingPlugin()
        sched_trace.register(plugin, name="cuda")
        recorder = sched_trace.MemoryRecorder()
        sched_trace.register(recorder, name="recorder")
        sched_trace.configure(level=9, autoload=False)

        @sched_trace.stage("s", level=2)
        def s():
            torch.cuda._sleep(1000) if torch.cuda.is_initialized() else None

        import torch
        s()
        states = [plugin.state, torch.cuda.is_initialized()]
        torch.cuda.init()  # the plugin's call queued on CUDA initialisation switches timing on
        s()
        s()
        sched_trace.flush(30.0)
        states += [plugin.state, len(recorder.stages("s/gpu"))]
        print(json.dumps(states))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == ["waiting", False, "active", 2]
