"""Stage, batch and request metrics and per-rank utilization, observed in batches on the exporter thread.

Label sets are (stage or batch name, the configured rank keys): bounded by the
code's stage names and the deployment's shape. Per-call identities (micro-batch,
batch id, request ids) never become labels. A cap on distinct label sets guards
against a rank key that turns out to be unbounded; events past it are counted in
``overflow`` instead of creating series.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

from sched_trace import RankInfo

from .requests import RequestMetrics
from .settings import NAMESPACE, Settings
from .utilization import RankUtilization

_RANK_FIELDS = frozenset({"host_id", "pid", "thread_label", "tp_rank", "pp_rank", "dp_rank"})


class _Series(NamedTuple):
    """The metric children of one (kind, name, rank labels) combination."""

    labels: tuple[str, ...]
    duration: Any
    count: Any  # batches_total child, None for stages
    size: Any


class StageMetrics:
    """Owns the metric objects (registered nowhere: the collector exposes them)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rank_labels = settings.rank_labels
        self.overflow = 0
        self.observed = 0
        self._lock = threading.Lock()  # observe (exporter thread) vs describe/collect
        self._series: dict[tuple[str, str, RankInfo], Optional[_Series]] = {}
        self._by_identity: dict[tuple[str, str, int], tuple[RankInfo, _Series]] = {}
        self._label_sets: set[tuple[str, ...]] = set()
        self._errors: dict[tuple[str, tuple[str, ...], str], Any] = {}
        ranks = list(self.rank_labels)
        buckets, sizes = settings.buckets, settings.batch_size_buckets
        self.stage_duration = Histogram(
            "stage_duration_seconds", "Wall time of one stage execution, in seconds.",
            ["stage", *ranks], namespace=NAMESPACE, buckets=buckets, registry=None)
        self.stage_errors = Counter(
            "stage_errors", "Stage executions that raised, by exception type.",
            ["stage", "error_type", *ranks], namespace=NAMESPACE, registry=None)
        self.stage_batch_size = Histogram(
            "stage_batch_size", "batch_size of stage executions that declare one.",
            ["stage", *ranks], namespace=NAMESPACE, buckets=sizes, registry=None)
        self.batch_duration = Histogram(
            "batch_duration_seconds", "Wall time of one scheduler batch (step), in seconds.",
            ["batch", *ranks], namespace=NAMESPACE, buckets=buckets, registry=None)
        self.batches = Counter(
            "batches", "Scheduler batches (steps) completed, raised ones included.",
            ["batch", *ranks], namespace=NAMESPACE, registry=None)
        self.batch_errors = Counter(
            "batch_errors", "Scheduler batches that raised, by exception type.",
            ["batch", "error_type", *ranks], namespace=NAMESPACE, registry=None)
        self.batch_size = Histogram(
            "batch_size", "batch_size of scheduler batches that declare one.",
            ["batch", *ranks], namespace=NAMESPACE, buckets=sizes, registry=None)
        self.requests = RequestMetrics(settings)
        self.utilization = RankUtilization(settings.rank_labels)
        self._rank_label_values: dict[RankInfo, Optional[tuple[str, ...]]] = {}
        self.metrics = (
            self.stage_duration, self.stage_errors, self.stage_batch_size,
            self.batch_duration, self.batches, self.batch_errors, self.batch_size,
            *self.requests.metrics, *self.utilization.metrics,
        )

    # --- the exporter thread ------------------------------------------------

    def observe_batch(self, events: Sequence[Any]) -> None:
        """Observe end and request events (start events, which carry no duration, are skipped).

        Durations and sizes are gathered per series and go into each histogram once per
        batch (:func:`observe_many`): this thread shares the scheduler's GIL.
        """
        with self._lock:
            pending: dict[int, tuple[_Series, list, list]] = {}
            for event in events:
                if event.kind == "request":
                    self._observe_request(event)
                elif event.end_ns is not None:
                    self._observe(event, pending)
            for series, durations, sizes in pending.values():
                observe_many(series.duration, durations)
                if series.count is not None:
                    series.count.inc(len(durations))
                if sizes:
                    observe_many(series.size, sizes)

    def _observe_request(self, event: Any) -> None:
        labels = self._rank_label_values.get(event.rank, ())
        if labels == ():
            labels = tuple(self.rank_values(event.rank))
            if labels not in self._label_sets and len(self._label_sets) >= self.settings.max_label_sets:
                labels = None
            else:
                self._label_sets.add(labels)
            if len(self._rank_label_values) >= 4 * self.settings.max_label_sets:
                self._rank_label_values.clear()
            self._rank_label_values[event.rank] = labels
        if labels is None:
            self.overflow += 1
            return
        self.requests.observe(event, labels)
        self.observed += 1

    def _observe(self, event: Any, pending: dict) -> None:
        series = self._series_for(event)
        if series is None:
            self.overflow += 1
            return
        gathered = pending.get(id(series))
        if gathered is None:
            gathered = pending[id(series)] = (series, [], [])
        gathered[1].append((event.end_ns - event.start_ns) / 1e9)
        size = event.batch_size
        if type(size) is int and size >= 0:
            gathered[2].append(size)
        if event.error is not None:
            self._error_counter(event, series.labels).inc()
        self.utilization.observe(event, series.labels[1:])
        self.observed += 1

    def _series_for(self, event: Any) -> Optional[_Series]:
        rank = event.rank
        known = self._by_identity.get((event.kind, event.name, id(rank)))  # a RankInfo hashes slowly
        if known is not None and known[0] is rank:
            return known[1]
        key = (event.kind, event.name, rank)
        try:
            series = self._series[key]
        except KeyError:
            series = self._new_series(event, key)
        if len(self._by_identity) >= 4 * self.settings.max_label_sets:
            self._by_identity.clear()
        if series is not None:
            self._by_identity[(event.kind, event.name, id(rank))] = (rank, series)
        return series

    def _new_series(self, event: Any, key: tuple) -> Optional[_Series]:
        labels = (event.name, *self.rank_values(event.rank))
        if labels not in self._label_sets and len(self._label_sets) >= self.settings.max_label_sets:
            return None  # not cached: a later, smaller config may not apply, and it stays cheap
        self._label_sets.add(labels)
        if len(self._series) >= 4 * self.settings.max_label_sets:
            self._series.clear()  # many RankInfos (tids, pids) can share one label set
        if event.kind == "batch":
            series = _Series(labels, self.batch_duration.labels(*labels), self.batches.labels(*labels),
                             self.batch_size.labels(*labels))
        else:
            series = _Series(labels, self.stage_duration.labels(*labels), None,
                             self.stage_batch_size.labels(*labels))
        self._series[key] = series
        return series

    def _error_counter(self, event: Any, labels: tuple[str, ...]) -> Any:
        error_type = type(event.error).__name__
        key = (event.kind, labels, error_type)
        counter = self._errors.get(key)
        if counter is None:
            family = self.batch_errors if event.kind == "batch" else self.stage_errors
            counter = self._errors[key] = family.labels(labels[0], error_type, *labels[1:])
        return counter

    def rank_values(self, rank: RankInfo) -> Iterator[str]:
        """The configured rank keys of ``rank`` as label values ('' when unknown)."""
        extras = None
        for name in self.rank_labels:
            if name in _RANK_FIELDS:
                value = getattr(rank, name)
            else:
                extras = extras if extras is not None else rank.extras
                value = extras.get(name)
            yield "" if value is None else str(value)

    # --- scrape time ----------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            families = [family for metric in self.metrics for family in metric.collect()]
        return families

    def describe(self) -> Iterable[Metric]:
        return [family for metric in self.metrics for family in metric.describe()]


def observe_many(histogram: Any, values: list) -> None:
    """``histogram.observe(v)`` for every value, with one update per bucket touched.

    prometheus_client has no bulk observation; its histogram child keeps per-bucket
    counters (``_buckets``, upper bounds in ``_upper_bounds``) and a ``_sum``, in every
    release since 0.4. Where those are missing, each value is observed on its own.
    """
    try:
        buckets, bounds, total = histogram._buckets, histogram._upper_bounds, histogram._sum
    except AttributeError:
        for value in values:
            histogram.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        index = bisect_left(bounds, value)
        counts[index] = counts.get(index, 0) + 1
    for index, count in counts.items():
        buckets[index].inc(count)
    total.inc(sum(values))
