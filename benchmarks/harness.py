"""Shared measuring tools: interleaved repeats, medians, paired ratios, the machine.

Every figure is measured side by side with its baseline in the same run: the cases
of one figure run in turn inside each repeat (order rotated every repeat), so a
noisy neighbour slows all of them alike, and the ratio is the median of the
per-repeat ratios.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import statistics
import sys
from time import perf_counter_ns, thread_time_ns
from typing import Any, Callable, Optional

#: A timed case: ``case(n)`` runs the measured operation ``n`` times.
Case = Callable[[int], Any]
#: Suffix of the samples measured with the calling thread's CPU clock.
CPU = "@cpu"


def time_case(case: Case, n: int) -> tuple[float, float]:
    """(wall, scheduler-thread CPU) nanoseconds per operation for one run of ``n``."""
    wall, cpu = perf_counter_ns(), thread_time_ns()
    case(n)
    return (perf_counter_ns() - wall) / n, (thread_time_ns() - cpu) / n


def interleave(
    cases: dict[str, Case],
    n: int,
    repeats: int,
    between: Optional[Callable[[], None]] = None,
) -> dict[str, list[float]]:
    """Run every case ``repeats`` times, rotating the order; ns/op samples per case.

    Wall-clock samples are under each case's name, the calling thread's CPU time
    under ``name + CPU``. ``between`` runs untimed after each sample (e.g. to
    flush an exporter or clear a list).
    """
    names = list(cases)
    samples: dict[str, list[float]] = {}
    for name in names:
        samples[name], samples[name + CPU] = [], []
        cases[name](max(1, n // 10))  # warm-up: caches, lazily started threads, specialised bytecode
        if between is not None:
            between()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one case's loop would be charged to it alone
    try:
        for repeat in range(repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                wall, cpu = time_case(cases[name], n)
                samples[name].append(wall)
                samples[name + CPU].append(cpu)
                if between is not None:
                    between()
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(samples: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over repeats of case/baseline measured in the same repeat."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[baseline]) if b > 0)


def row(
    figure: str,
    value: float,
    baseline: Optional[float],
    ratio: Optional[float],
    unit: str,
    *,
    target: Optional[str] = None,
    met: Optional[bool] = None,
    note: str = "",
    group: str = "",
) -> dict[str, Any]:
    """One line of the results table (the keys every bench module returns)."""
    result: dict[str, Any] = {
        "figure": figure, "value": value, "baseline": baseline, "ratio": ratio, "unit": unit,
    }
    if target is not None:
        result["target"] = target
        result["met"] = met
    if note:
        result["note"] = note
    if group:
        result["group"] = group
    return result


def compare(
    samples: dict[str, list[float]],
    figure: str,
    name: str,
    baseline: str,
    *,
    unit: str = "ns/call",
    limit: Optional[float] = None,
    note: str = "",
    group: str = "",
) -> dict[str, Any]:
    """A row for ``name`` against ``baseline``, checked against ``ratio <= limit``."""
    ratio = paired_ratio(samples, name, baseline)
    return row(
        figure, median(samples[name]), median(samples[baseline]), ratio, unit,
        target=None if limit is None else f"<= {limit:g}x", met=None if limit is None else ratio <= limit,
        note=note, group=group,
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    names = ("sched-trace", "wrapt", "pluggy", "opentelemetry-sdk", "perfetto", "prometheus-client",
             "sched-trace-otel", "sched-trace-perfetto")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "platform": platform.platform(),
        "load average at start": load,
        "packages": package_versions(),
    }


__all__ = ["CPU", "Case", "compare", "interleave", "machine", "median", "paired_ratio", "perf_counter_ns",
           "row", "thread_time_ns", "time_case"]
