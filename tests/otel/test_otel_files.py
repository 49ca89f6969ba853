"""The embedded default: OTLP-JSON lines files, the span model, sampling, settings."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

import sched_trace
from otel_scheduler import Batch, Req, run_steps
from sched_trace.traceio import otlp_documents
from sched_trace_otel import (OtelPlugin, TraceCarrier, attach, new_traceparent, otlp_messages, proto_spans,
                              register_traceparent, request_context)


def attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def file_spans(plugin: OtelPlugin) -> list[Any]:
    files = list(Path(plugin.settings.directory).glob("traces-*.jsonl"))
    assert len(files) == 1, files
    return [span for _, span in proto_spans(otlp_documents(files[0]))]


@pytest.mark.parametrize("process", [True, False], ids=["exporter-process", "exporter-thread"])
def test_batch_scope_span_model(traced: Any, process: bool) -> None:
    plugin = traced(process=process, requests="off")
    before = time.time_ns()
    run_steps([Batch([Req("a"), Req("b")]) for _ in range(2)], microbatches=3, fail_mb=2)
    after = time.time_ns()
    sched_trace.shutdown(timeout=60)
    spans = file_spans(plugin)
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans) == 2 * (1 + 1 + 3)
    threads = [s for s in spans if not s.parent_span_id]
    batches = [s for s in spans if s.name == "decode_step"]
    stages = sorted((s for s in spans if s.name == "run_batch_cpu"), key=lambda s: s.start_time_unix_nano)
    assert len(threads) == 2 and len(batches) == 2 and len(stages) == 6
    for thread in threads:
        assert attrs(thread) | {"pp_rank": 0} == attrs(thread)
        assert {"host_id", "pid", "thread_label", "tp_rank", "pp_rank", "dp_rank"} <= set(attrs(thread))
        assert attrs(thread)["thread_label"] == "Scheduler"
    for batch in batches:
        assert by_id[batch.parent_span_id] in threads
        assert attrs(batch)["batch_size"] == 2 and attrs(batch)["sched_trace.level"] == 1
    for index, stage in enumerate(stages):
        batch = by_id[stage.parent_span_id]
        assert batch.name == "decode_step" and batch.trace_id == stage.trace_id
        assert attrs(stage)["pp_mb_id"] == index % 3
        assert attrs(stage)["bid"] == attrs(batch)["bid"]
        assert attrs(stage)["sched_trace.level"] == 4
        assert before <= batch.start_time_unix_nano <= stage.start_time_unix_nano
        assert stage.end_time_unix_nano <= batch.end_time_unix_nano <= after
        # execution order survives export: each stage links to the one before it on this thread
        if index == 0:
            assert not stage.links
        else:
            assert [link.span_id for link in stage.links] == [stages[index - 1].span_id]
        failed = index % 3 == 2
        assert stage.status.code == (2 if failed else 0)
        if failed:
            event = stage.events[0]
            assert event.name == "exception"
            assert attrs(event)["exception.type"] == "RuntimeError"
            assert "micro-batch 2 failed" in attrs(event)["exception.message"]


def test_requests_become_spans_under_their_traceparent(traced: Any) -> None:
    """Per request: a root, this rank's span under it, and copies of the batch's spans under that."""
    plugin = traced()
    outside = new_traceparent()
    trace_id, parent_id = int(outside[3:35], 16), int(outside[36:52], 16)
    run_steps([Batch([Req("with-parent", outside), Req("plain")])], microbatches=2)
    sched_trace.shutdown(timeout=60)
    spans = file_spans(plugin)
    by_id = {s.span_id: s for s in spans}
    request_spans = [s for s in spans if "rid" in attrs(s)]
    assert {attrs(s)["rid"] for s in request_spans} == {"with-parent", "plain"}
    batch_copy = {s.span_id for s in spans if s.name == "decode_step" and "rid" not in attrs(s)}
    for rid in ("with-parent", "plain"):
        mine = [s for s in request_spans if attrs(s)["rid"] == rid]
        assert len(mine) == 5  # root, this rank's span, decode_step, two run_batch_cpu
        assert len({s.trace_id for s in mine}) == 1
        (root,) = [s for s in mine if s.name == "request"]
        (rank,) = [s for s in mine if s.name not in ("request", "decode_step", "run_batch_cpu")]
        (step,) = [s for s in mine if s.name == "decode_step"]
        assert rank.parent_span_id == root.span_id and attrs(rank)["pp_rank"] == 0
        assert step.parent_span_id == rank.span_id
        assert {link.span_id for link in step.links} <= batch_copy and step.links
        if rid == "with-parent":
            assert int.from_bytes(root.trace_id, "big") == trace_id
            assert int.from_bytes(root.parent_span_id, "big") == parent_id
        else:
            assert not root.parent_span_id
        for stage in (s for s in mine if s.name == "run_batch_cpu"):
            assert by_id[stage.parent_span_id] is step


def test_round_trip_through_opentelemetry_proto(traced: Any) -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

    plugin = traced()
    run_steps([Batch([Req("r1")])], microbatches=2, fail_mb=1)
    sched_trace.shutdown(timeout=60)
    (path,) = Path(plugin.settings.directory).glob("*.jsonl")
    messages = list(otlp_messages(otlp_documents(path)))
    assert messages and all(isinstance(m, TracesData) for m in messages)
    resource = messages[0].resource_spans[0].resource
    assert attrs(resource)["service.name"] == "sched-trace"
    assert "sched_trace.clock.wall_offset_ns" in attrs(resource)
    # proto -> JSON -> proto is lossless, and ids written as hex match the proto bytes
    for message in messages:
        again = json_format.Parse(json_format.MessageToJson(message), TracesData())
        assert again == message
    line = json.loads(path.read_text().splitlines()[0])
    first = line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert bytes.fromhex(first["traceId"]) == messages[0].resource_spans[0].scope_spans[0].spans[0].trace_id


def test_sglang_compat_layout(traced: Any) -> None:
    """What SGLang's scripts/convert_otel_2_perfetto.py relies on."""
    plugin = traced(sglang_compat=True)
    run_steps([Batch([Req("req-0001"), Req("req-0002")])], microbatches=2, fail_mb=1)
    sched_trace.shutdown(timeout=60)
    (path,) = Path(plugin.settings.directory).glob("*.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    spans = []
    for line in lines:
        for rs in line["resourceSpans"]:
            service = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}["service.name"]
            assert service == {"stringValue": "sglang"}
            spans += [s for ss in rs["scopeSpans"] for s in ss["spans"]]
    flat = {s["spanId"]: {a["key"]: next(iter(a["value"].values())) for a in s["attributes"]} for s in spans}
    roots = [s for s in spans if flat[s["spanId"]].get("module") == "sglang::request"]
    assert sorted(flat[r["spanId"]]["rid"] for r in roots) == ["req-0001", "req-0002"]
    for root in roots:
        threads = [s for s in spans if s.get("parentSpanId") == root["spanId"]]
        assert len(threads) == 1
        thread = flat[threads[0]["spanId"]]
        int(thread["pid"])
        name = f"{thread['host_id'][:8]}:{thread['thread_label']}-PP{thread['pp_rank']}-DP{thread['dp_rank']}-TP{thread['tp_rank']}"
        assert threads[0]["name"] == name
        children = [s for s in spans if s.get("parentSpanId") == threads[0]["spanId"]]
        assert [c["name"] for c in children] == ["decode_step"]
    for span in spans:
        for event in span.get("events", []):
            assert "attributes" in event


