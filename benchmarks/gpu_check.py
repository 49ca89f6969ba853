"""sched-trace-cuda on a real GPU: accuracy, cost and no synchronisation. A few minutes on one H200.

    python -m benchmarks.gpu_check                     # print the results
    python -m benchmarks.gpu_check --doc docs/performance.md --json gpu.json

Workloads (random weights, plain torch, bf16):

* ``mlp``: the reference decode-like loop, 16 MLP blocks 4096 -> 16384 -> 4096 at
  batch 8 (about 1.2 ms per step on an H200), also timed with hand-written
  baselines: synchronise per block, fresh CUDA events per block, pooled events per
  block, pooled events per step, torch.profiler.
* ``transformer``: an 8-layer pre-norm transformer (d=1024, 16 heads, 32 tokens per
  sequence), batch sizes 1, 8, 64, CUDA graphs off and on.

Each is traced by the cuda plugin with one stage per step (batch level) and, without
CUDA graphs, one stage per layer. Printed per case: throughput traced/untraced
(target >= 0.995 at batch level), GPU stage time against torch.profiler's kernel
time for the same steps (target within 3%), host-clock mapping error, and the
``cudaStreamSynchronize``/``cudaEventSynchronize`` calls on the scheduler thread
(target: no more than untraced). Without a CUDA device it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from benchmarks import gpu_profile
from benchmarks.gpu_models import Workload, mlp_workload, transformer_workload

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## GPU (H200)"
STEP, LAYER = "gpu_check_step", "gpu_check_layer"
COMMAND = "python3 -m benchmarks.gpu_check --doc docs/performance.md --json gpu-check.json"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per timed run (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per mode (default 5)")
    parser.add_argument("--profiled-steps", type=int, default=30, help="steps under torch.profiler (default 30)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and batch sizes, to try the script out")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--doc", type=Path, help=f"replace the '{SECTION}' section of this markdown file")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.profiled_steps = 50, 3, 10
    return args


# --- tracing -------------------------------------------------------------------------------


class Tracing:
    """The real plugin, a recorder for its ``<stage>/gpu`` events, and the traced step functions."""

    def __init__(self, torch: Any) -> None:
        import sched_trace
        from sched_trace_cuda import CudaTimingPlugin

        self.torch, self.sched_trace = torch, sched_trace
        self.recorder = sched_trace.MemoryRecorder()
        self.plugin = CudaTimingPlugin()
        torch.cuda.init()  # CUDA first: the plugin then switches timing on at configure
        sched_trace.register(self.recorder, name="recorder")
        sched_trace.register(self.plugin, name="cuda")  # stats() lists it under this name
        sched_trace.configure(level=9, autoload=False)
        stats = sched_trace.stats()["plugins"]["cuda"]
        if not stats["available"]:
            raise RuntimeError(f"the cuda plugin did not activate: {stats}, {self.plugin.reason}")
        self.step_stage = sched_trace.stage(STEP, level=2, microbatch="index")
        self.layer_stage = sched_trace.stage(LAYER, level=3, microbatch="index")

    def steps(self, workload: Workload) -> dict[str, Callable[[int], None]]:
        """``untraced``, ``batch`` (one stage per step) and, where layers run eagerly, ``layer``."""
        modes = {"untraced": workload.step, "batch": self.step_stage(workload.step)}
        if workload.step_layers is not None:
            traced_layer = self.layer_stage(lambda block, x, index: block(x))
            modes["layer"] = lambda index: workload.step_layers(index, traced_layer)
        return modes

    def gpu_events(self, name: str = STEP) -> list[Any]:
        self.sched_trace.flush(timeout=30.0)
        return self.recorder.by_stage(name + "/gpu")

    def clear(self) -> None:
        self.sched_trace.flush(timeout=30.0)
        self.recorder.events.clear()

    def stats(self) -> dict[str, Any]:
        return dict(self.sched_trace.stats()["plugins"]["cuda"])


# --- measurements ---------------------------------------------------------------------------


def timed(torch: Any, step: Callable[[int], None], steps: int) -> float:
    """Seconds for ``steps`` steps, GPU work included (one synchronise after the loop)."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    for index in range(steps):
        step(index)
    torch.cuda.synchronize()
    return time.perf_counter() - started


