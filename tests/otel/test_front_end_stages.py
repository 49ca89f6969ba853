"""A front end's stage that names a request (SGLang's tokenizer manager: ``tokenize``) hangs
in the request's trace, under the front end's own span for the request, and writes no root.

The front-end thread records no batch and no request event; the scheduler thread records
the lifecycle and owns the root. Found on the live SGLang server (tests/sglang): the
``tokenize`` span with a ``rid`` attribute sat in a trace of its own beside the request's.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import sched_trace
from sched_trace.testing import span_attributes
from sched_trace.traceio import otlp_documents
from sched_trace_otel import OtelPlugin, proto_spans

RIDS = ("a", "b")


@sched_trace.stage("tokenize", level=1, requests="rid")
def tokenize(rid: str) -> None:
    pass


@sched_trace.batch("run_batch", level=1, requests="rids")
def run_batch(rids: list) -> None:
    for rid in rids:
        sched_trace.request_event("first_token", rid, output_tokens=1)


def scheduler() -> None:
    sched_trace.set_thread_info("Scheduler", pp_rank=0, tp_rank=0)
    for rid in RIDS:
        sched_trace.request_event("arrived", rid, prompt_tokens=3)
    run_batch(list(RIDS))
    for rid in RIDS:
        sched_trace.request_event("finished", rid, output_tokens=1)


def traced(directory: Path, work) -> list:
    """The spans in ``directory`` before shutdown: SGLang SIGKILLs its processes' exporters."""
    plugin = OtelPlugin(directory=str(directory), sglang_compat=True)
    sched_trace.configure(level=9, plugins=[plugin], autoload=False)
    try:
        work()
        sched_trace.flush()
        return [span for path in directory.glob("*.jsonl") for _, span in proto_spans(otlp_documents(path))]
    finally:
        sched_trace.shutdown()
        sched_trace.unregister(plugin)


def test_a_front_end_stage_hangs_in_the_request_trace_under_its_own_span(tmp_path: Path) -> None:
    """Two exporters, as two processes have (one request per rid and exporter): the front end
    (no ranks, no batches, no request events) on this thread, the scheduler on another."""
    before_shutdown = traced(tmp_path / "front", lambda: [tokenize(rid) for rid in RIDS])
    assert Counter(s.name for s in before_shutdown)["tokenize"] == 2 * len(RIDS)  # originals and copies
    assert len([s for s in before_shutdown if span_attributes(s).get("sched_trace.kind") == "request_rank"]) == 2

    def run_scheduler() -> None:
        thread = threading.Thread(target=scheduler)
        thread.start()
        thread.join()

    traced(tmp_path / "scheduler", run_scheduler)
    spans = [span for path in tmp_path.glob("*/*.jsonl") for _, span in proto_spans(otlp_documents(path))]
    attrs = {span.span_id: span_attributes(span) for span in spans}
    assert sorted(attrs[s.span_id]["rid"] for s in spans if s.name == "request") == list(RIDS)  # none from the front
    roots = {attrs[s.span_id]["rid"]: s for s in spans if s.name == "request"}
    for rid, root in roots.items():
        traces = {s.trace_id for s in spans if attrs[s.span_id].get("rid") == rid}
        assert traces == {root.trace_id}
        ranks = {s.span_id: s for s in spans if attrs[s.span_id].get("sched_trace.kind") == "request_rank"
                 and attrs[s.span_id]["rid"] == rid}
        assert {s.parent_span_id for s in ranks.values()} == {root.span_id}
        labels = Counter(attrs[i].get("thread_label") for i in ranks)
        assert labels["Scheduler"] == 1 and sum(labels.values()) == 2, labels
        (copy,) = [s for s in spans if s.name == "tokenize" and attrs[s.span_id].get("rid") == rid]
        assert copy.trace_id == root.trace_id and ranks[copy.parent_span_id].span_id != root.span_id
        assert attrs[copy.parent_span_id].get("thread_label") != "Scheduler"
    originals = [s for s in spans if s.name == "tokenize" and "rid" not in attrs[s.span_id]]
    assert len(originals) == len(RIDS)  # the front end's own timeline keeps its spans, without a rid
