"""Instructions per event on each step of the exporter path, under callgrind (load-independent).

    python -m benchmarks.exporter_instructions [build|encode|decode|otel|perfetto ...]

Each case runs in a child under ``valgrind --tool=callgrind`` with 1,000 and 6,000 events
(decode steps: four ``run_batch_cpu`` stages and a ``decode_step`` batch); the difference
over 5,000 is the instructions per event of what the case does, start-up excluded. The
cases are cumulative: ``build`` makes the events, ``encode`` adds the scheduler side's one
encoding (the exporter thread's work), ``decode`` adds the exporter process's decoding,
``otel`` / ``perfetto`` add that exporter's work to the file. Subtract neighbours for a step.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile

CASES = ("build", "encode", "decode", "otel", "perfetto")
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _events(count: int) -> list:
    from sched_trace._events import NO_ATTRS, BatchEvent, RankInfo, StageEvent

    rank = RankInfo("host", 1, 2, "Scheduler", tp_rank=0, pp_rank=0, dp_rank=0)
    events, span_id = [], 1
    for step in range(count // 5):
        top, start = span_id, step * 1000
        span_id += 1
        for mb in range(4):
            events.append(StageEvent("run_batch_cpu", 4, start + mb * 10, start + mb * 10 + 5, rank, mb, step, 8,
                                     {"queue_depth": mb}, None, span_id, top))
            span_id += 1
        events.append(BatchEvent("decode_step", 1, start, start + 100, rank, None, step, 8, NO_ATTRS, None, top, 0))
    return events


def _exporter(case: str, directory: str) -> object:
    if case == "otel":
        from sched_trace_otel.exporter import OtelExporter
        from sched_trace_otel.plugin import process_meta
        from sched_trace_otel.settings import OtelSettings

        settings = OtelSettings(directory=directory, requests="off")
        return OtelExporter(dataclasses.asdict(settings), process_meta(settings, os.getpid()))
    from sched_trace_perfetto.exporter import PerfettoExporter
    from sched_trace_perfetto.settings import PerfettoSettings

    return PerfettoExporter(dataclasses.asdict(PerfettoSettings(directory=directory)), os.getpid(), 0)


def child(case: str, count: int) -> None:
    from sched_trace.export import EventEncoder, decode_events

    events = _events(count)
    if case == "build":
        return
    directory = tempfile.mkdtemp(prefix="sched-trace-instructions-")
    exporter = _exporter(case, directory) if case in ("otel", "perfetto") else None
    encoder = EventEncoder()
    for begin in range(0, len(events), 1024):
        payload = encoder.encode(events[begin:begin + 1024])
        if case == "encode":
            continue
        batch = decode_events(payload)
        if exporter is not None:
            exporter.export(batch)
    shutil.rmtree(directory, ignore_errors=True)


def instructions(case: str, count: int) -> int:
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
                           "benchmarks.exporter_instructions", "--child", case, str(count)],
                          capture_output=True, text=True, check=True)
    return int(_COLLECTED.search(done.stderr).group(1))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing measured")
        return 0
    for case in argv or CASES:
        per_event = (instructions(case, 6000) - instructions(case, 1000)) // 5000
        print(f"{case:10} {per_event:>9,} instructions/event (cumulative)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
