"""Pipeline analysis: per-rank busy and idle time, bubble ratio, phases, latencies.

``pipeline_report(events)`` takes finished ``StageEvent``/``BatchEvent`` tuples (from
a ``MemoryRecorder``, or read back from trace files with :func:`load_events`) and
returns a :class:`PipelineReport`. The definitions, in short (docs/bubbles.md has
the picture):

* **lane**: one thread of one process, the thing that runs stages one at a time;
  labelled by the ``pp_rank`` its events carry.
* **step**: one top-level batch event (a schedule's ``step()``); step *k* of every
  lane is aligned by order. Its **window** is shared by all lanes: it opens when
  the first lane enters step *k*, but not before every lane has left step *k-1*,
  and closes when the last lane leaves. Windows never overlap, so a rank that
  enters the next step early and waits there is idle in the step it waits for.
* **busy**: the union of the lane's compute stages (everything but communication)
  inside the window; **idle** = window - busy; **bubble ratio** = idle / window.
  Communication waits (names with ``p2p``, ``send``, ``recv``, ``wait`` ...) compute
  nothing, so they are idle too, and are also reported on their own (``comm_ns``).
* **phases** (1F1B-type): warm-up until the first backward starts, steady until
  the last forward ends, cool-down after. GPipe's steady phase is empty.
* **critical path**: from the step's last-ending compute stage, walk back to
  whichever predecessor finished last: the lane's previous stage, or the stage it
  needed data from (forward: same micro-batch one stage earlier; backward: one
  stage later, or its own forward on the last stage).
"""

from __future__ import annotations

from .._errors import AnalysisError
from .files import TraceSet, load_events, open_traces
from .gpu import GpuBusy, gpu_busy
from .model import (
    CriticalPath, Lane, LatencyStats, PathSegment, PhaseStats, PipelineReport, RankStep,
    RankSummary, ScheduleSummary, StepSummary, gpipe_bubble_fraction,
)
from .pipeline import pipeline_report, stage_role
from .steps import StepSeries
from .requests import Percentiles, RequestLatency, RequestReport, RequestTimeline, request_report

__all__ = [
    "AnalysisError", "CriticalPath", "GpuBusy", "Lane", "LatencyStats", "PathSegment", "PhaseStats", "PipelineReport",
    "Percentiles", "RankStep", "RankSummary", "RequestLatency", "RequestReport", "RequestTimeline",
    "ScheduleSummary", "StepSeries", "StepSummary", "TraceSet", "gpipe_bubble_fraction", "gpu_busy", "load_events", "open_traces",
    "pipeline_report", "request_report", "stage_role",
]
