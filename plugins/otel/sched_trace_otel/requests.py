"""Request lifecycle spans: one span per request, with queue / prefill / decode children.

Request events (``sched_trace_request``) travel like stage events: the exporter
thread of the scheduler process turns each into a small record
(:func:`request_record`), and the pipeline (exporter process, or exporter thread
with ``process = false``) folds them per request with
:class:`sched_trace.analysis.RequestTimeline`. When a request ends, its span waits
until the batch spans it was part of have been built, so it can link to them:

* the batches open when its phases were reported (the events' ``batch_id``), and
* the batches that named it in ``requests=`` (their per-request copies carry ``rid``).

Span model: the request span (``request``) is a root in the request's trace, the
same trace the per-request copies of batch spans use (the incoming
``traceparent`` when the request carried one, else a hash of ``rid``), so a
backend shows the lifecycle and the batches it rode in together. Attributes use
the OpenTelemetry GenAI names where they exist (``gen_ai.request.model``,
``gen_ai.usage.input_tokens`` / ``output_tokens``, and the server metric names
``gen_ai.server.time_to_first_token``, ``gen_ai.server.time_per_output_token``,
``gen_ai.server.request.duration`` in seconds), ``rid`` as SGLang names it, and
``gen_ai.latency.time_in_queue`` as vLLM's request spans do.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Optional

from sched_trace.analysis import RequestTimeline
from sched_trace.export import parse_traceparent

from . import assemble, wire  # module imports: wire imports this module while assemble loads
from .propagation import request_context
from .sampling import Sampler, rid_hash

REQUEST_RECORD = 2  # record[0] of a request record (0 stage, 1 batch)
# Request record fields, by position.
_PHASE, _TS, _RANK, _RID, _PROMPT, _OUTPUT, _BATCH_ID, _ATTRS = range(1, 9)
MAX_LINKS = 128
START_PHASES = ("arrived", "queued")
MAX_LIVE = 65536           # requests being followed; the oldest is dropped (and counted) past it
MAX_BATCH_INDEX = 65536    # batch id -> batch span, most recent
MAX_WAITING = 4096         # ended requests waiting for their batch spans


def request_record(event: Any, rank_index: int) -> tuple:
    """A picklable record of one :class:`~sched_trace.events.RequestEvent`."""
    attrs = event.attrs
    extra = tuple((k, wire.attribute_value(v)) for k, v in attrs.items() if v is not None) if attrs else ()
    if event.phase in START_PHASES and not (attrs and "traceparent" in attrs):
        traceparent = request_context(event.request_id)[1]  # registered with register_traceparent()
        if traceparent is not None:
            extra += (("traceparent", traceparent),)
    return (REQUEST_RECORD, event.phase, event.ts_ns, rank_index, event.request_id,
            event.prompt_tokens, event.output_tokens, event.batch_id, extra)


def split_requests(records: list) -> tuple[list, list]:
    """``(span records, request records)`` out of one frame of records."""
    requests = [r for r in records if r[0] == REQUEST_RECORD]
    if not requests:
        return records, requests
    return [r for r in records if r[0] != REQUEST_RECORD], requests


class _Request:
    __slots__ = ("timeline", "rank_index", "batch_ids")

    def __init__(self, rid: str, rank_index: int) -> None:
        self.timeline = RequestTimeline(rid)
        self.rank_index = rank_index
        self.batch_ids: dict[int, None] = {}  # ordered, unique

    def ride(self, batch_id: int) -> None:
        """This request was part of batch ``batch_id`` (the first MAX_LINKS batches are linked)."""
        if len(self.batch_ids) < MAX_LINKS:
            self.batch_ids[batch_id] = None


class RequestSpans:
    """Follows requests through their records and builds their spans once their batches are known."""

    def __init__(self, ranks: dict[int, dict[str, Any]], sampler: Sampler) -> None:
        self.ranks = ranks  # the assembler's rank index -> attributes, shared
        self.sampler = sampler  # request_ratio / request_every decide, as for per-request copies
        self._random = random.Random()
        self._live: dict[str, _Request] = {}
        self._waiting: dict[str, _Request] = {}  # ended, in end order, until their batches are known
        self._batch_spans: dict[int, tuple[int, int]] = {}
        self._max_batch_id = -1
        self._built: dict[str, None] = {}  # recently built request ids
        self.spans_built = 0
        self.evicted = 0

    def add(self, records: Iterable[tuple]) -> None:
        """Fold request records into their requests; ended ones start waiting for their batches."""
        live = self._live
        for record in records:
            rid = record[_RID]
            request = live.get(rid) or self._waiting.get(rid)
            if request is None:
                if rid in self._built:
                    continue  # a late phase of a request whose span is out already
                if len(live) >= MAX_LIVE:
                    del live[next(iter(live))]
                    self.evicted += 1
                request = live[rid] = _Request(rid, record[_RANK])
            if record[_BATCH_ID] is not None:
                request.ride(record[_BATCH_ID])
            ended = request.timeline.add(record[_PHASE], record[_TS], record[_PROMPT], record[_OUTPUT],
                                         None, dict(record[_ATTRS]) if record[_ATTRS] else None)
            if ended and rid in live:
                del live[rid]
                self._waiting[rid] = request

    def spans(self, batch_spans: Iterable[assemble.SpanRecord]) -> list[assemble.SpanRecord]:
        """Learn from freshly built batch spans; the spans of requests now settled."""
        for span in batch_spans:
            attrs = span.attributes
            if attrs.get("sched_trace.kind") != "batch" or "bid" not in attrs:
                continue
            bid = attrs["bid"]
            rid = attrs.get("rid")
            if rid is None:  # the batch span itself, in the batch trace
                self._index(bid, span)
            else:  # its per-request copy: this request rode in that batch
                request = self._live.get(rid) or self._waiting.get(rid)
                if request is not None:
                    request.ride(bid)
        return self._settled(force=False)

    def finish(self, batch_spans: Iterable[assemble.SpanRecord] = ()) -> list[assemble.SpanRecord]:
        """Everything: waiting requests with the links known now, unfinished ones as they stand."""
        built = self.spans(batch_spans)
        self._waiting.update(self._live)
        self._live.clear()
        return built + self._settled(force=True)

    def settle(self) -> list[assemble.SpanRecord]:
        """The spans of every ended request now, with the batch links known so far (a flush)."""
        return self._settled(force=True)

    def _index(self, bid: int, span: assemble.SpanRecord) -> None:
        if len(self._batch_spans) >= MAX_BATCH_INDEX:
            del self._batch_spans[next(iter(self._batch_spans))]
        self._batch_spans[bid] = (span.trace_id, span.span_id)
        self._max_batch_id = max(self._max_batch_id, bid)

    def _settled(self, force: bool) -> list[assemble.SpanRecord]:
        built: list[assemble.SpanRecord] = []
        waiting = self._waiting
        while waiting:
            request = next(iter(waiting.values()))
            # A batch is settled once its span is known, or a later batch's span is (it was sampled out).
            if not force and len(waiting) <= MAX_WAITING and any(
                    bid not in self._batch_spans and bid >= self._max_batch_id for bid in request.batch_ids):
                break
            rid = request.timeline.request_id
            del waiting[rid]
            self._built[rid] = None
            if len(self._built) > MAX_WAITING:
                del self._built[next(iter(self._built))]
            built.extend(self._build(request))
        self.spans_built += len(built)
        return built

    # --- one request's spans -------------------------------------------------------

    def _build(self, request: _Request) -> list[assemble.SpanRecord]:
        timeline = request.timeline
        rid = timeline.request_id
        traceparent = timeline.attrs.get("traceparent")
        if not self.sampler.request(rid, traceparent):
            return []
        parsed = parse_traceparent(traceparent) if isinstance(traceparent, str) else None
        trace_id, parent = (parsed[0], parsed[1]) if parsed else (rid_hash(rid, 16), 0)
        start = timeline.arrived_ns
        if start is None:
            start = min(t for t in (timeline.scheduled_ns, timeline.first_token_ns, timeline.last_ns)
                        if t is not None)
        end = timeline.end_ns if timeline.end_ns is not None else timeline.last_ns
        root_id = self._random.getrandbits(64) or 1
        links = tuple((self._batch_spans[bid][0], self._batch_spans[bid][1],
                       {"sched_trace.link": "batch", "bid": bid})
                      for bid in request.batch_ids if bid in self._batch_spans)[:MAX_LINKS]
        spans = [assemble.SpanRecord(trace_id, root_id, parent, "request", start, max(start, end),
                            self._attributes(request), links=links)]
        for name, phase_start, phase_end in (
                ("queue", timeline.arrived_ns, timeline.scheduled_ns),
                ("prefill", timeline.scheduled_ns, timeline.first_token_ns),
                ("decode", timeline.first_token_ns, timeline.end_ns)):
            if phase_start is not None and phase_end is not None and phase_end >= phase_start:
                spans.append(assemble.SpanRecord(trace_id, self._random.getrandbits(64) or 1, root_id, name,
                                        phase_start, phase_end,
                                        {"rid": rid, "sched_trace.kind": "request_phase"}))
        return spans

    def _attributes(self, request: _Request) -> dict[str, Any]:
        timeline = request.timeline
        attrs: dict[str, Any] = dict(self.ranks.get(request.rank_index, {}))
        attrs.update({"rid": timeline.request_id, "sched_trace.kind": "request",
                      "sched_trace.request.outcome": timeline.outcome or "unfinished"})
        for key, value in (("gen_ai.usage.input_tokens", timeline.prompt_tokens),
                           ("gen_ai.usage.output_tokens", timeline.output_tokens),
                           ("gen_ai.latency.time_in_queue", _seconds(timeline.queue_ns)),
                           ("gen_ai.server.time_to_first_token", _seconds(timeline.ttft_ns)),
                           ("gen_ai.server.time_per_output_token", _seconds(timeline.tpot_ns)),
                           ("gen_ai.server.request.duration", _seconds(timeline.e2e_ns))):
            if value is not None:
                attrs[key] = value
        extra = {k: v for k, v in timeline.attrs.items() if k != "traceparent"}
        if "finish_reason" in extra:
            attrs["gen_ai.response.finish_reasons"] = [str(extra["finish_reason"])]
        if "model" in extra and "gen_ai.request.model" not in extra:  # the vllm/sglang profiles' key
            attrs["gen_ai.request.model"] = str(extra["model"])
        attrs.update(extra)
        return attrs

    def stats(self) -> dict[str, int]:
        return {"request_spans": self.spans_built, "open_requests": len(self._live),
                "requests_evicted": self.evicted}


def _seconds(value_ns: Optional[float]) -> Optional[float]:
    return None if value_ns is None else value_ns / 1e9
