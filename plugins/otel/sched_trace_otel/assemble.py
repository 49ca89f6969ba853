"""Records to spans: scopes, thread spans, stage nesting, links and per-request fan-out.

Runs in the exporter process (or the exporter thread when ``process = false``).
Records arrive in end order per thread, so a scope (a batch, or a top-level
stage outside any batch) is complete when its top-level record arrives; its
children wait in a per-thread list until then.

Span model (after SGLang's tracing): per scope and thread a *thread span* that
carries the rank identity; the batch span under it; stage spans nested below by
``parent_id``. Each first-level stage span links to the previous one on the same
thread. Requests named by a batch get spans in their own traces (see
:meth:`Assembler._request_spans`).
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple, Optional

from sched_trace.export import parse_traceparent

from .sampling import Sampler, rid_hash
from .settings import OtelSettings
from .wire import (ATTRS, BATCH_ID, BATCH_SIZE, END, ERROR, KIND, LEVEL, MICROBATCH, NAME,
                   PARENT_ID, RANK, REQUESTS, SPAN_ID, START, TID)

STATUS_UNSET, STATUS_ERROR = 0, 2
MAX_PENDING_PER_THREAD = 65536
MAX_LINKS = 128
MAX_REQUESTS_REMEMBERED = 65536


class SpanRecord(NamedTuple):
    """One finished span, ready for any encoder (OTLP-JSON, protobuf, SDK ReadableSpan)."""

    trace_id: int
    span_id: int
    parent_span_id: int
    name: str
    start_ns: int
    end_ns: int
    attributes: dict
    events: tuple = ()       # (name, time_ns, attributes)
    links: tuple = ()        # (trace_id, span_id, attributes)
    status_code: int = STATUS_UNSET
    status_message: str = ""


class Assembler:
    """Stateful: remembers ranks, unfinished scopes and the last first-level stage per thread."""

    def __init__(self, settings: OtelSettings, salt: int) -> None:
        self.settings = settings
        self.salt = salt << 32
        self.ranks: dict[int, dict[str, Any]] = {}
        self.pending: dict[int, list] = {}
        self.previous: dict[int, tuple[int, int]] = {}
        # sglang_compat: the last first-level copy per (request, thread), as SGLang links them
        self.previous_request: dict[tuple[str, int], tuple[int, int]] = {}
        self.sampler = Sampler(settings.batch_ratio, settings.batch_every,
                               settings.request_ratio, settings.request_every)
        self._random = random.Random()
        self.orphans = 0

    def add_ranks(self, ranks: list) -> None:
        for index, attrs in ranks:
            self.ranks[index] = attrs

    def _sid(self, local_id: int) -> int:
        return (self.salt ^ local_id) or 1

    def feed(self, records: list) -> list[SpanRecord]:
        spans: list[SpanRecord] = []
        pending = self.pending
        for record in records:
            tid = record[TID]
            if record[PARENT_ID] == 0:
                group = pending.pop(tid, [])
                group.append(record)
                self._scope(group, spans)
            else:
                group = pending.setdefault(tid, [])
                group.append(record)
                if len(group) >= MAX_PENDING_PER_THREAD:  # its top-level end was lost
                    self.orphans += len(group)
                    self._scope(pending.pop(tid), spans)
        return spans

    def finish(self) -> list[SpanRecord]:
        """Scopes whose top-level record never came (shutdown mid-batch, or dropped)."""
        spans: list[SpanRecord] = []
        for tid in list(self.pending):
            group = self.pending.pop(tid)
            self.orphans += len(group)
            self._scope(group, spans)
        return spans

    # --- one scope -------------------------------------------------------------

    def _thread_span(self, top: tuple, trace_id: int, parent: int, start: int, end: int,
                     extra: Optional[dict] = None) -> SpanRecord:
        attrs = dict(self.ranks.get(top[RANK], {}))
        if extra:
            attrs.update(extra)
        name = _thread_name(attrs)
        return SpanRecord(trace_id, self._random.getrandbits(64) or 1, parent, name, start, end, attrs)

    def _scope(self, group: list, spans: list[SpanRecord]) -> None:
        top = group[-1]
        tid = top[TID]
        trace_id = self._random.getrandbits(128) or 1
        sampled = self.sampler.batch(tid, trace_id)
        start = min(r[START] for r in group)
        end = max(r[END] for r in group)
        local_ids = {r[SPAN_ID] for r in group}
        thread = self._thread_span(top, trace_id, 0, start, end)
        if sampled:
            spans.append(thread)
            first_level_parent = top[SPAN_ID] if top[PARENT_ID] == 0 and top[KIND] == 1 else None
            for record in group:
                parent = self._sid(record[PARENT_ID]) if record[PARENT_ID] in local_ids else thread.span_id
                links = ()
                first_level = record[KIND] == 0 and (
                    record[PARENT_ID] == first_level_parent or record[PARENT_ID] not in local_ids)
                if first_level:
                    links = self._link_previous(tid, trace_id, self._sid(record[SPAN_ID]))
                spans.append(self._stage_span(record, top, trace_id, self._sid(record[SPAN_ID]), parent, links))
        if self.settings.requests != "off" and any(r[REQUESTS] for r in group):
            self._requests(group, top, trace_id if sampled else 0, spans)

    def _link_previous(self, tid: int, trace_id: int, span_id: int) -> tuple:
        previous = self.previous.get(tid)
        self.previous[tid] = (trace_id, span_id)
        if previous is None:
            return ()
        return ((previous[0], previous[1], {"sched_trace.link": "previous_stage"}),)

    def _stage_span(self, record: tuple, top: tuple, trace_id: int, span_id: int, parent: int,
                    links: tuple, extra: Optional[dict] = None) -> SpanRecord:
        attrs: dict[str, Any] = {"sched_trace.level": record[LEVEL],
                                 "sched_trace.kind": "batch" if record[KIND] else "stage"}
        if record[MICROBATCH] is not None:
            attrs["pp_mb_id"] = record[MICROBATCH]
        if record[BATCH_ID] is not None:
            attrs["bid"] = record[BATCH_ID]
        if record[BATCH_SIZE] is not None:
            attrs["batch_size"] = record[BATCH_SIZE]
        if record[RANK] != top[RANK]:  # a per-call rank override (pp stage index ...)
            scope_rank = self.ranks.get(top[RANK], {})
            for key, value in self.ranks.get(record[RANK], {}).items():
                if scope_rank.get(key) != value:
                    attrs[key] = value
        attrs.update(record[ATTRS])
        if extra:
            attrs.update(extra)
        events, code, message = (), STATUS_UNSET, ""
        if record[ERROR] is not None:
            kind, text, stack = record[ERROR]
            code, message = STATUS_ERROR, f"{kind}: {text}"
            events = (("exception", record[END], {
                "exception.type": kind, "exception.message": text, "exception.stacktrace": stack,
                "exception.escaped": True}),)
        return SpanRecord(trace_id, span_id, parent, record[NAME], record[START], record[END], attrs,
                          events, links, code, message)

    # --- requests ----------------------------------------------------------------

    def _requests(self, group: list, top: tuple, batch_trace: int, spans: list[SpanRecord]) -> None:
        by_id = {r[SPAN_ID]: r for r in group}
        inherited: dict[int, Optional[tuple]] = {}

        def requests_of(record: tuple) -> Optional[tuple]:
            local = record[SPAN_ID]
            if local not in inherited:
                own = record[REQUESTS]
                parent = by_id.get(record[PARENT_ID])
                inherited[local] = own if own else (requests_of(parent) if parent else None)
            return inherited[local]

        per_request: dict[tuple, list] = {}
        for record in group:
            for request in requests_of(record) or ():
                per_request.setdefault(request, []).append(record)
        if self.settings.requests == "links":
            self._request_links(group, requests_of, batch_trace, spans)
            return
        for (rid, traceparent), records in per_request.items():
            if self.sampler.request(rid, traceparent):
                self._request_spans(rid, traceparent, records, top, batch_trace, spans)

    def _request_spans(self, rid: str, traceparent: Optional[str], records: list, top: tuple,
                       batch_trace: int, spans: list[SpanRecord]) -> None:
        """Per request and scope: [root with module=sglang::request,] thread span, event spans.

        Each event span links to its copy in the batch trace, so the request trace
        and the batch timeline point at each other. With ``sglang_compat`` each
        first-level copy also links to the request's previous one on this thread,
        the link SGLang's own tracing makes and its converter draws as an arrow.
        """
        parsed = parse_traceparent(traceparent) if traceparent else None
        trace_id, parent = (parsed[0], parsed[1]) if parsed else (rid_hash(rid, 16), 0)
        start = min(r[START] for r in records)
        end = max(r[END] for r in records)
        if self.settings.sglang_compat:
            root = SpanRecord(trace_id, self._random.getrandbits(64) or 1, parent, f"Req {rid[:8]}", start, end,
                              {"module": "sglang::request", "rid": rid})
            spans.append(root)
            parent = root.span_id
        thread = self._thread_span(top, trace_id, parent, start, end, {"rid": rid})
        spans.append(thread)
        copies = {r[SPAN_ID]: self._random.getrandbits(64) or 1 for r in records}
        previous = self._previous_copies(rid, top[TID], trace_id, records, copies) if self.settings.sglang_compat else {}
        for record in records:
            links = ((batch_trace, self._sid(record[SPAN_ID]), {"sched_trace.link": "batch"}),) if batch_trace else ()
            links += previous.get(record[SPAN_ID], ())
            parent_copy = copies.get(record[PARENT_ID], thread.span_id)
            spans.append(self._stage_span(record, top, trace_id, copies[record[SPAN_ID]], parent_copy, links,
                                          {"rid": rid}))

    def _previous_copies(self, rid: str, tid: int, trace_id: int, records: list, copies: dict) -> dict:
        """Links from each first-level copy (child of the thread span) to the request's previous one."""
        links: dict[int, tuple] = {}
        key = (rid, tid)
        for record in sorted((r for r in records if r[PARENT_ID] not in copies), key=lambda r: r[START]):
            before = self.previous_request.pop(key, None)  # re-inserted last: the oldest request goes first
            if before is not None:
                links[record[SPAN_ID]] = ((before[0], before[1], {"sched_trace.link": "previous_stage"}),)
            self.previous_request[key] = (trace_id, copies[record[SPAN_ID]])
        while len(self.previous_request) > MAX_REQUESTS_REMEMBERED:  # finished requests are never asked for again
            del self.previous_request[next(iter(self.previous_request))]
        return links

    def _request_links(self, group: list, requests_of: Any, batch_trace: int, spans: list[SpanRecord]) -> None:
        """``requests = "links"``: batch-trace spans link to each request's incoming context."""
        if not batch_trace:
            return
        index = {s.span_id: i for i, s in enumerate(spans) if s.trace_id == batch_trace}
        for record in group:
            if not record[REQUESTS]:
                continue
            position = index.get(self._sid(record[SPAN_ID]))
            if position is None:
                continue
            links = list(spans[position].links)
            for rid, traceparent in record[REQUESTS]:
                parsed = parse_traceparent(traceparent) if traceparent else None
                if parsed and len(links) < MAX_LINKS and self.sampler.request(rid, traceparent):
                    links.append((parsed[0], parsed[1], {"rid": rid}))
            spans[position] = spans[position]._replace(links=tuple(links))


def _thread_name(attrs: dict) -> str:
    name = f"{str(attrs.get('host_id', ''))[:8]}:{attrs.get('thread_label', 'thread')}"
    for key, tag in (("pp_rank", "PP"), ("dp_rank", "DP"), ("tp_rank", "TP")):
        if key in attrs:
            name += f"-{tag}{attrs[key]}"
    return name
