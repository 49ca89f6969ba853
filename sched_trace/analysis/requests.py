"""Request lifecycle: per-request phases from request events, and latency percentiles.

A request reports phases (``arrived``, ``queued``, ``scheduled``, ``first_token``,
``finished``, ``aborted``); a phase may come more than once (``scheduled`` again
after a preemption). The FIRST arrived/queued/scheduled/first_token and the LAST
finished/aborted count, and a missing phase leaves its durations unknown:

* ``queue``   = first arrived (or queued) -> first scheduled
* ``prefill`` = first scheduled -> first token
* ``decode``  = first token -> end
* ``ttft``    = first token - arrived; ``e2e`` = end - arrived
* ``tpot``    = (end - first token) / (output tokens - 1), when more than one token

:class:`RequestTimeline` folds one request's events, incrementally: the exporters
(otel, prometheus) use it on their own threads; :func:`request_report` runs it
over a whole recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from .paths import percentile

START_PHASES = frozenset({"arrived", "queued"})
END_PHASES = frozenset({"finished", "aborted"})
PHASES = ("arrived", "queued", "scheduled", "first_token", "finished", "aborted")
METRICS = ("queue", "prefill", "decode", "ttft", "tpot", "e2e")


class RequestTimeline:
    """One request's phases so far (first start/scheduled/first token, last end)."""

    __slots__ = ("request_id", "arrived_ns", "scheduled_ns", "first_token_ns", "end_ns", "outcome",
                 "prompt_tokens", "output_tokens", "batch_ids", "rank", "attrs", "last_ns")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.arrived_ns: Optional[int] = None
        self.scheduled_ns: Optional[int] = None
        self.first_token_ns: Optional[int] = None
        self.end_ns: Optional[int] = None
        self.outcome: Optional[str] = None  # "finished" | "aborted" once ended
        self.prompt_tokens: Optional[int] = None
        self.output_tokens: Optional[int] = None
        self.batch_ids: list[int] = []
        self.rank: Any = None  # the rank of the first event
        self.attrs: dict[str, Any] = {}
        self.last_ns = 0

    def add(self, phase: str, ts_ns: int, prompt_tokens: Optional[int] = None,
            output_tokens: Optional[int] = None, batch_id: Optional[int] = None,
            attrs: Optional[Mapping[str, Any]] = None, rank: Any = None) -> bool:
        """Fold one event in; True when it is an end phase (finished/aborted)."""
        if phase in START_PHASES:
            self.arrived_ns = _first(self.arrived_ns, ts_ns)
        elif phase == "scheduled":
            self.scheduled_ns = _first(self.scheduled_ns, ts_ns)
        elif phase == "first_token":
            self.first_token_ns = _first(self.first_token_ns, ts_ns)
        elif phase in END_PHASES:
            if self.end_ns is None or ts_ns >= self.end_ns:
                self.end_ns, self.outcome = ts_ns, phase
        if type(prompt_tokens) is int:
            self.prompt_tokens = prompt_tokens
        if type(output_tokens) is int:
            self.output_tokens = output_tokens
        if batch_id is not None and batch_id not in self.batch_ids[-4:]:
            self.batch_ids.append(batch_id)
        if attrs:
            self.attrs.update(attrs)
        if self.rank is None:
            self.rank = rank
        self.last_ns = max(self.last_ns, ts_ns)
        return phase in END_PHASES

    # --- derived durations, in nanoseconds (None when a phase is missing) ---------

    @property
    def queue_ns(self) -> Optional[int]:
        return _between(self.arrived_ns, self.scheduled_ns)

    @property
    def prefill_ns(self) -> Optional[int]:
        return _between(self.scheduled_ns, self.first_token_ns)

    @property
    def decode_ns(self) -> Optional[int]:
        return _between(self.first_token_ns, self.end_ns)

    @property
    def ttft_ns(self) -> Optional[int]:
        return _between(self.arrived_ns, self.first_token_ns)

    @property
    def e2e_ns(self) -> Optional[int]:
        return _between(self.arrived_ns, self.end_ns)

    @property
    def tpot_ns(self) -> Optional[float]:
        decode = self.decode_ns
        tokens = self.output_tokens
        if decode is None or tokens is None or tokens < 2:
            return None
        return decode / (tokens - 1)

    def latency(self) -> "RequestLatency":
        return RequestLatency(
            self.request_id, self.outcome, self.prompt_tokens, self.output_tokens,
            *(getattr(self, f"{metric}_ns") for metric in METRICS))