def throughput(torch: Any, modes: dict[str, Callable[[int], None]], steps: int, repeats: int,
               tracing: Optional[Tracing] = None) -> dict[str, float]:
    """Median seconds per run for each mode, runs interleaved so drift hits every mode alike."""
    for step in modes.values():  # warm-up: allocator, cuBLAS handles, event pool
        timed(torch, step, max(5, steps // 10))
    samples: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, step in modes.items():
            samples[name].append(timed(torch, step, steps))
            if tracing is not None:
                tracing.clear()  # keep the recorder small; resolving happens off the timed loop's clock
    return {name: statistics.median(values) for name, values in samples.items()}


def profile(torch: Any, step: Callable[[int], None], steps: int, first_index: int) -> dict[str, Any]:
    """A Kineto trace of ``steps`` steps, each under a ``gpu_check#<index>`` annotation."""
    from torch.profiler import ProfilerActivity, record_function

    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for index in range(first_index, first_index + steps):
            with record_function(f"gpu_check#{index}"):
                step(index)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "trace.json"
        prof.export_chrome_trace(str(path))
        return json.loads(path.read_text())


def accuracy(torch: Any, tracing: Tracing, step: Callable[[int], None], steps: int) -> dict[str, Any]:
    """GPU stage time vs the profiler's kernel span of the same steps; syncs on the scheduler thread."""
    tracing.clear()
    first = 1_000_000  # step indexes (the stages' micro-batch) that no timed run used
    trace = profile(torch, step, steps, first)
    kernels = gpu_profile.step_kernels(trace, "gpu_check#")
    annotation_tid = next((e.get("tid") for e in trace.get("traceEvents", [])
                           if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("gpu_check#")),
                          None)
    by_index = {int(k.name.split("#")[1]): k for k in kernels}
    gpu = {e.microbatch: e for e in tracing.gpu_events() if isinstance(e.microbatch, int) and e.microbatch >= first}
    both = sorted(set(by_index) & set(gpu))
    measured = [gpu[i].duration_ns for i in both]
    return {
        "steps_compared": len(both),
        "gpu_stage_ms_per_step": statistics.mean(measured) / 1e6 if measured else None,
        "kernel_span_ms_per_step": statistics.mean(by_index[i].span_ns for i in both) / 1e6 if both else None,
        "kernel_busy_ms_per_step": statistics.mean(by_index[i].busy_ns for i in both) / 1e6 if both else None,
        "error_vs_kernel_span": gpu_profile.relative_error(measured, [by_index[i].span_ns for i in both]),
        "syncs_on_scheduler_thread": gpu_profile.sync_calls(trace, annotation_tid),
        "event_queries_by_thread": {str(k): v for k, v in gpu_profile.runtime_calls(trace, "cudaEventQuery").items()},
    }


def clock_mapping(torch: Any, tracing: Tracing, step: Callable[[int], None], steps: int) -> dict[str, Any]:
    """How far the GPU events' wall-clock placement is from host clock readings around idle-GPU steps.

    The GPU is idle when each step is launched (synchronised before), and the host
    reads the clock right after synchronising again: the GPU end must lie before that
    reading, and the GPU start after the CPU stage began.
    """
    from sched_trace.export import now_ns

    tracing.clear()
    first, after = 2_000_000, {}
    for index in range(first, first + steps):
        torch.cuda.synchronize()
        step(index)
        torch.cuda.synchronize()
        after[index] = now_ns()
    gpu = {e.microbatch: e for e in tracing.gpu_events() if e.microbatch in after}
    cpu = {e.microbatch: e for e in tracing.recorder.by_stage(STEP) if e.microbatch in after}
    end_gap = [after[i] - gpu[i].end_ns for i in gpu]          # >= 0; sync return latency + error
    start_gap = [gpu[i].start_ns - cpu[i].start_ns for i in gpu if i in cpu]  # >= 0; launch latency + error
    return {
        "stages": len(gpu),
        "end_before_host_sync_us_median": statistics.median(end_gap) / 1e3 if end_gap else None,
        "end_before_host_sync_us_max": max(end_gap) / 1e3 if end_gap else None,
        "end_after_host_sync": sum(1 for gap in end_gap if gap < 0),
        "start_after_cpu_start_us_median": statistics.median(start_gap) / 1e3 if start_gap else None,
        "start_before_cpu_start": sum(1 for gap in start_gap if gap < 0),
    }


def profiler_throughput(torch: Any, step: Callable[[int], None], steps: int) -> float:
    """Seconds for ``steps`` steps with torch.profiler recording (the reference's 0.88x)."""
    from torch.profiler import ProfilerActivity

    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]):
        return timed(torch, step, steps)


# --- one workload ----------------------------------------------------------------------------


