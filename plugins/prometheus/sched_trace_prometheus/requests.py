"""Request latency histograms (TTFT, TPOT, queue time, end to end) per rank, on the exporter thread.

Only the rank that owns a request counts it (``request_owner``, the same rule as the
otel plugin's request roots): under pipeline or tensor parallelism every rank sees
each request, and the histograms count each request once.
Each request's phases are folded by :class:`sched_trace.analysis.RequestTimeline`
(first arrived/scheduled/first token, last finished/aborted). A duration is
observed once, as soon as it is known: queue time at the first ``scheduled``,
TTFT at the first ``first_token``, TPOT and end-to-end latency at the end. The
labels are the rank keys of the thread that saw that phase; the request id is
never a label.
"""

from __future__ import annotations

from typing import Any, Optional

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

from sched_trace.analysis import RequestTimeline
from sched_trace.export import RequestOwner

from .settings import NAMESPACE, Settings

# Positions in a label set's tuple of metric children.
TTFT, TPOT, QUEUE, E2E, FINISHED, ABORTED, PROMPT, OUTPUT = range(8)
RECENTLY_ENDED = 4096  # ended request ids remembered, to ignore their late phases


class RequestMetrics:
    """Owns the request metric objects and the table of live (unfinished) requests."""

    def __init__(self, settings: Settings) -> None:
        ranks = list(settings.rank_labels)
        buckets = settings.request_buckets
        self.max_live = settings.max_live_requests
        self.owner = RequestOwner.parse(settings.request_owner, "[plugins.prometheus]", "request_owner")
        self.not_owned = 0    # request events of requests another rank counts
        self.ttft = Histogram(
            "request_time_to_first_token_seconds", "Arrival to first output token, per request.",
            ranks, namespace=NAMESPACE, buckets=buckets, registry=None)
        self.tpot = Histogram(
            "request_time_per_output_token_seconds",
            "(end - first token) / (output tokens - 1), per request with more than one token.",
            ranks, namespace=NAMESPACE, buckets=buckets, registry=None)
        self.queue = Histogram(
            "request_queue_time_seconds", "Arrival (or queued) to first scheduled, per request.",
            ranks, namespace=NAMESPACE, buckets=buckets, registry=None)
        self.e2e = Histogram(
            "request_e2e_latency_seconds", "Arrival to finished or aborted, per request.",
            ranks, namespace=NAMESPACE, buckets=buckets, registry=None)
        self.requests = Counter(
            "requests", "Requests that ended, by outcome (finished, aborted).",
            ["outcome", *ranks], namespace=NAMESPACE, registry=None)
        self.prompt_tokens = Counter(
            "request_prompt_tokens", "Prompt tokens of requests that ended.",
            ranks, namespace=NAMESPACE, registry=None)
        self.output_tokens = Counter(
            "request_output_tokens", "Output tokens of requests that ended.",
            ranks, namespace=NAMESPACE, registry=None)
        self.metrics = (self.ttft, self.tpot, self.queue, self.e2e, self.requests,
                        self.prompt_tokens, self.output_tokens)
        self._live: dict[str, RequestTimeline] = {}
        self._children: dict[tuple[str, ...], tuple] = {}  # labels -> metric children (labels() is slow)
        self._ended: dict[str, None] = {}  # recently ended ids: a late phase must not reopen one
        self.evicted = 0      # live requests forgotten because max_live_requests were open
        self.unknown_end = 0  # an end for a request never seen (or already ended)

    def observe(self, event: Any, labels: tuple[str, ...]) -> None:
        if not self.owner.owns(event.rank):
            self.not_owned += 1
            return
        live = self._live
        timeline = live.get(event.request_id)
        if timeline is None:
            if event.request_id in self._ended:
                return
            if event.phase in ("finished", "aborted"):
                self.unknown_end += 1
                self.requests.labels(event.phase, *labels).inc()
                return
            if len(live) >= self.max_live:
                del live[next(iter(live))]  # the oldest: most likely one whose end was lost
                self.evicted += 1
            timeline = live[event.request_id] = RequestTimeline(event.request_id)
        scheduled, first_token = timeline.scheduled_ns, timeline.first_token_ns
        ended = timeline.add(event.phase, event.ts_ns, event.prompt_tokens, event.output_tokens)
        if scheduled is None and timeline.scheduled_ns is not None:
            _observe(self._child(labels)[QUEUE], timeline.queue_ns)
        if first_token is None and timeline.first_token_ns is not None:
            _observe(self._child(labels)[TTFT], timeline.ttft_ns)
        if ended:
            del live[event.request_id]
            self._ended[event.request_id] = None
            if len(self._ended) > RECENTLY_ENDED:
                del self._ended[next(iter(self._ended))]
            self._end(timeline, labels)

    def _end(self, timeline: RequestTimeline, labels: tuple[str, ...]) -> None:
        children = self._child(labels)
        _observe(children[TPOT], timeline.tpot_ns)
        _observe(children[E2E], timeline.e2e_ns)
        (children[FINISHED] if timeline.outcome == "finished" else children[ABORTED]).inc()
        if timeline.prompt_tokens:
            children[PROMPT].inc(timeline.prompt_tokens)
        if timeline.output_tokens:
            children[OUTPUT].inc(timeline.output_tokens)

    def _child(self, labels: tuple[str, ...]) -> tuple:
        children = self._children.get(labels)
        if children is None:
            children = self._children[labels] = (
                self.ttft.labels(*labels), self.tpot.labels(*labels), self.queue.labels(*labels),
                self.e2e.labels(*labels), self.requests.labels("finished", *labels),
                self.requests.labels("aborted", *labels), self.prompt_tokens.labels(*labels),
                self.output_tokens.labels(*labels))
        return children

    @property
    def live(self) -> int:
        return len(self._live)

    def collect(self) -> list[Metric]:
        return [family for metric in self.metrics for family in metric.collect()]

    def describe(self) -> list[Metric]:
        return [family for metric in self.metrics for family in metric.describe()]


def _observe(child: Any, value_ns: Optional[float]) -> None:
    if value_ns is not None:
        child.observe(value_ns / 1e9)
