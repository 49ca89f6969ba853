"""``pipeline_report``: lanes, shared step windows, busy/idle per rank, phases.

The definitions are in the package docstring (``sched_trace.analysis``).
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..errors import AnalysisError
from .model import (
    Lane, PhaseStats, PipelineReport, RankStep, RankSummary, ScheduleSummary, StepSummary,
    gpipe_bubble_fraction,
)
from .paths import critical_path, latency_table

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


# --- lanes and steps ------------------------------------------------------------------


def _lane_of(events: Sequence[Any]) -> Lane:
    first = events[0].rank
    pp_ranks = Counter(e.rank.pp_rank for e in events if e.rank.pp_rank is not None)
    pp_rank = pp_ranks.most_common(1)[0][0] if pp_ranks else None
    return Lane(first.host_id, first.pid, first.tid, first.thread_label, pp_rank,
                first.replace(pp_rank=pp_rank).track_name)


def _group_lanes(events: Iterable[Any]) -> dict[Lane, list[Any]]:
    by_thread: dict[tuple, list[Any]] = defaultdict(list)
    for event in events:
        if event.end_ns is not None:
            by_thread[(event.rank.host_id, event.rank.pid, event.rank.tid)].append(event)
    lanes = {_lane_of(group): sorted(group, key=lambda e: (e.start_ns, -e.end_ns)) for group in by_thread.values()}
    return dict(sorted(lanes.items(), key=lambda item: item[0].sort_key))


def _top_batches(events: Sequence[Any]) -> list[Any]:
    batch_ids = {e.span_id for e in events if e.kind == "batch"}
    return [e for e in events if e.kind == "batch" and e.parent_id not in batch_ids]


def _choose_step_name(lanes: Mapping[Lane, list[Any]]) -> Optional[str]:
    names = Counter(e.name for events in lanes.values() for e in _top_batches(events))
    return names.most_common(1)[0][0] if names else None


def _whole_trace(everything: Sequence[Any]) -> list[Interval]:
    stages = [e for e in everything if e.kind == "stage"] or list(everything)
    return [(min(e.start_ns for e in stages), max(e.end_ns for e in stages))] if stages else []


def _step_starts(events: Sequence[Any], role_of: Mapping[str, str]) -> list[int]:
    """Where a lane starts each step: a forward of micro-batch 0 after some backward.

    Only training steps can be told apart this way: without backward passes a
    pipeline's micro-batches flow on without a boundary, so nothing is inferred.
    """
    starts: list[int] = []
    backward_since = True
    for event in events:
        role = role_of[event.name] if event.kind == "stage" else None
        if role in ("backward", "weight"):
            backward_since = True
        elif role == "forward" and event.microbatch == 0 and backward_since:
            starts.append(event.start_ns)
            backward_since = False
    return starts if any(role_of[e.name] in ("backward", "weight") for e in events) else []


def _inferred_windows(lanes: Mapping[Lane, list[Any]], role_of: Mapping[str, str]) -> list[Interval]:
    """Step windows cut where the first lane starts each step (no step markers)."""
    if not lanes:
        return []
    starts = _step_starts(next(iter(lanes.values())), role_of)
    if not starts:
        return []
    stages = sorted((e for evs in lanes.values() for e in evs if e.kind == "stage"), key=lambda e: e.start_ns)
    begins = [e.start_ns for e in stages]
    cuts = [begins[0]] + starts[1:] + [max(e.end_ns for e in stages) + 1]
    windows = []
    for low, high in zip(cuts, cuts[1:]):
        inside = stages[bisect.bisect_left(begins, low):bisect.bisect_left(begins, high)]
        # A step ends when its last stage does, not when the next step starts (optimizer time).
        windows.append((low, min(high, max(e.end_ns for e in inside)) if inside else high))
    return windows


def _windows(steps: Mapping[Lane, list[Any]], everything: Sequence[Any]) -> list[Interval]:
    """One shared window per step index; windows tile the timeline without overlap."""
    count = max((len(s) for s in steps.values()), default=0)
    if count == 0:
        return _whole_trace(everything)
    windows: list[Interval] = []
    for k in range(count):
        present = [s[k] for s in steps.values() if len(s) > k]
        start = min(e.start_ns for e in present)
        if k:
            start = max(start, max(s[k - 1].end_ns for s in steps.values() if len(s) >= k))
        windows.append((start, max(e.end_ns for e in present)))
    return windows


def _assign(events: Sequence[Any], lane_steps: Sequence[Any], windows: Sequence[Interval]) -> list[list[Any]]:
    """Stage events of one lane per step index: by inherited batch_id, else by time."""
    per_step: list[list[Any]] = [[] for _ in windows]
    spans = [(s.start_ns, s.end_ns) for s in lane_steps] or list(windows)
    disjoint = all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    starts = [start for start, _ in spans] if disjoint else None
    by_batch_id: dict[Any, list[int]] = defaultdict(list)
    for k, step in enumerate(lane_steps):
        if step.batch_id is not None:
            by_batch_id[step.batch_id].append(k)
    for event in events:
        if event.kind != "stage":
            continue
        candidates = by_batch_id.get(event.batch_id, ()) if event.batch_id is not None else ()
        # A batch id seen twice (two runs in one file) is settled by time.
        k = candidates[0] if len(candidates) == 1 else _containing(event, spans, starts)
        if k is not None and k < len(per_step):
            per_step[k].append(event)
    return per_step


def _containing(event: Any, spans: Sequence[Interval], starts: Optional[Sequence[int]]) -> Optional[int]:
    """The first span (in start order) the event starts in; ``starts`` when none overlap."""
    if starts is not None:  # the usual case: a binary search
        k = bisect.bisect_right(starts, event.start_ns) - 1
        return k if k >= 0 and event.start_ns < spans[k][1] else None
    return next((k for k, (start, end) in enumerate(spans) if start <= event.start_ns < end), None)


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


# --- the report ------------------------------------------------------------------------


def pipeline_report(
    events: Iterable[Any],
    *,
    step_name: Optional[str] = None,
    skip_steps: int = 0,
    roles: Optional[Mapping[str, str]] = None,
) -> PipelineReport:
    """Analyse finished events: per-rank busy/idle/bubble ratio, phases, latencies.

    :param step_name: the batch event that is one step (default: the most common
        top-level batch name, e.g. ``pp_step``). Without batch events, a step starts
        at each forward of micro-batch 0 after a backward on the first rank; without
        backward passes either, the whole trace is one step. ``report.step_source``
        and ``report.notes`` say which was done.
    :param skip_steps: leave out the first N steps of each schedule (the same kind,
        micro-batch count and rank count: :func:`schedule_key`); the first step of a torch.distributed.pipelining schedule
        also runs shape inference and P2P set-up. ``report.skipped_steps`` lists them.
    :raises AnalysisError: ``skip_steps`` leaves no step, ``step_name`` names no
        batch event, or a role is unknown.
    :param roles: stage name -> ``forward``/``backward``/``weight``/``comm``/``compute``,
        overriding the guess made from the name (see :func:`stage_role`).
    """
    for name, role in (roles or {}).items():
        if role not in ROLES:
            raise AnalysisError(f"roles[{name!r}] = {role!r}; use one of {', '.join(ROLES)}")
    if not isinstance(skip_steps, int) or isinstance(skip_steps, bool) or skip_steps < 0:
        raise AnalysisError(f"skip_steps={skip_steps!r}: use a whole number >= 0")
    timeline = _Timeline(events, step_name, roles)
    kept = _kept_steps(timeline, skip_steps)
    if timeline.windows and not kept:
        raise AnalysisError(
            f"skip_steps={skip_steps} leaves no step to analyse: the trace has {len(timeline.windows)} "
            f"step(s) ({timeline.step_note}); pass a smaller skip_steps, or trace more steps"
        )
    summaries = tuple(timeline.step_summary(k) for k in kept)
    kept_events = [e for lane in timeline.lanes for k in kept for e in timeline.assigned[lane][k]]
    return PipelineReport(
        ranks=_rank_summaries(timeline.lanes, summaries),
        steps=summaries,
        latencies=latency_table(kept_events, timeline.lane_by_key),
        step_name=timeline.step_name,
        skip_steps=skip_steps,
        schedules=_schedule_summaries(summaries),
        roles=dict(sorted(timeline.role_of.items())),
        step_source=timeline.step_source,
        skipped_steps=tuple(k for k in range(len(timeline.windows)) if k not in set(kept)),
        notes=_notes(timeline, skip_steps, len(kept)),
    )


def _notes(timeline: "_Timeline", skip_steps: int, kept: int) -> tuple[str, ...]:
    notes = [] if timeline.step_source == "markers" else [timeline.step_note]
    left_out = len(timeline.windows) - kept
    if left_out:
        notes.append(f"left out {left_out} of {len(timeline.windows)} steps "
                     f"(the first {skip_steps} of each schedule: skip_steps={skip_steps})")
    return tuple(notes)


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


def _kept_steps(timeline: "_Timeline", skip_steps: int) -> list[int]:
    """Step indices left after dropping the first ``skip_steps`` of each schedule
    (:func:`schedule_key`); each schedule's first step also runs torch's shape inference."""
    seen: Counter = Counter()
    kept = []
    for k in range(len(timeline.windows)):
        key = schedule_key(timeline.step_name, timeline.step_attrs(k), len(timeline.step_lanes(k)))
        seen[key] += 1
        if seen[key] > skip_steps:
            kept.append(k)
    return kept


def _schedule_summaries(steps: Sequence[StepSummary]) -> tuple[ScheduleSummary, ...]:
    groups: dict[str, list[StepSummary]] = {}
    for step in steps:
        groups.setdefault(step.label, []).append(step)
    result = []
    for label, members in groups.items():
        total = sum(r.step_ns for s in members for r in s.ranks)
        idle = sum(r.idle_ns for s in members for r in s.ranks)
        result.append(ScheduleSummary(
            label, len(members), bubble_ratio=idle / total if total else 0.0,
            theory_bubble_ratio=members[0].theory_bubble_ratio,
            mean_step_ns=sum(s.duration_ns for s in members) / len(members),
        ))
    return tuple(result)


class _Timeline:
    """Events split into lanes and steps, with the shared step windows."""

    def __init__(self, events: Iterable[Any], step_name: Optional[str], roles: Optional[Mapping[str, str]]) -> None:
        self.lanes = _group_lanes(events)
        self.lane_by_key = {(lane.host_id, lane.pid, lane.tid): lane for lane in self.lanes}
        names = {e.name for evs in self.lanes.values() for e in evs}
        self.role_of = {name: stage_role(name, roles) for name in names}
        self.step_name = step_name if step_name is not None else _choose_step_name(self.lanes)
        self.steps = {lane: [e for e in _top_batches(evs) if e.name == self.step_name]
                      for lane, evs in self.lanes.items()}
        if step_name is not None and self.lanes and not any(self.steps.values()):
            batches = sorted({e.name for evs in self.lanes.values() for e in _top_batches(evs)})
            raise AnalysisError(f"step_name={step_name!r}: no top-level batch event has that name "
                                f"(batch events in the trace: {', '.join(batches) or 'none'})")
        self._choose_windows()
        self.assigned = {lane: _assign(evs, self.steps[lane], self.windows) for lane, evs in self.lanes.items()}

    def _choose_windows(self) -> None:
        everything = [e for evs in self.lanes.values() for e in evs]
        if any(self.steps.values()):
            self.step_source, self.step_note = "markers", f"one step per {self.step_name!r} batch event"
            self.windows = _windows(self.steps, everything)
            return
        self.windows = _inferred_windows(self.lanes, self.role_of)
        if self.windows:
            first = next(iter(self.lanes))
            self.step_source = "inferred"
            self.step_note = (f"no step markers (batch events): a step starts at each forward of "
                              f"micro-batch 0 after a backward on {first.label}")
        else:
            self.windows = _whole_trace(everything)
            self.step_source = "whole-trace"
            self.step_note = "no step markers (batch events) and no training steps to infer: the whole trace is one step"

    def step_attrs(self, k: int) -> dict:
        step_event = next((self.steps[lane][k] for lane in self.lanes if len(self.steps[lane]) > k), None)
        return dict(getattr(step_event, "attrs", None) or {})

    def step_lanes(self, k: int) -> list[Lane]:
        """The lanes that take part in step ``k``: a step marker or a stage in it."""
        return [lane for lane in self.lanes if self.assigned[lane][k] or len(self.steps[lane]) > k]

    def step_summary(self, k: int) -> StepSummary:
        lanes = self.step_lanes(k)
        ranks = tuple(_rank_step(lane, k, self.windows[k], self.assigned[lane][k], self.role_of) for lane in lanes)
        step_event = next((self.steps[lane][k] for lane in lanes if len(self.steps[lane]) > k), None)
        step_events = [e for lane in lanes for e in self.assigned[lane][k]]
        return StepSummary(
            index=k, name=self.step_name or "<trace>", attrs=self.step_attrs(k),
            start_ns=self.windows[k][0], end_ns=self.windows[k][1], ranks=ranks,
            theory_bubble_ratio=_theory(step_event, ranks),
            critical_path=critical_path(k, step_events, self.role_of, self.lane_by_key),
        )


def _rank_summaries(lanes: Mapping[Lane, Any], steps: Sequence[StepSummary]) -> tuple[RankSummary, ...]:
    result = []
    for lane in lanes:
        mine = [r for s in steps for r in s.ranks if r.lane == lane]
        if not mine:
            continue
        step_ns = sum(r.step_ns for r in mine)
        idle_ns = sum(r.idle_ns for r in mine)
        result.append(RankSummary(
            lane=lane, steps=len(mine), step_ns=step_ns, busy_ns=sum(r.busy_ns for r in mine),
            comm_ns=sum(r.comm_ns for r in mine), idle_ns=idle_ns,
            bubble_ratio=idle_ns / step_ns if step_ns else 0.0,
        ))
    return tuple(result)
