"""The report's picture: per-rank timeline with bubbles shaded, bubble ratios, latencies.

matplotlib (Agg, no display) is imported only here, only when a PNG is asked for.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .model import PipelineReport, StepSummary
from .pipeline import stage_role

MAX_TIMELINE_PANELS = 4
COLORS = {"forward": "#4C72B0", "backward": "#55A868", "weight": "#8172B2", "compute": "#7f7f7f",
          "comm": "#DD8452"}
BUBBLE_COLOR = "#E24A33"
BUBBLE_ALPHA = 0.35


def render(report: PipelineReport, events: Sequence[Any], path: Path) -> Path:
    """Draw ``report`` (and the stages in ``events``) into a PNG at ``path``."""
    from matplotlib.figure import Figure

    lanes = [r.lane for r in report.ranks]
    shown = shown_steps(report)
    steps = [step for step, _ in shown]
    figure = Figure(figsize=(15, 4.2 + 0.6 * max(len(lanes), 2)), dpi=110, layout="constrained")
    grid = figure.add_gridspec(2, 1, height_ratios=[1.5, 1])
    top = grid[0].subgridspec(1, max(len(steps), 1))
    panels = [figure.add_subplot(top[0, i]) for i in range(max(len(steps), 1))]
    drawn: set[str] = set()
    for i, (axes, (step, why)) in enumerate(zip(panels, shown)):
        drawn |= _timeline(axes, step, why, events, lanes, first=i == 0, report=report)
    if not steps:
        panels[0].set_axis_off()
    _legend(figure, drawn)
    bottom = grid[1].subgridspec(1, 2)
    _bubbles(figure.add_subplot(bottom[0, 0]), report)
    _latencies(figure.add_subplot(bottom[0, 1]), report)
    figure.savefig(path, format="png")
    return path


def shown_steps(report: PipelineReport) -> list[tuple[StepSummary, str]]:
    """The steps drawn, and why each: per schedule its median-bubble step, and its worst when
    there is room (at most four panels)."""
    ratios = _bubble_ratios(report)
    groups: dict[str, list[int]] = {}
    for position, label in enumerate(_labels(report)):
        groups.setdefault(label, []).append(position)
    picks: list[tuple[int, str]] = []
    for members in groups.values():
        ranked = sorted(members, key=lambda i: (ratios[i], i))
        median = ranked[(len(ranked) - 1) // 2]
        picks.append((median, "the only step" if len(members) == 1 else f"median bubble of {len(members):,} steps"))
    for members in groups.values():
        worst = max(members, key=lambda i: (ratios[i], -i))
        if len(picks) < MAX_TIMELINE_PANELS and len(members) > 2 and worst not in {p for p, _ in picks}:
            picks.append((worst, f"worst bubble of {len(members):,} steps"))
    picks = sorted(picks[:MAX_TIMELINE_PANELS])
    return [(report.steps[position], why) for position, why in picks]


def _bubble_ratios(report: PipelineReport) -> list[float]:
    columns = getattr(report.steps, "bubble_ratios", None)
    return columns().tolist() if columns is not None else [step.bubble_ratio for step in report.steps]


def _labels(report: PipelineReport) -> list[str]:
    columns = getattr(report.steps, "labels", None)
    return columns() if columns is not None else [step.label for step in report.steps]


def _timeline(axes: Any, step: StepSummary, why: str, events: Sequence[Any], lanes: list, first: bool,
              report: PipelineReport) -> set[str]:
    """One step's timeline; returns the stage roles it drew (the legend lists only those)."""
    row = {(lane.host_id, lane.pid, lane.tid): i for i, lane in enumerate(lanes)}
    for rank in step.ranks:  # the bubble is whatever the stage bars leave uncovered
        y = row.get((rank.lane.host_id, rank.lane.pid, rank.lane.tid))
        if y is not None:
            axes.broken_barh([(0, step.duration_ns / 1e6)], (y - 0.42, 0.84),
                             facecolors=BUBBLE_COLOR, alpha=BUBBLE_ALPHA, linewidth=0)
            axes.text(step.duration_ns / 1e6, y + 0.42, f"{rank.bubble_ratio:.0%} ", fontsize=7,
                      ha="right", va="bottom", color="#8b1a0e")
    drawn = _stage_bars(axes, step, events, row, report.roles)
    axes.set_yticks(range(len(lanes)), [lane.label for lane in lanes] if first else [])
    axes.set_ylim(len(lanes) - 0.5, -0.5)
    axes.set_xlim(0, step.duration_ns / 1e6)
    axes.set_xlabel(f"ms into step {step.index}")
    theory = f", theory {step.theory_bubble_ratio:.1%}" if step.theory_bubble_ratio is not None else ""
    # The tables give the mean over a schedule's steps; say which step this panel shows, and why.
    mean = next((s for s in report.schedules if s.schedule == step.label), None)
    over = f"; mean {mean.bubble_ratio:.1%}" if mean is not None and mean.steps > 1 else ""
    axes.set_title(f"{step.label.replace('Schedule', '')}, step {step.index} ({why}):\n"
                   f"bubble {step.bubble_ratio:.1%}{over}{theory}", fontsize=9)
    return drawn