def _first(current: Optional[int], ts_ns: int) -> int:
    return ts_ns if current is None or ts_ns < current else current


def _between(start: Optional[int], end: Optional[int]) -> Optional[int]:
    if start is None or end is None or end < start:
        return None
    return end - start


@dataclass(frozen=True)
class RequestLatency:
    """One request's outcome and durations in nanoseconds (``None``: a phase is missing)."""

    request_id: str
    outcome: Optional[str]
    prompt_tokens: Optional[int]
    output_tokens: Optional[int]
    queue_ns: Optional[int]
    prefill_ns: Optional[int]
    decode_ns: Optional[int]
    ttft_ns: Optional[int]
    tpot_ns: Optional[float]
    e2e_ns: Optional[int]


@dataclass(frozen=True)
class Percentiles:
    """Distribution of one request metric over the requests that have it, in nanoseconds."""

    metric: str
    count: int
    mean_ns: float
    p50_ns: float
    p90_ns: float
    p99_ns: float
    max_ns: float


@dataclass(frozen=True)
class RequestReport:
    """What :func:`request_report` returns (picklable: frozen dataclasses and tuples)."""

    requests: tuple[RequestLatency, ...]
    percentiles: tuple[Percentiles, ...]  # one per metric that any request has
    finished: int
    aborted: int
    unfinished: int

    def metric(self, name: str) -> Optional[Percentiles]:
        """The percentiles of ``queue``, ``prefill``, ``decode``, ``ttft``, ``tpot`` or ``e2e``."""
        if name not in METRICS:
            raise ValueError(f"unknown request metric {name!r}; use one of {', '.join(METRICS)}")
        return next((p for p in self.percentiles if p.metric == name), None)


def request_report(events: Iterable[Any]) -> RequestReport:
    """Per-request latencies and their p50/p90/p99 from request events (other kinds are skipped).

    ``events`` may mix request, stage and batch events, e.g. a ``MemoryRecorder``'s
    whole recording. Requests are ordered by first arrival.
    """
    timelines: dict[str, RequestTimeline] = {}
    for event in events:
        if getattr(event, "kind", None) != "request":
            continue
        timeline = timelines.get(event.request_id)
        if timeline is None:
            timeline = timelines[event.request_id] = RequestTimeline(event.request_id)
        timeline.add(event.phase, event.ts_ns, event.prompt_tokens, event.output_tokens, event.batch_id)
    ordered = sorted(timelines.values(), key=lambda t: (t.arrived_ns is None, t.arrived_ns or 0, t.request_id))
    latencies = tuple(t.latency() for t in ordered)
    return RequestReport(
        latencies, _percentiles(latencies),
        finished=sum(1 for t in ordered if t.outcome == "finished"),
        aborted=sum(1 for t in ordered if t.outcome == "aborted"),
        unfinished=sum(1 for t in ordered if t.outcome is None))


def _percentiles(latencies: tuple[RequestLatency, ...]) -> tuple[Percentiles, ...]:
    table = []
    for metric in METRICS:
        values = sorted(v for v in (getattr(r, f"{metric}_ns") for r in latencies) if v is not None)
        if values:
            table.append(Percentiles(metric, len(values), sum(values) / len(values),
                                     percentile(values, 50), percentile(values, 90),
                                     percentile(values, 99), values[-1]))
    return tuple(table)
