"""Request spans: one root per request across every rank, and each rank's span for it.

Request events (``sched_trace_request``) are folded per request with
:class:`sched_trace.analysis.RequestTimeline`. Every trace id and root span id is
derived from the run id and the request id (``sched_trace.export.request_trace``),
so the exporter processes of different ranks agree without talking. When a request
ends (or, seen only in batches, has gone quiet), this exporter writes:

* the root ``request`` span, only on the rank that owns the request
  (``request_owner``, see docs/otel.md): the lifecycle attributes, in the
  OpenTelemetry GenAI names where they exist (``gen_ai.request.model``,
  ``gen_ai.usage.input_tokens`` / ``output_tokens``, ``gen_ai.server.time_to_first_token``,
  ``gen_ai.server.time_per_output_token``, ``gen_ai.server.request.duration`` in
  seconds, ``gen_ai.latency.time_in_queue`` as vLLM's request spans have it), ``rid``,
  and links to the batch spans the request rode in;
* on every rank, its span for the request under that root (named and keyed like a
  thread span), with this rank's ``queue`` / ``prefill`` / ``decode`` phases below it;
  the per-request copies of batch spans (:mod:`.assemble`) hang under it too.

A thread that names a request only in stages outside any batch, and records no batch
and no request event (a front end: SGLang's tokenizer manager and its ``tokenize``),
writes its span for the request at once, with those stages under it, and never the
root: the root carries the lifecycle, which such a thread has not seen.

The root waits until the batch spans it links to were built, so it can link them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable, Optional

from sched_trace.analysis import RequestTimeline
from sched_trace.export import RequestOwner, rank_span_id, request_trace, traceparent_of

from .sampling import Sampler
from .spans import SpanRecord, thread_name

MAX_LINKS = 128
MAX_LIVE = 65536           # requests being followed; the oldest is closed early (and counted) past it
MAX_BATCH_INDEX = 65536    # batch id -> batch span, most recent
MAX_WAITING = 4096         # ended requests waiting for their batch spans
QUIET_NS = 30_000_000_000  # a request seen only in batches is closed after 30 s of the run without one


class _Request:
    __slots__ = ("timeline", "rank", "batch_ids", "first_ns", "last_ns", "front")

    def __init__(self, rid: str, rank: Any) -> None:
        self.timeline = RequestTimeline(rid)
        self.rank = rank
        self.batch_ids: dict[int, None] = {}  # ordered, unique
        self.first_ns: Optional[int] = None   # the window of its per-request copies
        self.last_ns: Optional[int] = None
        self.front = False                    # seen only in a front end's stages: no root here

    def ride(self, batch_id: Optional[int]) -> None:
        """This request was part of batch ``batch_id`` (the first MAX_LINKS batches are linked)."""
        if batch_id is not None and len(self.batch_ids) < MAX_LINKS:
            self.batch_ids[batch_id] = None

    def window(self) -> tuple[int, int]:
        timeline = self.timeline
        times = [t for t in (timeline.arrived_ns, timeline.scheduled_ns, timeline.first_token_ns,
                             timeline.end_ns, self.first_ns) if t is not None]
        start = min(times) if times else timeline.last_ns
        end = timeline.end_ns if timeline.end_ns is not None else max(timeline.last_ns, self.last_ns or 0)
        return start, max(start, end, self.last_ns or 0)


class RequestSpans:
    """Follows requests through their events and batches; builds their spans once they are settled."""

    def __init__(self, sglang_compat: bool, run: str, owner: RequestOwner, sampler: Sampler, ranks: Any) -> None:
        self.sglang_compat = sglang_compat
        self.run, self.owner, self.sampler, self.ranks = run, owner, sampler, ranks
        self._live: dict[str, _Request] = {}
        self._quiet: "OrderedDict[str, _Request]" = OrderedDict()  # seen only in batches, last touched last
        self._waiting: dict[str, _Request] = {}  # ended, in end order, until their batches are known
        self._batch_spans: dict[int, tuple[int, int]] = {}
        self._max_batch_id = -1
        self._built: dict[str, None] = {}  # recently built request ids
        self._newest_ns = 0
        self._schedulers: set[tuple[int, int]] = set()  # (pid, tid) that recorded batches or request events
        self.spans_built = 0
        self.evicted = 0
        self.roots = 0

    # --- what the exporter learns --------------------------------------------------

    def _request(self, rid: str, rank: Any) -> Optional[_Request]:
        request = self._live.get(rid) or self._waiting.get(rid)
        if request is None:
            if rid in self._built:
                return None  # a late phase of a request whose spans are out already
            if len(self._live) >= MAX_LIVE:
                self._close(next(iter(self._live)))
                self.evicted += 1
            request = self._live[rid] = _Request(rid, rank)
        return request

    def add(self, events: Iterable[Any]) -> None:
        """Fold request events in; ended requests start waiting for their batch spans."""
        for event in events:
            rid = event.request_id
            self._schedulers.add((event.rank.pid, event.rank.tid))
            request = self._request(rid, event.rank)
            if request is None:
                continue
            self._quiet.pop(rid, None)
            request.ride(event.batch_id)
            ended = request.timeline.add(event.phase, event.ts_ns, event.prompt_tokens, event.output_tokens,
                                         None, event.attrs or None)
            self._newest_ns = max(self._newest_ns, event.ts_ns)
            if ended:
                self._close(rid)

    def seen_in_scope(self, rid: str, rank: Any, start: int, end: int, batch_id: Optional[int]) -> tuple[int, int]:
        """A scope names ``rid``: ``(trace_id, parent span id)`` for its per-request copies."""
        thread = (rank.pid, rank.tid)
        if batch_id is not None:
            self._schedulers.add(thread)
        request = self._request(rid, rank)
        if request is not None:
            request.ride(batch_id)
            request.first_ns = start if request.first_ns is None else min(request.first_ns, start)
            request.last_ns = end if request.last_ns is None else max(request.last_ns, end)
            if batch_id is None and thread not in self._schedulers and not request.timeline.last_ns \
                    and not request.batch_ids and rid in self._live:
                request.front = True  # a front end's stage: its span for the request now, no root
                self._close(rid)
            elif not request.timeline.last_ns and rid in self._live:
                self._quiet[rid] = request
                self._quiet.move_to_end(rid)
        self._newest_ns = max(self._newest_ns, end)
        trace_id = request_trace(rid, self._traceparent(request, rid), self.run)[0]
        return trace_id, rank_span_id(rid, rank, self.run)

    def batch_span(self, batch_id: int, trace_id: int, span_id: int) -> None:
        """A batch span was built (its requests' roots link to it)."""
        if len(self._batch_spans) >= MAX_BATCH_INDEX:
            del self._batch_spans[next(iter(self._batch_spans))]
        self._batch_spans[batch_id] = (trace_id, span_id)
        self.batch_done(batch_id)

    def batch_done(self, batch_id: Optional[int]) -> None:
        """Batch ``batch_id`` is over, exported or sampled out."""
        if batch_id is not None and batch_id > self._max_batch_id:
            self._max_batch_id = batch_id

    # --- settling -----------------------------------------------------------------------

    def _close(self, rid: str) -> None:
        self._quiet.pop(rid, None)
        request = self._live.pop(rid, None)
        if request is not None:
            self._waiting[rid] = request

    def settled(self) -> list:
        """The spans of requests settled now: ended, and their batches known; quiet batch-only ones too."""
        quiet = self._quiet
        while quiet:  # requests with no lifecycle events: closed once no batch named them for a while
            request = next(iter(quiet.values()))
            if request.last_ns is not None and request.last_ns > self._newest_ns - QUIET_NS:
                break
            self._close(request.timeline.request_id)
        return self._settled(force=False)

    def settle(self) -> list:
        """The spans of every ended request now, with the batch links known so far (a flush)."""
        return self._settled(force=True)

    def finish(self) -> list:
        """Everything: waiting requests and unfinished ones as they stand."""
        for rid in list(self._live):
            self._close(rid)
        return self._settled(force=True)

    def _settled(self, force: bool) -> list:
        built: list = []
        waiting = self._waiting
        while waiting:
            request = next(iter(waiting.values()))
            # A batch is over once its span is known, or a later batch's is (it was sampled out).
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

    def _traceparent(self, request: Optional[_Request], rid: str) -> Optional[str]:
        explicit = request.timeline.attrs.get("traceparent") if request is not None else None
        return explicit if isinstance(explicit, str) else traceparent_of(rid)

    def _build(self, request: _Request) -> list:
        timeline = request.timeline
        rid = timeline.request_id
        traceparent = self._traceparent(request, rid)
        if not self.sampler.request(rid, traceparent):
            return []
        trace_id, root_id, parent = request_trace(rid, traceparent, self.run)
        start, end = request.window()
        spans = []
        if self.owner.owns(request.rank) and not request.front:
            links = tuple((self._batch_spans[bid][0], self._batch_spans[bid][1],
                           {"sched_trace.link": "batch", "bid": bid})
                          for bid in request.batch_ids if bid in self._batch_spans)[:MAX_LINKS]
            spans.append(SpanRecord(trace_id, root_id, parent, "request", start, end, self._attributes(request),
                                    links=links))
            self.roots += 1
        rank_attrs = self.ranks(request.rank)
        rank_id = rank_span_id(rid, request.rank, self.run)
        spans.append(SpanRecord(trace_id, rank_id, root_id, thread_name(rank_attrs), start, end,
                                {**rank_attrs, "rid": rid, "sched_trace.kind": "request_rank"}))
        for name, phase_start, phase_end in (
                ("queue", timeline.arrived_ns, timeline.scheduled_ns),
                ("prefill", timeline.scheduled_ns, timeline.first_token_ns),
                ("decode", timeline.first_token_ns, timeline.end_ns)):
            if phase_start is not None and phase_end is not None and phase_end >= phase_start:
                spans.append(SpanRecord(trace_id, rank_span_id(rid + "/" + name, request.rank, self.run), rank_id,
                                        name, phase_start, phase_end, {"rid": rid, "sched_trace.kind": "request_phase"}))
        return spans

    def _attributes(self, request: _Request) -> dict[str, Any]:
        timeline = request.timeline
        attrs: dict[str, Any] = {"rid": timeline.request_id, "sched_trace.kind": "request",
                                 "sched_trace.request.outcome": timeline.outcome or "unfinished"}
        if self.sglang_compat:
            attrs["module"] = "sglang::request"  # what SGLang's converter takes for a request root
        for key, value in (("gen_ai.usage.input_tokens", timeline.prompt_tokens),
                           ("gen_ai.usage.output_tokens", timeline.output_tokens),
                           ("gen_ai.latency.time_in_queue", _seconds(timeline.queue_ns)),
                           ("gen_ai.server.time_to_first_token", _seconds(timeline.ttft_ns)),
                           ("gen_ai.server.time_per_output_token", _seconds(timeline.tpot_ns)),
                           ("gen_ai.server.request.duration", _seconds(timeline.e2e_ns))):
            if value is not None:
                attrs[key] = value
        extra = {k: v for k, v in timeline.attrs.items() if k != "traceparent" and v is not None}
        if "finish_reason" in extra:
            attrs["gen_ai.response.finish_reasons"] = [str(extra["finish_reason"])]
        if "model" in extra and "gen_ai.request.model" not in extra:  # the vllm/sglang profiles' key
            attrs["gen_ai.request.model"] = str(extra["model"])
        attrs.update(extra)
        return attrs

    def stats(self) -> dict[str, int]:
        return {"request_spans": self.spans_built, "request_roots": self.roots, "open_requests": len(self._live),
                "requests_evicted": self.evicted}


def _seconds(value_ns: Optional[float]) -> Optional[float]:
    return None if value_ns is None else value_ns / 1e9
