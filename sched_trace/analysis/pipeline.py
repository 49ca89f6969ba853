"""``pipeline_report``: lanes, shared step windows, busy/idle per rank, phases.

The definitions are in the package docstring (``sched_trace.analysis``). The
windows and the per-step numbers are computed on columns (``_windows``,
``_engine``); this module holds the public function, what one step looks like in
detail (phases, order, busy intervals, critical path) and the summaries.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .._errors import AnalysisError
from ._detail import ROLES, schedule_key, stage_role
from ._engine import DETAIL_ALL_LIMIT, Analysis
from ._store import SliceStore
from ._windows import Steps, find_steps
from .files import TraceSet
from .model import Lane, PipelineReport, RankSummary, ScheduleSummary
from .steps import StepSeries

__all__ = ["pipeline_report", "representative_steps", "schedule_key", "stage_role"]

# --- the report ------------------------------------------------------------------------


# long: the public entry point; most of it is the documented parameters and their checks
def pipeline_report(
    events: "Iterable[Any] | TraceSet | SliceStore",
    *,
    step_name: Optional[str] = None,
    skip_steps: int = 0,
    roles: Optional[Mapping[str, str]] = None,
    detail: str = "auto",
) -> PipelineReport:
    """Analyse finished events: per-rank busy/idle/bubble ratio, phases, latencies.

    :param events: finished events (a ``MemoryRecorder``'s, or read back with
        :func:`load_events`), or trace files opened with :func:`open_traces`: the same
        analysis, in memory bounded by a bucket of steps, with each process on its
        host's clock and hosts aligned as :meth:`TraceSet.align_hosts` estimated.
    :param step_name: the batch event that is one step (default: the most common
        top-level batch name, e.g. ``pp_step``). Without batch events, a step starts
        at each forward of micro-batch 0 after a backward on the first rank; without
        backward passes either, the whole trace is one step. ``report.step_source``
        and ``report.notes`` say which was done.
    :param skip_steps: leave out the first N steps of each schedule (the same kind,
        micro-batch count and rank count: :func:`schedule_key`); the first step of a
        torch.distributed.pipelining schedule also runs shape inference and P2P set-up.
        ``report.skipped_steps`` lists them.
    :param roles: stage name -> ``forward``/``backward``/``weight``/``comm``/``compute``,
        overriding the guess made from the name (see :func:`stage_role`).
    :param detail: which steps carry phases, execution order and the critical path:
        ``"all"``, ``"representative"`` (first, median and worst bubble, last of each
        schedule) or ``"auto"`` (all for events in memory or up to
        ``DETAIL_ALL_LIMIT`` analysed steps, else representative).
    :raises AnalysisError: ``skip_steps`` leaves no step, ``step_name`` names no
        batch event, or a role is unknown.
    """
    for name, role in (roles or {}).items():
        if role not in ROLES:
            raise AnalysisError(f"roles[{name!r}] = {role!r}; use one of {', '.join(ROLES)}")
    if not isinstance(skip_steps, int) or isinstance(skip_steps, bool) or skip_steps < 0:
        raise AnalysisError(f"skip_steps={skip_steps!r}: use a whole number >= 0")
    if detail not in ("auto", "all", "representative"):
        raise AnalysisError(f"detail={detail!r}: use 'auto', 'all' or 'representative'")
    shifts: dict[int, int] = {}
    if isinstance(events, TraceSet):
        store, shifts = events.store, events.lane_shifts()
    else:
        store = events if isinstance(events, SliceStore) else SliceStore.from_events(events)
    steps = find_steps(store, step_name, lambda name: stage_role(name, roles), shifts)
    analysis = Analysis(store, steps, skip_steps, detail, shifts, store.directory)
    try:
        analysis.run()
        kept = np.flatnonzero(analysis.kept).tolist()
        if steps.windows and not kept:
            raise AnalysisError(
                f"skip_steps={skip_steps} leaves no step to analyse: the trace has {len(steps.windows)} "
                f"step(s) ({steps.step_note}); pass a smaller skip_steps, or trace more steps"
            )
        every = detail == "all" or (detail == "auto" and (store.events is not None or len(kept) <= DETAIL_ALL_LIMIT))
        analysis.finish_detail(kept if every else representative_steps(analysis, kept))
        return _report(analysis, kept, every)
    finally:
        analysis.close()


def _report(analysis: Analysis, kept: list[int], every: bool) -> PipelineReport:
    steps = analysis.steps
    numbers = analysis.numbers
    series = StepSeries.from_analysis(analysis, kept)
    latencies = analysis.latency.table(
        analysis.store.catalog.names,
        lambda lane: _rank_key(steps.lanes[lane]),
        lambda kind, value: _microbatch_key(analysis.store, kind, value))
    return PipelineReport(
        ranks=_rank_summaries(steps.lanes, numbers, kept),
        steps=tuple(series) if every else series,
        latencies=latencies,
        step_name=steps.step_name,
        skip_steps=analysis.skip_steps,
        schedules=_schedule_summaries(series),
        roles=dict(sorted(steps.role_of.items())),
        step_source=steps.step_source,
        skipped_steps=tuple(k for k in range(len(steps.windows)) if not analysis.kept[k]),
        notes=_notes(steps, analysis.skip_steps, len(kept)),
    )


def _rank_key(lane: Lane) -> Any:
    return lane.pp_rank if lane.pp_rank is not None else lane.label


def _microbatch_key(store: SliceStore, kind: int, value: int) -> Any:
    from ._latency import INT_MB
    from .paths import microbatch_key

    return value if kind == INT_MB else microbatch_key(store.microbatches[value])


def representative_steps(analysis: Analysis, kept: Sequence[int]) -> list[int]:
    """Per schedule: its first step, the one with the median bubble, the worst one and its last."""
    chosen: list[int] = []
    for members in _by_schedule(analysis, kept).values():
        bubbles = [_step_bubble(analysis, k) for k in members]
        ranked = sorted(range(len(members)), key=lambda i: (bubbles[i], members[i]))
        chosen += [members[0], members[ranked[(len(members) - 1) // 2]], members[ranked[-1]], members[-1]]
    return sorted(set(chosen))


def _by_schedule(analysis: Analysis, kept: Sequence[int]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for k in kept:
        attrs = analysis.numbers.attrs[k]
        groups.setdefault(_label(attrs, analysis.steps.step_name), []).append(k)
    return groups


def _label(attrs: Mapping[str, Any], step_name: Optional[str]) -> str:
    schedule = str(attrs.get("schedule", step_name or "<trace>"))
    m = attrs.get("n_microbatches")
    return f"{schedule} m={m}" if m is not None else schedule


def _step_bubble(analysis: Analysis, k: int) -> float:
    numbers = analysis.numbers
    present = numbers.present[k]
    step_ns = int(numbers.windows[k, 1] - numbers.windows[k, 0])
    total = step_ns * int(present.sum())
    busy = int(numbers.busy[k][present].sum())
    return (total - busy) / total if total else 0.0


def _notes(steps: Steps, skip_steps: int, kept: int) -> tuple[str, ...]:
    notes = [] if steps.step_source == "markers" else [steps.step_note]
    left_out = len(steps.windows) - kept
    if left_out:
        notes.append(f"left out {left_out} of {len(steps.windows)} steps "
                     f"(the first {skip_steps} of each schedule: skip_steps={skip_steps})")
    return tuple(notes)


def _schedule_summaries(series: StepSeries) -> tuple[ScheduleSummary, ...]:
    groups: dict[str, list[int]] = {}
    for position, label in enumerate(series.labels()):
        groups.setdefault(label, []).append(position)
    result = []
    for label, members in groups.items():
        total = int(series.step_ns_total[members].sum())
        idle = total - int(series.busy_total[members].sum())
        result.append(ScheduleSummary(
            label, len(members), bubble_ratio=idle / total if total else 0.0,
            theory_bubble_ratio=series.theory_of(members[0]),
            mean_step_ns=sum(int(d) for d in series.durations[members]) / len(members),
        ))
    return tuple(result)


def _rank_summaries(lanes: Sequence[Lane], numbers: Any, kept: Sequence[int]) -> tuple[RankSummary, ...]:
    result = []
    kept_index = np.asarray(kept, np.int64)
    durations = (numbers.windows[kept_index, 1] - numbers.windows[kept_index, 0]) if kept else np.zeros(0, np.int64)
    for position, lane in enumerate(lanes):
        present = numbers.present[kept_index, position] if kept else np.zeros(0, bool)
        if not present.any():
            continue
        step_ns = int(durations[present].sum())
        busy_ns = int(numbers.busy[kept_index, position][present].sum())
        idle_ns = step_ns - busy_ns
        result.append(RankSummary(
            lane=lane, steps=int(present.sum()), step_ns=step_ns, busy_ns=busy_ns,
            comm_ns=int(numbers.comm[kept_index, position][present].sum()), idle_ns=idle_ns,
            bubble_ratio=idle_ns / step_ns if step_ns else 0.0,
        ))
    return tuple(result)
