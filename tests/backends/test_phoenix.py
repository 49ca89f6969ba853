"""The otel plugin's spans, sent over OTLP/HTTP to Arize Phoenix and found there by attribute."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import sched_trace

from . import metrics_workload as workload
from .phoenix_server import PhoenixServer, attributes

RANKS = (0, 1)
PER_RANK_REQUESTS = workload.REQUESTS + workload.ABORTED


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: Any) -> Iterator[PhoenixServer]:
    """Phoenix up; the workload traced for two pipeline ranks and exported to it over OTLP/HTTP."""
    from sched_trace_otel import OtelPlugin

    server = PhoenixServer(tmp_path_factory.mktemp("phoenix"))
    try:
        plugin = OtelPlugin(exporter="http/protobuf", endpoint=server.traces_endpoint,
                            directory=str(tmp_path_factory.mktemp("otel-files")), requests="off")
        sched_trace.configure(level=9, plugins=[plugin], autoload=False)
        try:
            for pp_rank in RANKS:
                sched_trace.set_thread_info("Scheduler", pp_rank=pp_rank, tp_rank=0, dp_rank=0)
                workload.run(prefix=f"pp{pp_rank}")
        finally:
            sched_trace.shutdown()
            sched_trace.unregister(plugin)
        expected = len(RANKS) * (workload.STEPS * (2 + 2 * workload.MICROBATCHES)  # thread, step, stages
                                 + PER_RANK_REQUESTS + workload.REQUESTS * 3)      # request spans, phases
        server.wait_for_spans(expected)
        yield server
    finally:
        server.stop()


def test_spans_by_rid(phoenix: PhoenixServer) -> None:
    spans = phoenix.spans(attribute=["rid:pp1-3"])
    by_name = {s["name"]: s for s in spans}
    assert sorted(by_name) == ["decode", "prefill", "queue", "request"]
    request = attributes(by_name["request"])
    assert request["pp_rank"] == 1 and request["thread_label"] == "Scheduler"
    assert request["gen_ai.usage.input_tokens"] == 16
    assert request["gen_ai.usage.output_tokens"] == workload.OUTPUT_TOKENS
    assert request["gen_ai.request.model"] == "tiny"
    assert request["sched_trace.request.outcome"] == "finished"
    assert 0 < request["gen_ai.server.time_to_first_token"] <= request["gen_ai.server.request.duration"]
    for phase in ("queue", "prefill", "decode"):
        assert by_name[phase]["parent_span_id"] == by_name["request"]["span_id"]
        assert by_name[phase]["trace_id"] == by_name["request"]["trace_id"]
    aborted = phoenix.spans(attribute=["rid:pp0-aborted-0"], name=["request"])
    assert [attributes(s)["sched_trace.request.outcome"] for s in aborted] == ["aborted"]


def test_spans_by_pp_rank(phoenix: PhoenixServer) -> None:
    for pp_rank in RANKS:
        spans = phoenix.spans(attribute=[f"pp_rank:{pp_rank}"])
        names = [s["name"] for s in spans]
        assert names.count("request") == PER_RANK_REQUESTS
        threads = [s for s in spans if s["name"] != "request"]
        assert len(threads) == workload.STEPS  # one thread span per engine step
        assert all(attributes(s)["pp_rank"] == pp_rank for s in spans)
        assert {attributes(s)["rid"].split("-")[0] for s in spans if s["name"] == "request"} == {f"pp{pp_rank}"}


def test_stage_spans_by_pp_mb_id_within_a_rank(phoenix: PhoenixServer) -> None:
    """pp_mb_id is on the stage spans, pp_rank on their thread span: join through the trace."""
    rank1_traces = [s["trace_id"] for s in phoenix.spans(attribute=["pp_rank:1"]) if s["name"] != "request"]
    spans = phoenix.spans(attribute=["pp_mb_id:2"], trace_id=rank1_traces)
    assert sorted(s["name"] for s in spans) == ["forward"] * workload.STEPS + ["send_activations"] * workload.STEPS
    assert all(attributes(s)["pp_mb_id"] == 2 for s in spans)
    everywhere = phoenix.spans(attribute=["pp_mb_id:2"], name=["forward"])
    assert len(everywhere) == len(RANKS) * workload.STEPS
    failed = phoenix.spans(attribute=["pp_mb_id:0"], name=["forward"], status_code=["ERROR"])
    assert len(failed) == len(RANKS) * 1  # forward fails in micro-batches 0 and 1 of step 0, per rank
