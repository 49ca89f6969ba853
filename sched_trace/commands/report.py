"""``sched-trace report FILES [--out DIR]``: the pipeline analysis as tables and a PNG.

Reads Perfetto, Chrome JSON or OTLP-JSON traces (directories are searched),
prints per-rank busy/idle time and bubble ratio, per-schedule bubble ratio
against theory, 1F1B phases, the critical path and stage latencies, and writes
``DIR/report.png`` (timeline with bubbles shaded, bubble ratios, latencies) and
``DIR/report.json``. Needs the ``report`` extra (rich, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..analysis import PipelineReport, gpu_busy, pipeline_report
from ..analysis.files import TraceSet, open_traces
from .._errors import AnalysisError
from ._console import counted, escape, make_console, notes, progress_bar, require

DEFAULT_OUT = "sched-trace-out"
# The first step of each schedule runs torch's shape inference and P2P set-up; the demo
# and this command leave it out alike, so both print the same numbers for one trace.
DEFAULT_SKIP_STEPS = 1
REPORT_NEEDS = (("rich", "'sched-trace[report]'"), ("matplotlib", "'sched-trace[report]'"))


class NothingToReport(ValueError):
    """The input holds no step to analyse: refuse before writing anything."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="trace files or directories (Perfetto, Chrome JSON, OTLP-JSON)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="where report.png and report.json go (default: %(default)s)")
    parser.add_argument("--skip-steps", type=int, default=None, metavar="N",
                        help=f"leave out the first N steps of each schedule (warm-up, shape inference; "
                             f"default: {DEFAULT_SKIP_STEPS}, or 0 when a schedule has only one step)")
    parser.add_argument("--step", default=None, metavar="NAME",
                        help="the batch event that is one step (default: the most common top-level one)")
    parser.add_argument("--no-png", dest="png", action="store_false", help="tables only")
    parser.add_argument("--no-align", dest="align", action="store_false",
                        help="keep each host's recorded clock (default: align hosts from the pipeline's "
                             "cross-host micro-batch order)")


def read_with_progress(files: Sequence[str], console: Any) -> TraceSet:
    """The files opened for the analysis (columns in a temporary directory); a progress bar on a
    terminal when the input is large. The caller closes what it gets."""
    from .. import traceio

    paths = traceio.expand_paths(files)
    size = sum(os.path.getsize(p) for p in paths)
    with notes("report"), progress_bar(console, "reading traces", size) as update:
        return open_traces(files, progress=update)


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.1f}"


def _short(label: str) -> str:
    return label.replace("Schedule", "", 1) if label.startswith("Schedule") else label


def _pct(ratio: Optional[float]) -> str:
    return "-" if ratio is None else f"{ratio:.1%}"


def print_report(report: PipelineReport, console: Any) -> None:
    """The analysis as rich tables."""
    from rich.table import Table

    ranks = Table(title=f"Pipeline ranks (sums over {len(report.steps)} steps of {report.step_name})")
    for column in ("rank", "steps", "total ms", "ms/step", "busy ms", "comm ms", "idle ms", "bubble"):
        ranks.add_column(column, justify="left" if column == "rank" else "right")
    for r in report.ranks:
        ranks.add_row(r.lane.label, str(r.steps), _ms(r.step_ns), _ms(r.step_ns / r.steps if r.steps else 0),
                      _ms(r.busy_ns), _ms(r.comm_ns), _ms(r.idle_ns), _pct(r.bubble_ratio))
    console.print(ranks)
    schedules = Table(title="Bubble ratio by schedule (idle / step time, all ranks)")
    for column in ("schedule", "steps", "mean step ms", "bubble", "theory (p-1)/(m+p-1)"):
        schedules.add_column(column, justify="left" if column == "schedule" else "right")
    for s in report.schedules:
        schedules.add_row(_short(s.schedule), str(s.steps), _ms(s.mean_step_ns), _pct(s.bubble_ratio),
                          _pct(s.theory_bubble_ratio))
    console.print(schedules)
    _print_gpu(report, console)
    _print_phases(report, console)
    _print_latencies(report, console)
    for step in _last_step_per_schedule(report):
        path = step.critical_path
        if path is not None:
            console.print(f"[bold]critical path[/] step {step.index} ({escape(_short(step.label))}): "
                          f"{_ms(path.length_ns)} ms, {_ms(path.wait_ns)} ms waiting: {escape(path.describe())}")
    print_left_out(report, console)


def _print_gpu(report: PipelineReport, console: Any) -> None:
    """GPU busy per rank, when the trace has sched-trace-cuda's ``<stage>/gpu`` events."""
    from rich.table import Table

    rows = gpu_busy(report)
    if not rows:
        return
    table = Table(title="GPU busy per rank (<stage>/gpu events, same steps)")
    for column in ("rank", "device", "steps", "step ms", "GPU busy ms", "GPU busy", "CPU busy ms"):
        table.add_column(column, justify="left" if column == "rank" else "right")
    for row in rows:
        table.add_row(row.cpu_lane.label if row.cpu_lane else row.lane.label, f"cuda:{row.device}", str(row.steps),
                      _ms(row.step_ns), _ms(row.busy_ns), _pct(row.busy_ratio),
                      "-" if row.cpu_busy_ns is None else _ms(row.cpu_busy_ns))
    console.print(table)


