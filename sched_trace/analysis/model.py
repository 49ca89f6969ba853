"""The typed result of the pipeline analysis: plain frozen dataclasses, ``to_dict``-able.

Times are integer nanoseconds (epoch-based, like the events); ratios are floats
in [0, 1]. ``str(report)`` is a readable text table; ``repr`` stays one line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence


def gpipe_bubble_fraction(stages: int, microbatches: int) -> float:
    """The theoretical bubble fraction of GPipe (and 1F1B) with balanced stages.

    ``(p - 1) / (m + p - 1)`` for ``p`` pipeline stages and ``m`` micro-batches.
    """
    if stages < 1 or microbatches < 1:
        raise ValueError(f"need stages >= 1 and microbatches >= 1, got {stages} and {microbatches}")
    return (stages - 1) / (microbatches + stages - 1)


@dataclass(frozen=True)
class Lane:
    """One thread of one process: stages on it run one at a time."""

    host_id: str
    pid: int
    tid: int
    thread_label: str
    pp_rank: Optional[int]
    track_name: str

    @property
    def label(self) -> str:
        device = self.thread_label.rpartition("/")[2] if "/cuda:" in self.thread_label else ""
        if self.pp_rank is not None:  # a GPU track of sched-trace-cuda: "PP1/cuda:0"
            return f"PP{self.pp_rank}/{device}" if device else f"PP{self.pp_rank}"
        return f"{self.thread_label}:{self.pid}"

    @property
    def sort_key(self) -> tuple:
        return (self.pp_rank is None, self.pp_rank or 0, self.host_id, self.pid, self.tid)


@dataclass(frozen=True)
class PhaseStats:
    """Warm-up, steady or cool-down part of one rank's step (1F1B-type schedules)."""

    name: str
    start_ns: int
    end_ns: int
    forwards: int
    backwards: int
    busy_ns: int
    idle_ns: int

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True)
class RankStep:
    """One rank in one step: busy, communication and idle time inside the step window.

    ``order`` is what ran, in start order: ``("F", 0), ("F", 1), ("B", 0) ...``
    (``W`` for a weight-gradient pass). ``busy`` and ``comm`` are the merged
    intervals, for drawing.
    """

    lane: Lane
    step: int
    start_ns: int
    end_ns: int
    step_ns: int
    busy_ns: int
    comm_ns: int
    idle_ns: int
    bubble_ratio: float
    phases: tuple[PhaseStats, ...]
    order: tuple[tuple[str, Any], ...]
    busy: tuple[tuple[int, int], ...] = ()
    comm: tuple[tuple[int, int], ...] = ()

    def phase(self, name: str) -> Optional[PhaseStats]:
        return next((p for p in self.phases if p.name == name), None)

    @property
    def other_idle_ns(self) -> int:
        """Idle time outside communication stages: host overhead, or nothing to do."""
        return max(0, self.idle_ns - self.comm_ns)


@dataclass(frozen=True)
class PathSegment:
    """One stage on the critical path; ``wait_ns`` is the gap before it started."""

    lane: Lane
    stage: str
    microbatch: Any
    start_ns: int
    end_ns: int
    wait_ns: int