def _stage_bars(axes: Any, step: StepSummary, events: Sequence[Any], row: dict, roles: dict) -> set[str]:
    bars: dict[tuple, list] = defaultdict(list)
    labels = []
    origin, end = step.start_ns, step.end_ns
    for event in events:
        y = row.get((event.rank.host_id, event.rank.pid, event.rank.tid))
        if event.kind != "stage" or event.end_ns is None or y is None:
            continue
        if event.end_ns <= origin or event.start_ns >= end:
            continue
        role = roles.get(event.name) or stage_role(event.name)
        start, width = (event.start_ns - origin) / 1e6, (event.end_ns - event.start_ns) / 1e6
        bars[(role, y)].append((start, width))
        if role != "comm" and event.microbatch is not None and width > (end - origin) / 1e6 / 70:
            labels.append((start + width / 2, y, str(event.microbatch)))
    for (role, y), spans in bars.items():
        height = 0.16 if role == "comm" else 0.7
        axes.broken_barh(spans, (y - height / 2, height), facecolors=COLORS[role],
                         edgecolors="white", linewidth=0 if role == "comm" else 0.6)
    for x, y, text in labels:
        axes.text(x, y, text, ha="center", va="center", fontsize=7, color="white")
    return {role for role, _ in bars}


def _legend(figure: Any, drawn: set[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=COLORS[r], label=n) for r, n in (
        ("forward", "forward"), ("backward", "backward"), ("weight", "weight grad"),
        ("compute", "other compute"), ("comm", "P2P wait/post")) if r in drawn]
    handles.append(Patch(color=BUBBLE_COLOR, alpha=BUBBLE_ALPHA, label="bubble (idle)"))
    figure.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8, frameon=False)


def _bubbles(axes: Any, report: PipelineReport) -> None:
    """Bubble ratio per rank, one bar group per schedule, theory as a dashed line."""
    labels = [s.schedule for s in report.schedules]
    lanes = [r.lane for r in report.ranks]
    ratios = lane_bubbles(report)
    width = 0.8 / max(len(lanes), 1)
    for i, lane in enumerate(lanes):
        values = [ratios.get((schedule.schedule, lane), 0.0) for schedule in report.schedules]
        axes.bar([x + (i - (len(lanes) - 1) / 2) * width for x in range(len(labels))], values, width,
                 label=lane.label)
    for x, schedule in enumerate(report.schedules):
        if schedule.theory_bubble_ratio is not None:
            axes.hlines(schedule.theory_bubble_ratio, x - 0.45, x + 0.45, colors="black", linestyles="--",
                        label="theory (p-1)/(m+p-1)" if x == 0 else None)
    axes.set_xticks(range(len(labels)), [label.replace("Schedule", "") for label in labels], fontsize=8)
    axes.set_ylabel("bubble ratio")
    axes.set_ylim(0, 1)
    axes.set_title("Bubble ratio per rank (idle / step time)")
    axes.legend(fontsize=7, ncols=2)


def lane_bubbles(report: PipelineReport) -> dict[tuple[str, Any], float]:
    """Idle over step time per (schedule label, lane), over the report's steps."""
    series = report.steps
    if hasattr(series, "present"):  # a StepSeries: from its columns, building no step
        import numpy as np

        labels = np.asarray(series.labels(), dtype=object)
        result = {}
        for label in dict.fromkeys(labels.tolist()):
            mine = labels == label
            durations = series.durations[mine]
            for position, lane in enumerate(series.lanes):
                present = series.present[mine, position]
                total = int(durations[present].sum())
                busy = int(series.busy[mine, position][present].sum())
                if present.any():
                    result[(label, lane)] = (total - busy) / total if total else 0.0
        return result
    totals: dict[tuple[str, Any], list[int]] = defaultdict(lambda: [0, 0])
    for step in series:
        for rank in step.ranks:
            total = totals[(step.label, rank.lane)]
            total[0] += rank.step_ns
            total[1] += rank.idle_ns
    return {key: idle / step if step else 0.0 for key, (step, idle) in totals.items()}


def _latencies(axes: Any, report: PipelineReport) -> None:
    """p50 per (compute stage, rank) as bars, whiskers up to p99 (waits are in the table)."""
    rows = [row for row in report.latencies if row.by == "rank" and report.roles.get(row.stage) != "comm"]
    stages = sorted({row.stage for row in rows})
    ranks = sorted({row.key for row in rows}, key=str)
    width = 0.8 / max(len(ranks), 1)
    for i, rank in enumerate(ranks):
        xs, p50, spread = [], [], []
        for x, stage in enumerate(stages):
            row = next((r for r in rows if r.stage == stage and r.key == rank), None)
            if row is not None:
                xs.append(x + (i - (len(ranks) - 1) / 2) * width)
                p50.append(row.p50_ns / 1e6)
                spread.append(max(0.0, (row.p99_ns - row.p50_ns) / 1e6))
        axes.bar(xs, p50, width, yerr=[[0] * len(spread), spread], capsize=2,
                 label=f"PP{rank}" if isinstance(rank, int) else str(rank))
    axes.set_xticks(range(len(stages)), stages, fontsize=8)
    axes.set_ylabel("ms")
    axes.set_title("Compute stage latency per rank: p50 (bar) to p99 (whisker)")
    axes.legend(fontsize=7, ncols=2)
