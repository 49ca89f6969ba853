"""Ranks on one machine: 1, 2, 4 and 8 processes recording and exporting at once.

Each process is a rank (``set_thread_info("Scheduler", tp_rank=r)``) making the
same traced calls while an exporter plugin writes its trace file (Perfetto when
installed, else a BackgroundExporter writing JSON lines). Per process: the
scheduler thread's CPU per call, wall time per call, and the whole process's CPU
per event (recording plus export). Against one process alone; with more processes
than cores, wall time per call grows with the sharing, CPU per call should not.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import tempfile
import time
from typing import Any

RANKS = (1, 2, 4, 8)


class JsonLinesPlugin:
    """Fallback exporter: one JSON line per event, written off the scheduler thread."""

    def __init__(self, path: str) -> None:
        from sched_trace.recorder import BackgroundExporter

        self.file = open(path, "w", encoding="utf-8")
        self.exporter = BackgroundExporter(self._export, name="jsonl")

    def _export(self, batch: Any) -> None:
        self.file.writelines(
            json.dumps([e.name, e.start_ns, e.end_ns, e.rank.tp_rank, e.microbatch, e.batch_size]) + "\n"
            for e in batch)

    def sched_trace_stage_end(self, event: Any) -> None:
        self.exporter.append(event)

    def sched_trace_flush(self, timeout: float) -> None:
        self.exporter.flush(timeout)
        self.file.flush()


def rank_main(rank: int, calls: int, directory: str, barrier: Any, results: Any) -> None:
    import sched_trace

    from . import workload

    plugin = workload.entry_point_plugin("perfetto")
    name = "perfetto" if plugin is not None else "jsonl"
    if plugin is None:
        plugin = JsonLinesPlugin(os.path.join(directory, f"rank{rank}.jsonl"))
    workload.configure(plugins=((plugin, name),), settings={"perfetto": {"directory": directory}})
    sched_trace.set_thread_info("Scheduler", tp_rank=rank)
    case = workload.caller("traced", 8)
    case(200)
    barrier.wait()
    wall, cpu, process = time.perf_counter_ns(), time.thread_time_ns(), time.process_time_ns()
    case(calls)
    wall, cpu = time.perf_counter_ns() - wall, time.thread_time_ns() - cpu
    sched_trace.flush(120.0)
    process = time.process_time_ns() - process
    dropped = sched_trace.stats()["plugins"].get(name, {}).get("dropped", 0)
    sched_trace.shutdown()
    results.put({"wall": wall / calls, "cpu": cpu / calls, "process": process / calls,
                 "dropped": dropped, "exporter": name})


def _run_ranks(count: int, calls: int) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(count), context.Queue()
    with tempfile.TemporaryDirectory(prefix="sched-trace-ranks-") as directory:
        processes = [context.Process(target=rank_main, args=(r, calls, directory, barrier, results))
                     for r in range(count)]
        for process in processes:
            process.start()
        collected = [results.get(timeout=300) for _ in processes]
        for process in processes:
            process.join(60)
    return collected


def run(quick: bool) -> list[dict[str, Any]]:
    from .harness import row

    calls = 20000 if quick else 100000
    per_count = {count: _run_ranks(count, calls) for count in RANKS}
    one = per_count[1][0]
    rows = []
    group = "ranks: processes recording and exporting at once"
    for count in RANKS:
        results = per_count[count]
        cpu = statistics.median(r["cpu"] for r in results)
        rows.append(row(f"{count} rank(s): scheduler-thread CPU per call vs 1 rank", cpu, one["cpu"],
                        cpu / one["cpu"], "ns/call", group=group,
                        note=f"exporter {results[0]['exporter']}, {calls:,} calls per rank"))
        process = statistics.median(r["process"] for r in results)
        rows.append(row(f"{count} rank(s): process CPU per event, export included, vs 1 rank", process,
                        one["process"], process / one["process"], "ns/event", group=group))
        wall = statistics.median(r["wall"] for r in results)
        rows.append(row(f"{count} rank(s): wall per call vs 1 rank ({os.cpu_count()} cores)", wall,
                        one["wall"], wall / one["wall"], "ns/call", group=group,
                        note=f"dropped {sum(r['dropped'] for r in results)}"))
    return rows
