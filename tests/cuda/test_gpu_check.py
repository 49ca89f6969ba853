"""benchmarks/gpu_check.py is ready for a GPU: it skips cleanly here, and its CPU-runnable parts work.

On a machine with CUDA the script itself is the check (docs/performance.md,
"GPU (H200)"); here: the skip line, the models on the CPU, the traced step
functions feeding real sched-trace stages, the Kineto-trace reading on a trace
built to a known answer, and the report section it writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sched_trace
from benchmarks import gpu_check, gpu_profile

ROOT = Path(__file__).resolve().parents[2]
torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script runs for real")
def test_without_a_device_the_script_says_skipped_and_exits_0() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, SCHED_TRACE_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert done.returncode == 0, done.stderr
    assert "no CUDA device: skipped" in done.stdout


def test_models_run_eagerly_and_per_layer_on_the_cpu() -> None:
    from benchmarks.gpu_models import mlp_workload, transformer_workload

    torch.set_grad_enabled(False)
    try:
        calls: list[int] = []

        def run_block(block: Any, x: Any, index: int) -> Any:
            calls.append(index)
            return block(x)

        transformer = transformer_workload(torch, 2, graphs=False, device="cpu", width=64, layers=3, heads=4, tokens=8)
        transformer.step(0)
        transformer.step_layers(7, run_block)
        mlp = mlp_workload(torch, device="cpu", width=32, blocks=4, batch=2)
        mlp.step(0)
        mlp.step_layers(9, run_block)
        assert calls == [7] * 3 + [9] * 4
        assert mlp.baselines == {}  # the CUDA-event baselines exist only on a GPU
    finally:
        torch.set_grad_enabled(True)


def test_traced_steps_record_one_stage_per_step_and_per_layer(sched_trace_recorder: Any) -> None:
    from benchmarks.gpu_models import transformer_workload

    tracing = gpu_check.Tracing.__new__(gpu_check.Tracing)  # the stages without the GPU plugin
    tracing.step_stage = sched_trace.stage(gpu_check.STEP, level=2, microbatch="index")
    tracing.layer_stage = sched_trace.stage(gpu_check.LAYER, level=3, microbatch="index")
    torch.set_grad_enabled(False)
    try:
        workload = transformer_workload(torch, 1, graphs=False, device="cpu", width=32, layers=2, heads=2, tokens=4)
        modes = tracing.steps(workload)
        assert sorted(modes) == ["batch", "layer", "untraced"]
        for index in range(3):
            for step in modes.values():
                step(index)
    finally:
        torch.set_grad_enabled(True)
    assert [e.microbatch for e in sched_trace_recorder.by_stage(gpu_check.STEP)] == [0, 1, 2]
    assert [e.microbatch for e in sched_trace_recorder.by_stage(gpu_check.LAYER)] == [0, 0, 1, 1, 2, 2]


def kineto_trace() -> dict[str, Any]:
    """Two annotated steps on thread 7; kernels (one overlapping) and a sync on each of two threads."""
    def x(cat: str, name: str, ts: float, dur: float, tid: int, correlation: Any = None) -> dict[str, Any]:
        event = {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 1}
        if correlation is not None:
            event["args"] = {"correlation": correlation}
        return event

    return {"traceEvents": [
        x("user_annotation", "gpu_check#0", 100, 50, 7), x("user_annotation", "gpu_check#1", 200, 50, 7),
        x("cuda_runtime", "cudaLaunchKernel", 110, 5, 7, 1), x("cuda_driver", "cuLaunchKernel", 120, 5, 7, 2),
        x("cuda_runtime", "cudaGraphLaunch", 210, 5, 7, 3),
        x("kernel", "gemm", 130, 20, 0, 1), x("kernel", "gelu", 140, 30, 0, 2),      # overlap 10 us
        x("kernel", "graph_a", 220, 10, 0, 3), x("gpu_memcpy", "copy", 240, 5, 0, 3),
        x("kernel", "outside", 400, 10, 0, 99), x("cuda_runtime", "cudaLaunchKernel", 300, 5, 7, 99),
        x("cuda_runtime", "cudaStreamSynchronize", 310, 1, 7), x("cuda_runtime", "cudaEventSynchronize", 320, 1, 8),
        x("cuda_runtime", "cudaEventQuery", 330, 1, 8), {"ph": "i", "name": "instant"},
    ]}


def test_kernels_are_attributed_to_the_step_that_launched_them() -> None:
    first, second = gpu_profile.step_kernels(kineto_trace(), "gpu_check#")
    assert (first.name, first.kernels, first.span_ns, first.busy_ns) == ("gpu_check#0", 2, 40_000, 40_000)
    assert (second.name, second.kernels, second.span_ns, second.busy_ns) == ("gpu_check#1", 2, 25_000, 15_000)
    assert gpu_profile.sync_calls(kineto_trace(), 7) == {"cudaStreamSynchronize": 1, "cudaEventSynchronize": 0}
    assert gpu_profile.sync_calls(kineto_trace()) == {"cudaStreamSynchronize": 1, "cudaEventSynchronize": 1}
    assert gpu_profile.runtime_calls(kineto_trace(), "cudaEventQuery") == {8: 1}
    assert gpu_profile.relative_error([103, 97], [100, 100]) == 0.0
    assert gpu_profile.relative_error([106], [100]) == pytest.approx(0.06)


def test_the_doc_section_is_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## Results\nkeep\n\n## GPU (H200)\n\nold\n\n## How to read\nkeep too\n")
    case = {"workload": "w", "ms_per_step_untraced": 1.2, "throughput_vs_untraced": {"batch": 0.998, "layer": 0.9},
            "accuracy": {"gpu_stage_ms_per_step": 1.21, "kernel_span_ms_per_step": 1.2, "kernel_busy_ms_per_step": 1.1,
                         "error_vs_kernel_span": 0.008, "syncs_on_scheduler_thread": {"cudaStreamSynchronize": 0},
                         "untraced_syncs_on_scheduler_thread": {"cudaStreamSynchronize": 0}},
            "clock": {"end_before_host_sync_us_median": 12.0, "end_before_host_sync_us_max": 30.0,
                      "start_before_cpu_start": 0, "stages": 50}}
    lines = gpu_check.summary_lines([case])
    gpu_check.write_doc(doc, lines, {"gpu": "NVIDIA H200", "torch": "2.13.0", "cuda": "12.8", "date": "today"})
    text = doc.read_text()
    assert "old" not in text and text.count("## GPU (H200)") == 1
    assert "keep\n" in text and text.rstrip().endswith("keep too")
    assert "| w (1.200 ms/step) | batch | 0.9980 (met) | >= 0.995 |" in text
    assert "0.80% (met) | 0 / 0 | 12.0 / 30.0 | 0 of 50 |" in text


def test_the_plugin_path_of_the_script_on_the_simulated_gpu(monkeypatch: Any) -> None:
    """Tracing, the traced modes and the clock check, end to end on fakes.FakeCuda."""
    from benchmarks.gpu_models import Workload

    from .fakes import FakeCuda, fake_torch

    cuda = FakeCuda()
    cuda.init = lambda: setattr(cuda, "initialized", True)  # what torch.cuda.init() does, as far as it matters
    cuda.synchronize = lambda: None                          # the simulated GPU is done at once
    fake = fake_torch(cuda)
    monkeypatch.setitem(sys.modules, "torch", fake)          # the plugin looks torch up where programs import it
    tracing = gpu_check.Tracing(fake)
    try:
        assert tracing.stats()["available"] == 1
        layers = lambda index, run_block: [run_block(abs, -1, index) for _ in range(2)]  # noqa: E731
        workload = Workload("w", lambda index: None, layers)
        modes = tracing.steps(workload)
        seconds = gpu_check.throughput(fake, modes, steps=4, repeats=2, tracing=tracing)
        assert sorted(seconds) == ["batch", "layer", "untraced"]
        clock = gpu_check.clock_mapping(fake, tracing, modes["batch"], 5)
        assert clock["stages"] == 5 and clock["end_after_host_sync"] == 0 and clock["start_before_cpu_start"] == 0
        assert tracing.stats()["resolved"] >= 5 and tracing.stats()["dropped"] == 0
    finally:
        sched_trace.shutdown()
        sched_trace.unregister(tracing.recorder)
        sched_trace.unregister(tracing.plugin)
