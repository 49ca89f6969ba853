"""Events to spans: scopes, thread spans, stage nesting, links and per-request copies.

Runs in the exporter (its own process by default). End events arrive in end order
per thread, so a scope (a batch, or a top-level stage outside any batch) is complete
when its top-level event arrives; its children wait in a per-thread list until then.

Span model (after SGLang's tracing): per scope and thread a *thread span* that
carries the rank identity; the batch span under it; stage spans nested below by
``parent_id``. Each first-level stage span links to the previous one on the same
thread. With ``requests = "spans"``, every request a scope names gets copies of the
scope's spans in the request's own trace, under this rank's span for the request
(:mod:`.request_spans`), each linking back to its original.
"""

from __future__ import annotations

import random
from types import MappingProxyType
from typing import Any, Mapping

from sched_trace.export import parse_traceparent, plain_value, traceparent_of

from .request_spans import RequestSpans
from .settings import OtelSettings
from .spans import EventSpan, SpanRecord, thread_name

MAX_PENDING_PER_THREAD = 65536
MAX_LINKS = 128
MAX_REQUESTS_REMEMBERED = 65536
_NO_REQUESTS: tuple = ()


class RankAttributes:
    """A RankInfo's attributes, worked out once per distinct rank (the frames share its object)."""

    def __init__(self) -> None:
        self._known: dict[Any, Mapping[str, Any]] = {}
        self._names: dict[int, str] = {}
        self._last: tuple[Any, Mapping[str, Any]] = (None, {})

    def __call__(self, rank: Any) -> Mapping[str, Any]:
        """Read-only: the encoders write each rank's attributes once and reuse the bytes."""
        last = self._last
        if last[0] is rank:
            return last[1]
        attrs = self._known.get(rank)
        if attrs is None:
            if len(self._known) > 4096:
                self._known.clear()
                self._names.clear()
            attrs = self._known[rank] = MappingProxyType({k: plain_value(v) for k, v in rank.as_attributes().items()})
        self._last = (rank, attrs)
        return attrs

    def name(self, rank: Any) -> str:
        """The thread span's name for ``rank`` (``host:Label-PPn-DPn-TPn``), made once per rank."""
        attrs = self(rank)
        name = self._names.get(id(attrs))
        if name is None:
            name = self._names[id(attrs)] = thread_name(attrs)  # attrs outlive the entry: _known holds them
        return name

    def overrides(self, rank: Any, scope_rank: Any) -> Mapping[str, Any]:
        """The keys of a per-call rank override (a pp stage index ...) that the thread span does not say."""
        if rank is scope_rank or rank == scope_rank:
            return {}
        scope = self(scope_rank)
        return {key: value for key, value in self(rank).items() if scope.get(key) != value}