def test_sampling_one_in_n_batches_and_parent_decides_for_requests(traced: Any) -> None:
    plugin = traced(batch_every=2, request_ratio=0.0)
    unsampled = new_traceparent(sampled=False)
    sampled = new_traceparent(sampled=True)
    run_steps([Batch([Req("x", sampled), Req("y", unsampled), Req("z")]) for _ in range(4)], microbatches=1)
    sched_trace.shutdown(timeout=60)
    spans = file_spans(plugin)
    assert len([s for s in spans if s.name == "decode_step" and "rid" not in attrs(s)]) == 2
    assert {attrs(s)["rid"] for s in spans if "rid" in attrs(s)} == {"x"}
    stats = sched_trace.stats()["plugins"]
    (counters,) = [v for v in stats.values() if "sampled_out_batches" in v]
    assert counters["sampled_out_batches"] == 2
    assert counters["sampled_out_requests"] == 8


def test_exporter_process_restarts_and_counts_loss(traced: Any) -> None:
    plugin = traced(requests="off")
    run_steps([Batch()], microbatches=1)
    sched_trace.flush()
    plugin.processor.process.kill()
    run_steps([Batch()], microbatches=1)
    sched_trace.flush()
    stats = dict(plugin.sched_trace_collect_stats())
    assert stats["exporter_restarts"] == 1
    sched_trace.shutdown(timeout=60)
    spans = file_spans(plugin)
    assert sum(s.name == "decode_step" for s in spans) == 2
    assert stats["lost_in_exporter"] == 0


