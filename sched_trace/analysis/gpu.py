"""GPU busy time per rank, from the ``<stage>/gpu`` events sched-trace-cuda publishes.

Those events sit on a track of their own per scheduler thread and device
(``Scheduler/cuda:0``, thread id ``tid + ((device + 1) << 22)``), so
:func:`~sched_trace.analysis.pipeline_report` already treats each as a lane of its
own. :func:`gpu_busy` pairs every such GPU lane with the scheduler thread that
launched the work, so a report can put CPU and GPU busy time side by side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .model import Lane, PipelineReport, RankSummary

_DEVICE = re.compile(r"/cuda:(\d+)$")


@dataclass(frozen=True)
class GpuBusy:
    """One rank's GPU (one device) over every analysed step."""

    lane: Lane                  # the GPU track
    device: int
    cpu_lane: Optional[Lane]    # the scheduler thread that launched the work, when in the trace
    steps: int
    step_ns: int
    busy_ns: int                # union of the GPU stage intervals inside the steps
    cpu_busy_ns: Optional[int]  # the launching thread's busy time, same steps

    @property
    def busy_ratio(self) -> float:
        """GPU busy over step time."""
        return self.busy_ns / self.step_ns if self.step_ns else 0.0

    @property
    def label(self) -> str:
        return f"{self.cpu_lane.label if self.cpu_lane else self.lane.label} cuda:{self.device}"


def gpu_device(lane: Lane) -> Optional[int]:
    """The device of a GPU lane (``.../cuda:N``), or None for a CPU thread."""
    match = _DEVICE.search(lane.thread_label)
    return int(match.group(1)) if match else None


def gpu_busy(report: PipelineReport) -> tuple[GpuBusy, ...]:
    """Per GPU lane of ``report``: its busy time next to its scheduler thread's; empty without GPU events."""
    cpu: dict[tuple[str, int, int], RankSummary] = {
        (r.lane.host_id, r.lane.pid, r.lane.tid): r for r in report.ranks if gpu_device(r.lane) is None}
    rows = []
    for summary in report.ranks:
        device = gpu_device(summary.lane)
        if device is None:
            continue
        lane = summary.lane
        launcher = cpu.get((lane.host_id, lane.pid, lane.tid - ((device + 1) << 22)))
        rows.append(GpuBusy(
            lane=lane, device=device, cpu_lane=launcher.lane if launcher else None, steps=summary.steps,
            step_ns=summary.step_ns, busy_ns=summary.busy_ns,
            cpu_busy_ns=launcher.busy_ns if launcher else None,
        ))
    return tuple(rows)