class Assembler:
    """Stateful: unfinished scopes, and the last first-level span per thread (and per request)."""

    def __init__(self, settings: OtelSettings, salt: int, requests: RequestSpans, ranks: RankAttributes) -> None:
        self.settings = settings
        self.salt = salt << 32
        self.requests = requests
        self.ranks = ranks
        self.pending: dict[int, list] = {}
        self.previous: dict[int, tuple[int, int]] = {}
        # sglang_compat: the last first-level copy per (request, thread), as SGLang links them
        self.previous_request: dict[tuple[str, int], tuple[int, int]] = {}
        self.sampler = requests.sampler
        self._random = random.Random()
        self.orphans = 0
        self.truncated_requests = 0  # requests past max_requests in one event: no copies for them

    def _sid(self, local_id: int) -> int:
        return (self.salt ^ local_id) or 1

    def feed(self, events: list) -> list:
        spans: list = []
        pending = self.pending
        for event in events:
            tid = event.rank.tid
            if event.parent_id == 0:
                group = pending.pop(tid, [])
                group.append(event)
                self._scope(group, spans)
            else:
                group = pending.setdefault(tid, [])
                group.append(event)
                if len(group) >= MAX_PENDING_PER_THREAD:  # its top-level end was lost
                    self.orphans += len(group)
                    self._scope(pending.pop(tid), spans)
        return spans

    def finish(self) -> list:
        """Scopes whose top-level event never came (shutdown mid-batch, or dropped)."""
        spans: list = []
        for tid in list(self.pending):
            group = self.pending.pop(tid)
            self.orphans += len(group)
            self._scope(group, spans)
        return spans

    # --- one scope -------------------------------------------------------------

    def _scope(self, group: list, spans: list) -> None:
        top = group[-1]
        tid = top.rank.tid
        trace_id = self._random.getrandbits(128) or 1
        sampled = self.sampler.batch(tid, trace_id)
        if sampled:
            if top.parent_id == 0:  # a scope's top-level call encloses every call inside it
                start, end = top.start_ns, top.end_ns
            else:  # the pieces of a scope whose top-level end never came
                start, end = min(e.start_ns for e in group), max(e.end_ns for e in group)
            rank_attrs = self.ranks(top.rank)
            thread = SpanRecord(trace_id, self._random.getrandbits(64) or 1, 0, self.ranks.name(top.rank), start, end,
                                rank_attrs)
            spans.append(thread)
            local_ids = {e.span_id for e in group}
            first_level_parent = top.span_id if top.kind == "batch" else None
            link_requests = self.settings.requests == "links"
            salt, top_rank, no_overrides = self.salt, top.rank, {}
            for event in group:
                parent_id = event.parent_id
                parent = ((salt ^ parent_id) or 1) if parent_id in local_ids else thread.span_id
                span_id = (salt ^ event.span_id) or 1
                links = ()
                if event.kind == "stage" and (parent_id == first_level_parent or parent_id not in local_ids):
                    links = self._link_previous(tid, trace_id, span_id)
                if link_requests and event.attrs.get("requests"):
                    links += self._incoming_links(event.attrs["requests"])
                extra = no_overrides if event.rank is top_rank else self.ranks.overrides(event.rank, top_rank)
                spans.append(EventSpan(event, trace_id, span_id, parent, links, extra))
                if event.kind == "batch" and event.batch_id is not None:
                    self.requests.batch_span(event.batch_id, trace_id, span_id)
        else:
            self.requests.batch_done(top.batch_id)
        if self.settings.requests == "spans" and any(e.attrs.get("requests") for e in group):
            self._requests(group, top, trace_id if sampled else 0, spans)

    def _link_previous(self, tid: int, trace_id: int, span_id: int) -> tuple:
        previous = self.previous.get(tid)
        self.previous[tid] = (trace_id, span_id)
        if previous is None:
            return ()
        return ((previous[0], previous[1], {"sched_trace.link": "previous_stage"}),)

    # --- requests ----------------------------------------------------------------

    def _requests(self, group: list, top: Any, batch_trace: int, spans: list) -> None:
        by_id = {e.span_id: e for e in group}
        inherited: dict[int, tuple] = {}

        def requests_of(event: Any) -> tuple:
            local = event.span_id
            if local not in inherited:
                own = event.attrs.get("requests")
                parent = by_id.get(event.parent_id)
                if own and len(own) > self.settings.max_requests:
                    self.truncated_requests += len(own) - self.settings.max_requests
                    own = own[:self.settings.max_requests]
                inherited[local] = tuple(own) if own else (requests_of(parent) if parent else _NO_REQUESTS)
            return inherited[local]

        per_request: dict[str, list] = {}
        for event in group:
            for rid in requests_of(event):
                per_request.setdefault(rid, []).append(event)
        for rid, events in per_request.items():
            if self.sampler.request(rid, traceparent_of(rid)):
                self._request_copies(rid, events, top, batch_trace, spans)

    def _request_copies(self, rid: str, events: list, top: Any, batch_trace: int, spans: list) -> None:
        """Copies of a scope's spans in the request's trace, under this rank's span for the request.

        Each copy links to its original in the batch trace, so the request trace and the batch
        timeline point at each other. With ``sglang_compat`` each first-level copy also links to
        the request's previous one on this thread, the link SGLang's own tracing makes and its
        converter draws as an arrow.
        """
        start = min(e.start_ns for e in events)
        end = max(e.end_ns for e in events)
        trace_id, parent = self.requests.seen_in_scope(rid, top.rank, start, end, top.batch_id)
        copies = {e.span_id: self._random.getrandbits(64) or 1 for e in events}
        previous = self._previous_copies(rid, top.rank.tid, trace_id, events, copies) \
            if self.settings.sglang_compat else {}
        for event in events:
            links = ((batch_trace, self._sid(event.span_id), {"sched_trace.link": "batch"}),) if batch_trace else ()
            links += previous.get(event.span_id, ())
            extra = self.ranks.overrides(event.rank, top.rank)
            spans.append(EventSpan(event, trace_id, copies[event.span_id], copies.get(event.parent_id, parent),
                                   links, {**extra, "rid": rid}))

    def _previous_copies(self, rid: str, tid: int, trace_id: int, events: list, copies: dict) -> dict:
        """Links from each first-level copy (child of the rank span) to the request's previous one."""
        links: dict[int, tuple] = {}
        key = (rid, tid)
        for event in sorted((e for e in events if e.parent_id not in copies), key=lambda e: e.start_ns):
            before = self.previous_request.pop(key, None)  # re-inserted last: the oldest request goes first
            if before is not None:
                links[event.span_id] = ((before[0], before[1], {"sched_trace.link": "previous_stage"}),)
            self.previous_request[key] = (trace_id, copies[event.span_id])
        while len(self.previous_request) > MAX_REQUESTS_REMEMBERED:  # finished requests are never asked again
            del self.previous_request[next(iter(self.previous_request))]
        return links

    def _incoming_links(self, rids: Any) -> tuple:
        """``requests = "links"``: a batch span links to each request's incoming trace context."""
        links = []
        for rid in rids:
            traceparent = traceparent_of(rid)
            parsed = parse_traceparent(traceparent) if traceparent else None
            if parsed and len(links) < MAX_LINKS and self.sampler.request(rid, traceparent):
                links.append((parsed[0], parsed[1], {"rid": rid}))
        return tuple(links)
