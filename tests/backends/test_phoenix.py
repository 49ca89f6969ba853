"""The otel plugin's spans, sent over OTLP/HTTP (standard OTEL_* variables only) to Arize Phoenix and found
there by attribute: the request spans by ``rid``, thread spans by ``pp_rank``, stage spans by ``pp_mb_id``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from . import metrics_workload as workload
from .phoenix_server import PhoenixServer, attributes

HERE = Path(__file__).parent
PROJECT = "sched-trace-ranks"
RANKS = (0, 1)
PER_RANK_REQUESTS = workload.REQUESTS + workload.ABORTED
SPANS_PER_RANK = (workload.STEPS * (2 + 2 * workload.MICROBATCHES)  # thread span, step, its stages
                  + 2 * PER_RANK_REQUESTS + workload.REQUESTS * 3)  # request roots, rank spans, phases


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: Any) -> Iterator[PhoenixServer]:
    """Phoenix up; two rank processes traced, their otel plugin configured only by OTEL_* variables."""
    server = PhoenixServer(tmp_path_factory.mktemp("phoenix"))
    try:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("OTEL_", "SCHED_TRACE_"))}
        env.update({
            "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")]),
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": server.url,  # the SDK's rule: /v1/traces is appended
            "OTEL_SERVICE_NAME": "sched-trace-ranks",
            "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={PROJECT}",  # Phoenix's project key
            # Each rank serves requests of its own here (as data-parallel ranks do): each writes their roots.
            "SCHED_TRACE_REQUEST_OWNER": "any",
        })
        for pp_rank in RANKS:
            done = subprocess.run([sys.executable, str(HERE / "metrics_workload.py"), "otel"],
                                  env={**env, "PP_RANK": str(pp_rank)}, cwd=tmp_path_factory.mktemp("rank"),
                                  capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stderr
            stats = json.loads(done.stdout)
            assert (stats.get("spans_exported"), stats.get("spans_dropped")) == (SPANS_PER_RANK, 0), (
                stats, done.stderr[-3000:])
        server.wait_for_spans(len(RANKS) * SPANS_PER_RANK, project=PROJECT)
        yield server
    finally:
        server.stop()


def test_spans_by_rid(phoenix: PhoenixServer) -> None:
    spans = phoenix.spans(project=PROJECT, attribute=["rid:pp1-3"])
    by_name = {s["name"].split(":")[-1]: s for s in spans}  # the rank span: <host>:Scheduler-PP1-DP0-TP0
    assert sorted(by_name) == ["Scheduler-PP1-DP0-TP0", "decode", "prefill", "queue", "request"]
    rank = by_name["Scheduler-PP1-DP0-TP0"]
    assert rank["parent_span_id"] == by_name["request"]["span_id"]
    assert attributes(rank)["pp_rank"] == 1 and attributes(rank)["thread_label"] == "Scheduler"
    request = attributes(by_name["request"])
    assert request["gen_ai.usage.input_tokens"] == 16
    assert request["gen_ai.usage.output_tokens"] == workload.OUTPUT_TOKENS
    assert request["gen_ai.request.model"] == "tiny"
    assert request["sched_trace.request.outcome"] == "finished"
    assert 0 < request["gen_ai.server.time_to_first_token"] <= request["gen_ai.server.request.duration"]
    for phase in ("queue", "prefill", "decode"):
        assert by_name[phase]["parent_span_id"] == rank["span_id"]
        assert by_name[phase]["trace_id"] == by_name["request"]["trace_id"]
    aborted = phoenix.spans(project=PROJECT, attribute=["rid:pp0-aborted-0"], name=["request"])
    assert [attributes(s)["sched_trace.request.outcome"] for s in aborted] == ["aborted"]


def test_spans_by_pp_rank(phoenix: PhoenixServer) -> None:
    for pp_rank in RANKS:
        spans = phoenix.spans(project=PROJECT, attribute=[f"pp_rank:{pp_rank}"])
        ranks = [s for s in spans if "rid" in attributes(s)]  # each request's span on this rank
        assert len(ranks) == PER_RANK_REQUESTS
        threads = [s for s in spans if "rid" not in attributes(s)]
        assert len(threads) == workload.STEPS  # one thread span per engine step
        assert all(attributes(s)["pp_rank"] == pp_rank for s in spans)
        assert {attributes(s)["rid"].split("-")[0] for s in ranks} == {f"pp{pp_rank}"}


def test_stage_spans_by_pp_mb_id_within_a_rank(phoenix: PhoenixServer) -> None:
    """pp_mb_id is on the stage spans, pp_rank on their thread span: join through the trace."""
    rank1_traces = [s["trace_id"] for s in phoenix.spans(project=PROJECT, attribute=["pp_rank:1"])
                    if "rid" not in attributes(s)]
    spans = phoenix.spans(project=PROJECT, attribute=["pp_mb_id:2"], trace_id=rank1_traces)
    assert sorted(s["name"] for s in spans) == ["forward"] * workload.STEPS + ["send_activations"] * workload.STEPS
    assert all(attributes(s)["pp_mb_id"] == 2 for s in spans)
    everywhere = phoenix.spans(project=PROJECT, attribute=["pp_mb_id:2"], name=["forward"])
    assert len(everywhere) == len(RANKS) * workload.STEPS
    failed = phoenix.spans(project=PROJECT, attribute=["pp_mb_id:0"], name=["forward"], status_code=["ERROR"])
    assert len(failed) == len(RANKS) * 1  # forward fails in micro-batches 0 and 1 of step 0, per rank
