"""The ``sglang`` profile on a real SGLang 0.5.23 HTTP server (CPU engine, .venv-sglang).

Each server starts once per parametrization (PP=1 with SGLang's overlap event loop, PP=2 with
``event_loop_pp``) under ``sched-trace run --profile sglang`` with the otel plugin
(``sglang_compat = true``) and the perfetto plugin, serves six requests of known prompt and
output lengths concurrently while a seventh is streamed and aborted through
``/abort_request``, idles 5 s, and is stopped as a user stops it (SIGINT or SIGTERM to the
launcher; SGLang then SIGKILLs its scheduler processes). Ground truth: what SGLang answered
(``meta_info`` per rid), a counter around SGLang's own ``Scheduler.run_batch``
(step_counter.py) and sched-trace's capture of every event (``SCHED_TRACE_CAPTURE_DIR``, written
through as it happens); both survive the SIGKILL.
"""

from __future__ import annotations

import signal
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from sched_trace import config

from tests.contracts.engines import sglang_contract

from .converter_model import convert, engine_spans
from .server import NOT_RUNNABLE, GenerateRequest, SGLangServer, runnable

pytestmark = pytest.mark.skipif(not runnable(), reason=NOT_RUNNABLE)

LOAD = [GenerateRequest(f"r{i}", 8 + 4 * i, 8 + 2 * i) for i in range(6)]
CUT = GenerateRequest("cut", 16, 1500)  # streamed, aborted after CUT_AFTER tokens
CUT_AFTER = 10
IDLE_S = 5.0
STAGES = ("get_next_batch_to_run", "process_input_requests", "process_batch_result")
PP_ONLY = {"SchedulerPPMixin._pp_launch_batch"}  # targets only event_loop_pp calls


def is_health_check(rid: str) -> bool:
    return rid.startswith("HEALTH_CHECK")  # /health_generate's request, sent while starting


