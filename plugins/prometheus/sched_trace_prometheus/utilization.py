"""Per-rank busy time, step time and bubble ratio, from stage end events on the exporter thread.

The same definitions as :func:`sched_trace.analysis.pipeline_report`, per lane
(one thread) instead of per shared step window: **busy** is the union of the
lane's compute stages (every stage whose role is not communication), the
**window** is the sum of its top-level batch (step) durations; a lane that runs
no batches counts from its first stage start to its last stage end. **bubble
ratio** = 1 - busy / window. Lanes with the same rank labels are added up.

End events of one thread arrive in end order, so a top-level event (``parent_id``
0) closes everything nested in it: its compute stages are merged then.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from prometheus_client import Counter, Gauge
from prometheus_client.metrics_core import Metric

from sched_trace.analysis import stage_role

from .settings import NAMESPACE

Interval = tuple[int, int]
MAX_PENDING = 65536  # compute stages waiting for their top-level end, per lane
MAX_LANES = 65536


class _Lane:
    __slots__ = ("pending", "last_end", "batched")

    def __init__(self) -> None:
        self.pending: list[Interval] = []
        self.last_end: Optional[int] = None
        self.batched = False  # once a lane runs batches, only their windows count


def union_ns(intervals: Iterable[Interval], low: int, high: int) -> int:
    """Length of the union of ``intervals`` clipped to [low, high)."""
    covered, reach = 0, low
    for start, end in sorted(intervals):
        start, end = max(start, reach), min(end, high)
        if end > start:
            covered += end - start
            reach = end
    return covered


class RankUtilization:
    """Counters of busy and window seconds per rank, and the bubble-ratio gauge they give."""

    def __init__(self, rank_labels: tuple[str, ...]) -> None:
        labels = list(rank_labels)
        self.busy = Counter("rank_busy_seconds", "Union of a rank's compute stages (communication excluded).",
                            labels, namespace=NAMESPACE, registry=None)
        self.window = Counter("rank_window_seconds", "A rank's step (top-level batch) time, busy or not.",
                              labels, namespace=NAMESPACE, registry=None)
        # mostrecent: in multiprocess mode the last writer wins, no pid label (ranks keep series apart).
        self.bubble_ratio = Gauge("rank_bubble_ratio", "1 - busy / window of a rank since the start.",
                                  labels, namespace=NAMESPACE, registry=None, multiprocess_mode="mostrecent")
        self.metrics = (self.busy, self.window, self.bubble_ratio)
        self._lanes: dict[tuple, _Lane] = {}
        self._totals: dict[tuple[str, ...], list] = {}  # labels -> [busy_ns, window_ns, busy, window, ratio]
        self._roles: dict[str, bool] = {}

    def observe(self, event: Any, labels: tuple[str, ...]) -> None:
        rank = event.rank
        key = (rank.host_id, rank.pid, rank.tid)
        lane = self._lanes.get(key)
        if lane is None:
            if len(self._lanes) >= MAX_LANES:
                self._lanes.clear()  # threads come and go (pids, tids): forget the old ones
            lane = self._lanes[key] = _Lane()
        if event.kind == "stage" and self._is_compute(event.name):
            if len(lane.pending) < MAX_PENDING:
                lane.pending.append((event.start_ns, event.end_ns))
        if event.parent_id == 0:
            self._close(lane, event, labels)

    def _is_compute(self, name: str) -> bool:
        compute = self._roles.get(name)
        if compute is None:
            compute = self._roles[name] = stage_role(name) != "comm"
        return compute

    def _close(self, lane: _Lane, top: Any, labels: tuple[str, ...]) -> None:
        end = top.end_ns
        if top.kind == "batch":
            lane.batched = True
            start = top.start_ns
        elif lane.batched:  # a stage between steps: outside every window, as in pipeline_report
            lane.pending.clear()
            return
        else:  # no steps on this lane: the gap since its previous stage ended is idle
            start = top.start_ns if lane.last_end is None else lane.last_end
        busy_ns = union_ns(lane.pending, start, end)
        window_ns = max(0, end - start)
        lane.pending.clear()
        lane.last_end = end if lane.last_end is None else max(lane.last_end, end)
        totals = self._totals.get(labels)
        if totals is None:  # busy ns, window ns, and the three metric children (labels() is slow)
            totals = self._totals[labels] = [0, 0, self.busy.labels(*labels), self.window.labels(*labels),
                                             self.bubble_ratio.labels(*labels)]
        totals[0] += busy_ns
        totals[1] += window_ns
        totals[2].inc(busy_ns / 1e9)
        totals[3].inc(window_ns / 1e9)
        if totals[1] > 0:
            totals[4].set(1.0 - totals[0] / totals[1])

    def collect(self) -> list[Metric]:
        return [family for metric in self.metrics for family in metric.collect()]

    def describe(self) -> list[Metric]:
        return [family for metric in self.metrics for family in metric.describe()]
