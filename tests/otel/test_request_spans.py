"""Request spans: one root per request (GenAI attributes, batch links), this rank's span under it with its
queue/prefill/decode phases."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import sched_trace
from sched_trace._events import NO_ATTRS, RankInfo, RequestEvent
from sched_trace.traceio import otlp_documents
from sched_trace_otel import OtelPlugin, proto_spans, register_traceparent, new_traceparent

MS = 1_000_000


def attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values] \
            if kind == "array_value" else getattr(value, kind)
    return out


def file_spans(plugin: OtelPlugin) -> list[Any]:
    files = list(Path(plugin.settings.directory).glob("traces-*.jsonl"))
    assert len(files) == 1, files
    return [span for _, span in proto_spans(otlp_documents(files[0]))]


def hexid(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


class Engine:
    """A tiny continuous-batching engine: requests join, prefill in one step, decode one token a step."""

    def __init__(self, model: str = "tiny-llama") -> None:
        self.model = model
        self.waiting: list[tuple[str, int, int]] = []  # (rid, prompt tokens, max tokens)
        self.running: dict[str, list[int]] = {}       # rid -> [generated, max]

    def add(self, rid: str, prompt: int, max_tokens: int) -> None:
        sched_trace.request_event("arrived", rid, prompt_tokens=prompt, **{"gen_ai.request.model": self.model})
        self.waiting.append((rid, prompt, max_tokens))

    @sched_trace.batch("engine_step", level=1, batch_size="len(self.running)")
    def step(self, admit: int) -> None:
        for rid, _, max_tokens in self.waiting[:admit]:
            sched_trace.request_event("scheduled", rid)
            self.running[rid] = [0, max_tokens]
        del self.waiting[:admit]
        self.forward()
        for rid, state in list(self.running.items()):
            state[0] += 1
            if state[0] == 1:
                sched_trace.request_event("first_token", rid)
            if state[0] == state[1]:
                sched_trace.request_event("finished", rid, output_tokens=state[0], finish_reason="length")
                del self.running[rid]

    @sched_trace.stage("forward", level=2)
    def forward(self) -> None:
        time.sleep(0.001)


@pytest.mark.parametrize("process", [True, False], ids=["exporter-process", "exporter-thread"])
def test_one_request_span_per_request_with_phases_and_batch_links(traced: Any, process: bool) -> None:
    plugin = traced(process=process, requests="off")
    engine = Engine()
    outside = new_traceparent()
    register_traceparent("r2", outside)
    for rid, tokens in (("r0", 3), ("r1", 1), ("r2", 4)):
        engine.add(rid, prompt=10 + tokens, max_tokens=tokens)
    engine.step(admit=2)   # r0, r1 scheduled; r1 done after one token
    engine.step(admit=1)   # r2 scheduled
    while engine.running:
        engine.step(admit=0)
    sched_trace.shutdown(timeout=60)
    spans = file_spans(plugin)
    by_id = {s.span_id: s for s in spans}
    steps = {attrs(s)["bid"]: s for s in spans if s.name == "engine_step"}
    roots = {attrs(s)["rid"]: s for s in spans if s.name == "request"}
    assert sorted(roots) == ["r0", "r1", "r2"]
    assert plugin.settings and sched_trace.stats()["plugins"]
    expected_steps = {"r0": 3, "r1": 1, "r2": 4}  # steps from scheduling to the last token
    for rid, root in roots.items():
        a = attrs(root)
        assert a["gen_ai.request.model"] == "tiny-llama"
        assert a["gen_ai.usage.input_tokens"] == 10 + expected_steps[rid]
        assert a["gen_ai.usage.output_tokens"] == expected_steps[rid]
        assert a["gen_ai.response.finish_reasons"] == ["length"]
        assert a["sched_trace.request.outcome"] == "finished"
        (rank,) = [s for s in spans if s.parent_span_id == root.span_id]
        assert (attrs(rank)["pp_rank"], attrs(rank)["thread_label"], attrs(rank)["rid"]) == (0, "Scheduler", rid)
        assert rank.name.endswith(":Scheduler-PP0-DP0-TP0") and rank.trace_id == root.trace_id
        children = {s.name: s for s in spans if s.parent_span_id == rank.span_id}
        assert set(children) == {"queue", "prefill", "decode"}
        queue, prefill, decode = children["queue"], children["prefill"], children["decode"]
        assert root.start_time_unix_nano == queue.start_time_unix_nano
        assert queue.end_time_unix_nano == prefill.start_time_unix_nano
        assert prefill.end_time_unix_nano == decode.start_time_unix_nano
        assert decode.end_time_unix_nano == root.end_time_unix_nano
        # GenAI timings are these durations, in seconds
        ttft = prefill.end_time_unix_nano - root.start_time_unix_nano
        e2e = root.end_time_unix_nano - root.start_time_unix_nano
        assert a["gen_ai.server.time_to_first_token"] == pytest.approx(ttft / 1e9)
        assert a["gen_ai.server.request.duration"] == pytest.approx(e2e / 1e9)
        assert a["gen_ai.latency.time_in_queue"] == pytest.approx(
            (queue.end_time_unix_nano - queue.start_time_unix_nano) / 1e9)
        tokens = expected_steps[rid]
        if tokens > 1:
            decode_ns = decode.end_time_unix_nano - decode.start_time_unix_nano
            assert a["gen_ai.server.time_per_output_token"] == pytest.approx(decode_ns / (tokens - 1) / 1e9)
        else:
            assert "gen_ai.server.time_per_output_token" not in a
        # linked to the batch spans its phases were reported in: scheduled .. finished
        linked = [(hexid(l.trace_id), hexid(l.span_id)) for l in root.links]
        linked_bids = sorted(attrs(l)["bid"] for l in root.links)
        first = 1 if rid == "r2" else 0
        wanted = sorted({first, first + expected_steps[rid] - 1})
        assert linked_bids == [sorted(steps)[i] for i in wanted]
        for trace_id, span_id in linked:
            assert any(hexid(s.trace_id) == trace_id and hexid(s.span_id) == span_id for s in steps.values())
        for link in root.links:
            assert by_id[link.span_id].name == "engine_step"
    # an incoming traceparent puts the request span under the caller's span
    assert hexid(roots["r2"].trace_id) == int(outside[3:35], 16)
    assert hexid(roots["r2"].parent_span_id) == int(outside[36:52], 16)
    assert not roots["r0"].parent_span_id


def test_request_span_shares_the_trace_of_its_per_request_batch_copies(traced: Any) -> None:
    """With requests = "spans", batches naming the request make copies in the same trace; all link."""
    plugin = traced(process=False)

    @sched_trace.batch("decode_step", level=1, requests="reqs")
    def decode_step(reqs: list) -> None:
        for rid in reqs:
            sched_trace.request_event("first_token", rid)

    sched_trace.request_event("arrived", "q1")
    sched_trace.request_event("scheduled", "q1")
    decode_step(["q1"])
    decode_step(["q1"])  # no phase reported in this one: the link comes from the batch naming q1
    sched_trace.request_event("finished", "q1", output_tokens=2)
    sched_trace.shutdown(timeout=60)
    spans = file_spans(plugin)
    (root,) = [s for s in spans if s.name == "request"]
    copies = [s for s in spans if s.name == "decode_step" and attrs(s).get("rid") == "q1"]
    assert len(copies) == 2 and all(c.trace_id == root.trace_id for c in copies)
    batch_spans = {s.span_id for s in spans if s.name == "decode_step" and "rid" not in attrs(s)}
    assert {l.span_id for l in root.links} == batch_spans and len(batch_spans) == 2


def test_preemption_aborts_and_unfinished_requests(traced: Any) -> None:
    plugin = traced(process=False, requests="off", request_owner={"pp_rank": 1})  # this rank owns them
    rank = RankInfo("h", 1, 1, "Scheduler", pp_rank=1)

    def emit(phase: str, ts_ms: int, rid: str, **kw: Any) -> None:
        plugin.sched_trace_request(RequestEvent(phase, ts_ms * MS, rid, rank, kw.get("prompt"),
                                                kw.get("output"), None, NO_ATTRS))

    emit("queued", 1000, "p")
    emit("scheduled", 1010, "p")       # the first scheduled counts ...
    emit("first_token", 1030, "p")
    emit("scheduled", 1050, "p")       # ... not the one after a preemption
    emit("finished", 1070, "p", output=3)
    emit("arrived", 2000, "a")
    emit("aborted", 2005, "a")
    emit("arrived", 3000, "open")
    emit("scheduled", 3002, "open")
    sched_trace.shutdown(timeout=60)
    spans = file_spans(plugin)
    roots = {attrs(s)["rid"]: s for s in spans if s.name == "request"}
    p = attrs(roots["p"])
    assert p["gen_ai.latency.time_in_queue"] == pytest.approx(0.010)
    assert p["gen_ai.server.time_to_first_token"] == pytest.approx(0.030)
    assert p["gen_ai.server.time_per_output_token"] == pytest.approx(0.020)
    (rank_span,) = [s for s in spans if s.parent_span_id == roots["p"].span_id]
    assert attrs(rank_span)["pp_rank"] == 1
    assert attrs(roots["a"])["sched_trace.request.outcome"] == "aborted"
    assert "gen_ai.server.time_to_first_token" not in attrs(roots["a"])
    assert attrs(roots["open"])["sched_trace.request.outcome"] == "unfinished"
    assert roots["open"].end_time_unix_nano == 3002 * MS


def test_request_sampling_applies_to_request_spans(traced: Any) -> None:
    plugin = traced(process=False, request_ratio=0.0)
    for rid in ("s1", "s2"):
        sched_trace.request_event("arrived", rid)
        sched_trace.request_event("finished", rid)
    sched_trace.flush()
    stats = sched_trace.stats()["plugins"]
    sched_trace.shutdown(timeout=60)
    files = list(Path(plugin.settings.directory).glob("traces-*.jsonl"))  # a file opens on its first span
    assert not files or not [s for s in file_spans(plugin) if s.name == "request"]
    (otel,) = [v for v in stats.values() if "request_spans" in v]
    assert otel["request_spans"] == 0 and otel["sampled_out_requests"] == 2


def test_a_flush_exports_requests_waiting_for_a_sampled_out_batch(traced: Any) -> None:
    """One batch in two is exported: a request that ended in a dropped one is not held until shutdown."""
    plugin = traced(process=False, requests="off", batch_every=2)

    @sched_trace.batch("engine_step", level=1)
    def engine_step(phase: str) -> None:
        sched_trace.request_event(phase, "w1")

    sched_trace.request_event("arrived", "w1")
    engine_step("scheduled")      # exported (1 of 2)
    engine_step("finished")       # sampled out: its span never comes
    sched_trace.flush()
    (request,) = [s for s in file_spans(plugin) if s.name == "request"]
    assert len(request.links) == 1  # the batch that was exported
    sched_trace.shutdown(timeout=60)
    assert len([s for s in file_spans(plugin) if s.name == "request"]) == 1  # not again at shutdown


def test_a_long_request_links_at_most_max_links_batches() -> None:
    from sched_trace.export import RequestOwner
    from sched_trace_otel.assemble import RankAttributes
    from sched_trace_otel.request_spans import MAX_LINKS, RequestSpans
    from sched_trace_otel.sampling import Sampler

    rank = RankInfo("h", 1, 1, "Scheduler", pp_rank=0)
    follower = RequestSpans(False, "run", RequestOwner(), Sampler(), RankAttributes())
    follower.add([RequestEvent("arrived", 0, "long", rank, 1, None, None, NO_ATTRS)])
    for bid in range(300):  # one decode step per batch, each a batch span the request rode in
        follower.add([RequestEvent("first_token", bid + 1, "long", rank, None, None, bid, NO_ATTRS)])
        follower.batch_span(bid, 7, 1000 + bid)
    follower.add([RequestEvent("finished", 400, "long", rank, None, 300, 299, NO_ATTRS)])
    spans = follower.settled()
    (request,) = [s for s in spans if s.name == "request"]
    assert [link[1] for link in request.links] == [1000 + bid for bid in range(MAX_LINKS)]
    assert request.attributes["gen_ai.usage.output_tokens"] == 300


def test_a_model_attribute_becomes_gen_ai_request_model(traced: Any) -> None:
    """The vllm and sglang profiles record the served model as ``model``: the span says it the GenAI way."""
    plugin = traced(process=False)
    sched_trace.request_event("arrived", "m1", prompt_tokens=3, model="tiny-llama")
    sched_trace.request_event("finished", "m1", output_tokens=1)
    sched_trace.request_event("arrived", "m2", model="alias", **{"gen_ai.request.model": "explicit"})
    sched_trace.request_event("finished", "m2", output_tokens=1)
    sched_trace.shutdown(timeout=60)
    by_rid = {attrs(s)["rid"]: attrs(s) for s in file_spans(plugin) if s.name == "request"}
    assert by_rid["m1"]["gen_ai.request.model"] == "tiny-llama"
    assert by_rid["m2"]["gen_ai.request.model"] == "explicit"  # an explicit GenAI name wins
