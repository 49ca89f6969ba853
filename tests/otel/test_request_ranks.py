"""One request, many ranks: two real rank processes, two OTLP-JSON files, one request root.

A launcher process (SGLang's launch_server under ``sched-trace run``, say) is traced and
starts two pipeline-rank processes, which inherit its environment and nothing else. Every
rank sees each request's whole life (as every SGLang PP rank does) and names it in its
batches. Read back, the files agree: one ``request`` root per request (written by the
rank with pp_rank 0), each rank's span for it under that root with its own rank keys and
phases, each rank's batch copies under its own span, one trace per request.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sched_trace.testing import span_attributes
from sched_trace.traceio import otlp_documents
from sched_trace_otel import proto_spans

RIDS = ("r0", "r1", "r2")
RANK = textwrap.dedent("""
    import sys, time
    import sched_trace
    from sched_trace_otel import OtelPlugin

    pp_rank = int(sys.argv[1])
    sched_trace.set_thread_info("Scheduler", pp_rank=pp_rank, tp_rank=0, dp_rank=0)
    sched_trace.configure(level=9, plugins=[OtelPlugin(directory=sys.argv[2])], autoload=False)

    @sched_trace.batch("engine_step", level=1, batch_size="len(rids)", requests="rids")
    def engine_step(rids, first):
        for rid in rids:
            sched_trace.request_event("first_token" if first else "scheduled", rid)
        time.sleep(0.002)

    rids = sys.argv[3].split(",")
    for rid in rids:
        sched_trace.request_event("arrived", rid, prompt_tokens=4)
    engine_step(rids, first=False)
    engine_step(rids, first=True)
    for rid in rids:
        sched_trace.request_event("finished", rid, output_tokens=2)
    sched_trace.shutdown(timeout=60)
""")
LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys
    import sched_trace
    from sched_trace_otel import OtelPlugin

    sched_trace.configure(level=9, plugins=[OtelPlugin(directory=sys.argv[2])], autoload=False)
    ranks = [subprocess.Popen([sys.executable, "-c", sys.argv[1], str(pp), sys.argv[2], sys.argv[3]])
             for pp in (0, 1)]
    sys.exit(max(rank.wait(120) for rank in ranks))
""")


def rank_spans(directory: Path) -> dict[int, list[Any]]:
    """The spans of each rank process's file, by the file's process id."""
    by_pid: dict[int, list[Any]] = {}
    for path in directory.glob("traces-*.jsonl"):
        for resource, span in proto_spans(otlp_documents(path)):
            by_pid.setdefault(span_attributes(resource)["process.pid"], []).append(span)
    return by_pid


def test_two_rank_processes_write_one_root_per_request_and_each_rank_its_span(tmp_path: Path,
                                                                              monkeypatch: Any) -> None:
    monkeypatch.delenv("SCHED_TRACE_RUN_ID", raising=False)
    monkeypatch.delenv("SCHED_TRACE_REQUEST_OWNER", raising=False)
    out = tmp_path / "otel"
    launched = subprocess.run([sys.executable, "-c", LAUNCHER, RANK, str(out), ",".join(RIDS)],
                              capture_output=True, text=True, timeout=300, env={**os.environ})
    assert launched.returncode == 0, launched.stderr
    files = rank_spans(out)
    assert len(files) == 2, f"one OTLP-JSON file per rank process: {sorted(files)}"
    spans = [span for mine in files.values() for span in mine]
    attrs = {span.span_id: span_attributes(span) for span in spans}
    by_id = {span.span_id: span for span in spans}
    roots = [span for span in spans if span.name == "request"]
    assert Counter(attrs[r.span_id]["rid"] for r in roots) == Counter(RIDS)  # one root per request
    for root in roots:
        rid = attrs[root.span_id]["rid"]
        assert attrs[root.span_id]["gen_ai.usage.output_tokens"] == 2 and not root.parent_span_id
        rank_spans_of = [s for s in spans if s.parent_span_id == root.span_id]
        assert sorted(attrs[s.span_id]["pp_rank"] for s in rank_spans_of) == [0, 1]  # both files' ranks
        for rank_span in rank_spans_of:
            mine = attrs[rank_span.span_id]
            assert rank_span.name.endswith(f":Scheduler-PP{mine['pp_rank']}-DP0-TP0") and mine["rid"] == rid
            children = Counter(by_id[s.span_id].name for s in spans if s.parent_span_id == rank_span.span_id)
            assert children == {"queue": 1, "prefill": 1, "decode": 1, "engine_step": 2}
        in_trace = {s.trace_id for s in spans if attrs[s.span_id].get("rid") == rid}
        assert in_trace == {root.trace_id}  # every rank's file agrees on the request's trace
    owners = {pid for pid, mine in files.items() if any(span.name == "request" for span in mine)}
    assert len(owners) == 1
    (owner,) = owners
    assert {attrs[s.span_id]["pp_rank"] for s in files[owner] if "pp_rank" in attrs[s.span_id]} == {0}


def test_sched_trace_run_gives_every_process_it_starts_one_run_id(monkeypatch: Any) -> None:
    from sched_trace.commands.run import child_environment

    monkeypatch.delenv("SCHED_TRACE_RUN_ID", raising=False)
    made = child_environment(None, [], None)["SCHED_TRACE_RUN_ID"]
    assert len(made) == 32 and made != child_environment(None, [], None)["SCHED_TRACE_RUN_ID"]
    monkeypatch.setenv("SCHED_TRACE_RUN_ID", "given-by-the-job")  # ranks started apart share a given one
    assert child_environment(None, [], None)["SCHED_TRACE_RUN_ID"] == "given-by-the-job"
    traces = defaultdict(set)
    from sched_trace.export import request_trace

    for run in ("a", "b"):
        traces[run].add(request_trace("r1", run=run)[:2])
    assert traces["a"] != traces["b"] and request_trace("r1", run="a") == request_trace("r1", run="a")