def run_case(torch: Any, tracing: Tracing, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    modes = {**tracing.steps(workload), **workload.baselines}
    seconds = throughput(torch, modes, args.steps, args.repeats, tracing)
    untraced = seconds["untraced"]
    case: dict[str, Any] = {
        "workload": workload.name,
        "ms_per_step_untraced": untraced / args.steps * 1e3,
        "throughput_vs_untraced": {name: untraced / value for name, value in seconds.items() if name != "untraced"},
    }
    if workload.baselines:
        case["throughput_vs_untraced"]["torch.profiler"] = untraced / profiler_throughput(
            torch, workload.step, args.steps)
    before = tracing.stats()
    case["accuracy"] = accuracy(torch, tracing, modes["batch"], args.profiled_steps)
    case["accuracy"]["untraced_syncs_on_scheduler_thread"] = _untraced_syncs(torch, workload.step, args)
    case["clock"] = clock_mapping(torch, tracing, modes["batch"], min(50, args.steps))
    after = tracing.stats()
    case["plugin"] = {key: after[key] - before.get(key, 0) for key in ("recorded", "resolved", "dropped",
                                                                        "expired", "failed", "capture_skipped")}
    return case


def _untraced_syncs(torch: Any, step: Callable[[int], None], args: argparse.Namespace) -> dict[str, int]:
    trace = profile(torch, step, args.profiled_steps, 3_000_000)
    tid = next((e.get("tid") for e in trace.get("traceEvents", []) if e.get("cat") == "user_annotation"), None)
    return gpu_profile.sync_calls(trace, tid)


def workloads(torch: Any, quick: bool) -> list[Callable[[], Workload]]:
    """Built one at a time (the MLP weights are 4 GB), in the order they run."""
    batches = (8,) if quick else (1, 8, 64)
    built: list[Callable[[], Workload]] = [lambda: mlp_workload(torch)]
    for batch in batches:
        for graphs in (False, True):
            built.append(lambda batch=batch, graphs=graphs: transformer_workload(torch, batch, graphs))
    return built


# --- output -----------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def summary_lines(cases: list[dict[str, Any]]) -> list[str]:
    """One markdown table row per workload and mode, then accuracy, clock and sync rows."""
    lines = ["| workload | mode | throughput vs untraced | target |", "|---|---|---|---|"]
    for case in cases:
        for mode, ratio in case["throughput_vs_untraced"].items():
            target = ">= 0.995" if mode == "batch" else ""
            met = "" if not target else (" (met)" if ratio >= 0.995 else " (NOT met)")
            lines.append(f"| {case['workload']} ({case['ms_per_step_untraced']:.3f} ms/step) | {mode} | "
                         f"{ratio:.4f}{met} | {target} |")
    lines += ["", "| workload | GPU stage ms/step | profiler kernel span ms/step | kernel busy ms/step | "
              "error (target <= 3%) | syncs on scheduler thread, traced / untraced | clock: GPU end before host "
              "sync, median / max us | GPU start before CPU start |", "|---|---|---|---|---|---|---|---|"]
    for case in cases:
        acc, clock = case["accuracy"], case["clock"]
        error = acc["error_vs_kernel_span"]
        traced_syncs = sum(acc["syncs_on_scheduler_thread"].values())
        untraced_syncs = sum(acc["untraced_syncs_on_scheduler_thread"].values())
        lines.append(
            f"| {case['workload']} | {_fmt(acc['gpu_stage_ms_per_step'])} | {_fmt(acc['kernel_span_ms_per_step'])} | "
            f"{_fmt(acc['kernel_busy_ms_per_step'])} | {_fmt(error * 100 if error == error else None, '.2f')}% "
            f"({'met' if error <= 0.03 else 'NOT met'}) | {traced_syncs} / {untraced_syncs} | "
            f"{_fmt(clock['end_before_host_sync_us_median'], '.1f')} / "
            f"{_fmt(clock['end_before_host_sync_us_max'], '.1f')}"
            f" | {clock['start_before_cpu_start']} of {clock['stages']} |")
    return lines


def write_doc(path: Path, lines: list[str], machine: dict[str, str]) -> None:
    """Replace the GPU section of ``path`` (or append it) with this run's figures."""
    body = [SECTION, "", f"`{COMMAND}` on {machine['gpu']} ({machine['torch']}, CUDA {machine['cuda']}), "
            f"{machine['date']}.", "", *lines, ""]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip() + "\n\n" + "\n".join(body)
    else:
        following = text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(body) + (text[following:] if following >= 0 else "")
    path.write_text(text.rstrip() + "\n", encoding="utf-8")


def _importable_from_the_checkout() -> None:
    """A GPU machine may have torch, pluggy and wrapt but not this project installed: use the source tree."""
    for path in (ROOT, ROOT / "plugins" / "cuda"):
        if str(path) not in sys.path:
            sys.path.append(str(path))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed: skipped")
        return 0
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device: skipped (torch {torch.__version__}, CUDA build: {torch.version.cuda})")
        return 0
    torch.set_grad_enabled(False)
    _importable_from_the_checkout()
    tracing = Tracing(torch)
    machine = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": str(torch.version.cuda),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"gpu_check on {machine['gpu']}, torch {machine['torch']}", flush=True)
    cases = []
    for build in workloads(torch, args.quick):
        workload = build()
        started = time.perf_counter()
        cases.append(run_case(torch, tracing, workload, args))
        print(f"  {workload.name}: {time.perf_counter() - started:.0f} s", flush=True)
        del workload
        torch.cuda.empty_cache()
    tracing.sched_trace.shutdown()
    lines = summary_lines(cases)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "cases": cases}, indent=1, default=str))
    if args.doc:
        write_doc(args.doc, lines, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
