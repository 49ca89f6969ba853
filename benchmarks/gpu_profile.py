"""Read a torch.profiler (Kineto) Chrome trace for benchmarks/gpu_check.py: pure functions, no torch.

The trace has, per profiled step, a ``user_annotation`` range on the CPU (from
``torch.profiler.record_function``), the CUDA runtime calls made inside it
(``cuda_runtime``/``cuda_driver``: ``cudaLaunchKernel``, ``cuLaunchKernel``,
``cudaGraphLaunch`` ...) and the GPU work they launched (``kernel``, ``gpu_memcpy``, ``gpu_memset``),
linked to its runtime call by ``args.correlation``. A step's GPU work is what was
launched while its annotation was open on the scheduler thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

GPU_CATEGORIES = frozenset(("kernel", "gpu_memcpy", "gpu_memset"))
# cuBLAS(Lt) and Triton may launch through the driver API (cuLaunchKernel): both count as launches.
LAUNCH_CATEGORIES = frozenset(("cuda_runtime", "cuda_driver"))
SYNC_CALLS = ("cudaStreamSynchronize", "cudaEventSynchronize")


@dataclass(frozen=True)
class StepKernels:
    """The GPU work of one profiled step, from the profiler's own timestamps (nanoseconds)."""

    name: str
    kernels: int
    first_start_ns: int
    last_end_ns: int
    busy_ns: int          # union of the kernels' intervals

    @property
    def span_ns(self) -> int:
        """First kernel start to last kernel end: what a pair of CUDA events around the step measures."""
        return self.last_end_ns - self.first_start_ns


def _events(trace: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [e for e in trace.get("traceEvents", []) if isinstance(e, Mapping) and e.get("ph") == "X"]


def _correlation(event: Mapping[str, Any]) -> Optional[int]:
    args = event.get("args") or {}
    value = args.get("correlation", args.get("correlation id"))
    return int(value) if value is not None else None


def _ns(us: Any) -> int:
    return round(float(us) * 1000)


def union_ns(intervals: Iterable[tuple[int, int]]) -> int:
    """Total length covered by ``(start, end)`` intervals, overlaps counted once."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def step_kernels(trace: Mapping[str, Any], prefix: str, tid: Optional[int] = None) -> list[StepKernels]:
    """Per annotation named ``prefix...`` (in start order): the GPU work launched inside it."""
    events = _events(trace)
    steps = sorted((e for e in events if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith(prefix)
                    and (tid is None or e.get("tid") == tid)), key=lambda e: float(e["ts"]))
    launches = [e for e in events if e.get("cat") in LAUNCH_CATEGORIES and _correlation(e) is not None]
    gpu_by_correlation: dict[int, list[Mapping[str, Any]]] = {}
    for event in events:
        if event.get("cat") in GPU_CATEGORIES and _correlation(event) is not None:
            gpu_by_correlation.setdefault(_correlation(event), []).append(event)  # type: ignore[arg-type]
    result = []
    for step in steps:
        begin, end = float(step["ts"]), float(step["ts"]) + float(step.get("dur", 0))
        work = [gpu for launch in launches
                if launch.get("tid") == step.get("tid") and begin <= float(launch["ts"]) <= end
                for gpu in gpu_by_correlation.get(_correlation(launch), ())]  # type: ignore[arg-type]
        intervals = [(_ns(w["ts"]), _ns(w["ts"]) + _ns(w.get("dur", 0))) for w in work]
        if intervals:
            result.append(StepKernels(str(step["name"]), len(intervals), min(s for s, _ in intervals),
                                      max(e for _, e in intervals), union_ns(intervals)))
    return result


def sync_calls(trace: Mapping[str, Any], tid: Optional[int] = None) -> dict[str, int]:
    """How many ``cudaStreamSynchronize``/``cudaEventSynchronize`` calls (on thread ``tid``, or anywhere)."""
    counts = {name: 0 for name in SYNC_CALLS}
    for event in _events(trace):
        name, thread = event.get("name"), event.get("tid")
        if event.get("cat") == "cuda_runtime" and name in counts and (tid is None or thread == tid):
            counts[str(event["name"])] += 1
    return counts


def runtime_calls(trace: Mapping[str, Any], name: str) -> dict[Any, int]:
    """Calls of one CUDA runtime function per thread id (``cudaEventQuery`` by the resolver thread, say)."""
    counts: dict[Any, int] = {}
    for event in _events(trace):
        if event.get("cat") == "cuda_runtime" and event.get("name") == name:
            counts[event.get("tid")] = counts.get(event.get("tid"), 0) + 1
    return counts


def relative_error(measured: Sequence[int], reference: Sequence[int]) -> float:
    """``|sum(measured) - sum(reference)| / sum(reference)`` over steps measured both ways."""
    total = sum(reference)
    return abs(sum(measured) - total) / total if total else float("nan")
