"""OTLP-JSON read back as events: sched-trace-otel's files and other tools' Collector files."""

from __future__ import annotations

import base64
import json

import pytest

import sched_trace
from sched_trace import traceio


class Request:
    def __init__(self, rid: str) -> None:
        self.rid = rid


def test_request_copies_and_request_roots_are_not_counted_twice(tmp_path):
    otel = pytest.importorskip("sched_trace_otel.plugin")
    sched_trace.configure(level=9, autoload=False, plugins=[
        otel.OtelPlugin(directory=str(tmp_path), process=False, sglang_compat=True)])
    sched_trace.set_thread_info("Scheduler", pp_rank=0, dp_rank=0, tp_rank=0)

    @sched_trace.stage("run_batch", level=4, batch_size="len(reqs)", requests="reqs")
    def run_batch(reqs):
        pass

    @sched_trace.batch("step")
    def step(reqs):
        run_batch(reqs)

    for number in range(3):
        step([Request(f"r{number}a"), Request(f"r{number}b")])
    sched_trace.shutdown()
    (path,) = tmp_path.iterdir()
    trace = traceio.read_trace(path)
    assert trace.format == "otlp-json"
    assert sorted(e.name for e in trace.events) == ["run_batch"] * 3 + ["step"] * 3
    assert {e.rank.track_name.split(":", 1)[1] for e in trace.events} == {"Scheduler-PP0-DP0-TP0"}
    steps = {e.span_id: e for e in trace.events if e.kind == "batch"}
    assert all(e.parent_id in steps and e.batch_size == 2 for e in trace.events if e.kind == "stage")


def _value(value):
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    return {"stringValue": value}


def _span(span_id: int, parent: int, name: str, start: int, attrs: dict) -> dict:
    span = {"traceId": base64.b64encode(b"\x01" * 16).decode(),
            "spanId": base64.b64encode(span_id.to_bytes(8, "big")).decode(),
            "name": name, "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 10),
            "attributes": [{"key": k, "value": _value(v)} for k, v in attrs.items()]}
    if parent:
        span["parentSpanId"] = base64.b64encode(parent.to_bytes(8, "big")).decode()
    return span


def test_collector_file_from_another_tool_with_base64_ids_and_resource_ranks(tmp_path):
    """No sched_trace.kind marker: a thread span holds the label, stage spans nest below it."""
    resource = {"attributes": [{"key": "host.name", "value": {"stringValue": "node7"}},
                               {"key": "process.pid", "value": {"intValue": "4242"}},
                               {"key": "sched_trace.clock.wall_offset_ns", "value": {"intValue": "123"}}]}
    spans = [_span(1, 0, "node7:Scheduler-PP1", 1_000, {"thread_label": "Scheduler", "pp_rank": 1, "tid": 9}),
             _span(2, 1, "forward", 1_001, {"pp_mb_id": 0, "bid": 5, "batch_size": 8, "queue_depth": 3}),
             _span(3, 1, "forward", 1_020, {"pp_mb_id": 1, "bid": 5, "batch_size": 8})]
    document = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": "x"}, "spans": spans}]}]}
    path = tmp_path / "collector.json"
    path.write_text(json.dumps(document) + "\n" + json.dumps({"resourceSpans": []}) + "\n")
    trace = traceio.read_trace(path)
    assert trace.clock_offsets == {("node7", 4242): 123}
    assert [(e.name, e.microbatch, e.batch_id, e.batch_size) for e in trace.events] == [
        ("forward", 0, 5, 8), ("forward", 1, 5, 8)]
    first = trace.events[0]
    assert first.rank.track_name == "node7:Scheduler-PP1-DP0-TP0" and first.rank.pid == 4242 and first.rank.tid == 9
    assert first.attrs == {"queue_depth": 3} and first.parent_id == 0


def test_unreadable_files_are_named_in_the_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"resourceSpans": []}\n{not json\n')
    with pytest.raises(traceio.TraceFormatError, match="bad.jsonl: line 2: "):
        traceio.read_trace(bad)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(traceio.TraceFormatError, match="other.json"):
        traceio.read_trace(other)
    junk = tmp_path / "junk.perfetto-trace"
    junk.write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(traceio.TraceFormatError, match="junk.perfetto-trace"):
        traceio.read_trace(junk)