def print_left_out(report: PipelineReport, console: Any) -> None:
    """Which steps the numbers cover and which they leave out, summarised; what the analysis assumed."""
    kept = [step.index for step in report.steps]
    analysed = f"{counted(kept)} ({len(kept):,} analysed" if kept else "no step (0 analysed"
    if report.skipped_steps:
        first = "first step" if report.skip_steps == 1 else f"first {report.skip_steps} steps"
        console.print(f"{analysed}; {counted(report.skipped_steps)} left out: the {first} of each schedule, "
                      f"--skip-steps {report.skip_steps}; --skip-steps 0 keeps them)")
    else:
        console.print(f"{analysed}; none left out)")
    for note in report.notes:
        if not note.startswith("left out "):  # said above, with the step numbers
            console.print(f"note: {escape(note)}")


def _last_step_per_schedule(report: PipelineReport) -> list[Any]:
    labels = report.steps.labels() if hasattr(report.steps, "labels") else [step.label for step in report.steps]
    last = {label: position for position, label in enumerate(labels)}
    return [report.steps[position] for position in last.values()]


def _print_phases(report: PipelineReport, console: Any) -> None:
    from rich.table import Table

    table = Table(title="Phases of the last step of each schedule")
    for column in ("schedule", "rank", "warm-up F", "warm-up ms", "steady ms", "cool-down ms", "idle ms w/s/c"):
        table.add_column(column, justify="left" if column in ("schedule", "rank") else "right")
    for step in _last_step_per_schedule(report):
        for rank in step.ranks:
            warmup, steady, cooldown = (rank.phase(n) for n in ("warmup", "steady", "cooldown"))
            if warmup is None or steady is None or cooldown is None:
                continue
            table.add_row(_short(step.label), rank.lane.label, str(warmup.forwards), _ms(warmup.duration_ns),
                          _ms(steady.duration_ns), _ms(cooldown.duration_ns),
                          "/".join(f"{p.idle_ns / 1e6:.0f}" for p in rank.phases))
    if table.row_count:
        console.print(table)


def _print_latencies(report: PipelineReport, console: Any) -> None:
    from rich.table import Table

    table = Table(title="Stage latency (ms)")
    for column in ("stage", "count", "mean", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in report.latencies:
        if row.by == "stage":
            table.add_row(row.stage, str(row.count), _ms(row.mean_ns), _ms(row.p50_ns), _ms(row.p90_ns),
                          _ms(row.p99_ns), _ms(row.max_ns))
    console.print(table)


def write_outputs(report: PipelineReport, events: Sequence[Any], out_dir: Path, png: bool = True,
                  alignment: Any = None) -> list[Path]:
    """``report.json`` and (unless ``png`` is false) ``report.png`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.json"]
    data = report.to_dict()
    if alignment is not None:
        data["clock_alignment"] = alignment.to_dict()
    written[0].write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    if png:
        from ..analysis.figure import render

        written.append(render(report, events, out_dir / "report.png"))
    return written


def build_report(events: "Sequence[Any] | TraceSet", *, skip_steps: Optional[int] = None,
                 step_name: Optional[str] = None) -> PipelineReport:
    """The analysis with the command's defaults: skip the first step of each schedule
    unless told otherwise, or unless that would leave no step at all."""
    if not (events.store.count if isinstance(events, TraceSet) else events):
        raise NothingToReport("no events in these files")
    chosen = DEFAULT_SKIP_STEPS if skip_steps is None else skip_steps
    try:
        report = pipeline_report(events, step_name=step_name, skip_steps=chosen)
    except AnalysisError:
        if skip_steps is not None or chosen == 0:
            raise
        report = pipeline_report(events, step_name=step_name, skip_steps=0)  # a one-step trace
    if not report.steps:
        raise NothingToReport("no finished stage events in these files")
    return report


def analyse(files: Sequence[str], out_dir: Path, console: Any, *, skip_steps: Optional[int] = None,
            step_name: Optional[str] = None, png: bool = True, align: bool = True
            ) -> tuple[PipelineReport, list[Path]]:
    """Read, analyse, print and write: what ``sched-trace report`` and the demo do.

    Raises before anything is written when there is nothing to report.
    """
    with read_with_progress(files, console) as traces:
        alignment = traces.align_hosts() if align else None
        report = build_report(traces, skip_steps=skip_steps, step_name=step_name)
        print_report(report, console)
        if len({host for host, _ in traces.processes}) > 1:
            console.print(escape(alignment.describe() if alignment is not None else
                                 "clocks: each host's recorded clock kept (--no-align)"))
        events: list = []
        if png:
            from ..analysis.figure import shown_steps

            events = traces.events_between([(s.start_ns, s.end_ns) for s, _ in shown_steps(report)])
        return report, write_outputs(report, events, out_dir, png, alignment)


def run(args: argparse.Namespace) -> int:
    if not require("report", REPORT_NEEDS if args.png else REPORT_NEEDS[:1]):
        return 2
    console = make_console()
    try:
        report, written = analyse(args.files, Path(args.out), console, skip_steps=args.skip_steps,
                                  step_name=args.step, png=args.png, align=args.align)
    except NothingToReport as exc:
        print(f"sched-trace report: {exc}; nothing written", file=sys.stderr)
        return 1
    except (OSError, ValueError, ImportError) as exc:
        print(f"sched-trace report: {exc}", file=sys.stderr)
        return 2
    for path in written:
        console.print(f"wrote {escape(path)}")
    return 0