@dataclass(frozen=True)
class CriticalPath:
    """The chain of stages that decided when a step ended."""

    step: int
    segments: tuple[PathSegment, ...]
    compute_ns: int
    wait_ns: int

    @property
    def length_ns(self) -> int:
        return self.segments[-1].end_ns - self.segments[0].start_ns if self.segments else 0

    def describe(self, limit: int = 12) -> str:
        hops = [f"{s.lane.label}:{s.stage}[{s.microbatch}]" for s in self.segments]
        if len(hops) > limit:
            hops = hops[: limit // 2] + ["..."] + hops[-limit // 2:]
        return " -> ".join(hops)


@dataclass(frozen=True)
class StepSummary:
    """One step across every rank, with its shared window."""

    index: int
    name: str
    attrs: dict
    start_ns: int
    end_ns: int
    ranks: tuple[RankStep, ...]
    theory_bubble_ratio: Optional[float]
    critical_path: Optional[CriticalPath]

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def bubble_ratio(self) -> float:
        """Idle over step time, summed over the ranks of this step."""
        total = sum(r.step_ns for r in self.ranks)
        return sum(r.idle_ns for r in self.ranks) / total if total else 0.0

    @property
    def schedule(self) -> str:
        return str(self.attrs.get("schedule", self.name))

    @property
    def label(self) -> str:
        """``ScheduleGPipe m=8``: the schedule, with its micro-batch count when known."""
        m = self.attrs.get("n_microbatches")
        return f"{self.schedule} m={m}" if m is not None else self.schedule


@dataclass(frozen=True)
class ScheduleSummary:
    """Every analysed step of one schedule (steps with the same attributes)."""

    schedule: str
    steps: int
    bubble_ratio: float
    theory_bubble_ratio: Optional[float]
    mean_step_ns: float


@dataclass(frozen=True)
class RankSummary:
    """One rank over every analysed step."""

    lane: Lane
    steps: int
    step_ns: int
    busy_ns: int
    comm_ns: int
    idle_ns: int
    bubble_ratio: float

    @property
    def other_idle_ns(self) -> int:
        """Idle time outside communication stages: host overhead, or nothing to do."""
        return max(0, self.idle_ns - self.comm_ns)


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles of one stage, overall (``by="stage"``) or per rank or micro-batch."""

    stage: str
    by: str
    key: Any
    count: int
    mean_ns: float
    p50_ns: float
    p90_ns: float
    p99_ns: float
    max_ns: int


@dataclass(frozen=True)
class PipelineReport:
    """What :func:`sched_trace.analysis.pipeline_report` returns."""

    ranks: tuple[RankSummary, ...]
    #: Every analysed step, in trace order: a tuple, or a :class:`~sched_trace.analysis.StepSeries`
    #: (the same sequence, built on demand) for a long trace read from files.
    steps: Sequence[StepSummary]
    latencies: tuple[LatencyStats, ...]
    step_name: Optional[str]
    skip_steps: int = 0
    schedules: tuple[ScheduleSummary, ...] = ()
    roles: dict[str, str] = dataclasses.field(default_factory=dict)  # stage name -> role used
    #: How steps were found: "markers" (batch events), "inferred" (forward of micro-batch 0
    #: after a backward, on the first rank) or "whole-trace" (one step).
    step_source: str = "markers"
    #: Indices of the steps left out (``skip_steps``), in trace order.
    skipped_steps: tuple[int, ...] = ()
    #: One line each on what the analysis assumed or left out; printed by ``sched-trace report``.
    notes: tuple[str, ...] = ()

    @property
    def bubble_ratio(self) -> float:
        """Idle over step time, summed over every rank and analysed step."""
        total = sum(r.step_ns for r in self.ranks)
        return sum(r.idle_ns for r in self.ranks) / total if total else 0.0

    def rank(self, pp_rank: int) -> RankSummary:
        for summary in self.ranks:
            if summary.lane.pp_rank == pp_rank:
                return summary
        raise KeyError(f"no rank with pp_rank={pp_rank}; ranks: {[r.lane.label for r in self.ranks]}")

    def latency(self, stage: str, by: str = "stage", key: Any = None) -> LatencyStats:
        for row in self.latencies:
            if row.stage == stage and row.by == by and row.key == key:
                return row
        raise KeyError(f"no latency row for stage={stage!r} by={by!r} key={key!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``report.json``.

        ``steps`` holds every analysed step in full, or, when the report keeps only
        representative steps in detail (a long trace read from files), those;
        ``step_table`` always has every analysed step's window, bubble ratio and
        per-rank busy and communication time as columns.
        """
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name != "steps":
                data[f.name] = _plain(getattr(self, f.name))
        detailed = getattr(self.steps, "detailed", None)
        shown = [self.steps[i] for i in range(len(self.steps))] if detailed is None else \
            [step for _, step in sorted(detailed.items())]
        data["steps"] = []
        for source in shown:
            step = dataclasses.asdict(source)
            step["bubble_ratio"] = source.bubble_ratio
            for rank in step["ranks"]:
                rank.pop("busy"), rank.pop("comm")
            data["steps"].append(step)
        data["steps_in_detail"] = "all" if detailed is None else "representative"
        data["step_table"] = _step_table(self.steps)
        data["bubble_ratio"] = self.bubble_ratio
        return data

    def __repr__(self) -> str:
        return (f"PipelineReport(ranks={len(self.ranks)}, steps={len(self.steps)}, "
                f"step_name={self.step_name!r}, bubble_ratio={self.bubble_ratio:.3f})")

    def __str__(self) -> str:
        lines = [repr(self), f"{'rank':<8}{'steps':>6}{'step ms':>10}{'busy ms':>10}"
                 f"{'comm ms':>10}{'idle ms':>10}{'bubble':>8}"]
        for r in self.ranks:
            lines.append(f"{r.lane.label:<8}{r.steps:>6}{r.step_ns / 1e6:>10.1f}{r.busy_ns / 1e6:>10.1f}"
                         f"{r.comm_ns / 1e6:>10.1f}{r.idle_ns / 1e6:>10.1f}{r.bubble_ratio:>8.1%}")
        for s in self.schedules:
            theory = f" (theory {s.theory_bubble_ratio:.1%})" if s.theory_bubble_ratio is not None else ""
            lines.append(f"{s.schedule}: {s.steps} steps of {s.mean_step_ns / 1e6:.1f} ms, "
                         f"bubble {s.bubble_ratio:.1%}{theory}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _step_table(steps: Any) -> dict[str, Any]:
    """Every analysed step as columns; ranks by label, -1 where a rank took no part."""
    table = getattr(steps, "table", None)
    if table is not None:
        return table()
    lanes: list[Lane] = []
    for step in steps:
        for rank in step.ranks:
            if rank.lane not in lanes:
                lanes.append(rank.lane)
    column = {lane: i for i, lane in enumerate(lanes)}
    busy = [[-1] * len(lanes) for _ in steps]
    comm = [[-1] * len(lanes) for _ in steps]
    for row, step in enumerate(steps):
        for rank in step.ranks:
            busy[row][column[rank.lane]] = rank.busy_ns
            comm[row][column[rank.lane]] = rank.comm_ns
    return {"lanes": [lane.label for lane in lanes], "index": [s.index for s in steps],
            "schedule": [s.label for s in steps], "start_ns": [s.start_ns for s in steps],
            "end_ns": [s.end_ns for s in steps], "bubble_ratio": [round(s.bubble_ratio, 6) for s in steps],
            "busy_ns": busy, "comm_ns": comm}
