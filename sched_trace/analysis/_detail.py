"""One step in full: busy and idle intervals, phases, execution order, critical path.

Every step's numbers come from columns (``_engine``); the steps a report shows in
detail are rebuilt as events and go through these functions, one step at a time.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

from .model import Lane, PhaseStats, RankStep, StepSummary, gpipe_bubble_fraction
from .paths import critical_path

# Checked in this order: "pp_p2p_wait" is communication, "backward_weight" is W.
_ROLE_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("comm", ("p2p", "send", "recv", "wait", "comm", "allreduce", "all_reduce", "barrier")),
    ("weight", ("backward_weight", "bwd_weight", "weight_grad")),
    ("backward", ("backward", "bwd")),
    ("forward", ("forward", "fwd")),
)
_ORDER_LETTER = {"forward": "F", "backward": "B", "weight": "W"}
ROLES = ("forward", "backward", "weight", "compute", "comm")
Interval = tuple[int, int]


def stage_role(name: str, roles: Optional[Mapping[str, str]] = None) -> str:
    """``forward``, ``backward``, ``weight``, ``comm`` or ``compute`` for a stage name."""
    if roles and name in roles:
        return roles[name]
    lowered = name.lower()
    for role, words in _ROLE_WORDS:
        if any(word in lowered for word in words):
            return role
    return "compute"


# --- interval arithmetic on [start, end) pairs -------------------------------------


def _union(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        elif end > start:
            merged.append((start, end))
    return merged


def _clip(merged: Sequence[Interval], low: int, high: int) -> list[Interval]:
    return [(max(s, low), min(e, high)) for s, e in merged if e > low and s < high]


def _measure(merged: Sequence[Interval]) -> int:
    return sum(end - start for start, end in merged)


def _subtract(base: Sequence[Interval], cut: Sequence[Interval]) -> list[Interval]:
    result: list[Interval] = []
    for start, end in base:
        for cut_start, cut_end in cut:
            if cut_end <= start or cut_start >= end:
                continue
            if cut_start > start:
                result.append((start, cut_start))
            start = max(start, cut_end)
            if start >= end:
                break
        if start < end:
            result.append((start, end))
    return result


# --- per rank and step ---------------------------------------------------------------


def _phases(compute: Sequence[Any], role_of: Mapping[str, str], window: Interval,
            busy: Sequence[Interval]) -> tuple[PhaseStats, ...]:
    forwards = [e for e in compute if role_of[e.name] == "forward"]
    backwards = [e for e in compute if role_of[e.name] in ("backward", "weight")]
    if not forwards or not backwards:
        return ()
    first_backward = min(e.start_ns for e in backwards)
    last_forward = max(e.end_ns for e in forwards)
    steady_end = max(first_backward, last_forward)
    bounds = (("warmup", window[0], first_backward), ("steady", first_backward, steady_end),
              ("cooldown", steady_end, window[1]))
    phases = []
    for name, start, end in bounds:
        inside = [e for e in compute if start <= e.start_ns < end or (name == "cooldown" and e.start_ns >= end)]
        busy_ns = _measure(_clip(busy, start, end))
        phases.append(PhaseStats(
            name, start, end,
            forwards=sum(1 for e in inside if role_of[e.name] == "forward"),
            backwards=sum(1 for e in inside if role_of[e.name] in ("backward", "weight")),
            busy_ns=busy_ns, idle_ns=max(0, end - start - busy_ns),
        ))
    return tuple(phases)


def _rank_step(lane: Lane, index: int, window: Interval, events: Sequence[Any],
               role_of: Mapping[str, str]) -> RankStep:
    compute = [e for e in events if role_of[e.name] != "comm"]
    busy = _clip(_union((e.start_ns, e.end_ns) for e in compute), *window)
    comm = _subtract(_clip(_union((e.start_ns, e.end_ns) for e in events if role_of[e.name] == "comm"), *window), busy)
    step_ns = window[1] - window[0]
    busy_ns = _measure(busy)
    order = tuple((_ORDER_LETTER[role_of[e.name]], e.microbatch) for e in compute if role_of[e.name] in _ORDER_LETTER)
    return RankStep(
        lane=lane, step=index, start_ns=window[0], end_ns=window[1], step_ns=step_ns,
        busy_ns=busy_ns, comm_ns=_measure(comm), idle_ns=step_ns - busy_ns,
        bubble_ratio=(step_ns - busy_ns) / step_ns if step_ns else 0.0,
        phases=_phases(compute, role_of, window, busy), order=order,
        busy=tuple(busy), comm=tuple(comm),
    )


def _theory(step: Any, ranks: Sequence[RankStep]) -> Optional[float]:
    """(p-1)/(m+p-1) for single-stage GPipe/1F1B steps whose schedule the trace names."""
    attrs = getattr(step, "attrs", None) or {}
    if attrs.get("schedule") not in ("ScheduleGPipe", "Schedule1F1B"):
        return None
    p = sum(1 for r in ranks if r.order)
    m = attrs.get("n_microbatches") or max((sum(1 for o in r.order if o[0] == "F") for r in ranks), default=0)
    return gpipe_bubble_fraction(p, m) if p and m else None



def detailed_step(k: int, steps: Any, window: Interval, per_lane: Mapping[int, list[Any]],
                  marker: Any) -> StepSummary:
    """One step in full: each present lane's RankStep from its events, and the critical path."""
    lanes = steps.lanes
    ranks = tuple(_rank_step(lanes[lane], k, window, events, steps.role_of) for lane, events in per_lane.items())
    step_events = [e for events in per_lane.values() for e in events]
    lane_by_key = {(lane.host_id, lane.pid, lane.tid): lane for lane in lanes}
    return StepSummary(
        index=k, name=steps.step_name or "<trace>", attrs=dict(getattr(marker, "attrs", None) or {}),
        start_ns=window[0], end_ns=window[1], ranks=ranks, theory_bubble_ratio=_theory(marker, ranks),
        critical_path=critical_path(k, step_events, steps.role_of, lane_by_key),
    )


def schedule_key(step_name: Optional[str], attrs: Mapping[str, Any], ranks: int) -> tuple:
    """What names a schedule: its kind, its micro-batch count and how many ranks run it.

    The kind is the step's ``schedule`` attribute (``ScheduleGPipe``), else the step's
    name; the micro-batch count is its ``n_microbatches`` attribute (None when not
    recorded); the rank count is how many ranks took part in the step. Every other
    step attribute (a queue depth, a batch size) varies from step to step and never
    starts a new schedule.
    """
    kind = attrs.get("schedule", step_name)
    return (str(kind), attrs.get("n_microbatches"), ranks)
