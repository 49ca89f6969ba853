"""Real OTLP receivers on loopback: several scheduler processes, gRPC, an outage."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

import sched_trace
from sched_trace.testing import OtlpReceiver
from otel_scheduler import Batch, Req, rank_main, run_steps
from sched_trace_otel import new_traceparent

STEPS, MICROBATCHES = 3, 2


def attrs(span: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def run_ranks(settings: dict, env: dict, requests: list, ranks: int = 2) -> dict[int, Any]:
    """Spawned scheduler processes, one per pp_rank, each with its own exporter process; one run id,
    as a launcher gives its ranks (sched-trace run, or torchrun's TORCHELASTIC_RUN_ID)."""
    env = {**env, "SCHED_TRACE_RUN_ID": f"ranks-{os.getpid()}"}
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    procs = [context.Process(target=rank_main, args=(pp, settings, env, requests, STEPS, MICROBATCHES, results))
             for pp in range(ranks)]
    for proc in procs:
        proc.start()
    out = {}
    for _ in procs:
        pp_rank, pid, stats = results.get(timeout=60)
        out[pp_rank] = (pid, stats)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    return out


def check_ranks(spans: list, ranks: dict, outside: str) -> None:
    ids = Counter(span.span_id for _, span in spans)
    assert max(ids.values()) == 1, "a span arrived twice"
    by_id = {span.span_id: span for _, span in spans}
    per_rank = defaultdict(list)
    for resource, span in spans:
        per_rank[attrs(resource)["process.pid"]].append(span)
    assert set(per_rank) == {pid for pid, _ in ranks.values()}
    for pp_rank, (pid, stats) in ranks.items():
        mine = per_rank[pid]
        batch_spans = [s for s in mine if s.name == "decode_step" and "rid" not in attrs(s)]
        stages = sorted((s for s in mine if s.name == "run_batch_cpu" and "rid" not in attrs(s)),
                        key=lambda s: s.start_time_unix_nano)
        assert len(batch_spans) == STEPS and len(stages) == STEPS * MICROBATCHES
        for batch in batch_spans:
            thread = by_id[batch.parent_span_id]
            assert attrs(thread)["pp_rank"] == pp_rank and attrs(thread)["pid"] == pid
        assert [attrs(s)["pp_mb_id"] for s in stages] == list(range(MICROBATCHES)) * STEPS
        for before, stage in zip(stages, stages[1:]):
            assert [link.span_id for link in stage.links] == [before.span_id]
            assert before.end_time_unix_nano <= stage.start_time_unix_nano
        for stage in stages:
            assert by_id[stage.parent_span_id].name == "decode_step"
            assert stage.status.code == (2 if attrs(stage)["pp_mb_id"] == MICROBATCHES - 1 else 0)
        # each rank's span for a request hangs under the one root; the first rank writes the root
        rank_spans = {attrs(s)["rid"]: s for s in mine if "rid" in attrs(s) and s.name.endswith(f"-PP{pp_rank}-DP0-TP0")}
        assert set(rank_spans) == {"r-outside", "r-plain"}
        for rid, rank_span in rank_spans.items():
            (root,) = [s for _, s in spans if s.name == "request" and attrs(s)["rid"] == rid]
            assert rank_span.parent_span_id == root.span_id and rank_span.trace_id == root.trace_id
            copies = [s for s in mine if s.name == "decode_step" and attrs(s).get("rid") == rid]
            assert len(copies) == STEPS and {c.parent_span_id for c in copies} == {rank_span.span_id}
        root = next(s for _, s in spans if s.name == "request" and attrs(s)["rid"] == "r-outside")
        assert root.trace_id.hex() == outside[3:35] and root.parent_span_id.hex() == outside[36:52]
        roots = 2 if pp_rank == 0 else 0
        assert len(mine) == STEPS * (2 + MICROBATCHES) + 2 * (STEPS * (1 + MICROBATCHES) + 1) + roots
        assert stats["dropped"] == 0 and stats["lost_in_exporter"] == 0


def test_http_receiver_several_ranks_standard_env() -> None:
    receiver = OtlpReceiver("http").start()
    try:
        outside = new_traceparent()
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "ranks-test"}
        ranks = run_ranks({"exporter": "otlp"}, env, [("r-outside", outside), ("r-plain", None)])
        spans = receiver.spans
        assert {attrs(resource)["service.name"] for resource, _ in spans} == {"ranks-test"}
        check_ranks(spans, ranks, outside)
    finally:
        receiver.stop()


def test_grpc_receiver_several_ranks() -> None:
    pytest.importorskip("grpc")
    receiver = OtlpReceiver("grpc").start()
    try:
        outside = new_traceparent()
        ranks = run_ranks({"exporter": "grpc", "endpoint": receiver.endpoint}, {},
                          [("r-outside", outside), ("r-plain", None)])
        check_ranks(receiver.spans, ranks, outside)
    finally:
        receiver.stop()


def settled(plugin: Any, condition: Any, patience: float = 60.0) -> dict:
    """The plugin's counters once ``condition`` holds (the exporter process reports every 0.5 s)."""
    deadline = time.monotonic() + patience
    stats = dict(plugin.sched_trace_collect_stats())
    while not condition(stats) and time.monotonic() < deadline:
        time.sleep(0.2)
        stats = dict(plugin.sched_trace_collect_stats())
    return stats


def test_receiver_down_then_back(traced: Any, monkeypatch: Any) -> None:
    receiver = OtlpReceiver("http").start()
    receiver.stop()  # a port that refuses connections, for a while
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    plugin = traced(exporter="http/protobuf", endpoint=receiver.endpoint, requests="off", retry_capacity=40)
    run_steps([Batch() for _ in range(30)], microbatches=2)  # 30 x (thread + batch + 2 stages) spans
    sched_trace.flush(timeout=6.0)
    down = settled(plugin, lambda stats: stats.get("spans_dropped") == 80)
    assert down["dropped"] == 0 and down["sent"] == 90  # the scheduler side lost nothing
    assert down["spans_dropped"] == 120 - 40 and down["export_failures"] >= 1
    receiver.start()
    sched_trace.flush(timeout=15.0)
    sched_trace.shutdown(timeout=60)
    stats = dict(plugin.sched_trace_collect_stats())
    assert len(receiver.spans) == 40 == stats["spans_exported"]
    assert stats["spans_dropped"] == 80
    receiver.stop()