def test_bad_settings_name_key_and_value() -> None:
    with pytest.raises(sched_trace.ConfigError, match=r"plugins\.otel\.exporter.*'kafka'"):
        sched_trace.configure(config={"plugins": {"otel": {"exporter": "kafka"}}},
                              plugins=[OtelPlugin()], autoload=False)
    with pytest.raises(sched_trace.ConfigError, match=r"plugins\.otel\.batch_ratio.*1\.5"):
        OtelPlugin(batch_ratio=1.5).sched_trace_configure(sched_trace.Config())
    with pytest.raises(sched_trace.ConfigError, match=r"'direktory'.*did you mean 'directory'"):
        OtelPlugin(direktory="x").sched_trace_configure(sched_trace.Config())


def test_env_overrides_and_validates(monkeypatch: Any) -> None:
    from sched_trace_otel.settings import parse

    monkeypatch.setenv("SCHED_TRACE_OTEL_BATCH_EVERY", "10")
    monkeypatch.setenv("SCHED_TRACE_OTEL_PROCESS", "false")
    chosen = parse({"batch_every": 2})
    assert chosen.batch_every == 10 and chosen.process is False
    monkeypatch.setenv("SCHED_TRACE_OTEL_PROCESS", "maybe")
    with pytest.raises(sched_trace.ConfigError, match="SCHED_TRACE_OTEL_PROCESS.*'maybe'"):
        parse({})


def test_trace_context_crosses_process_boundaries() -> None:
    header = new_traceparent()
    carrier = TraceCarrier.from_headers({"TraceParent": header, "tracestate": "k=v"})
    assert pickle.loads(pickle.dumps(carrier)) == carrier and carrier.sampled
    request = pickle.loads(pickle.dumps(attach(Req("r9"), carrier)))
    assert request_context(request) == ("r9", header)
    register_traceparent("only-an-id", header)
    assert request_context("only-an-id") == ("only-an-id", header)
    assert request_context({"rid": "d", "trace_context": carrier.to_headers()}) == ("d", header)
    with pytest.raises(ValueError):
        attach(Req("bad"), "00-nothex")


