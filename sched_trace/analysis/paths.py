"""The critical path of a step, and stage latency percentiles."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Optional, Sequence

from .model import CriticalPath, Lane, LatencyStats, PathSegment


def _lane_key(event: Any) -> tuple:
    return (event.rank.host_id, event.rank.pid, event.rank.tid)


def microbatch_key(microbatch: Any) -> Any:
    """A micro-batch id usable as a key and sortable: ints and strings as they are, others as text."""
    return microbatch if microbatch is None or isinstance(microbatch, (int, float, str)) else repr(microbatch)


def stage_index(event: Any) -> Optional[int]:
    """Which pipeline stage ran the event: the ``stage_index`` rank key, else ``pp_rank``."""
    for key, value in event.rank.extra:
        if key == "stage_index" and value is not None:
            return value
    return event.rank.pp_rank


def _outermost(events: Sequence[Any]) -> list[Any]:
    """Drop stages nested inside another compute stage: their time is already counted."""
    span_ids = {(_lane_key(e), e.span_id) for e in events}
    return [e for e in events if (_lane_key(e), e.parent_id) not in span_ids]


class _Dependencies:
    """Who an event waited for: its lane's previous stage, or the stage that fed it data."""

    def __init__(self, compute: Sequence[Any], role_of: Mapping[str, str]) -> None:
        self.role_of = role_of
        self.previous: dict[int, Any] = {}
        by_lane: dict[tuple, list[Any]] = defaultdict(list)
        for event in compute:
            by_lane[_lane_key(event)].append(event)
        for events in by_lane.values():
            events.sort(key=lambda e: e.start_ns)
            for before, after in zip(events, events[1:]):
                self.previous[id(after)] = before
        self.by_work = {(role_of[e.name], stage_index(e), microbatch_key(e.microbatch)): e for e in compute}

    def data_source(self, event: Any) -> Optional[Any]:
        role, stage, microbatch = self.role_of[event.name], stage_index(event), microbatch_key(event.microbatch)
        if stage is None or microbatch is None:
            return None
        if role == "forward":
            return self.by_work.get(("forward", stage - 1, microbatch))
        if role == "backward":  # the last stage's backward follows its own forward
            return (self.by_work.get(("backward", stage + 1, microbatch))
                    or self.by_work.get(("forward", stage, microbatch)))
        if role == "weight":
            return self.by_work.get(("backward", stage, microbatch))
        return None

    def gate(self, event: Any) -> Optional[Any]:
        candidates = [c for c in (self.previous.get(id(event)), self.data_source(event))
                      if c is not None and c.end_ns <= event.end_ns]
        return max(candidates, key=lambda c: c.end_ns) if candidates else None


def critical_path(step: int, events: Sequence[Any], role_of: Mapping[str, str],
                  lanes: Mapping[tuple, Lane]) -> Optional[CriticalPath]:
    """Walk back from the step's last-ending compute stage along the latest-finishing gate."""
    compute = _outermost([e for e in events if role_of[e.name] != "comm"])
    if not compute:
        return None
    dependencies = _Dependencies(compute, role_of)
    chain = [max(compute, key=lambda e: e.end_ns)]
    seen = {id(chain[0])}
    while (gate := dependencies.gate(chain[-1])) is not None and id(gate) not in seen:
        seen.add(id(gate))
        chain.append(gate)
    chain.reverse()
    segments = []
    for before, event in zip([None] + chain[:-1], chain):
        wait = max(0, event.start_ns - before.end_ns) if before is not None else 0
        segments.append(PathSegment(lanes[_lane_key(event)], event.name, event.microbatch,
                                    event.start_ns, event.end_ns, wait))
    return CriticalPath(step, tuple(segments), compute_ns=sum(s.end_ns - s.start_ns for s in segments),
                        wait_ns=sum(s.wait_ns for s in segments))


def percentile(ordered: Sequence[int], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of an ascending sequence."""
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _stats(stage: str, by: str, key: Any, durations: list[int]) -> LatencyStats:
    durations.sort()
    return LatencyStats(stage, by, key, len(durations), sum(durations) / len(durations),
                        percentile(durations, 50), percentile(durations, 90),
                        percentile(durations, 99), durations[-1])


def latency_table(events: Sequence[Any], lanes: Mapping[tuple, Lane]) -> tuple[LatencyStats, ...]:
    """Percentiles per stage, per (stage, rank) and per (stage, micro-batch)."""
    groups: dict[tuple[str, str, Any], list[int]] = defaultdict(list)
    for event in events:
        if event.kind != "stage" or event.end_ns is None:
            continue
        duration = event.end_ns - event.start_ns
        lane = lanes.get(_lane_key(event))
        rank = lane.pp_rank if lane is not None and lane.pp_rank is not None else (lane.label if lane else None)
        groups[(event.name, "stage", None)].append(duration)
        groups[(event.name, "rank", rank)].append(duration)
        if event.microbatch is not None:
            groups[(event.name, "microbatch", microbatch_key(event.microbatch))].append(duration)
    order = {"stage": 0, "rank": 1, "microbatch": 2}
    keys = sorted(groups, key=lambda k: (k[0], order[k[1]], str(type(k[2])), k[2] if k[2] is not None else 0))
    return tuple(_stats(stage, by, key, groups[(stage, by, key)]) for stage, by, key in keys)