@pytest.fixture(scope="module", params=[1, 2], ids=["pp1-overlap", "pp2-event_loop_pp"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pp = request.param
    server = SGLangServer(tmp_path_factory.mktemp(f"sglang-pp{pp}"), pp_size=pp, count_steps=True, capture=True)
    try:
        server.start()
        answers = server.generate_many(LOAD, abort=(CUT, CUT_AFTER))
        load_end_ns = time.time_ns()
        time.sleep(IDLE_S)
        idle_end_ns = time.time_ns()
    finally:
        server.stop(signal.SIGINT if pp == 1 else signal.SIGTERM)
    otel = sorted(server.otel_dir.glob("*.jsonl"))
    spans = [dict(span, pid=int(path.stem.rsplit("-", 1)[1])) for path in otel for span in engine_spans(path)]
    return {"pp": pp, "server": server, "answers": answers, "steps": server.steps(), "trace": server.trace(),
            "otel_files": otel, "spans": spans, "load_end_ns": load_end_ns, "idle_end_ns": idle_end_ns}


def batch_spans(spans: list[dict], name: str = "run_batch") -> list[dict]:
    """The batch's own spans, not their per-request copies under request roots (those carry ``rid``)."""
    return [s for s in spans if s["name"] == name and "rid" not in s["attributes"]]


def test_sglang_answered_every_request_as_asked(served: dict[str, Any]) -> None:
    answers = served["answers"]
    for request in LOAD:
        meta = answers[request.rid]["meta_info"]
        assert (meta["prompt_tokens"], meta["completion_tokens"]) == (request.prompt_tokens, request.max_new_tokens)
        assert meta["finish_reason"]["type"] == "length"
    cut = answers[CUT.rid]["meta_info"]
    assert cut["finish_reason"]["type"] == "abort"
    assert CUT_AFTER <= cut["completion_tokens"] < CUT.max_new_tokens


def test_every_target_of_the_profile_fires(served: dict[str, Any]) -> None:
    trace = served["trace"]
    seen = {e.name for e in trace.events} | {r.phase for r in trace.requests}
    for spec in config.load_profile("sglang").instrument:
        if served["pp"] == 1 and spec.target.split(":")[1] in PP_ONLY:
            continue
        if spec.options.get("kind") == "thread":  # Scheduler.__init__ names the scheduler threads
            labels = {e.rank.thread_label for e in trace.events if e.name == "run_batch"}
            assert labels == {spec.options["thread_label"]}, labels
            continue
        fired = spec.options["phase"] if spec.options.get("kind") == "request" else spec.options["stage"]
        assert fired in seen, f"{spec.target} ({fired}) never fired"
    assert "aborted" in seen
    sglang_contract(served["pp"]).check(trace)  # the check helper's contract for the shipped profile


def test_every_request_has_its_lifecycle_in_order_on_each_rank(served: dict[str, Any]) -> None:
    phases: dict[tuple[int, str], list[str]] = defaultdict(list)
    for r in served["trace"].requests:
        if not is_health_check(r.request_id):
            phases[r.rank.pid, r.request_id].append(r.phase)
    assert {rid for _, rid in phases} == set(served["answers"])
    for (pid, rid), names in phases.items():
        end = "aborted" if rid == CUT.rid else "finished"
        assert names == ["arrived", "queued", "scheduled", "first_token", end], (pid, rid, names)


def test_request_spans_carry_the_tokens_sglang_returned(served: dict[str, Any]) -> None:
    requests = [s for s in served["spans"] if s["name"] == "request" and not is_health_check(s["attributes"]["rid"])]
    by_rid: dict[str, list[dict]] = defaultdict(list)
    for span in requests:
        by_rid[span["attributes"]["rid"]].append(span)
    assert set(by_rid) == set(served["answers"])
    for rid, spans in by_rid.items():
        meta = served["answers"][rid]["meta_info"]
        for span in spans:
            attrs = span["attributes"]
            assert int(attrs["gen_ai.usage.input_tokens"]) == meta["prompt_tokens"], rid
            assert int(attrs["gen_ai.usage.output_tokens"]) == meta["completion_tokens"], rid
            assert attrs["sched_trace.request.outcome"] == ("aborted" if rid == CUT.rid else "finished")
            assert 0 < attrs["gen_ai.server.time_to_first_token"] <= attrs["gen_ai.server.request.duration"]


def test_every_run_batch_is_one_batch_span_per_sglang_step(served: dict[str, Any]) -> None:
    steps = served["steps"]
    assert len(steps) == served["pp"]  # one scheduler process per PP rank
    spans = batch_spans(served["spans"])
    per_pid = defaultdict(list)
    for span in sorted(spans, key=lambda s: int(s["startTimeUnixNano"])):
        per_pid[span["pid"]].append(span["attributes"]["forward_mode"])
    assert dict(per_pid) == steps  # the same steps, in the same order, with the same forward mode
    logged = Counter(e.rank.pid for e in served["trace"].named("run_batch"))
    assert logged == {pid: len(modes) for pid, modes in steps.items()}


def test_each_run_batch_holds_its_stages_and_pp_microbatches(served: dict[str, Any]) -> None:
    trace = served["trace"]
    batches, results = trace.named("run_batch"), trace.named("process_batch_result")
    assert len(results) == len(batches)  # every batch's result is processed once
    launches = trace.named("run_batch_cpu")
    if served["pp"] == 1:
        assert launches == []
        return
    assert len(launches) == len(batches)  # event_loop_pp launches each run_batch as one micro-batch
    for launch in launches:
        assert launch.microbatch in (0, 1)  # pp_mb_id: SGLang keeps pp_size micro-batches in flight
        inside = [b for b in batches if b.rank.pid == launch.rank.pid
                  and launch.start_ns <= b.start_ns <= b.end_ns <= launch.end_ns]
        assert len(inside) == 1, launch  # the run_batch it launched, on its rank


def test_the_perfetto_files_hold_each_ranks_steps(served: dict[str, Any]) -> None:
    from sched_trace.traceio import read_traces

    traces = read_traces([served["server"].perfetto_dir])
    per_pid, tokenized = {}, 0
    for trace in traces:
        runs = [e for e in trace.events if e.name == "run_batch"]
        tokenized += sum(1 for e in trace.events if e.name == "tokenize")
        if runs:
            per_pid[runs[0].rank.pid] = len(runs)
            assert {e.rank.pp_rank for e in runs} == {runs[0].rank.pp_rank}
    assert per_pid == {pid: len(modes) for pid, modes in served["steps"].items()}
    assert tokenized >= len(served["answers"])  # in the HTTP server's process (with /health_generate's)
    tokenize = Counter(rid for e in served["trace"].named("tokenize") for rid in e.attrs["requests"])
    assert all(tokenize[rid] == 1 for rid in served["answers"]), tokenize


def test_the_otlp_files_have_the_structure_sglangs_converter_walks(served: dict[str, Any]) -> None:
    rids_seen: set[str] = set()
    for path in served["otel_files"]:
        converted = convert(path)
        for root in converted.roots:
            rids_seen.add(root["attributes"]["rid"])
        pp_ranks = {name.rsplit("-PP", 1)[1].split("-")[0] for name in converted.tracks.values()}
        assert len(pp_ranks) == (1 if converted.roots else 0), converted.tracks  # a scheduler: one PP rank
        for source, target in converted.flows:
            assert source["attributes"]["rid"] == target["attributes"]["rid"]
    assert set(served["answers"]) <= rids_seen


def test_shutdown_as_sglang_does_it_leaves_the_files_readable(served: dict[str, Any]) -> None:
    assert served["server"].returncode is not None
    # the scheduler processes' files, and the HTTP server's (its tokenizer manager: tokenize)
    assert len(served["otel_files"]) == served["pp"] + 1


# --- what the live server showed to be wrong (issue 16), checked against SGLang's own counts --
def test_an_idle_server_records_no_scheduling_spans(served: dict[str, Any]) -> None:
    """SGLang's event loop busy-polls; idle polls are counted, not exported. The window starts
    1 s after the last answer (the scheduler may still be finishing the last step's output)."""
    window = (served["load_end_ns"] + 1_000_000_000, served["idle_end_ns"])
    logged = Counter(e.name for e in served["trace"].events if e.name in STAGES and window[0] <= e.start_ns <= window[1])
    exported = Counter(s["name"] for s in served["spans"] if s["name"] in STAGES
                       and window[0] <= int(s["startTimeUnixNano"]) <= window[1])
    assert logged == exported == Counter()


def test_seven_requests_write_under_2_mb_of_otlp_json(served: dict[str, Any]) -> None:
    size = sum(path.stat().st_size for path in served["otel_files"])
    assert size < 2_000_000, f"{size / 1e6:.1f} MB of OTLP-JSON for 7 requests and {IDLE_S} s idle"


def test_no_decode_batch_carries_extend_tokens(served: dict[str, Any]) -> None:
    """SGLang leaves ``batch.extend_num_tokens`` set after a prefill; on a DECODE batch it is stale."""
    modes = Counter((s["attributes"]["forward_mode"], "extend_tokens" in s["attributes"])
                    for s in batch_spans(served["spans"]))
    assert modes[("DECODE", False)] > 0 and modes[("EXTEND", True)] > 0
    assert modes[("DECODE", True)] == 0
    # SGLang's own count: each rank prefills each request's prompt less what its cache held
    answers = served["answers"]
    expected = sum(a["meta_info"]["prompt_tokens"] - a["meta_info"]["cached_tokens"] for a in answers.values())
    extended: Counter = Counter()
    for batch in served["trace"].named("run_batch"):
        rids = set(batch.attrs["requests"])
        if batch.attrs["forward_mode"] in ("EXTEND", "MIXED") and rids and rids <= set(answers):
            extended[batch.rank.pid] += batch.attrs["extend_tokens"]
    assert extended == {pid: expected for pid in served["steps"]}


def test_one_request_span_per_rid_across_all_ranks(served: dict[str, Any]) -> None:
    """One trace per request: the root from the owner (PP 0 / TP 0), every scheduler rank's span
    for it, and the tokenizer manager's (its ``tokenize``) beneath, from every process's file."""
    counts = Counter(s["attributes"]["rid"] for s in served["spans"] if s["name"] == "request")
    assert {rid: counts[rid] for rid in served["answers"]} == {rid: 1 for rid in served["answers"]}
    traces: dict[str, set[str]] = defaultdict(set)
    for span in served["spans"]:
        rid = span["attributes"].get("rid")
        if rid in served["answers"]:
            traces[rid].add(span["traceId"])
    assert all(len(ids) == 1 for ids in traces.values()), traces  # every rank's files agree on the trace
    # every rank's work for the request hangs in that one trace, under its own rank's thread span
    owner = {s["attributes"]["rid"]: s["pid"] for s in served["spans"] if s["name"] == "request"}
    schedulers = {pid for pid, _ in (served["steps"] or {}).items()}
    rank_spans = [s for s in served["spans"] if s["attributes"].get("sched_trace.kind") == "request_rank"]
    owners = {e.rank.pid for e in served["trace"].named("run_batch") if (e.rank.pp_rank, e.rank.tp_rank) == (0, 0)}
    assert len(owners) == 1
    for rid in served["answers"]:
        mine = [s for s in rank_spans if s["attributes"]["rid"] == rid]
        ranks = {s["attributes"].get("pp_rank") for s in mine if s["attributes"]["thread_label"] == "Scheduler"}
        assert ranks == {str(pp) for pp in range(served["pp"])}, (rid, ranks)
        assert owner[rid] in owners, (rid, owner[rid], owners)  # the PP 0 / TP 0 scheduler writes the root
        (front,) = [s for s in mine if s["pid"] not in schedulers]  # the tokenizer manager's
        inside = [s["name"] for s in served["spans"] if s.get("parentSpanId") == front["spanId"]]
        assert inside == ["tokenize"], (rid, inside)
        root = next(s for s in served["spans"] if s["name"] == "request" and s["attributes"]["rid"] == rid)
        assert all(s["parentSpanId"] == root["spanId"] for s in mine)