def test_protobuf_wire_encoding_matches_the_sdk_encoder() -> None:
    """Our hand-rolled OTLP bytes decode to what the SDK's encoder makes of the same spans."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from sched_trace._events import RankInfo, StageEvent
    from sched_trace.export import decode_events, EventEncoder
    from sched_trace_otel.otlp_proto import ProtoEncoder
    from sched_trace_otel.sdk_spans import SdkSpanBuilder
    from sched_trace_otel.spans import EventSpan, SpanRecord

    try:
        raise ValueError("boom")
    except ValueError as exc:
        error = exc
    rank = RankInfo("h", 1, 2, "Scheduler", pp_rank=1)
    event, = decode_events(EventEncoder().encode([StageEvent(
        "run_batch_cpu", 4, 20, 300, rank, -1, 3, 8, {"ids": [1, 2], "big": 1 << 70, "none": None}, error, 9, 0)]))
    resource = {"service.name": "wire", "process.pid": 42, "ratio": 0.5, "flag": True}
    spans = [
        SpanRecord(1 << 100 | 7, 1 << 63 | 3, 0, "thread", 10, 5000, {"pp_rank": 1, "host_id": "h"}),
        SpanRecord(1 << 100 | 7, 9, 1 << 63 | 3, "run_batch_cpu", 20, 300, {"pp_mb_id": -1, "ids": [1, 2]},
                   events=(("exception", 300, {"exception.type": "ValueError", "exception.escaped": True}),),
                   links=((5, 6, {"sched_trace.link": "previous_stage"}),), status_code=2, status_message="boom"),
        EventSpan(event, 1 << 100 | 7, 11, 1 << 63 | 3, ((5, 9, {"sched_trace.link": "previous_stage"}),),
                  {"rid": "r1"}),
    ]
    ours = ExportTraceServiceRequest.FromString(ProtoEncoder(resource).request(spans))
    builder = SdkSpanBuilder(resource)
    reference = encode_spans([builder.build(span) for span in spans])
    ours_spans = ours.resource_spans[0].scope_spans[0].spans
    reference_spans = reference.resource_spans[0].scope_spans[0].spans
    for mine, theirs in zip(ours_spans, reference_spans, strict=True):
        theirs.ClearField("flags")  # span flags (parent-remote bits) are optional in OTLP
        for link in theirs.links:
            link.ClearField("flags")
        if not mine.HasField("status"):
            theirs.ClearField("status")
        assert mine == theirs
    expected = {kv.key: kv.value for kv in reference.resource_spans[0].resource.attributes}
    assert all(expected[kv.key] == kv.value for kv in ours.resource_spans[0].resource.attributes)
    assert ours.resource_spans[0].scope_spans[0].scope.name == "sched_trace"


def test_fork_child_gets_its_own_exporter_and_file(traced: Any, monkeypatch: Any) -> None:
    import multiprocessing

    from otel_scheduler import fork_child_main

    # The child leaves by os._exit once its exporter process confirmed the file written, or
    # at its exit deadline (then that process finishes on its own, later). The default 5 s
    # deadline passed under load (the exporter process starts at nice 10): a hang guard instead.
    monkeypatch.setenv("SCHED_TRACE_EXIT_TIMEOUT", "60")
    plugin = traced(requests="off")
    run_steps([Batch()], microbatches=1)
    sched_trace.flush()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=fork_child_main, args=(results,))
    child.start()
    child_pid = results.get(timeout=30)
    child.join(90)
    assert child.exitcode == 0
    run_steps([Batch()], microbatches=1)
    sched_trace.shutdown(timeout=60)
    directory = Path(plugin.settings.directory)
    files = {int(path.stem.rsplit("-", 1)[1]): path for path in directory.glob("traces-*.jsonl")}
    assert set(files) == {os.getpid(), child_pid}
    ids = {}
    for pid, path in files.items():
        spans = [span for _, span in proto_spans(otlp_documents(path))]
        assert sum(span.name == "decode_step" for span in spans) == 2, pid
        ids[pid] = {span.span_id for span in spans}
    assert not set.intersection(*ids.values())


def test_requests_as_links(traced: Any) -> None:
    plugin = traced(requests="links")
    outside = new_traceparent()
    run_steps([Batch([Req("linked", outside), Req("no-context")])], microbatches=1)
    sched_trace.shutdown(timeout=60)
    spans = file_spans(plugin)
    assert not [s for s in spans if "rid" in attrs(s)]
    (step,) = [s for s in spans if s.name == "decode_step"]
    assert [(link.trace_id.hex(), link.span_id.hex()) for link in step.links] == [(outside[3:35], outside[36:52])]


def test_every_event_is_exported_or_counted_when_the_exporter_dies(traced: Any) -> None:
    plugin = traced(requests="off")
    run_steps([Batch() for _ in range(200)], microbatches=2)
    plugin.processor._front.flush(10.0)  # handed to the exporter process, maybe not yet exported
    plugin.processor.process.kill()
    run_steps([Batch()], microbatches=1)
    sched_trace.shutdown(timeout=60)
    stats = dict(plugin.sched_trace_collect_stats())
    assert stats["exporter_restarts"] == 1
    assert stats["sent"] == stats["received"] == 200 * 3 + 2
    assert stats["handled"] + stats["lost_in_exporter"] == stats["sent"]
    spans = file_spans(plugin)
    assert sum(s.name == "decode_step" for s in spans) >= 1  # the batch after the restart at least
