"""Known-good traces in every format, built from events whose values the tests know.

Used as ground truth by the property tests and as the seed corpus of
``fuzz/fuzz_readers.py``. The OTLP-JSON lines follow the span model sched-trace-otel
writes (a thread span per rank carrying the rank keys, stage and batch spans below
it marked ``sched_trace.kind``), built by hand so the core tests need no plugin.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

from sched_trace import traceio
from sched_trace._events import BatchEvent, RankInfo, StageEvent

HOST, PID, OFFSET = "node1", 4242, 1_700_000_000_000_000_000


def sample_events(ranks: int = 2, steps: int = 2, microbatches: int = 2) -> list[Any]:
    """A small pipeline: per PP rank, steps of forwards then backwards, one failing."""
    events: list[Any] = []
    time = OFFSET + 1_000
    for pp in range(ranks):
        rank = RankInfo(HOST, PID, 100 + pp, "Scheduler", tp_rank=0, pp_rank=pp, dp_rank=0)
        for step in range(steps):
            start = time
            for number, name in enumerate(["forward"] * microbatches + ["backward"] * microbatches):
                error = RuntimeError("boom") if (pp, step, number) == (1, 1, 3) else None
                events.append(StageEvent(name, 2, time, time + 700, rank, number % microbatches, step, 8,
                                         {"queue_depth": number}, error, len(events) + 1, 0))
                time += 1_000
            events.append(BatchEvent("step", 1, start, time, rank, None, step, 8, {}, None, len(events) + 1, 0))
            time += 500
    return events


def perfetto_bytes(events: Sequence[Any]) -> bytes:
    return _written(traceio.write_perfetto, events, ".perfetto-trace")


def chrome_text(events: Sequence[Any]) -> str:
    return _written(traceio.write_chrome, events, ".json").decode("utf-8")


def _written(write: Any, events: Sequence[Any], suffix: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="sched-trace-sample-") as directory:
        path = Path(directory) / f"sample{suffix}"
        write(events, path, clock_offsets={(HOST, PID): OFFSET})
        return path.read_bytes()


def _value(value: Any) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


def _attributes(values: dict) -> list:
    return [{"key": key, "value": _value(value)} for key, value in values.items() if value is not None]


def otlp_json_text(events: Sequence[Any]) -> str:
    """One ExportTraceServiceRequest per line, one line per rank (as a Collector file holds them)."""
    lines = []
    resource = {"attributes": _attributes({"host.name": HOST, "process.pid": PID,
                                           "sched_trace.clock.wall_offset_ns": OFFSET})}
    for index, rank in enumerate(sorted({e.rank for e in events}, key=lambda r: r.tid), 1):
        own = [e for e in events if e.rank == rank]
        thread_id = f"{index:016x}"
        spans = [{"traceId": "0" * 31 + "1", "spanId": thread_id, "name": rank.track_name,
                  "startTimeUnixNano": str(min(e.start_ns for e in own)),
                  "endTimeUnixNano": str(max(e.end_ns for e in own)),
                  "attributes": _attributes({**rank.as_attributes(), "sched_trace.kind": "thread"})}]
        for event in own:
            span = {"traceId": "0" * 31 + "1", "spanId": f"{index:08x}{event.span_id:08x}",
                    "parentSpanId": thread_id, "name": event.name,
                    "startTimeUnixNano": str(event.start_ns), "endTimeUnixNano": str(event.end_ns),
                    "attributes": _attributes({"sched_trace.kind": event.kind, "sched_trace.level": event.level,
                                               "pp_mb_id": event.microbatch, "bid": event.batch_id,
                                               "batch_size": event.batch_size,
                                               **{f"attrs.{k}": v for k, v in event.attrs.items()}})}
            if event.error is not None:
                span["status"] = {"code": 2, "message": str(event.error)}
                span["events"] = [{"name": "exception", "attributes": _attributes(
                    {"exception.type": type(event.error).__name__, "exception.message": str(event.error)})}]
            spans.append(span)
        document = {"resourceSpans": [{"resource": resource, "scopeSpans": [
            {"scope": {"name": "sched_trace"}, "spans": spans}]}]}
        lines.append(json.dumps(document))
    return "\n".join(lines) + "\n"


def sample_files() -> dict[str, bytes]:
    """``{file name: content}`` of the same events in each format."""
    events = sample_events()
    return {"sample.perfetto-trace": perfetto_bytes(events),
            "sample.json": chrome_text(events).encode(),
            "sample.jsonl": otlp_json_text(events).encode()}


def slice_key(event: Any) -> tuple:
    """What every format keeps of an event exactly: the ground truth the tests compare."""
    return (event.kind, event.name, event.start_ns, event.end_ns, event.microbatch, event.batch_id,
            event.batch_size, event.rank.host_id, event.rank.pid, event.rank.pp_rank,
            _error_text(event.error))


def _error_text(error: Any) -> Any:
    if error is None or isinstance(error, traceio.RecordedError):
        return None if error is None else str(error)
    return f"{type(error).__name__}: {error}"
